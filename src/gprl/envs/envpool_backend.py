"""Host vector envs on envpool: the :class:`~gprl.envs.vector.VecEnv` contract, stepped in C++.

envpool batches MuJoCo tasks in C++ threads, 2-3x faster than Gymnasium's ``SyncVectorEnv`` at
16 envs on 2 cores. :class:`EnvpoolVecEnv` gives its Gymnasium MuJoCo and DeepMind Control tasks
the semantics of the Gymnasium path, which envpool 1.2.5 does not have on its own:

- DeepMind Control observations hold the keys dm_control (and so shimmy) exposes, flattened in
  the same sorted order; envpool adds zero-filled keys of sibling tasks (finger-spin gets
  finger-turn's ``target_position`` and ``dist_to_target``), which are dropped.
- Same-step autoreset: envpool resets an env on the step *after* it ended, ignoring that step's
  action; here ended envs are reset at once, so ``obs`` already starts the next episode.
- Terminated vs truncated: envpool flags every episode end at its time limit as truncated, even a
  fall on that very step (its discount is 0 at the limit too, so it cannot tell them apart). The
  pool runs one step past the limit and the time limit is enforced here, so a fall on the last
  step is a termination, as on the Gymnasium path.
- Seeds are fixed when a pool is built, so ``reset(seed)`` builds a new pool (about 40 ms per
  DeepMind Control env). The training loop restarts envs far more often (at every checkpoint and
  evaluation), so ``restart(seed)`` resets the pool in place instead: each env goes on with its
  own seeded stream of episodes, and ``get_state`` / ``set_state`` (the seed and each env's
  episode count) put a rebuilt pool back exactly where the old one was.

envpool cannot render through this class: :func:`gprl.envs.make_env` renders with Gymnasium.
"""

import functools
import math
import os
from typing import Any

import numpy as np
from gymnasium import spaces

from gprl.envs.common import (
    DMC_PREFIX,
    ActionMapper,
    EnvError,
    TaskShape,
    canonical_env_id,
    check_num_envs,
    first_line,
    prefer_headless_rendering,
)
from gprl.types import StepResult

GROUPED_RESTARTS_UNSUPPORTED = (
    "envpool cannot restart several envs from one initial state (its seeds are fixed when the "
    "pool is built); use --env-backend gymnasium"
)
GYMNASIUM_MUJOCO_TASKS = frozenset(
    {
        "Ant",
        "HalfCheetah",
        "Hopper",
        "Humanoid",
        "HumanoidStandup",
        "InvertedDoublePendulum",
        "InvertedPendulum",
        "Pusher",
        "Reacher",
        "Swimmer",
        "Walker2d",
    }
)
# envpool also has v2/v3, but Gymnasium only builds those with the retired mujoco-py bindings.
GYMNASIUM_MUJOCO_VERSIONS = frozenset({"v4", "v5"})
DMC_VERSION_SUFFIX = "-v0"


def envpool_task_id(env_id: str) -> str | None:
    """envpool's id for a task of the Gymnasium path, or None if envpool has no counterpart.

    ``dm_control/finger-turn_hard-v0`` (or ``dmc:finger-turn_hard``) maps to
    ``FingerTurnHard-v1``; Gymnasium MuJoCo ids such as ``Hopper-v5`` keep their name. Whether the
    installed envpool has the task is checked by :func:`envpool_unavailable_reason`.
    """
    env_id = canonical_env_id(env_id)
    if env_id.startswith(DMC_PREFIX) and env_id.endswith(DMC_VERSION_SUFFIX):
        domain, _, task = env_id[len(DMC_PREFIX) : -len(DMC_VERSION_SUFFIX)].partition("-")
        return f"{_camel_case(domain)}{_camel_case(task)}-v1" if task else None
    name, _, version = env_id.rpartition("-")
    if name in GYMNASIUM_MUJOCO_TASKS and version in GYMNASIUM_MUJOCO_VERSIONS:
        return env_id
    return None


# envpool bundles its own MuJoCo (3.6.0 in 1.2.5) and its own ports of the DM Control tasks.
# Measured against dm_control (16 envs, 1000 random steps, seed 0, mean return +- s.e.):
# cheetah-run 3.4 +- 0.4 vs 3.7 +- 0.4 and walker-walk 33.4 +- 1.5 vs 32.6 +- 1.2 agree, and
# hopper-stand replays dm_control's states exactly; fish-swim 83.9 +- 8.2 vs 43.5 +- 7.5 and
# finger-turn_hard 38.7 +- 21.9 vs 4.4 +- 4.3 do not, and finger-spin paid no reward in 32k random
# steps on envpool against 27 rewarded steps on dm_control (PPO seed 0 then never learned).
# backend="auto" therefore uses envpool only for the domains that agree.
AUTO_DMC_DOMAINS = frozenset({"cheetah", "hopper", "walker"})


