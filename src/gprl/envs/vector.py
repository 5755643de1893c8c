"""Gymnasium vector envs with normalised [-1, 1] actions and flat float32 observations.

Every algorithm in gprl sees the same interface whatever the task: a batch of float32 observation
vectors in, a batch of actions in [-1, 1] out. :class:`VecEnv` hides the differences between
Gymnasium tasks (Box observations, arbitrary action bounds) and DeepMind Control tasks via shimmy
(Dict observations, time limits enforced inside dm_control), whether they come as ids, as
``gymnasium.Env`` instances or as factories. envpool (:mod:`gprl.envs.envpool_backend`) has the
same semantics; :func:`gprl.envs.make_env` picks between the two.
"""

import dataclasses
import difflib
import functools
import importlib
import math
import os
from collections.abc import Callable, Sequence

import gymnasium as gym
import numpy as np

from gprl.envs.chunked import ChunkExecution, Chunking, check_fits, chunk_infos, chunked_shape
from gprl.envs.common import (
    DMC_PREFIX,
    ActionMapper,
    EnvError,
    TaskShape,
    canonical_env_id,
    check_num_envs,
    check_success_options,
    first_line,
    prefer_headless_rendering,
    reported_success,
)
from gprl.envs.metaworld import is_metaworld_id, make_metaworld_env
from gprl.envs.ogbench import is_ogbench_id, make_ogbench_env
from gprl.envs.sources import InstanceCopies, ResolvedEnv, can_reopen, gymnasium_env_name
from gprl.envs.workers import WorkerVectorEnv, sync_vector_env
from gprl.types import StepResult


class _SuccessInfo(gym.Wrapper):
    """Cuts info dicts down to the success flag, the only thing gprl reads from them (batching
    whole infos in the vector env costs several percent of a MuJoCo step), and applies the
    success options inside the env, so that an episode ended on success is reset like any other.

    Envs that never report success give empty infos, as before. Reset infos are always empty:
    nothing has succeeded yet.
    """

    def __init__(self, env: gym.Env, *, sparse_reward: bool, end_on_success: bool):
        super().__init__(env)
        self._sparse_reward = sparse_reward
        self._end_on_success = end_on_success

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, _ = self.env.reset(seed=seed, options=options)
        return obs, {}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        success = reported_success(info)
        if success is None:
            return obs, reward, terminated, truncated, {}
        if self._sparse_reward:
            reward = float(success)
        if self._end_on_success:
            terminated = terminated or success
        return obs, reward, terminated, truncated, {"success": success}


def _step_success(infos: dict, num_envs: int) -> np.ndarray | None:
    """(num_envs,) bool: where the vector env's infos report success, or None if no env said.
    Where an episode ended, its step's info is under "final_info" and the reset's on top."""
    now = infos.get("success")
    ended = infos.get("final_info", {}).get("success")
    if now is None and ended is None:
        return None
    success = np.zeros(num_envs, dtype=bool)
    for reported in (now, ended):
        if reported is not None:
            success |= reported
    return success


