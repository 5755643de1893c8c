"""Stopping a long command cleanly: the first SIGINT or SIGTERM asks it to finish its current
step and save, the second aborts at once."""

import signal
import sys
import threading


class TrainingInterrupted(RuntimeError):
    """SIGINT or SIGTERM stopped training after a checkpoint was saved."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class SecondSignal(KeyboardInterrupt):
    """A second SIGINT or SIGTERM aborted a command that was already stopping after the first
    (a bare KeyboardInterrupt is a first Ctrl-C that no StopSignals caught)."""


class StopSignals:
    """While training: the first SIGINT or SIGTERM asks the loop to save a checkpoint and stop
    after the current iteration; a second one aborts at once (SecondSignal, a
    KeyboardInterrupt), leaving the last checkpoint as it was. Handlers are installed only in
    the main thread (Python allows no other), and the previous ones are restored on exit."""

    def __init__(self):
        self.received = None
        self.aborted = False
        self._previous = {}
        self._previous_unraisablehook = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
            self._previous_unraisablehook = sys.unraisablehook
            sys.unraisablehook = self._drop_aborts
        return self

    def _handle(self, signum, frame):
        if self.received is not None:
            self.aborted = True
            raise SecondSignal
        self.received = signum

    def raise_if_aborted(self):
        """Python drops an exception raised in a finaliser or a garbage-collection callback
        (JAX runs one), so a second signal delivered there has not stopped anything yet."""
        if self.aborted:
            raise SecondSignal

    def _drop_aborts(self, unraisable):
        # That dropped abort would otherwise print a traceback before the one-line message.
        if not (self.aborted and isinstance(unraisable.exc_value, KeyboardInterrupt)):
            self._previous_unraisablehook(unraisable)

    def __exit__(self, *exc_info):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        if self._previous_unraisablehook is not None:
            sys.unraisablehook = self._previous_unraisablehook
