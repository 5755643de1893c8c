"""The contract between an algorithm and the loops that drive it.

An algorithm is pure functions over a pytree state of jax arrays; it never sees an env or a
collector. A loop jits `act` into a collector (host or device) and `update` after it, and on the
device path fuses both into one compiled call. Which loop drives an algorithm follows from its
base class: :class:`OnPolicyAlgorithm` (an update per fresh rollout) or
:class:`OffPolicyAlgorithm` (updates on batches sampled from a replay buffer the loop owns).

A new method is one module here (its config dataclass and its algorithm class) and one entry in
`gprl.algos.ALGORITHMS`. It implements `init`, `acting_params`, `act`, `act_deterministic` and
`update`, and sets `spec` and `num_iterations` (and `rollout_steps`, or `schedule` off-policy)
in its constructor. Everything else below is a general hook with a default that does nothing;
a method overrides only the hooks it needs:

- `start_state_group`: restart envs in groups from one initial state (critic-free baselines);
- `stage_boundary` / `end_stage` (on-policy): between iterations, collect data with some
  policy and change the algorithm with it (a refit of a part of the policy, a new stage);
- `on_evaluation`: see every deterministic evaluation's summary (to keep the best policy);
- `explore` (off-policy): how to act before learning starts;
- `with_offline_data` (off-policy): take what the method needs of an offline dataset as a
  whole (its observation statistics) into a fresh state, before the first update;
- `fine_tunes_chunks`, `chunk_length`, `step_discount`, `per_decision_config`: acting in
  action chunks (below).

Action chunks: where `fine_tunes_chunks` is set, `--init` may hold a pretrain run whose policy
predicts chunks of Ta actions (and may condition on H observations). The run then steps envs
that execute the first Te actions of each chunk as ONE decision (gprl.envs.chunked), and the
method sees an ordinary task: a spec of Ta x action_dim actions and H x obs_dim observations,
the pretrained policy over the flat chunk, and transitions whose reward is the chunk's rewards
summed with `step_discount(config)` per env step. What the loop needs from the method is that
discount, and a config whose bootstrap spans a decision: `per_decision_config(config, Te)`
(discount^Te). Env steps, not decisions, are what the run counts.

A method may also act in chunks of its own, with no --init: `chunk_length(config)` returns h,
and the run executes every chunk of h actions whole (Ta = Te = h, one observation), as above. A
chunked --init must then predict and execute chunks of that length, or the run is refused. An
offline dataset (--dataset) reaches such a run as decisions too: windows of the recorded steps
(gprl.decision_data.decision_transitions).

Constructor: `Algorithm(config, spec, num_envs, total_steps, **optional)`: it validates the
config against the run (ValueError, one line, naming the field). The optional keywords are
`pretrained=` (only where `pretrained_policy` is not "unused") and `networks=` (a
gprl.networks.CustomNetworks of the user's own torsos, see :func:`check_networks`). The trainer
passes either keyword only when the user gave one, so a method that takes neither needs no
parameter for them.
"""

import dataclasses
import math
from typing import Any, Literal, NamedTuple

import jax


class StageBoundary(NamedTuple):
    """What the loop collects at a stage boundary before calling `end_stage`: `rollout_steps`
    vector steps of `act` under the acting parameters `acting` (which need not be the current
    policy's: the best one evaluated so far, say)."""

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
            f"{method} takes a policy that predicts chunks of {pretrained.config.chunk_length} "
            "as its flat-chunk view (gprl.initial_policy.flat_chunk_policy, as `gprl train "
            "--init` does)"
        )


def check_learning_rates(config, *names: str) -> None:
    """Refuse learning rates that are not finite positive numbers (inf and NaN included: either
    turns the first update's weights into NaN)."""
    for name in names:
        value = getattr(config, name)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite positive number, got {value}")


def check_networks(networks, usable: tuple[str, ...], method: str) -> None:
    """Refuse the user's networks (a gprl.networks.CustomNetworks, or None) that `method` has no
    place for: every field given must be among `usable` ("actor", "critic", "velocity")."""
    if networks is None:
        return
    for name in ("actor", "critic", "velocity"):
        if getattr(networks, name) is not None and name not in usable:
            raise ValueError(f"{method} has no {name} network to replace")


