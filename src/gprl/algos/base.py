"""The contract between an algorithm and the loops that drive it.

An algorithm is pure functions over a pytree state of jax arrays; it never sees an env or a
collector. A loop jits `act` into a collector (host or device) and `update` after it, and on the
device path fuses both into one compiled call. Which loop drives an algorithm follows from its
base class: :class:`OnPolicyAlgorithm` (an update per fresh rollout) or
:class:`OffPolicyAlgorithm` (updates on batches sampled from a replay buffer the loop owns).
"""

from typing import Any, Literal, NamedTuple

import jax


class RefitRequest(NamedTuple):
    """Between iterations, a staged algorithm may ask the loop for fresh data to refit a part of
    itself (GoRL refits its decoder): the loop collects `rollout_steps` vector steps with `act`
    under `acting`, then calls `refit(state, transitions, key)`."""

    acting: Any
    rollout_steps: int
    counted: bool
    """Whether these env steps count toward the run's budget."""


def check_pretrained_flow(pretrained, method: str) -> None:
    """Refuse a pretrained policy a method cannot start from: it must be a flow policy of
    single actions (gprl.pretrain.Pretrained)."""
    if pretrained.kind != "flow":
        raise ValueError(
            f"{method} fine-tunes 'flow' pretrain runs; --init holds a '{pretrained.kind}' policy"
        )
    if pretrained.config.chunk_length != 1:
        raise ValueError(
            f"{method} fine-tunes policies of single actions; --init predicts chunks of "
            f"{pretrained.config.chunk_length} (pretrain with --chunk-length 1)"
        )


class Algorithm:
    """What every algorithm provides; subclasses implement the methods marked
    NotImplementedError and set `num_iterations` and `spec` (the task's EnvSpec)."""

    num_iterations: int
    spec: Any
    pretrained_policy: Literal["unused", "optional", "required"] = "unused"
    """Whether the algorithm can start from a `gprl pretrain` policy; if so its constructor
    takes it as `pretrained=` (a gprl.pretrain.Pretrained, or None)."""

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

    @classmethod
    def start_state_group(cls, config) -> int:
        """How many consecutive envs the loop restarts from one initial state at every rollout
        (a critic-free method compares the episodes of such a group); 1: independent envs."""
        return 1

    def observe_evaluation(self, state, eval_return: float) -> dict:
        """Called with every deterministic evaluation's mean return (host side)."""
        return state


class OnPolicyAlgorithm(Algorithm):
    """Subclasses also set `rollout_steps`. `num_iterations` counts updates and refits."""

    rollout_steps: int

    def update(self, state, batch, key) -> tuple[dict, dict]:
        """One update on a (T, N) batch of raw transitions; returns (state, metrics)."""
        raise NotImplementedError

    def refit_request(self, state) -> RefitRequest | None:
        return None

    def refit(self, state, batch, key) -> tuple[dict, dict]:
        raise NotImplementedError(f"{type(self).__name__} does not refit")


class OffPolicyAlgorithm(Algorithm):
    """Learns from a replay buffer that the off-policy loop owns and fills with what `act`
    collects (`explore` before learning starts). Subclasses set `schedule`, the
    :class:`gprl.algos.offpolicy.OffPolicySchedule` the loop follows (buffer size, batch size,
    update-to-data ratio, when learning starts).

    state["iteration"] counts loop iterations and is advanced by the loop, since one iteration
    runs many updates (or, before learning starts, none)."""

    schedule: Any

    def update(self, state, batch, key) -> tuple[dict, dict]:
        """One gradient step on a (B,) batch of transitions sampled from the buffer; returns
        (state, metrics). Terminations end the bootstrap, truncations do not."""
        raise NotImplementedError

    def explore(self, acting, obs, key) -> tuple[Any, dict]:
        """Actions before learning starts: uniform in [-1, 1], with extras shaped like `act`'s
        (an algorithm acting in a latent space overrides this)."""
        action, extras = self.act(acting, obs, key)
        return jax.random.uniform(key, action.shape, action.dtype, -1.0, 1.0), extras
