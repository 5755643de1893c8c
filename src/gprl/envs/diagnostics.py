"""Tiny diagnostic tasks with known optima, for testing policies and RL plumbing in seconds.

Pure numpy, registered with Gymnasium on ``import gprl.envs``:

- ``gprl/BimodalBandit-v0``: two equally good actions; a Gaussian policy must pick one.
- ``gprl/TwoGoalPoint-v0``: the same dilemma over a 25-step horizon.
- ``gprl/FourModeBandit-v0``: four equally good 2-D actions; a Gaussian can keep only one.
- ``gprl/ContextualTarget-v0``: the best action is a smooth function of the observation.
- ``gprl/TruncationProbe-v0``: checks that time-limit truncation is bootstrapped, not terminal.
- ``gprl/PointReach-v0``: reach a random goal; reports success (``info["success"]``), and has a
  scripted expert, :func:`point_reach_expert`, for recording demonstrations.

All support ``render_mode="rgb_array"`` with a 64x64 numpy drawing, so video code can be tested
without MuJoCo.

The multimodal ones name their optimal actions per observation in :data:`OPTIMAL_MODES`, and
:func:`mode_coverage` measures how a policy's samples spread over them.
"""

from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import gymnasium as gym
import numpy as np
from gymnasium import spaces

FRAME_SIZE = 64
BACKGROUND = (255, 255, 255)
TARGET_COLOR = (40, 160, 60)
AGENT_COLOR = (210, 40, 40)
GUIDE_COLOR = (190, 190, 190)

MODE_OFFSET = 0.6
MODE_CONTEXT_SHIFT = 0.1
MODE_WIDTH = 0.1
# Distance from a mode at which a bandit's Gaussian reward bump falls to half its height.
MODE_HALF_REWARD_RADIUS = MODE_WIDTH * np.sqrt(2 * np.log(2))
FOUR_MODE_OFFSET = 0.5

POINT_STEP_SIZE = 0.1
POINT_START_NOISE = 0.01
POINT_HORIZON = 25
POINT_GOALS = np.array([[0.7, 0.0], [-0.7, 0.0]])
POINT_GOAL_RADIUS = 0.1
POINT_GOAL_BONUS = 1.0
POINT_SHAPING = 0.1

TARGET_WEIGHTS = np.array([[1.0, -1.0, 0.5], [0.5, 1.0, -1.0]], dtype=np.float32)
TARGET_SCALE = 0.8

PROBE_HORIZON = 10

REACH_STEP_SIZE = 0.15
REACH_HORIZON = 25
REACH_SUCCESS_RADIUS = 0.1
# Goals are drawn at least this far from the start, so that standing still never succeeds.
REACH_MIN_START_DISTANCE = 0.5

# The ball of this radius around full speed towards a goal holds the first actions that head
# less than 45 degrees off it (more towards the goal than across) at 0.71 of full speed or more,
# and straight at it from 0.3 of full speed; the two goals' balls, 2 apart, cannot overlap.
POINT_HEADING_RADIUS = 0.7


def bimodal_modes(context: np.ndarray) -> np.ndarray:
    """The two optimal actions of BimodalBandit for a context (2,), or a batch (..., 2) -> (..., 2).

    Both modes move with the first context coordinate, so the policy must read the observation,
    but they stay 2 * MODE_OFFSET = 1.2 apart (lower mode first).
    """
    shift = MODE_CONTEXT_SHIFT * np.asarray(context, dtype=np.float32)[..., 0]
    return np.stack([shift - MODE_OFFSET, shift + MODE_OFFSET], axis=-1)


def four_mode_modes(context: np.ndarray) -> np.ndarray:
    """The four optimal actions of FourModeBandit for a context (2,), or a batch (..., 2) ->
    (..., 4, 2): 0.1 * c + (+-0.5, +-0.5), counter-clockwise from the (+, +) quadrant.

    Like BimodalBandit's, the modes move with the context, and adjacent ones stay 1.0 apart.
    """
    corners = FOUR_MODE_OFFSET * np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], np.float32)
    return MODE_CONTEXT_SHIFT * np.asarray(context, np.float32)[..., None, :] + corners


def point_goal_headings(observation: np.ndarray) -> np.ndarray:
    """TwoGoalPoint's two optimal headings from an observation (3,), or a batch (..., 3) ->
    (..., 2, 2): full speed towards the +x goal and towards the -x goal.

    Full speed within the action box [-1, 1]^2 is the direction scaled until its largest
    coordinate is 1: (+-1, ~0) from the start, where the first action picks a goal.
    """
    position = np.asarray(observation, np.float32)[..., None, :2]
    direction = POINT_GOALS.astype(np.float32) - position
    return direction / np.abs(direction).max(axis=-1, keepdims=True)


