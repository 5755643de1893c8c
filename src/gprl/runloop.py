"""The one run loop: every command that trains (`gprl train`, `gprl pretrain`, ...) is a
:class:`Job` driven by :func:`run_job`, which owns what they share: signals, the progress bar, the
metrics sinks, the evaluation and checkpoint schedules, NaN checks and the run directory's
lifetime.

A job counts its work on one clock (env steps, gradient steps, ...) and keeps its counters in the
`progress` dict that every checkpoint saves; the loop adds `iteration`, `wall_time`, `next_eval`
and `next_checkpoint` to it.
"""

import contextlib
import math
import os
import signal
import time
from pathlib import Path
from typing import NamedTuple, Protocol

import jax
import numpy as np

from gprl.logger import MetricsLogger
from gprl.rundir import RunDirectory, has_checkpoint
from gprl.signals import StopSignals, TrainingInterrupted


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a NaN loss); the last checkpoint is left intact."""


class Step(NamedTuple):
    """What one iteration of a job produced."""

    row: dict
    """The metrics row's leading fields (counters, training returns, ...)."""
    metrics: dict
    """The update's scalars (losses, ...), written after the evaluation's."""
    work: int
    """Units of work done (env steps, gradient steps) for the steps_per_second column."""
    evaluate: bool = False
    """An evaluation is owed now whatever the schedule says (a phase or stage just ended)."""
    checkpoint: bool = False
    """A checkpoint is owed now whatever the schedule says."""


class Job(Protocol):
    """One kind of training, as the run loop drives it."""

    clock_name: str
    """The progress counter that schedules evaluations and checkpoints and fills the progress
    bar (its value is `clock(progress)`)."""

    def clock(self, progress: dict) -> int: ...

    def finished(self, progress: dict) -> bool: ...

    def iterate(self, progress: dict) -> Step:
        """One iteration: advance the job's state and its counters in `progress`."""

    def evaluate(self) -> dict:
        """An evaluation of the current policy: {"eval_return": ..., ...}."""

    def save(self, progress: dict) -> None:
        """Write a checkpoint holding the job's state and `progress`."""

    def after_checkpoint(self, progress: dict) -> None:
        """Called after each scheduled checkpoint (a job restarts its envs there)."""


class Schedule(NamedTuple):
    total: int
    """The clock's value at the end (the progress bar's total)."""
    eval_every: int
    """Clock units between evaluations; 0: only at the end."""
    checkpoint_every: int
    description: str
    """The progress bar's label."""
    show_progress: bool = True


def start_progress(progress: dict, first_eval: int, checkpoint_every: int) -> dict:
    """A fresh run's progress: the job's counters plus the loop's."""
    return (
        {"iteration": 0, "wall_time": 0.0, "next_eval": first_eval}
        | progress
        | {"next_checkpoint": checkpoint_every}
    )


def run_job(
    job: Job,
    schedule: Schedule,
    progress: dict,
    run_dir: RunDirectory,
    logger: MetricsLogger,
    on_iteration=None,
) -> None:
    """Iterate `job` until it is finished. The first SIGINT/SIGTERM saves a checkpoint and raises
    TrainingInterrupted; a second aborts (KeyboardInterrupt); a non-finite loss raises
    TrainingError before anything is saved. on_iteration(iteration, row) follows each row."""
    bar = ProgressBar(schedule.show_progress, schedule.total, schedule.description)
    started = time.perf_counter() - progress["wall_time"]
    last_eval = None
    with contextlib.ExitStack() as cleanup:
        stop = cleanup.enter_context(StopSignals())
        cleanup.callback(logger.close)
        cleanup.callback(bar.close)
        while not job.finished(progress):
            iteration_start = time.perf_counter()
            step = _iterate(job, progress, run_dir)
            done = job.finished(progress)
            row = dict(step.row)
            if done or step.evaluate or _due(schedule, progress, job.clock(progress)):
                evaluation = job.evaluate()
                row |= evaluation
                last_eval = evaluation.get("eval_return")
                _advance(progress, "next_eval", schedule.eval_every, job.clock(progress))
            now = time.perf_counter()
            progress["wall_time"] = now - started
            row |= {
                "wall_time": progress["wall_time"],
                "steps_per_second": step.work / max(now - iteration_start, 1e-9),
            }
            row |= step.metrics
            stop.raise_if_aborted()
            logger.log(row)
            _save_if_due(job, schedule, progress, run_dir, done or step.checkpoint, stop)
            if stop.received is not None and not done:
                raise TrainingInterrupted(
                    f"{signal.Signals(stop.received).name}: saved a checkpoint at "
                    f"{job.clock(progress)} {job.clock_name.replace('_', ' ')} in "
                    f"{run_dir.path}; continue with --resume {run_dir.path}",
                    stop.received,
                )
            bar.update(job.clock(progress), last_eval)
            if on_iteration is not None:
                on_iteration(progress["iteration"], row)


