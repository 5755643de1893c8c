"""Where a diagnostic task's stochastic episodes end: the share of many episodes that reach each
of its goals, for the tasks whose optimal behaviours end in different places.

First actions can split between a task's optimal modes while every episode still ends at one
(a spread first step, then a commitment), so for the multi-step diagnostics this is what says
whether a policy keeps several behaviours. :data:`EPISODE_OUTCOMES` maps each such task to its
measure; a measure takes a batched sampling policy, observations (N, obs_dim) -> actions
(N, action_dim).
"""

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from gprl.envs.diagnostics import (
    POINT_GOAL_RADIUS,
    POINT_HORIZON,
    POINT_START_NOISE,
    point_goal_distances,
    point_move,
)
from gprl.envs.gridworld import goal_fractions


class PointGoalFractions(NamedTuple):
    """Where TwoGoalPoint episodes ended: each a fraction of the episodes."""

    plus_x: float
    """Reached the goal at (+0.7, 0)."""
    minus_x: float
    """Reached the goal at (-0.7, 0)."""
    neither: float
    """Reached no goal within the 25 steps."""


def point_goal_fractions(
    policy: Callable[[np.ndarray], np.ndarray], rollouts: int = 1000, seed: int = 0
) -> PointGoalFractions:
    """The share of `rollouts` TwoGoalPoint episodes that reach each goal.

    policy maps a batch of observations (N, 3) to actions (N, 2) and should sample; episodes
    start as the env's do (seeded by seed) and run side by side with its dynamics, one policy
    call per step for all of them (finished ones stand still).
    """
    rng = np.random.default_rng(seed)
    positions = rng.uniform(-POINT_START_NOISE, POINT_START_NOISE, size=(rollouts, 2))
    outcome = np.full(rollouts, -1)  # -1 running, else the index of the goal reached
    for step in range(POINT_HORIZON):
        running = outcome < 0
        if not running.any():
            break
        observations = np.concatenate([positions, np.full((rollouts, 1), step / POINT_HORIZON)], 1)
        actions = np.asarray(policy(observations.astype(np.float32)), np.float64)
        positions = np.where(running[:, None], point_move(positions, actions), positions)
        distances = point_goal_distances(positions)
        reached = running & (distances.min(-1) <= POINT_GOAL_RADIUS)
        outcome = np.where(reached, distances.argmin(-1), outcome)
    shares = np.bincount(outcome + 1, minlength=3) / rollouts
    return PointGoalFractions(float(shares[1]), float(shares[2]), float(shares[0]))


EPISODE_OUTCOMES: dict[str, Callable] = {
    "gprl/TwoGoalPoint-v0": point_goal_fractions,
    "gprl/TwoGoalGrid-v0": goal_fractions,  # from the equidistant start
}
"""Env id -> a function (policy, rollouts=...) giving the share of stochastic episodes that end
in each of the task's outcomes (which goal, or neither), as a NamedTuple."""