class OptimalModes(NamedTuple):
    """The equally good optimal actions of a multimodal diagnostic."""

    of: Callable[[np.ndarray], np.ndarray]
    """Observations (..., obs_dim) -> modes (..., K, action_dim), in [-1, 1] action units."""
    radius: float
    """An action within this Euclidean distance of a mode counts as on it."""


OPTIMAL_MODES: dict[str, OptimalModes] = {
    # The bandits: within the reward's half-maximum radius (reward > 0.5).
    "gprl/BimodalBandit-v0": OptimalModes(
        lambda observation: bimodal_modes(observation)[..., None], MODE_HALF_REWARD_RADIUS
    ),
    "gprl/FourModeBandit-v0": OptimalModes(four_mode_modes, MODE_HALF_REWARD_RADIUS),
    # The first action's heading: no single action reaches a goal, so the criterion is its
    # direction (see POINT_HEADING_RADIUS); the starts all lie within 0.01 of the origin.
    "gprl/TwoGoalPoint-v0": OptimalModes(point_goal_headings, POINT_HEADING_RADIUS),
}
"""Env id -> its optimal modes and the radius that counts a sample as on one."""


class ModeCoverage(NamedTuple):
    """How samples spread over K optimal modes, per observation (any leading batch shape)."""

    mode_shares: np.ndarray
    """(..., K) share of the samples on each mode (nearest mode, within the radius)."""
    none_share: np.ndarray
    """(...) share of the samples on no mode."""

    @property
    def minority_share(self) -> np.ndarray:
        """(...) share of the samples on optimal modes other than the most visited one: 0 for a
        policy that commits to one mode, (K - 1) / K for one that splits evenly over all K."""
        return self.mode_shares.sum(-1) - self.mode_shares.max(-1)

    def modes_kept(self, min_share: float) -> np.ndarray:
        """(...) how many modes hold at least min_share of the samples."""
        return (self.mode_shares >= min_share).sum(-1)


def mode_coverage(actions: np.ndarray, modes: np.ndarray, radius: float) -> ModeCoverage:
    """The share of sampled actions near each optimal mode, and near none.

    Args:
        actions: (..., S, action_dim) S samples per observation.
        modes: (..., K, action_dim) the observations' optimal actions (see OPTIMAL_MODES).
        radius: a sample within this distance of its nearest mode is on that mode.
    """
    actions = np.asarray(actions, np.float64)
    modes = np.asarray(modes, np.float64)
    distance = np.linalg.norm(actions[..., :, None, :] - modes[..., None, :, :], axis=-1)
    nearest = distance.argmin(-1)
    on_a_mode = distance.min(-1) <= radius
    on_mode = on_a_mode[..., None] & (nearest[..., None] == np.arange(modes.shape[-2]))
    return ModeCoverage(on_mode.mean(-2), 1.0 - on_a_mode.mean(-1))


def contextual_target_optimum(context: np.ndarray) -> np.ndarray:
    """The optimal action 0.8 * tanh(W c) of ContextualTarget for a context (3,) or a batch."""
    context = np.asarray(context, dtype=np.float32)
    return TARGET_SCALE * np.tanh(context @ TARGET_WEIGHTS.T)


def _blank_frame() -> np.ndarray:
    return np.full((FRAME_SIZE, FRAME_SIZE, 3), BACKGROUND, dtype=np.uint8)


def _draw_dot(frame: np.ndarray, x: float, y: float, color: tuple, radius: int = 3) -> None:
    """Paint a square dot at (x, y) in [-1, 1]^2 (y up)."""
    column = round((x + 1.0) / 2.0 * (FRAME_SIZE - 1))
    row = round((1.0 - y) / 2.0 * (FRAME_SIZE - 1))
    rows = slice(max(row - radius, 0), row + radius + 1)
    columns = slice(max(column - radius, 0), column + radius + 1)
    frame[rows, columns] = color


