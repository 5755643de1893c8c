"""FPO's two-goal GridWorld ("two_walls" in akanazawa/fpo, ``gridworld/``), a diagnostic for
whether a policy keeps two equally good routes.

Registered with Gymnasium on ``import gprl.envs`` as ``gprl/TwoGoalGrid-v0``. Positions are
cells (x, y) of a 25 x 25 grid, y up, as in the reference; the goals are the two bands of rows
y in {0, 1} ("bottom") and y in {23, 24} ("top"). From a start on row 12 both bands are 11 moves
away, so a policy that keeps both routes sends rollouts to each: :func:`goal_fractions` measures
the split for any policy, e.g. a trained run's ``gprl.load(run_dir).act`` with
``deterministic=False``.
"""

from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from gprl.envs.common import EnvError
from gprl.envs.diagnostics import AGENT_COLOR, BACKGROUND, FRAME_SIZE, GUIDE_COLOR, TARGET_COLOR

GRID_SIZE = 25
GRID_CENTRE = GRID_SIZE // 2
BOTTOM_GOAL_ROWS = (0, 1)
TOP_GOAL_ROWS = (GRID_SIZE - 2, GRID_SIZE - 1)
GOAL_REWARD = 20.0
GRID_HORIZON = 100

GRID_FIGURE_STARTS = ((17, 12), (11, 13), (6, 9), (20, 17))
"""The four start cells (x, y) of the FPO paper's GridWorld figure."""
GRID_EQUIDISTANT_START = (17, 12)
"""The figure's start 11 moves from either goal band: a policy keeping both routes splits here."""


def grid_move(positions: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """Cells (..., 2) after actions (..., 2): each coordinate of the action, clipped to [-1, 1],
    is rounded to a move of -1, 0 or +1, and the agent stays inside the grid."""
    moves = np.rint(np.clip(np.asarray(actions, np.float64), -1.0, 1.0)).astype(np.int64)
    return np.clip(np.asarray(positions, np.int64) + moves, 0, GRID_SIZE - 1)


def goal_reached(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bottom, top): boolean arrays (...) of whether cells (..., 2) lie in each goal band."""
    rows = np.asarray(positions)[..., 1]
    return np.isin(rows, BOTTOM_GOAL_ROWS), np.isin(rows, TOP_GOAL_ROWS)


def grid_observation(positions: np.ndarray) -> np.ndarray:
    """Cells (..., 2) -> observations (position - 12) / 12 in [-1, 1]^2, float32."""
    return ((np.asarray(positions) - GRID_CENTRE) / GRID_CENTRE).astype(np.float32)


def _check_start(start: Any) -> np.ndarray:
    cell = np.asarray(start)
    if cell.shape != (2,) or not np.issubdtype(cell.dtype, np.integer):
        raise EnvError(f"a TwoGoalGrid start must be a cell (x, y) of two integers, got {start!r}")
    if not ((cell >= 0) & (cell < GRID_SIZE)).all() or any(goal_reached(cell)):
        raise EnvError(
            f"TwoGoalGrid start {tuple(int(c) for c in cell)} must be a cell of the "
            f"{GRID_SIZE} x {GRID_SIZE} grid outside the goal rows {BOTTOM_GOAL_ROWS} and "
            f"{TOP_GOAL_ROWS}"
        )
    return cell.astype(np.int64)


class TwoGoalGridEnv(gym.Env):
    """A 25 x 25 grid with a goal band at each end: reach either, the same reward, in 100 steps.

    The agent starts on a cell drawn uniformly from the non-goal rows 2..22, or on the cell
    ``options={"start": (x, y)}`` names. The action in [-1, 1]^2 is rounded per coordinate to a
    move of -1, 0 or +1 (diagonal moves included; moves off the grid are clipped). Entering a
    goal row, y in {0, 1} or {23, 24}, earns +20 and terminates the episode; every other step
    earns 0, and the episode is truncated after 100 steps. Observation: (x - 12, y - 12) / 12.

    Every policy that reaches a goal earns the same undiscounted return, 20; discounting makes
    the nearer band better, and from row 12 the two are equally near. A policy whose mean
    averages the two headings (move 0) stands still when acted deterministically, earning nothing.
    ``info["goal"]`` is "bottom" or "top" on the step that reaches one.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, render_mode: str | None = None):
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.render_mode = render_mode
        self._position = np.array([GRID_CENTRE, GRID_CENTRE], np.int64)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        start = (options or {}).get("start")
        if start is not None:
            self._position = _check_start(start)
        else:
            row = self.np_random.integers(BOTTOM_GOAL_ROWS[-1] + 1, TOP_GOAL_ROWS[0])
            self._position = np.array([self.np_random.integers(GRID_SIZE), row], np.int64)
        return grid_observation(self._position), {}

    def step(self, action: np.ndarray):
        self._position = grid_move(self._position, action)
        bottom, top = goal_reached(self._position)
        info = {"goal": "bottom"} if bottom else {"goal": "top"} if top else {}
        reward = GOAL_REWARD if info else 0.0
        return grid_observation(self._position), reward, bool(info), False, info

    def render(self) -> np.ndarray:
        frame = np.full((FRAME_SIZE, FRAME_SIZE, 3), BACKGROUND, dtype=np.uint8)
        # Pixel edges of the cells; image row 0 is the grid's top row (y up).
        edges = np.linspace(0, FRAME_SIZE, GRID_SIZE + 1).round().astype(int)
        for y in range(GRID_SIZE):
            rows = slice(edges[GRID_SIZE - 1 - y], edges[GRID_SIZE - y])
            if y in BOTTOM_GOAL_ROWS + TOP_GOAL_ROWS:
                frame[rows] = TARGET_COLOR
            elif y == GRID_CENTRE:
                frame[rows] = GUIDE_COLOR
        x, y = self._position
        frame[edges[GRID_SIZE - 1 - y] : edges[GRID_SIZE - y], edges[x] : edges[x + 1]] = (
            AGENT_COLOR
        )
        return frame


