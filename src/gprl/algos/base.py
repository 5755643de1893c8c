"""The contract between an algorithm and the loops that drive it.

An algorithm is pure functions over a pytree state of jax arrays; it never sees an env or a
collector. A loop jits `act` into a collector (host or device) and `update` after it, and on the
device path fuses both into one compiled call.
"""

from typing import Any, NamedTuple


class RefitRequest(NamedTuple):
    """Between iterations, a staged algorithm may ask the loop for fresh data to refit a part of
    itself (GoRL refits its decoder): the loop collects `rollout_steps` vector steps with `act`
    under `acting`, then calls `refit(state, transitions, key)`."""

    acting: Any
    rollout_steps: int
    counted: bool
    """Whether these env steps count toward the run's budget."""


class OnPolicyAlgorithm:
    """Base class: subclasses set `rollout_steps` and `num_iterations` and implement the
    methods marked NotImplementedError. `num_iterations` counts updates and refits."""

    rollout_steps: int
    num_iterations: int

    def init(self, key) -> dict:
        """A fresh training state; state["iteration"] counts finished iterations."""
        raise NotImplementedError

    def acting_params(self, state) -> Any:
        """The part of the state that `act` needs (weights and observation statistics)."""
        raise NotImplementedError

    def act(self, acting, obs, key) -> tuple[Any, dict]:
        """Stochastic actions in [-1, 1] for a batch of observations, and extras to keep with
        the transitions (log-probs, latents, ...)."""
        raise NotImplementedError

    def act_deterministic(self, acting, obs):
        """The evaluation policy's actions in [-1, 1]."""
        raise NotImplementedError

    def update(self, state, batch, key) -> tuple[dict, dict]:
        """One update on a (T, N) batch of raw transitions; returns (state, metrics)."""
        raise NotImplementedError

    @classmethod
    def start_state_group(cls, config) -> int:
        """How many consecutive envs the loop restarts from one initial state at every rollout
        (a critic-free method compares the episodes of such a group); 1: independent envs."""
        return 1

    def refit_request(self, state) -> RefitRequest | None:
        return None

    def refit(self, state, batch, key) -> tuple[dict, dict]:
        raise NotImplementedError(f"{type(self).__name__} does not refit")

    def observe_evaluation(self, state, eval_return: float) -> dict:
        """Called with every deterministic evaluation's mean return (host side)."""
        return state