class VecEnv:
    """``num_envs`` copies of one task stepped in lock-step, taking actions in [-1, 1].

    Runs a Gymnasium ``SyncVectorEnv`` with same-step autoreset: when an episode ends, ``step``
    returns the first observation of the next episode in ``obs`` and the episode's true last
    observation in ``final_obs`` (needed to bootstrap values at time limits). With workers, the
    envs are split into blocks, this process stepping the first and worker processes the others
    (:mod:`gprl.envs.workers`), with the same results. Build it with :func:`gprl.envs.make_env`.

    Args:
        make_sub_envs: one zero-argument function per env, each returning a gymnasium.Env
            (see :func:`sub_env_makers`).
        name: the env's name in messages and, if :func:`~gprl.envs.can_reopen` says it opens
            again, in the spec; a ``python:...`` name gives way to the built env's own name.
        render: env 0 renders frames (its maker must have built it to render).
        sparse_reward: reward 1.0 on steps where the env reports success, else 0.0.
        end_on_success: a step where the env reports success terminates its episode.
        workers: worker processes besides this one (see :func:`worker_count`); the makers must
            then pickle with cloudpickle.
        chunking: execute action chunks, one step per chunk, each env on its own
            (:class:`~gprl.envs.chunked.ChunkExecution`); the spec is then the chunked one and
            steps report the env steps they executed.

    Whether the env reports success (``spec.reports_success``) is learnt when it is built, by
    resetting every env (seed 0) and stepping it once with the zero action: it does if an info
    of that step has "success" or "is_success". Envs must report it on every step, as
    Meta-World, OGBench and Gymnasium-Robotics do; the envs are to be reset before use anyway.
    """

    def __init__(
        self,
        make_sub_envs: Sequence[Callable[[], gym.Env]],
        name: str,
        *,
        render: bool = False,
        sparse_reward: bool = False,
        end_on_success: bool = False,
        workers: int = 0,
        chunking: Chunking | None = None,
    ):
        check_num_envs(len(make_sub_envs))
        prefer_headless_rendering()
        makers = [
            _checked_maker(make, name, sparse_reward, end_on_success, chunking)
            for make in make_sub_envs
        ]
        self._envs, shape = _open_vector_env(makers, name, workers)
        self._chunking = chunking
        if chunking is not None:
            try:
                check_fits(shape.spec, chunking)
            except EnvError:
                self._envs.close()
                raise
            shape = chunked_shape(shape, chunking)
        self.num_envs = len(make_sub_envs)
        self._render = render
        self._flattener = shape.flattener
        self._env_action = ActionMapper(shape.spec.env_id, shape.action_space, self.num_envs)
        self.spec = shape.spec
        try:
            reports_success = self._probe_success()
            check_success_options(self.spec.env_id, reports_success, sparse_reward, end_on_success)
        except EnvError:
            self._envs.close()
            raise
        self.spec = dataclasses.replace(shape.spec, reports_success=reports_success)

    def _probe_success(self) -> bool:
        """Whether the envs report success: see the class docstring."""
        self.reset(0)
        idle = np.zeros(self._env_action.shape, np.float32)
        try:
            *_, infos = self._envs.step(self._env_action(idle))
        except Exception as exc:  # user envs' step raises anything
            raise EnvError(f"cannot step {self.spec.env_id}: {first_line(exc)}") from exc
        return _step_success(infos, self.num_envs) is not None

    def reset(self, seed: int) -> np.ndarray:
        """Start new episodes, env i seeded with seed + i; returns (num_envs, obs_dim) float32."""
        try:
            obs, _ = self._envs.reset(seed=int(seed))
        except Exception as exc:  # user envs' reset raises anything
            raise EnvError(f"cannot reset {self.spec.env_id}: {first_line(exc)}") from exc
        return self._flattener.batch(obs, self.num_envs)

    def restart(self, seed: int, start_state_group: int = 1) -> np.ndarray:
        """Start a new episode in every env: the training loop's restarts. Here the same as
        reset(seed), which is cheap; envpool's pools continue their streams instead. With
        start_state_group G > 1, envs i and j share a seed (and so an initial state) when
        i // G == j // G."""
        if start_state_group == 1:
            return self.reset(seed)
        seeds = [int(seed) + i // start_state_group for i in range(self.num_envs)]
        try:
            obs, _ = self._envs.reset(seed=seeds)
        except Exception as exc:  # user envs' reset raises anything
            raise EnvError(f"cannot reset {self.spec.env_id}: {first_line(exc)}") from exc
        return self._flattener.batch(obs, self.num_envs)

    def get_state(self) -> dict:
        """Nothing beyond the seed of the last restart is needed to replay these envs."""
        return {}

    def set_state(self, state: dict) -> None:
        pass

    def step(self, action: np.ndarray) -> StepResult:
        """Step every env with normalised actions of shape (num_envs, action_dim) in [-1, 1].

        Actions outside [-1, 1] are clipped, then rescaled to the env's true bounds.
        """
        obs, reward, terminated, truncated, infos = self._envs.step(self._env_action(action))
        success = _step_success(infos, self.num_envs) if self.spec.reports_success else None
        flat_obs = self._flattener.batch(obs, self.num_envs)
        final_obs = flat_obs.copy()
        ended = infos.get("_final_obs")
        if ended is not None:
            for index in np.flatnonzero(ended):
                final_obs[index] = self._flattener.single(infos["final_obs"][index])
        executed = {}
        if self._chunking is not None:
            env_steps, discounted = chunk_infos(infos, self.num_envs)
            executed = {"env_steps": env_steps, "discounted_reward": discounted}
        return StepResult(
            obs=flat_obs,
            reward=reward.astype(np.float32),
            terminated=terminated,
            truncated=truncated & ~terminated,
            final_obs=final_obs,
            success=np.zeros(self.num_envs, dtype=bool) if success is None else success,
            **executed,
        )

    def render(self) -> np.ndarray | None:
        """RGB frame (H, W, 3) uint8 of env 0, or None if made without render=True."""
        if not self._render:
            return None
        try:
            return self._envs.envs[0].render()
        except Exception as exc:  # GL backends and missing extras fail with many exception types
            raise EnvError(
                f"cannot render {self.spec.env_id} ({first_line(exc)}); "
                "for MuJoCo tasks on a headless machine set MUJOCO_GL=egl (or osmesa) "
                "before anything imports mujoco"
            ) from exc

    def close(self) -> None:
        self._envs.close()

    def __enter__(self) -> "VecEnv":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VecEnv({self.spec.env_id!r}, num_envs={self.num_envs})"


def _open_vector_env(
    makers: list[Callable[[], gym.Env]], name: str, workers: int
) -> "tuple[gym.vector.SyncVectorEnv | WorkerVectorEnv, TaskShape]":
    """The envs, all in this process (workers=0) or spread over it and worker processes, and the
    shape of env 0, which is always in this process."""
    try:
        envs = WorkerVectorEnv(makers, name, workers) if workers else sync_vector_env(makers)
    except EnvError:
        raise
    except Exception as exc:  # user constructors raise anything
        raise EnvError(f"cannot make {name}: {first_line(exc)}") from exc
    try:
        return envs, gymnasium_task_shape(_task_env(envs.envs[0]), name)
    except EnvError:
        envs.close()
        raise


def worker_count(resolved: ResolvedEnv, num_envs: int, env_workers: int | None) -> int:
    """Worker processes for a :class:`VecEnv` of num_envs envs of resolved, besides this process,
    which steps a block of the envs too: env_workers (at most num_envs - 1; 0 keeps every env
    here) or, if None, enough for one process per CPU core on Meta-World and OGBench tasks and
    none for other envs. On 2 cores (benchmarks/env_workers.py) one worker stepped Meta-World
    1.25-1.8x as fast as this process alone at 2-16 envs; Hopper-v5 gained only from 4 envs up,
    and runs on envpool anyway; gprl's diagnostic tasks step in microseconds, far less than a
    pipe's round trip. On a machine busy with other processes, workers lose (each step waits for
    every block): pass 0 there, and when several runs share the cores."""
    if env_workers is None:
        slow = is_ogbench_id(resolved.source) or (
            isinstance(resolved.source, str) and is_metaworld_id(resolved.source)
        )
        cores = _usable_cores()
        return min(cores, num_envs) - 1 if slow else 0
    if env_workers < 0:
        raise EnvError(f"env_workers must be 0 (no workers) or more, got {env_workers}")
    if env_workers and isinstance(resolved.source, gym.Env):
        raise EnvError(
            f"{resolved.name} is a gymnasium.Env instance, which cannot be sent to worker "
            "processes; pass a function returning a new env, or use env_workers=0"
        )
    return min(env_workers, num_envs - 1)


def _usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):  # the cores this process may run on (Linux)
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def sub_env_makers(
    resolved: ResolvedEnv, num_envs: int, *, render: bool = False
) -> list[Callable[[], gym.Env]]:
    """One maker per env for a :class:`VecEnv` of a Gymnasium source: ``gym.make`` for an id
    (:func:`~gprl.envs.metaworld.make_metaworld_env` for a Meta-World one,
    :func:`~gprl.envs.ogbench.make_ogbench_env` for an OGBench one; env 0 made to render if
    asked), the factory itself, or the instance followed by deep copies of it."""
    source = resolved.source
    if isinstance(source, str) and (is_metaworld_id(source) or is_ogbench_id(source)):
        make = make_metaworld_env if is_metaworld_id(source) else make_ogbench_env
        # Only env 0 is ever rendered; renderers for the others would waste GL contexts.
        return [
            functools.partial(make, source, render=render and index == 0)
            for index in range(num_envs)
        ]
    if isinstance(source, str):
        env_id = registered_env_id(source)

        def make_by_id(index: int) -> Callable[[], gym.Env]:
            # Only env 0 is ever rendered; renderers for the others would waste GL contexts.
            # render_mode is passed only when rendering: some envs' constructors do not take it.
            kwargs = {"render_mode": "rgb_array"} if render and index == 0 else {}
            return lambda: gym.make(env_id, **kwargs)

        return [make_by_id(index) for index in range(num_envs)]
    if isinstance(source, gym.Env):
        return [lambda: source] + [InstanceCopies(source, resolved.name)] * (num_envs - 1)
    return [source] * num_envs