class GoalFractions(NamedTuple):
    """Where rollouts from one start ended: each a fraction of the rollouts."""

    bottom: float
    """Reached the bottom goal band (y in {0, 1})."""
    top: float
    """Reached the top goal band (y in {23, 24})."""
    neither: float
    """Reached no goal within the 100 steps."""


def goal_fractions(
    policy: Callable[[np.ndarray], np.ndarray],
    start: tuple[int, int] = GRID_EQUIDISTANT_START,
    rollouts: int = 1000,
) -> GoalFractions:
    """The share of `rollouts` episodes from cell `start` that reach each goal band.

    policy maps a batch of observations (N, 2) to actions (N, 2) and should sample (e.g.
    ``lambda obs: run.act(obs, deterministic=False)`` for ``run = gprl.load(run_dir)``). The
    episodes run side by side with the env's own dynamics, one policy call per step.
    """
    positions = np.repeat(_check_start(start)[None], rollouts, axis=0)
    outcome = np.zeros(rollouts, np.int64)  # 0 running, 1 bottom, 2 top
    for _ in range(GRID_HORIZON):
        running = outcome == 0
        if not running.any():
            break
        actions = np.asarray(policy(grid_observation(positions[running])), np.float64)
        positions[running] = grid_move(positions[running], actions.reshape(-1, 2))
        bottom, top = goal_reached(positions)
        outcome = np.where(running & bottom, 1, np.where(running & top, 2, outcome))
    shares = np.bincount(outcome, minlength=3) / rollouts
    return GoalFractions(bottom=float(shares[1]), top=float(shares[2]), neither=float(shares[0]))


GRID_ENVS: dict[str, tuple[type[gym.Env], int]] = {
    "gprl/TwoGoalGrid-v0": (TwoGoalGridEnv, GRID_HORIZON),
}
"""Registered id -> (env class, time limit); Gymnasium backend only."""


def register_grid_envs() -> None:
    """Register the GridWorld tasks with Gymnasium (idempotent)."""
    for env_id, (env_class, max_episode_steps) in GRID_ENVS.items():
        if env_id not in gym.registry:
            # A "module:Class" entry point keeps the spec serialisable (Minari datasets store it).
            entry_point = f"{env_class.__module__}:{env_class.__name__}"
            gym.register(id=env_id, entry_point=entry_point, max_episode_steps=max_episode_steps)