class BimodalBanditEnv(gym.Env):
    """One-step bandit with two equally good, well-separated actions.

    Observation: a context c ~ U[-1, 1]^2. Action: a in [-1, 1]^1. The optimal actions are the
    two modes m = 0.1 * c[0] -/+ 0.6 (see :func:`bimodal_modes`) and the reward is
    max_k exp(-(a - m_k)^2 / (2 * 0.1^2)) in [0, 1]; the episode terminates after one step.

    Optimal return 1.0. A unimodal Gaussian that commits to one mode can also reach ~1.0, but one
    that spreads its mean between the modes (a = 0.1 * c[0]) earns exp(-18) ~ 1.5e-8. A multimodal
    policy (flow, diffusion) should put samples on both modes.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(self, render_mode: str | None = None):
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.render_mode = render_mode
        self._context = np.zeros(2, dtype=np.float32)
        self._last_action: float | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._context = self.np_random.uniform(-1.0, 1.0, size=2).astype(np.float32)
        self._last_action = None
        return self._context.copy(), {}

    def step(self, action: np.ndarray):
        self._last_action = float(np.clip(action, -1.0, 1.0)[0])
        distance = np.abs(bimodal_modes(self._context) - self._last_action).min()
        reward = float(np.exp(-(distance**2) / (2 * MODE_WIDTH**2)))
        return self._context.copy(), reward, True, False, {}

    def render(self) -> np.ndarray:
        frame = _blank_frame()
        frame[FRAME_SIZE // 2, :] = GUIDE_COLOR
        for mode in bimodal_modes(self._context):
            _draw_dot(frame, float(mode), 0.0, TARGET_COLOR)
        if self._last_action is not None:
            _draw_dot(frame, self._last_action, 0.0, AGENT_COLOR, radius=2)
        return frame


class TwoGoalPointEnv(gym.Env):
    """A 2-D point that must reach either of two equally good goals within 25 steps.

    The point starts at the origin (plus U[-0.01, 0.01]^2 noise); the action in [-1, 1]^2 is a
    velocity, moving the point by 0.1 * action per step (positions are clipped to [-1, 1]^2).
    Goals sit at (+0.7, 0) and (-0.7, 0). Reward per step: 0.1 * (decrease in distance to the
    nearest goal), plus 1.0 on coming within 0.1 of a goal, which terminates the episode;
    otherwise it is truncated after 25 steps. Observation: (x, y, t / 25).

    Heading straight for either goal at full speed arrives in 6 steps (7 when the start noise
    leaves it just short) with return ~1.06; no policy can exceed 1.0 + 0.1 * 0.71 ~ 1.07, as the
    shaping telescopes to 0.1 * (distance closed).
    A Gaussian whose mean averages the two headings stays near the origin and earns ~0.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, render_mode: str | None = None):
        self.observation_space = spaces.Box(
            low=np.array([-1.0, -1.0, 0.0], dtype=np.float32),
            high=np.array([1.0, 1.0, 1.0], dtype=np.float32),
            dtype=np.float32,
        )
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.render_mode = render_mode
        self._position = np.zeros(2)
        self._goal_distance = 0.0
        self._steps = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._position = self.np_random.uniform(-POINT_START_NOISE, POINT_START_NOISE, size=2)
        self._goal_distance = self._nearest_goal_distance()
        self._steps = 0
        return self._observation(), {}

    def step(self, action: np.ndarray):
        self._position = point_move(self._position, action)
        self._steps += 1
        previous_distance = self._goal_distance
        self._goal_distance = self._nearest_goal_distance()
        reward = POINT_SHAPING * (previous_distance - self._goal_distance)
        reached = self._goal_distance <= POINT_GOAL_RADIUS
        if reached:
            reward += POINT_GOAL_BONUS
        return self._observation(), float(reward), bool(reached), False, {}

    def render(self) -> np.ndarray:
        frame = _blank_frame()
        for goal_x, goal_y in POINT_GOALS:
            _draw_dot(frame, goal_x, goal_y, TARGET_COLOR)
        _draw_dot(frame, *self._position, AGENT_COLOR, radius=2)
        return frame

    def _nearest_goal_distance(self) -> float:
        return float(point_goal_distances(self._position).min())

    def _observation(self) -> np.ndarray:
        # Capped so that a longer time limit given to gym.make keeps observations in the space.
        time_fraction = min(self._steps / POINT_HORIZON, 1.0)
        return np.array([*self._position, time_fraction], dtype=np.float32)