def gymnasium_task_shape(env: gym.Env, name: str) -> TaskShape:
    """The shape of a single Gymnasium env, named as the spec will name it: ``name`` if it opens
    again, else the env's own name (its registered id, or ``python:<module>.<class>``)."""
    spec_name = name if can_reopen(name) else gymnasium_env_name(env)
    return TaskShape(
        spec_name, env.observation_space, env.action_space, gymnasium_max_episode_steps(env)
    )


def instance_reports_success(env: gym.Env) -> bool:
    """Whether a single env reports success, learnt as :class:`VecEnv` does: reset with seed 0,
    then one step with the middle of its (Box) action space."""
    space = env.action_space
    try:
        env.reset(seed=0)
        *_, info = env.step(((space.low + space.high) / 2).astype(space.dtype))
    except Exception as exc:  # user envs raise anything
        raise EnvError(f"cannot reset and step {env}: {first_line(exc)}") from exc
    return reported_success(info) is not None


def gymnasium_max_episode_steps(env: gym.Env) -> int | None:
    """The env's time limit: from its spec, a TimeLimit wrapper or dm_control; None if none."""
    if env.spec is not None and env.spec.max_episode_steps is not None:
        return env.spec.max_episode_steps
    wrapper = env
    while isinstance(wrapper, gym.Wrapper):
        if isinstance(wrapper, gym.wrappers.TimeLimit):
            # TimeLimit keeps its limit only under this name; an env built without gym.make has
            # no spec to read it from.
            return wrapper._max_episode_steps
        wrapper = wrapper.env
    # DeepMind Control tasks enforce their time limit inside dm_control (shimmy reports it as
    # truncation), so it is missing from the Gymnasium spec.
    step_limit = getattr(getattr(env.unwrapped, "_env", None), "_step_limit", None)
    if isinstance(step_limit, float | int) and math.isfinite(step_limit):
        return round(step_limit)
    return None