def envpool_port_checked(env_id: str) -> bool:
    """Whether envpool's port of env_id may stand in for it under backend="auto": Gymnasium
    MuJoCo tasks and the DM Control domains checked against dm_control (see AUTO_DMC_DOMAINS)."""
    env_id = canonical_env_id(env_id)
    if env_id.startswith(DMC_PREFIX):
        return env_id[len(DMC_PREFIX) :].partition("-")[0] in AUTO_DMC_DOMAINS
    return True


def envpool_unavailable_reason(env_id: str, task_id: str | None) -> str | None:
    """Why env_id, whose envpool id is task_id (see :func:`envpool_task_id`), cannot run on
    envpool here (a one-line message), or None if it can."""
    if task_id is None:
        return (
            f"envpool has no counterpart of {env_id!r} (it runs Gymnasium MuJoCo v4/v5 and "
            "DeepMind Control tasks); use backend='gymnasium' or 'auto'"
        )
    try:
        available = _envpool_task_ids()
    except ImportError as exc:
        return f"{env_id} needs envpool for backend='envpool' ({exc}): pip install envpool"
    if task_id not in available:
        return f"envpool has no task {task_id!r} for {env_id!r}; use backend='gymnasium' or 'auto'"
    return None


class EnvpoolVecEnv:
    """``num_envs`` copies of one task in an envpool pool, taking actions in [-1, 1].

    Same interface and semantics as :class:`~gprl.envs.vector.VecEnv`; build it with
    :func:`gprl.envs.make_env` (``backend="envpool"``, or ``"auto"`` where envpool has the task),
    which checks that envpool has ``task_id``. Building costs nothing: the pool itself is built
    by ``reset(seed)``, since envpool fixes seeds at construction. Runs
    ``min(num_envs, os.cpu_count())`` worker threads.
    """

    def __init__(self, env_id: str, task_id: str, num_envs: int = 1):
        check_num_envs(num_envs)
        import envpool

        env_id = canonical_env_id(env_id)
        self._task_id = task_id
        envpool_spec = envpool.make_spec(task_id)
        observation_space = envpool_spec.gymnasium_observation_space
        if env_id.startswith(DMC_PREFIX):
            observation_space = _dm_control_observation_space(env_id, observation_space)
        self._max_episode_steps = int(envpool_spec.config.max_episode_steps)
        shape = TaskShape(
            env_id, observation_space, envpool_spec.gymnasium_action_space, self._max_episode_steps
        )
        self._flattener = shape.flattener
        self._pool: Any = None
        self._seed: int | None = None
        self._episodes = np.zeros(num_envs, np.int64)
        """Episodes each env has started since the pool was built: its place in its stream."""

        self.num_envs = num_envs
        self._num_threads = min(num_envs, os.cpu_count() or 1)
        self._env_action = ActionMapper(env_id, shape.action_space, num_envs)
        self.spec = shape.spec

    def reset(self, seed: int) -> np.ndarray:
        """Start new episodes, env i seeded with seed + i; returns (num_envs, obs_dim) float32.

        Builds a new pool, since envpool seeds only at construction: about 40 ms per DeepMind
        Control env (more on a process's first build) and 1 ms per Gymnasium MuJoCo env.
        """
        import envpool

        self.close()
        try:
            self._pool = envpool.make_gymnasium(
                self._task_id,
                num_envs=self.num_envs,
                seed=int(seed),
                num_threads=self._num_threads,
                # One step past the limit, so that envpool never ends an episode at the limit
                # itself and terminations on that step stay terminations; step() truncates.
                max_episode_steps=self._max_episode_steps + 1,
            )
            obs, _ = self._pool.reset()
        except Exception as exc:  # envpool raises RuntimeError, ValueError, ... from C++
            raise EnvError(f"envpool cannot build {self.spec.env_id}: {first_line(exc)}") from exc
        self._seed = int(seed)
        self._episodes[:] = 1
        return self._flattener.batch(obs, self.num_envs)

    def restart(self, seed: int, start_state_group: int = 1) -> np.ndarray:
        """Start a new episode in every env: the first call builds the pool with ``seed``, later
        ones reset it in place and ignore ``seed`` (see the module docstring)."""
        if start_state_group != 1:
            raise EnvError(GROUPED_RESTARTS_UNSUPPORTED)
        if self._pool is None:
            return self.reset(seed)
        return self._reset_envs(np.arange(self.num_envs))

    def get_state(self) -> dict:
        """The pool's seed and each env's episode count (JSON-friendly)."""
        return {"seed": self._seed, "episodes": self._episodes.tolist()}

    def set_state(self, state: dict) -> None:
        """Put the pool where get_state found it: rebuilt with its seed if needed, then each env
        fast-forwarded by resets to its next episode."""
        if not state:
            return
        episodes = np.asarray(state["episodes"], np.int64)
        if episodes.shape != self._episodes.shape:
            raise EnvError(
                f"saved envpool state has {episodes.size} envs, this {self.spec.env_id} pool "
                f"{self.num_envs}"
            )
        if self._pool is None or self._seed != state["seed"] or (self._episodes > episodes).any():
            self.reset(state["seed"])
        while (behind := self._episodes < episodes).any():
            self._reset_envs(np.flatnonzero(behind))

    def _reset_envs(self, env_ids: np.ndarray) -> np.ndarray:
        """Reset the given envs; returns their first observations in env_ids order."""
        reset_obs, info = self._pool.reset(env_ids.astype(np.int32))
        self._episodes[info["env_id"]] += 1
        flat = np.empty((self.num_envs, self.spec.obs_dim), np.float32)
        flat[info["env_id"]] = self._flattener.batch(reset_obs, len(env_ids))
        return flat[env_ids]

    def step(self, action: np.ndarray) -> StepResult:
        """Step every env with normalised actions of shape (num_envs, action_dim) in [-1, 1].

        Actions outside [-1, 1] are clipped, then rescaled to the env's true bounds.
        """
        if self._pool is None:
            raise EnvError(f"call reset(seed) before step() on {self.spec.env_id}")
        obs, reward, terminated, _, info = self._pool.step(self._env_action(action))
        flat_obs = self._flattener.batch(obs, self.num_envs)
        final_obs = flat_obs.copy()
        truncated = (info["elapsed_step"] >= self._max_episode_steps) & ~terminated
        ended = terminated | truncated
        if ended.any():
            ended_ids = np.flatnonzero(ended)
            flat_obs[ended_ids] = self._reset_envs(ended_ids)
        return StepResult(
            obs=flat_obs,
            reward=reward.astype(np.float32, copy=False),
            terminated=terminated,
            truncated=truncated,
            final_obs=final_obs,
            success=np.zeros(self.num_envs, dtype=bool),  # no envpool task reports success
        )

    def render(self) -> None:
        """Always None: envpool cannot render here, so make_env renders through Gymnasium."""
        return None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __enter__(self) -> "EnvpoolVecEnv":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EnvpoolVecEnv({self.spec.env_id!r}, num_envs={self.num_envs})"


