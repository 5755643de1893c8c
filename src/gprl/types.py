"""Data types shared by environments, collectors, loops and algorithms.

Algorithms import from here, never from ``gprl.envs``: they see a task only through its
:class:`EnvSpec` and a batch of :class:`Transition` arrays.
"""

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np


@dataclass(frozen=True)
class EnvSpec:
    """What an algorithm needs to know about a task: shapes, bounds and time limit."""

    env_id: str
    obs_dim: int
    action_dim: int
    action_low: np.ndarray
    """The env's true lower action bounds, float32 (action_dim,); policies act in [-1, 1]."""
    action_high: np.ndarray
    max_episode_steps: int | None


class StepResult(NamedTuple):
    """One vector step of N envs with same-step autoreset (numpy on the host, jax on device)."""

    obs: Any
    """(N, obs_dim) float32; where an episode ended, the first observation of the next one."""
    reward: Any
    """(N,) float32 raw env reward."""
    terminated: Any
    """(N,) bool."""
    truncated: Any
    """(N,) bool, True only where the episode hit a time limit without terminating."""
    final_obs: Any
    """(N, obs_dim) float32: the last observation of the episode where it ended, else obs."""


class Transition(NamedTuple):
    """Raw transitions as collectors emit them, stacked time-major: leaves are (T, N, ...).

    No reward scaling and no bootstrapping happen here; algorithms do both in their jitted
    update, so the same batch can feed an on-policy update or a replay buffer.
    """

    obs: Any
    """Observation the policy acted on."""
    action: Any
    """Action sent to the env, in [-1, 1]."""
    reward: Any
    """Raw env reward."""
    terminated: Any
    truncated: Any
    next_obs: Any
    """Observation after the action: the episode's final observation where it ended."""
    extras: Any
    """Whatever the algorithm's act returned besides the action (log-probs, latents, ...)."""