def registered_env_id(env_id: str) -> str:
    """The id to give gym.make, after importing whatever registers it; EnvError if unknown."""
    env_id = canonical_env_id(env_id)
    # Gymnasium's "module:EnvId-v0" form: importing the module registers EnvId-v0. The full
    # form is kept, so that the spec's env_id works in a fresh process too.
    module, _, registered_id = env_id.rpartition(":")
    if module:
        try:
            importlib.import_module(module)
        except Exception as exc:  # a module can fail to import with any exception
            raise EnvError(
                f"cannot import module {module!r} for {env_id}: {first_line(exc)}"
            ) from exc
    if registered_id.startswith(DMC_PREFIX) or registered_id not in gym.registry:
        # shimmy registers the dm_control/* ids on import; it is slow to import, so only do it
        # when a DeepMind Control task is asked for or an unknown id needs close matches.
        try:
            importlib.import_module("shimmy")
        except ImportError as exc:
            if registered_id.startswith(DMC_PREFIX):
                raise EnvError(f"{env_id} needs shimmy: pip install 'shimmy[dm-control]'") from exc
    if registered_id not in gym.registry:
        matches = difflib.get_close_matches(registered_id, list(gym.registry), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(map(repr, matches))}?" if matches else ""
        raise EnvError(f"unknown environment id {registered_id!r}{hint}")
    return env_id


def _task_env(env: gym.Env) -> gym.Env:
    """The user's env inside gprl's wrappers, which would hide its spec."""
    if isinstance(env, ChunkExecution):
        env = env.env
    return env.env


def _checked_maker(
    make: Callable[[], gym.Env],
    name: str,
    sparse_reward: bool,
    end_on_success: bool,
    chunking: Chunking | None,
) -> Callable[[], gym.Env]:
    def make_checked() -> gym.Env:
        env = make()
        if not isinstance(env, gym.Env):
            raise EnvError(f"{name} must return a gymnasium.Env, not {type(env).__name__}")
        env = _SuccessInfo(env, sparse_reward=sparse_reward, end_on_success=end_on_success)
        return env if chunking is None else ChunkExecution(env, chunking)

    return make_checked