def _iterate(job: Job, progress: dict, run_dir: RunDirectory) -> Step:
    try:
        step = job.iterate(progress)
        for key, value in {**step.row, **step.metrics}.items():
            if "loss" in key and isinstance(value, float) and not math.isfinite(value):
                raise FloatingPointError(f"{key} is {value}")
    except FloatingPointError as e:
        raise TrainingError(
            f"{e} at iteration {progress['iteration']} ({job.clock(progress)} "
            f"{job.clock_name.replace('_', ' ')}); stopped without saving, "
            f"{_what_is_kept(run_dir)}"
        ) from None
    return step


def _what_is_kept(run_dir: RunDirectory) -> str:
    if run_dir.replaces_a_run:
        return f"the run it was replacing is back in {run_dir.path}"
    if has_checkpoint(run_dir.path):
        return f"the last checkpoint in {run_dir.path} is intact"
    return f"no checkpoint was saved in {run_dir.path}"


def _due(schedule: Schedule, progress: dict, clock: int) -> bool:
    return schedule.eval_every > 0 and clock >= progress["next_eval"]


def _advance(progress: dict, name: str, every: int, clock: int) -> None:
    while progress[name] <= clock:
        progress[name] += max(every, 1)


def _save_if_due(job, schedule, progress, run_dir, owed: bool, stop: StopSignals) -> None:
    clock = job.clock(progress)
    if owed or clock >= progress["next_checkpoint"]:
        _advance(progress, "next_checkpoint", schedule.checkpoint_every, clock)
        job.save(progress)
        run_dir.keep()
        job.after_checkpoint(progress)
    elif stop.received is not None:
        job.save(progress)
        run_dir.keep()


def scalars(metrics: dict) -> dict:
    """The 0-d entries of a metrics dict as Python numbers."""
    out = {}
    for key, value in metrics.items():
        value = np.asarray(value)
        if value.ndim == 0:
            out[key] = value.item()
    return out


def configure_jax() -> None:
    """Synchronous CPU dispatch and a persistent compilation cache.

    The host loop makes one small jitted call per env step; dispatching it on the calling thread
    instead of handing it to a worker thread cut a 16-env acting call from ~110 to ~67 us here.
    The cache reuses compiled updates across processes (first compiles take seconds on CPU):
    GPRL_COMPILATION_CACHE=0 disables it; GPRL_COMPILATION_CACHE_DIR moves it."""
    jax.config.update("jax_cpu_enable_async_dispatch", False)
    if os.environ.get("GPRL_COMPILATION_CACHE", "1") == "0":
        return
    default = Path.home() / ".cache" / "gprl" / "jax"
    jax.config.update(
        "jax_compilation_cache_dir", os.environ.get("GPRL_COMPILATION_CACHE_DIR", str(default))
    )
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:  # JAX's own variable wins
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


class ProgressBar:
    def __init__(self, enabled: bool, total: int, description: str):
        self.progress = None
        if enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("eval {task.fields[eval]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            )
            self.task = self.progress.add_task(description, total=total, eval="-")
            self.progress.start()

    def update(self, steps: int, eval_return: float | None):
        if self.progress is not None:
            shown = "-" if eval_return is None else f"{eval_return:.3g}"
            self.progress.update(self.task, completed=steps, eval=shown)

    def close(self):
        if self.progress is not None:
            self.progress.stop()
