"""OGBench single-task envs as gprl envs, ids ``ogbench:<dataset>`` named as OGBench names its
single-task datasets (``ogbench:cube-single-play-singletask-task2-v0``), and the collection of
such datasets with OGBench's own oracles.

The env of an id is OGBench's, built offline as ``ogbench.make_env_and_datasets(name,
env_only=True)`` builds it (the dataset type in the name, ``play`` or ``noisy``, does not change
the env): each episode starts from the task's fixed initial state (slightly perturbed, from the
reset seed), the time limit is OGBench's (200 steps on cube-single, 500 on cube-double, 750 on
scene, ...), ``info["success"]`` says whether the state the step started from solves the task,
and that step ends the episode (OGBench's single tasks end on success). The reward is OGBench's:
satisfied sub-goals minus all sub-goals (0 on success), of the current state since ogbench 1.2.

Collection (``gprl collect --env ogbench:... --policy oracle``) reproduces OGBench's generator,
``data_gen_scripts/generate_manipspace.py``, for the id's dataset type: the env in its
data-collection mode (random scenes and targets, never ending before the episode length), driven
by the plan oracles with temporally smoothed noise (``play``) or by the Markov oracles with
Gaussian noise of a per-episode scale and random actions (``noisy``), a new target each time the
oracle finishes one. Each step's reward and success are relabelled for the id's single task by
OGBench's own relabelling, on the state the step started from, as OGBench's single-task datasets
are. Unlike the generator, scene episodes that push the cube out of view are kept (OGBench
retries them; they are rare).
"""

import contextlib
import difflib
import functools
import re
from typing import Any

import gymnasium as gym
import numpy as np

from gprl.envs.common import EnvError, prefer_headless_rendering

OGBENCH_PREFIX = "ogbench:"
MANIPULATION_DATASET_TYPES = ("play", "noisy")
ORACLE_EPISODE_STEPS = 1001
"""Steps of each episode of OGBench's manipulation datasets."""
ORACLE_NOISE = 0.1
"""Plan-oracle noise, and the largest per-episode Markov-oracle noise scale, of OGBench's data."""
PLAN_NOISE_SMOOTHING = 0.5
MARKOV_MIN_NORM = 0.4
MARKOV_NOISE_WEIGHTS = np.array([1.0, 1.0, 1.0, 3.0, 10.0])
"""Per action dimension (x, y, z, yaw, gripper) multiples of an episode's Markov noise scale."""
TASK_ID = re.compile(r"\btask\d+\b")


def is_ogbench_id(env_id: Any) -> bool:
    return isinstance(env_id, str) and env_id.startswith(OGBENCH_PREFIX)


def ogbench_env_name(env_id: str) -> str:
    """The Gymnasium id of the single-task env an ogbench: id names; EnvError in one line with
    close matches for an unknown name, and for a name whose env only a downloaded dataset serves
    (OGBench's goal-conditioned datasets)."""
    name = env_id[len(OGBENCH_PREFIX) :]
    ids = _single_task_ids()
    if name in ids:
        return ids[name]
    tasks = sorted(
        other for other in ids if TASK_ID.search(other) and _goal_conditioned(other) == name
    )
    if "singletask" not in name.split("-") and tasks:
        raise EnvError(
            f"{env_id} is an OGBench goal-conditioned dataset (its goals come with the downloaded "
            f"data); gprl runs its single-task envs offline: {OGBENCH_PREFIX}{tasks[0]} to "
            f"{tasks[-1]}"
        )
    matches = difflib.get_close_matches(name, list(ids), n=3, cutoff=0.75)
    hint = (
        f"did you mean {', '.join(repr(OGBENCH_PREFIX + match) for match in matches)}?"
        if matches
        else "names look like 'ogbench:cube-single-play-singletask-task2-v0'"
    )
    raise EnvError(f"unknown OGBench single-task env {name!r}; {hint}")


