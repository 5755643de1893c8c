"""Meta-World manipulation tasks as gprl envs, ids ``metaworld:<task>`` (``metaworld:reach-v3``).

Episodes follow Meta-World's MT1 protocol: each episode places the object and goal as one of the
task's 50 MT1 train tasks, drawn at random, with the goal in the observation (39-D), 4-D actions
in [-1, 1], 500-step episodes that never end on success, and ``info["success"]`` (0.0 or 1.0).

Seeding follows every gprl env: ``reset(seed=s)`` starts the placement draws over from s, so env
i of a vector env reset with seed s sees the same episodes every time. Meta-World's own
``gym.make("Meta-World/MT1", ...)`` ignores reset seeds (its envs are seeded once when built,
and its task is drawn before the seed could apply), hence this builder. The 50 placements are
MT1's train tasks for one fixed benchmark seed, so every run, training and evaluation alike,
draws from the same 50, as a benchmark's task set should be.
"""

import difflib
import functools
from typing import Any

import gymnasium as gym
import numpy as np

from gprl.envs.common import EnvError

METAWORLD_PREFIX = "metaworld:"
TASK_SET_SEED = 0
"""The MT1 benchmark seed the 50 placements of each task are drawn with."""


def is_metaworld_id(env_id: str) -> bool:
    return env_id.startswith(METAWORLD_PREFIX)


def metaworld_task_name(env_id: str) -> str:
    """The Meta-World task an id names; EnvError with close matches for an unknown task."""
    task = env_id[len(METAWORLD_PREFIX) :]
    names = _task_names()
    if task not in names:
        matches = difflib.get_close_matches(task, names, n=3, cutoff=0.6)
        hint = (
            f"; did you mean {', '.join(repr(METAWORLD_PREFIX + name) for name in matches)}?"
            if matches
            else f"; Meta-World's tasks are {', '.join(names[:3])}, ... ({len(names)} in all)"
        )
        raise EnvError(f"unknown Meta-World task {task!r}{hint}")
    return task


def make_metaworld_env(env_id: str, *, render: bool = False) -> gym.Env:
    """One env of the task, ready to reset; renders ``rgb_array`` frames if render."""
    task = metaworld_task_name(env_id)
    _adapt_mocap_welds_to_mujoco()
    placements = _train_placements(task)
    env_class = _env_classes()[task]
    env = env_class(render_mode="rgb_array" if render else None)
    env = gym.wrappers.TimeLimit(env, env.max_path_length)
    return MT1Episodes(env, placements)


class MT1Episodes(gym.Wrapper):
    """A Meta-World env whose every episode starts from one of the task's MT1 placements, drawn
    with a generator that ``reset(seed=...)`` reseeds."""

    def __init__(self, env: gym.Env, placements: tuple[Any, ...]):
        super().__init__(env)
        self._placements = placements
        self._draws = np.random.default_rng()
        self.unwrapped.set_task(placements[0])
        # The env's space was built before set_task made the goal observable, so it still
        # bounds the goal's three entries to zero.
        self.observation_space = self.unwrapped.sawyer_observation_space

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._draws = np.random.default_rng(seed)
        placement = self._placements[self._draws.integers(len(self._placements))]
        self.unwrapped.set_task(placement)
        return self.env.reset(options=options)


@functools.cache
def _task_names() -> list[str]:
    return list(_env_classes())


def _env_classes() -> dict[str, type]:
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    return ALL_V3_ENVIRONMENTS


@functools.cache
def _train_placements(task: str) -> tuple[Any, ...]:
    """The task's 50 MT1 train tasks (object and goal placements); about 0.5 s, once a process."""
    import metaworld

    return tuple(metaworld.MT1(task, seed=TASK_SET_SEED).train_tasks)


@functools.cache
def _adapt_mocap_welds_to_mujoco() -> None:
    """Make metaworld 3.0.0 build under mujoco >= 3.17, once, before any env is built.

    Meta-World resets its mocap weld constraints by writing 11 values into each weld's row of
    ``model.eq_data``; mujoco 3.17 widened those rows to 12, so every env fails to build
    (broadcast error). Writing the same 11 values into the first 11 columns is what older mujoco
    did, and leaves the new column at mujoco's default.
    """
    import mujoco
    from metaworld.sawyer_xyz_env import SawyerMocapBase

    weld_data = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 5.0])

    def reset_mocap_welds(self) -> None:
        if self.model.nmocap > 0 and self.model.eq_data is not None:
            for index in range(self.model.eq_data.shape[0]):
                if self.model.eq_type[index] == mujoco.mjtEq.mjEQ_WELD:
                    self.model.eq_data[index, : weld_data.size] = weld_data

    SawyerMocapBase.reset_mocap_welds = reset_mocap_welds
