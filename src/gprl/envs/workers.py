"""Stepping a :class:`~gprl.envs.vector.VecEnv`'s envs in this process and worker processes.

The envs are split into contiguous blocks: this process steps the first (env 0 stays here, so
rendering and spec reading are unchanged), each worker process one of the others, all at once.
Every block is a ``SyncVectorEnv`` with same-step autoreset, exactly what the in-process backend
steps; only actions, results and infos cross the pipes. Env i is still reset with seed + i, so a
seeded rollout, and with it a resumed run, is the same with and without workers. One process per
core, not one per env, keeps 50 evaluation envs from starting 50 processes.

Workers are fresh Python processes started with ``subprocess`` (Unix), not ``multiprocessing``:
nothing of this process is forked (JAX's threads, which JAX warns can deadlock a fork), and the
user's script is never imported again, so it needs no ``if __name__ == "__main__":`` guard, and
envs made from stdin or a notebook work too. They get this process's environment variables and
``sys.path``, and their envs' makers by cloudpickle: ids and factories work (lambdas included),
a ``gymnasium.Env`` instance does not.
"""

import contextlib
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector.utils import CloudpickleWrapper

from gprl.envs.common import EnvError, first_line

CLOSE_TIMEOUT_S = 5.0
WORKER_COMMAND = "import sys; from gprl.envs.workers import serve; serve(int(sys.argv[1]))"
SPIN_S = 0.005
"""How long a process waiting for a block's results or its next command polls before it blocks.
On the 2-core VM of benchmarks/env_workers.py a core left idle between steps wakes slowly and
cold: polling took 4 Meta-World envs from 1826 to 2078 steps/s and 4 Hopper-v5 envs from 5352 to
8707 (results/env_workers.csv). Between polls it yields its core to any other runnable process:
polling without yielding took the time slices the other block needed (at load 4.5, 4 Meta-World
envs stepped at 488 steps/s against 1152 blocking)."""


def sync_vector_env(makers: Sequence[Callable[[], gym.Env]]) -> gym.vector.SyncVectorEnv:
    """The in-process backend's vector env: same-step autoreset, buffers not copied."""
    return gym.vector.SyncVectorEnv(
        makers,
        # Flattening copies the vector env's buffers, so its own copy is redundant.
        copy=False,
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )


class WorkerVectorEnv:
    """``num_envs`` envs split over this process and ``workers`` worker processes, driven like a
    ``SyncVectorEnv``: ``reset`` and ``step`` return the same batched observations and infos
    (``final_obs`` included), and ``envs`` lists this process's envs, env 0 first.

    Args:
        make_sub_envs: one zero-argument function per env, picklable with cloudpickle.
        name: the env's name in messages.
        workers: worker processes (at most num_envs - 1 are used).

    Raises:
        EnvError: a maker that does not pickle, or an env that fails to build in a worker.
            Failures of this process's envs propagate as they are.
    """

    def __init__(self, make_sub_envs: Sequence[Callable[[], gym.Env]], name: str, workers: int):
        self.name = name
        self.num_envs = len(make_sub_envs)
        self._spin_s = SPIN_S
        blocks = np.array_split(np.arange(self.num_envs), min(workers + 1, self.num_envs))
        self._bounds = [(int(block[0]), int(block[-1]) + 1) for block in blocks]
        payloads = [_pickled(make_sub_envs[start:stop], name) for start, stop in self._bounds[1:]]
        self._pipes: list[Connection] = []
        self._processes: list[subprocess.Popen] = []
        self._local: gym.vector.SyncVectorEnv | None = None
        try:
            # Workers build their envs while this process builds its own.
            self._start_workers(payloads)
            start, stop = self._bounds[0]
            self._local = sync_vector_env(make_sub_envs[start:stop])
            self._gather(f"cannot make {name}")
        except BaseException:
            self.close()
            raise
        self.envs = self._local.envs

    def reset(self, *, seed: int | Sequence[int | None] | None = None) -> tuple[Any, dict]:
        """Reset every env; an int seed gives env i seed + i, as ``SyncVectorEnv`` does."""
        if seed is None:
            seeds: list[int | None] = [None] * self.num_envs
        elif isinstance(seed, int):
            seeds = [seed + index for index in range(self.num_envs)]
        else:
            seeds = list(seed)
        parts = self._run("reset", seeds, f"cannot reset {self.name}")
        return _join_batches([obs for obs, _ in parts]), self._join_infos([i for _, i in parts])

    def step(self, actions: np.ndarray) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict]:
        parts = self._run("step", actions, f"{self.name} failed in a worker process")
        obs, reward, terminated, truncated, infos = zip(*parts, strict=True)
        return (
            _join_batches(list(obs)),
            np.concatenate(reward),
            np.concatenate(terminated),
            np.concatenate(truncated),
            self._join_infos(list(infos)),
        )

    def close(self) -> None:
        """Stop the workers and close this process's envs (idempotent); a worker that does not
        stop in time is killed."""
        for pipe in self._pipes:
            with contextlib.suppress(OSError):  # its worker is gone already
                pipe.send(("close", None))
        for process in self._processes:
            try:
                process.wait(CLOSE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pipe in self._pipes:
            pipe.close()
        self._pipes, self._processes = [], []
        if self._local is not None:
            self._local.close()
            self._local = None

    def _start_workers(self, payloads: list[bytes]) -> None:
        for payload in payloads:
            parent_end, child_end = socket.socketpair()
            with child_end:
                process = subprocess.Popen(
                    [sys.executable, "-c", WORKER_COMMAND, str(child_end.fileno())],
                    pass_fds=[child_end.fileno()],
                    stdin=subprocess.DEVNULL,
                )
            self._processes.append(process)
            self._pipes.append(Connection(parent_end.detach()))
            self._pipes[-1].send((sys.path, payload, self._spin_s))

    def _run(self, command: str, argument: Any, context: str) -> list[Any]:
        """Send each worker its block's slice of argument, run this process's block, and return
        every block's result in order. Any failure closes the workers."""
        if self._local is None:
            raise EnvError(f"{context}: the envs were closed")
        for pipe, (start, stop) in zip(self._pipes, self._bounds[1:], strict=True):
            pipe.send((command, argument[start:stop]))
        start, stop = self._bounds[0]
        try:
            if command == "reset":
                local = self._local.reset(seed=argument[start:stop])
            else:
                local = self._local.step(argument[start:stop])
        except BaseException:
            self.close()
            raise
        return [local, *self._gather(context)]

    def _gather(self, context: str) -> list[Any]:
        return [self._receive(index, context) for index in range(len(self._pipes))]

    def _receive(self, index: int, context: str) -> Any:
        try:
            _wait(self._pipes[index], self._spin_s)
            ok, answer = self._pipes[index].recv()
        except (EOFError, OSError):
            code = self._processes[index].wait()
            self.close()
            died = f"worker process {index + 1} died (exit code {code})"
            raise EnvError(f"{context}: {died}") from None
        if not ok:
            self.close()
            raise EnvError(f"{context}: {answer}")
        return answer

    def _join_infos(self, parts: list[dict]) -> dict:
        return _merge_infos(parts, [stop - start for start, stop in self._bounds])


def _pickled(makers: Sequence[Callable[[], gym.Env]], name: str) -> bytes:
    try:
        return pickle.dumps(CloudpickleWrapper(list(makers)))
    except Exception as exc:  # pickling user objects raises anything
        raise EnvError(
            f"cannot send {name} to worker processes ({first_line(exc)}); pass an id or a "
            "factory that pickles, or use env_workers=0"
        ) from exc


def serve(fd: int) -> None:
    """A worker process: build its envs from the first message on the socket fd, then answer
    commands until told to close or orphaned. Every answer is (True, result) or (False, one-line
    error); after an error it stops."""
    # Ctrl-C, and a scheduler's or `kill -- -PGID`'s SIGTERM, reach the whole process group: the
    # parent handles them (a checkpoint, then closing the workers); an orphan stops on its own.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    pipe = Connection(fd)
    parent_path, payload, spin_s = pipe.recv()
    sys.path[:] = parent_path  # the modules the makers refer to import as in the parent
    try:
        envs = sync_vector_env(pickle.loads(payload).fn)
    except Exception as exc:  # user constructors raise anything
        pipe.send((False, str(exc) if isinstance(exc, EnvError) else first_line(exc)))
        return
    pipe.send((True, None))
    try:
        while True:
            _wait(pipe, spin_s)
            command, argument = pipe.recv()
            if command == "close":
                break
            try:
                result = envs.reset(seed=argument) if command == "reset" else envs.step(argument)
            except Exception as exc:  # user envs raise anything
                pipe.send((False, first_line(exc)))
                break
            pipe.send((True, result))
    except (EOFError, OSError):  # the parent is gone
        pass
    finally:
        envs.close()


def _wait(pipe: Connection, spin_s: float) -> None:
    """Poll pipe for up to spin_s seconds, yielding the core between polls (see SPIN_S); the
    caller's recv blocks after that."""
    deadline = time.perf_counter() + spin_s
    while not pipe.poll() and time.perf_counter() < deadline:
        os.sched_yield()


def _join_batches(parts: list[Any]) -> Any:
    """Batched observations of consecutive blocks of envs as one batch (Box or Dict of Box)."""
    if isinstance(parts[0], dict):
        return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    return np.concatenate(parts)


def _merge_infos(parts: list[dict], sizes: list[int]) -> dict:
    """Vector infos of consecutive blocks of envs as ``SyncVectorEnv`` builds them for all the
    envs: every key with its ``_key`` mask, absent entries zero (None for objects), and nested
    dicts merged alike."""
    offsets = np.cumsum([0, *sizes])
    merged: dict[str, Any] = {}
    keys = dict.fromkeys(key for part in parts for key in part if f"_{key}" in part)
    for key in keys:
        holders = [index for index, part in enumerate(parts) if key in part]
        template = parts[holders[0]][key]
        if isinstance(template, dict):
            values: Any = _merge_infos([part.get(key, {}) for part in parts], sizes)
        elif template.dtype == object:
            values = np.full(offsets[-1], None, dtype=object)
        else:
            values = np.zeros((offsets[-1], *template.shape[1:]), dtype=template.dtype)
        mask = np.zeros(offsets[-1], dtype=np.bool_)
        for index in holders:
            block = slice(offsets[index], offsets[index + 1])
            if not isinstance(template, dict):
                values[block] = parts[index][key]
            mask[block] = parts[index][f"_{key}"]
        merged[key], merged[f"_{key}"] = values, mask
    return merged