def _goal_conditioned(name: str) -> str:
    """A single-task name (or id) without its words singletask and taskN: the goal-conditioned
    dataset it relabels (the env OGBench collects it in)."""
    words = name.split("-")
    return "-".join(w for w in words if w != "singletask" and not TASK_ID.fullmatch(w))


def make_ogbench_env(env_id: str, *, render: bool = False) -> gym.Env:
    """The single-task env of an ogbench: id, ready to reset; renders rgb_array frames if render."""
    ogbench_env_name(env_id)  # before ogbench is imported: it chooses the GL backend
    import ogbench

    name = env_id[len(OGBENCH_PREFIX) :]
    if not render:
        return ogbench.make_env_and_datasets(name, env_only=True)
    return RendererClosing(
        ogbench.make_env_and_datasets(name, env_only=True, render_mode="rgb_array")
    )


class RendererClosing(gym.Wrapper):
    """Frees OGBench's renderer on close: OGBench never does, and a renderer left to the end of
    the process fails to free its GL context there (EGL errors printed at exit)."""

    def close(self) -> None:
        renderer = getattr(self.env.unwrapped, "_renderer", None)
        if renderer is not None:
            renderer.close()
            self.env.unwrapped._renderer = None
        super().close()


@functools.cache
def _single_task_ids() -> dict[str, str]:
    """Every single-task dataset name OGBench's envs are made from, mapped to its env's
    Gymnasium id: the env's id with each dataset type of its domain inserted before
    ``singletask`` (cube-single-singletask-task2-v0 -> cube-single-play-singletask-task2-v0)."""
    # OGBench's envs make a renderer when built: MuJoCo's default GL (GLFW) warns without a
    # display.
    prefer_headless_rendering()
    import ogbench  # noqa: F401  (registers OGBench's envs with Gymnasium)

    names = {}
    for gym_id in gym.registry:
        words = gym_id.split("-")
        if "singletask" not in words or not gym.registry[gym_id].entry_point.startswith("ogbench."):
            continue
        position = words.index("singletask")
        for dataset_type in _dataset_types(gym_id):
            names["-".join([*words[:position], dataset_type, *words[position:]])] = gym_id
    return names


def _dataset_types(gym_id: str) -> tuple[str, ...]:
    """The dataset types OGBench publishes for an env's domain."""
    if "maze" in gym_id or "soccer" in gym_id:
        return ("navigate", "stitch", "explore") if "antmaze" in gym_id else ("navigate", "stitch")
    return MANIPULATION_DATASET_TYPES


# Collection with OGBench's oracles: `gprl collect --env ogbench:... --policy oracle`.

ORACLE_ACTION_KEY = "oracle_action"
"""Where a collection env's infos carry the oracle's next action (noise included)."""
RANDOM_ACTION_PROBABILITY = {"play": 0.0, "noisy": 0.1, "noisy-puzzle": 0.2}
"""Share of uniformly random actions in OGBench's datasets, by dataset type (puzzle's own)."""
STACK_PROBABILITY_RANGE = {
    "single": (0.0, 0.0),
    "double": (0.0, 0.25),
    "triple": (0.05, 0.35),
    "quadruple": (0.1, 0.5),
    "octuple": (0.0, 0.35),
}
"""Per cube count, the range each episode's chance of stacking a new target is drawn from
(other domains stack with chance 0.5)."""


def oracle_collection(env_id: str, episode_steps: int | None = None) -> tuple[Any, str, str]:
    """What `gprl collect --policy oracle` records with: a maker of the collection envs of
    env_id (:func:`make_oracle_collection_env`), to be stepped with their infos; the Python
    policy that takes their oracles' actions; and what the collection is. EnvError in one line,
    before an env is built, for an id gprl cannot collect."""
    steps = ORACLE_EPISODE_STEPS if episode_steps is None else episode_steps
    dataset_type = _check_collectable(env_id, steps)
    make = functools.partial(make_oracle_collection_env, env_id, steps)
    source = f"OGBench {dataset_type} oracles ({steps}-step episodes)"
    return make, f"{__name__}:{oracle_actions.__name__}", source