class Algorithm:
    """What every algorithm provides; subclasses implement the methods marked
    NotImplementedError and set `num_iterations` and `spec` (the task's EnvSpec)."""

    num_iterations: int
    """Iterations of the whole run: updates, and stage ends (each is one)."""
    spec: Any
    pretrained_policy: Literal["unused", "optional", "required"] = "unused"
    """Whether the algorithm can start from a `gprl pretrain` policy; if so its constructor
    takes it as `pretrained=` (a gprl.pretrain.Pretrained, or None)."""
    start_state_group: int = 1
    """How many consecutive envs the loop restarts from one initial state at every rollout
    (a critic-free method compares the episodes of such a group); 1: independent envs. A
    method that groups sets it in its constructor; the trainer reads it to choose an env
    backend that can restart envs in groups."""

    fine_tunes_chunks: bool = False
    """Whether `pretrained=` may be a policy of action chunks or observation histories, seen
    through its flat chunk (see the module docstring); else --init of one is refused."""

    @classmethod
    def chunk_length(cls, config) -> int | None:
        """The length h of the action chunks the method itself acts in, each executed whole as
        one decision of h env steps (a chunked --init must predict the same; 1: single
        actions); None (default): as --init predicts, if at all (see the module docstring)."""
        return None

    @classmethod
    def step_discount(cls, config) -> float:
        """The discount per env step of the returns the method learns: its config's `gamma`,
        1.0 for a method without one."""
        return float(getattr(config, "gamma", 1.0))

    @classmethod
    def per_decision_config(cls, config, env_steps: int):
        """config for decisions that each span env_steps env steps: its discount raised to that
        power, so that the bootstrap after a decision is discounted by gamma^env_steps."""
        if not hasattr(config, "gamma"):
            return config
        return dataclasses.replace(config, gamma=cls.step_discount(config) ** env_steps)

    def init(self, key) -> dict:
        """A fresh training state; state["iteration"] counts finished iterations."""
        raise NotImplementedError

    def acting_params(self, state) -> Any:
        """The part of the state that `act` needs (weights and observation statistics)."""
        raise NotImplementedError

    def act(self, acting, obs, key) -> tuple[Any, dict]:
        """Stochastic actions in [-1, 1] for a batch of observations, and extras to keep with
        the transitions (log-probs, latents, the pre-squash sample a likelihood needs, ...)."""
        raise NotImplementedError

    def act_deterministic(self, acting, obs):
        """The evaluation policy's actions in [-1, 1]."""
        raise NotImplementedError

    def on_evaluation(self, state, evaluation: dict) -> dict:
        """Called on the host after every deterministic evaluation of the current policy with
        its summary ({"eval_return": ..., "eval_return_std": ..., ...}); returns the state to
        train on (a method that keeps its best policy records it here). Default: unchanged."""
        return state

    def stage_boundary(self, state) -> StageBoundary | None:
        """Checked by the loop before every iteration: None (default) for an ordinary
        iteration, or the data to collect for `end_stage`, which then is the iteration. Only
        the on-policy loop runs stages; the off-policy loop refuses a method that has them."""
        return None

    def end_stage(self, state, batch, key) -> tuple[dict, dict]:
        """End a stage on the (T, N) batch of raw transitions collected as `stage_boundary`
        asked, outside any compiled call; returns (state with state["iteration"] advanced by
        one, metrics). Only called when `stage_boundary` returned a boundary."""
        raise NotImplementedError(f"{type(self).__name__} has no stages")


class OnPolicyAlgorithm(Algorithm):
    """Subclasses also set `rollout_steps`."""

    rollout_steps: int

    def update(self, state, batch, key) -> tuple[dict, dict]:
        """One update on a (T, N) batch of raw transitions; returns (state with
        state["iteration"] advanced by one, metrics)."""
        raise NotImplementedError


class OffPolicyAlgorithm(Algorithm):
    """Learns from a replay buffer that the off-policy loop owns and fills with what `act`
    collects (`explore` before learning starts). Subclasses set `schedule`, the
    :class:`gprl.algos.offpolicy.OffPolicySchedule` the loop follows (buffer size, batch size,
    update-to-data ratio, when learning starts).

    state["iteration"] counts loop iterations and is advanced by the loop, since one iteration
    runs many updates (or, before learning starts, none)."""

    schedule: Any

    @classmethod
    def per_decision_config(cls, config, env_steps: int):
        """Also counts the schedule's env-step clocks (learning_starts, update_every,
        steps_per_iteration) in decisions of env_steps env steps. update_to_data stays per
        stored transition: a decision is one, as in the chunked references."""
        config = super().per_decision_config(config, env_steps)
        clocks = ("learning_starts", "update_every", "steps_per_iteration")
        in_decisions = {name: -(-getattr(config, name) // env_steps) for name in clocks}
        return dataclasses.replace(config, **in_decisions)

    def update(self, state, batch, key) -> tuple[dict, dict]:
        """One gradient step on a (B,) batch of transitions sampled from the buffer; returns
        (state, metrics). Terminations end the bootstrap, truncations do not."""
        raise NotImplementedError

    def with_offline_data(self, state, transitions: dict) -> dict:
        """A fresh run's state once it knows the offline dataset that pre-fills the buffer
        (--dataset; transitions as the buffer holds them, gprl.replay.DATASET_FIELDS), before
        the first update: where the method takes something from the data as a whole (the
        statistics it standardises observations with). Default: unchanged."""
        return state

    def explore(self, acting, obs, key) -> tuple[Any, dict]:
        """How to act before learning starts (the schedule's warm-up, skipped when an offline
        dataset pre-fills the buffer): jittable like `act`, with extras shaped like `act`'s, as
        both fill one buffer. Default: uniform actions in [-1, 1]; a method acting through a
        latent space explores there instead."""
        action, extras = self.act(acting, obs, key)
        return jax.random.uniform(key, action.shape, action.dtype, -1.0, 1.0), extras