def _camel_case(snake_case: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in snake_case.split("_"))


@functools.cache
def _envpool_task_ids() -> frozenset[str]:
    import envpool  # about 1 s to import, so only when an envpool task is asked for

    return frozenset(envpool.list_all_envs())


@functools.cache
def _dm_control_observation_shapes(domain: str, task: str) -> dict[str, tuple[int, ...]]:
    """The task's observations as dm_control, and so shimmy and the Gymnasium path, has them."""
    prefer_headless_rendering()
    from dm_control import suite

    return {key: spec.shape for key, spec in suite.load(domain, task).observation_spec().items()}


def _dm_control_observation_space(env_id: str, envpool_space: spaces.Space) -> spaces.Dict:
    """envpool's observation space cut down to the keys dm_control has for this task."""
    domain, _, task = env_id[len(DMC_PREFIX) : -len(DMC_VERSION_SUFFIX)].partition("-")
    expected = _dm_control_observation_shapes(domain, task)
    envpool_shapes = {key: space.shape for key, space in envpool_space.spaces.items()}
    mismatched = {
        key: (shape, envpool_shapes.get(key))
        for key, shape in expected.items()
        if math.prod(shape) != math.prod(envpool_shapes.get(key, (-1,)))
    }
    if mismatched:
        raise EnvError(
            f"envpool's observations for {env_id} differ from dm_control's "
            f"(key: (dm_control shape, envpool shape)) {mismatched}; use backend='gymnasium'"
        )
    return spaces.Dict({key: envpool_space.spaces[key] for key in expected})