def make_oracle_collection_env(env_id: str, episode_steps: int = ORACLE_EPISODE_STEPS) -> gym.Env:
    """The data-collection env OGBench makes the dataset of an ogbench: manipulation id in,
    episodes of episode_steps steps, driven as :class:`OracleProtocol` says."""
    dataset_type = _check_collectable(env_id, episode_steps)
    gym_id = ogbench_env_name(env_id)
    env = gym.make(
        _goal_conditioned(gym_id),
        terminate_at_goal=False,
        mode="data_collection",
        max_episode_steps=episode_steps,
    )
    return OracleProtocol(env, gym_id, dataset_type)


def _check_collectable(env_id: str, episode_steps: int) -> str:
    """The dataset type of an id gprl collects with OGBench's oracles; EnvError in one line for
    an unknown id, a locomotion one (its datasets are not made with these oracles) or an
    episode length under 1."""
    ogbench_env_name(env_id)
    dataset_type = dataset_type_of(env_id)
    if dataset_type not in MANIPULATION_DATASET_TYPES:
        raise EnvError(
            "gprl collects OGBench's manipulation datasets (cube, scene, puzzle; play or noisy) "
            f"with its oracles; {env_id} is a locomotion env"
        )
    if episode_steps < 1:
        raise EnvError(f"episodes must last at least 1 step, got {episode_steps}")
    return dataset_type


def dataset_type_of(env_id: str) -> str:
    """The dataset type an ogbench: id names (play, noisy, navigate, ...)."""
    words = env_id[len(OGBENCH_PREFIX) :].split("-")
    return words[words.index("singletask") - 1]


def oracle_actions(obs: np.ndarray, info: list[dict]) -> np.ndarray:
    """The oracle's actions that a collection env's infos carry (``--policy oracle``)."""
    if any(ORACLE_ACTION_KEY not in env_info for env_info in info):
        raise EnvError("no oracle actions in the env's infos; collect with --policy oracle")
    return np.stack([env_info[ORACLE_ACTION_KEY] for env_info in info])


class OracleProtocol(gym.Wrapper):
    """A manipulation env in data-collection mode, run as OGBench's generator runs it.

    Each info carries the action the oracle takes next (``info["oracle_action"]``, noise and
    random actions included); when the oracle finishes a target, the env gets a new one. Each
    step's reward and ``info["success"]`` are the single task's, relabelled by OGBench on the
    state the step started from. ``reset(seed=s)`` reseeds the env, the episode draws and the
    oracles' own draws (which OGBench takes from NumPy's global generator, swapped in here).
    """

    def __init__(self, env: gym.Env, gym_id: str, dataset_type: str):
        super().__init__(env)
        self._oracles = _oracles(env, dataset_type, gym_id)
        self._markov = dataset_type == "noisy"
        puzzle_noisy = self._markov and "puzzle" in gym_id
        self._random_action_probability = RANDOM_ACTION_PROBABILITY[
            "noisy-puzzle" if puzzle_noisy else dataset_type
        ]
        cubes = next((w for w in gym_id.split("-") if w in STACK_PROBABILITY_RANGE), None)
        self._stack_range = STACK_PROBABILITY_RANGE.get(cubes, (0.5, 0.5))
        self._relabel = _task_relabeller(gym_id)
        self._draws = np.random.default_rng()
        self._oracle_numpy = np.random.RandomState()
        self._oracle = None
        self._stack_probability = self._noise_scale = 0.0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._draws = np.random.default_rng(seed)
            self._oracle_numpy = np.random.RandomState(seed)
        obs, info = self.env.reset(seed=seed, options=options)
        self._stack_probability = self._draws.uniform(*self._stack_range)
        self._noise_scale = self._draws.uniform(0, ORACLE_NOISE) if self._markov else 0.0
        self._start_oracle(obs, info)
        return obs, {**info, ORACLE_ACTION_KEY: self._next_action(obs, info)}

    def step(self, action):
        obs, _, terminated, truncated, info = self.env.step(action)
        reward, success = self._relabel(info)
        if self._oracle.done:
            unwrapped = self.env.unwrapped
            target_obs, target_info = unwrapped.set_new_target(p_stack=self._stack_probability)
            self._start_oracle(target_obs, target_info)
        # As in OGBench's generator, the first action towards a new target still sees the
        # step's info.
        info = {**info, "success": success, ORACLE_ACTION_KEY: self._next_action(obs, info)}
        return obs, reward, terminated, truncated, info

    def _start_oracle(self, obs, info) -> None:
        self._oracle = self._oracles[info["privileged/target_task"]]
        with self._oracle_draws():
            self._oracle.reset(obs, info)

    def _next_action(self, obs, info) -> np.ndarray:
        if self._draws.random() < self._random_action_probability:
            return self._draws.uniform(-1.0, 1.0, MARKOV_NOISE_WEIGHTS.size)
        with self._oracle_draws():
            action = np.asarray(self._oracle.select_action(obs, info), np.float64)
        if self._markov:
            action = action + self._draws.normal(0.0, self._noise_scale * MARKOV_NOISE_WEIGHTS)
        return np.clip(action, -1.0, 1.0)

    @contextlib.contextmanager
    def _oracle_draws(self):
        """NumPy's global generator replaced by this env's oracle generator while inside."""
        outside = np.random.get_state()
        np.random.set_state(self._oracle_numpy.get_state())
        try:
            yield
        finally:
            self._oracle_numpy.set_state(np.random.get_state())
            np.random.set_state(outside)