def point_move(positions: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """TwoGoalPoint's dynamics, for one position (2,) or a batch (N, 2)."""
    return np.clip(positions + POINT_STEP_SIZE * np.clip(actions, -1.0, 1.0), -1.0, 1.0)


def point_goal_distances(positions: np.ndarray) -> np.ndarray:
    """(..., 2) positions -> (..., 2) distances to the +x and the -x goal."""
    return np.sqrt(((np.asarray(positions)[..., None, :] - POINT_GOALS) ** 2).sum(-1))


class FourModeBanditEnv(gym.Env):
    """One-step bandit with four equally good, well-separated 2-D actions.

    Observation: a context c ~ U[-1, 1]^2. Action: a in [-1, 1]^2. The optimal actions are the
    four modes m_k = 0.1 * c + (+-0.5, +-0.5) (see :func:`four_mode_modes`) and the reward is
    max_k exp(-||a - m_k||^2 / (2 * 0.1^2)) in [0, 1]; the episode terminates after one step.

    Optimal return 1.0, earned by any policy whose actions land on the modes: a Gaussian that
    commits to one is optimal too, so the reward never forces a policy to keep several, and
    whether it does measures what its action distribution can express. A Gaussian mean between
    two adjacent modes earns exp(-12.5) ~ 4e-6, one at the centre of all four exp(-25).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(self, render_mode: str | None = None):
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.render_mode = render_mode
        self._context = np.zeros(2, dtype=np.float32)
        self._last_action: np.ndarray | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._context = self.np_random.uniform(-1.0, 1.0, size=2).astype(np.float32)
        self._last_action = None
        return self._context.copy(), {}

    def step(self, action: np.ndarray):
        self._last_action = np.clip(action, -1.0, 1.0)
        distance = np.linalg.norm(four_mode_modes(self._context) - self._last_action, axis=1)
        reward = float(np.exp(-(distance.min() ** 2) / (2 * MODE_WIDTH**2)))
        return self._context.copy(), reward, True, False, {}

    def render(self) -> np.ndarray:
        frame = _blank_frame()
        for mode in four_mode_modes(self._context):
            _draw_dot(frame, *mode, TARGET_COLOR)
        if self._last_action is not None:
            _draw_dot(frame, *self._last_action, AGENT_COLOR, radius=2)
        return frame


class ContextualTargetEnv(gym.Env):
    """One-step task whose optimal action depends smoothly on the observation.

    Observation: c ~ U[-1, 1]^3. Action: a in [-1, 1]^2. Reward -||a - a*(c)||^2 with
    a*(c) = 0.8 * tanh(W c) for the fixed W = TARGET_WEIGHTS (see
    :func:`contextual_target_optimum`); the episode terminates after one step.

    Optimal return 0.0. The optimum is unimodal, so a Gaussian policy can solve it exactly; it
    tests that an algorithm learns an observation-dependent action rather than a constant one
    (the best constant action, a = 0, earns about -0.46 on average).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(self, render_mode: str | None = None):
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.render_mode = render_mode
        self._context = np.zeros(3, dtype=np.float32)
        self._last_action: np.ndarray | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._context = self.np_random.uniform(-1.0, 1.0, size=3).astype(np.float32)
        self._last_action = None
        return self._context.copy(), {}

    def step(self, action: np.ndarray):
        self._last_action = np.clip(action, -1.0, 1.0)
        error = self._last_action - contextual_target_optimum(self._context)
        return self._context.copy(), -float(np.dot(error, error)), True, False, {}

    def render(self) -> np.ndarray:
        frame = _blank_frame()
        _draw_dot(frame, *contextual_target_optimum(self._context), TARGET_COLOR)
        if self._last_action is not None:
            _draw_dot(frame, *self._last_action, AGENT_COLOR, radius=2)
        return frame


class TruncationProbeEnv(gym.Env):
    """Reward 1 every step, never terminates, truncated by the time limit after 10 steps.

    The observation is always [1.0] and the action (in [-1, 1]^1) is ignored, so every state is
    the same state. A learner that bootstraps through time-limit truncation, as it should, drives
    the value towards the infinite-horizon 1 / (1 - gamma) (100 for gamma = 0.99). One that treats
    truncation as termination learns a discounted sum of at most 10 steps, <= 10 - far off.
    The undiscounted return of every episode is exactly 10.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, render_mode: str | None = None):
        self.observation_space = spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.render_mode = render_mode
        self._steps = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._steps = 0
        return np.ones(1, dtype=np.float32), {}

    def step(self, action: np.ndarray):
        self._steps += 1
        return np.ones(1, dtype=np.float32), 1.0, False, False, {}

    def render(self) -> np.ndarray:
        # A progress bar through the time limit, drawn over its grey track.
        frame = _blank_frame()
        bar_rows = slice(FRAME_SIZE // 2 - 4, FRAME_SIZE // 2 + 4)
        frame[bar_rows, :] = GUIDE_COLOR
        filled = round(min(self._steps / PROBE_HORIZON, 1.0) * FRAME_SIZE)
        frame[bar_rows, :filled] = AGENT_COLOR
        return frame


def point_reach_expert(observations: np.ndarray) -> np.ndarray:
    """PointReach's scripted expert: observations (N, 4) -> actions (N, 2) in [-1, 1] that step
    straight onto the goal, or as far towards it as one step goes per coordinate.

    It reaches the goal within ceil(2 / 0.15) = 14 steps from any start, then stays on it, so it
    succeeds in every episode of the 25-step limit."""
    observations = np.asarray(observations, np.float32)
    offset = observations[..., 2:4] - observations[..., 0:2]
    return np.clip(offset / REACH_STEP_SIZE, -1.0, 1.0)


class PointReachEnv(gym.Env):
    """A 2-D point must reach a random goal, and reports success there like manipulation tasks.

    The point starts at p ~ U[-1, 1]^2, the goal g ~ U[-1, 1]^2 at least 0.5 from it; the
    observation is (p, g). The action in [-1, 1]^2 moves the point by 0.15 * action (positions
    clipped to [-1, 1]^2). Reward: -||p - g|| after the step (dense). ``info["success"]`` is 1.0
    on steps that end within 0.1 of the goal, else 0.0; episodes do not end on success (as in
    Meta-World) and are truncated after 25 steps.

    :func:`point_reach_expert` succeeds in every episode; standing still never does, and random
    actions rarely. With ``sparse_reward`` a return counts the steps spent at the goal.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, render_mode: str | None = None):
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.render_mode = render_mode
        self._position = np.zeros(2)
        self._goal = np.ones(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._position = self.np_random.uniform(-1.0, 1.0, size=2)
        self._goal = self._position
        while np.linalg.norm(self._goal - self._position) < REACH_MIN_START_DISTANCE:
            self._goal = self.np_random.uniform(-1.0, 1.0, size=2)
        return self._observation(), {"success": 0.0}

    def step(self, action: np.ndarray):
        velocity = np.clip(action, -1.0, 1.0)
        self._position = np.clip(self._position + REACH_STEP_SIZE * velocity, -1.0, 1.0)
        distance = float(np.linalg.norm(self._goal - self._position))
        success = float(distance <= REACH_SUCCESS_RADIUS)
        return self._observation(), -distance, False, False, {"success": success}

    def render(self) -> np.ndarray:
        frame = _blank_frame()
        _draw_dot(frame, *self._goal, TARGET_COLOR)
        _draw_dot(frame, *self._position, AGENT_COLOR, radius=2)
        return frame

    def _observation(self) -> np.ndarray:
        return np.concatenate([self._position, self._goal]).astype(np.float32)


DIAGNOSTIC_ENVS: dict[str, tuple[type[gym.Env], int | None]] = {
    "gprl/BimodalBandit-v0": (BimodalBanditEnv, None),
    "gprl/TwoGoalPoint-v0": (TwoGoalPointEnv, POINT_HORIZON),
    "gprl/ContextualTarget-v0": (ContextualTargetEnv, None),
    "gprl/TruncationProbe-v0": (TruncationProbeEnv, PROBE_HORIZON),
}
"""Registered id -> (env class, time limit); one-step tasks terminate on their own. Each has a
JAX twin in :mod:`gprl.envs.jax_envs`."""

HOST_ONLY_DIAGNOSTIC_ENVS: dict[str, tuple[type[gym.Env], int | None]] = {
    "gprl/FourModeBandit-v0": (FourModeBanditEnv, None),
    "gprl/PointReach-v0": (PointReachEnv, REACH_HORIZON),
}
"""Diagnostic tasks with no JAX twin yet: Gymnasium backend only."""


def register_diagnostic_envs() -> None:
    """Register the diagnostic tasks with Gymnasium (idempotent)."""
    for env_id, (env_class, max_episode_steps) in (
        DIAGNOSTIC_ENVS | HOST_ONLY_DIAGNOSTIC_ENVS
    ).items():
        if env_id not in gym.registry:
            # A "module:Class" entry point keeps the spec serialisable (Minari datasets store it).
            entry_point = f"{env_class.__module__}:{env_class.__name__}"
            gym.register(id=env_id, entry_point=entry_point, max_episode_steps=max_episode_steps)
