"""Data types shared by environments, collectors, loops and algorithms.

Algorithms import from here, never from ``gprl.envs``: they see a task only through its
:class:`EnvSpec` and a batch of :class:`Transition` arrays.
"""

from dataclasses import dataclass, fields
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
    reports_success: bool = False
    """Whether the env reports success on its steps (Gymnasium info "success" or "is_success"),
    so that success rates, sparse rewards and ending episodes on success mean something."""

    def to_record(self) -> dict[str, Any]:
        """The spec in plain JSON types; :meth:`from_record` gives it back exactly."""
        return {
            "env_id": self.env_id,
            "obs_dim": int(self.obs_dim),
            "action_dim": int(self.action_dim),
            "action_low": np.asarray(self.action_low, np.float32).tolist(),
            "action_high": np.asarray(self.action_high, np.float32).tolist(),
            "max_episode_steps": (
                None if self.max_episode_steps is None else int(self.max_episode_steps)
            ),
            "reports_success": bool(self.reports_success),
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "EnvSpec":
        """The spec :meth:`to_record` wrote; ValueError in one line if the record is malformed."""
        problem = _record_problem(record)
        if problem:
            raise ValueError(f"malformed env spec record ({problem}): {record!r}")
        return cls(
            env_id=record["env_id"],
            obs_dim=record["obs_dim"],
            action_dim=record["action_dim"],
            action_low=np.asarray(record["action_low"], np.float32),
            action_high=np.asarray(record["action_high"], np.float32),
            max_episode_steps=record["max_episode_steps"],
            # Records written before success was tracked lack the field: their envs never said.
            reports_success=record.get("reports_success", False),
        )

    def __eq__(self, other: object) -> bool:
        # The generated __eq__ would compare the bound arrays with ==, which has no truth value.
        return isinstance(other, EnvSpec) and self.to_record() == other.to_record()


_OPTIONAL_RECORD_FIELDS = ("reports_success",)
"""Fields that records written by older versions of gprl may lack."""


def _record_problem(record: Any) -> str | None:
    """What is wrong with an EnvSpec record, or None."""
    if not isinstance(record, dict):
        return "not a mapping"
    missing = [
        field.name
        for field in fields(EnvSpec)
        if field.name not in record and field.name not in _OPTIONAL_RECORD_FIELDS
    ]
    if missing:
        return f"missing {', '.join(missing)}"
    if not isinstance(record["env_id"], str):
        return "env_id is not a string"
    if not isinstance(record.get("reports_success", False), bool):
        return "reports_success is not a boolean"
    if not (_is_count(record["obs_dim"]) and _is_count(record["action_dim"])):
        return "obs_dim and action_dim must be positive integers"
    limit = record["max_episode_steps"]
    if limit is not None and not _is_count(limit):
        return "max_episode_steps must be a positive integer or null"
    for bound in ("action_low", "action_high"):
        values = record[bound]
        numbers = isinstance(values, list) and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in values
        )
        if not numbers or len(values) != record["action_dim"]:
            return f"{bound} must be a list of action_dim numbers"
    return None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


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
    success: Any
    """(N,) bool, True where the env reported success on this step (Gymnasium info "success" or
    "is_success"); always False for envs that never report it."""
    env_steps: Any = None
    """(N,) int: env steps this step executed, where one step executes an action chunk
    (gprl.envs.chunked; ``reward`` then sums the executed steps' raw rewards); None: one each."""
    discounted_reward: Any = None
    """(N,) float32: what an algorithm learns from where a step executes a chunk, its rewards
    summed with the discount per env step; None: ``reward``."""

    def learned_reward(self):
        """The reward an algorithm learns from (see discounted_reward)."""
        return self.reward if self.discounted_reward is None else self.discounted_reward


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
    return_to_go: Any = None
    """Filled by a replay buffer that tracks returns (gprl.replay), never by collectors: the
    discounted return the transition's episode went on to receive, from it to the episode's
    termination; -inf where none is known (the episode is running, ended at a time limit, or
    began before the buffer's oldest row). None: not tracked."""