def _oracles(env: gym.Env, dataset_type: str, gym_id: str) -> dict[str, Any]:
    """OGBench's oracles for the env, by the target kind they serve, configured as in its
    datasets: plan oracles for play, Markov oracles for noisy."""
    from ogbench.manipspace.oracles.markov import (
        button_markov,
        cube_markov,
        drawer_markov,
        window_markov,
    )
    from ogbench.manipspace.oracles.plan import button_plan, cube_plan, drawer_plan, window_plan

    if dataset_type == "play":
        common = dict(env=env, noise=ORACLE_NOISE, noise_smoothing=PLAN_NOISE_SMOOTHING)
        cube, button = cube_plan.CubePlanOracle, button_plan.ButtonPlanOracle
        drawer, window = drawer_plan.DrawerPlanOracle, window_plan.WindowPlanOracle
        scene_cube = {}
    else:
        common = dict(env=env, min_norm=MARKOV_MIN_NORM)
        cube, button = cube_markov.CubeMarkovOracle, button_markov.ButtonMarkovOracle
        drawer, window = drawer_markov.DrawerMarkovOracle, window_markov.WindowMarkovOracle
        scene_cube = {"max_step": 100}
    if "puzzle" in gym_id:
        return {"button": button(gripper_always_closed=True, **common)}
    if "scene" in gym_id:
        return {
            "cube": cube(**scene_cube, **common),
            "button": button(**common),
            "drawer": drawer(**common),
            "window": window(**common),
        }
    return {"cube": cube(**common)}


class _FixedTask:
    """The single-task env as OGBench's relabelling reads it: its task set once (by one reset),
    so that relabelling a state does not reset it again (milliseconds a step)."""

    def __init__(self, gym_id: str):
        env = gym.make(gym_id)
        env.reset(seed=0)
        self.unwrapped = env.unwrapped

    def reset(self) -> None:
        pass


@functools.cache
def _task_relabeller(gym_id: str):
    """info -> (reward, success) of the single task on the state the step started from, by
    OGBench's own relabelling (``ogbench.relabel_utils.relabel_dataset``); one per process."""
    from ogbench.relabel_utils import relabel_dataset

    task = _FixedTask(gym_id)

    def relabel(info: dict) -> tuple[float, bool]:
        state = {"qpos": info["prev_qpos"][None]}
        if "prev_button_states" in info:
            state["button_states"] = info["prev_button_states"][None]
        relabel_dataset(gym_id, task, state)
        return float(state["rewards"][0]), bool(state["masks"][0] == 0.0)

    return relabel
