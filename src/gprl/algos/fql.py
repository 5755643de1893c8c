"""Flow Q-Learning (Park, Li and Levine 2025, arXiv 2502.02538; reference code seohongpark/fql).

Three networks learn together from replay batches, in one gradient step on the sum of their
losses (one Adam, as the reference):

- a BC flow policy (gprl.policies.flow, K Euler steps) fitted by flow matching to the buffer's
  actions, whatever their quality;
- a one-step policy mu(s, z), z ~ N(0, I), which is what acts: it minimises
  alpha * ||mu(s, z) - ODE(s, z)||^2 - Q(s, mu(s, z)), staying near the BC flow's action for
  the same noise while climbing the critic (-Q optionally divided by the batch's mean |Q|, which
  makes alpha independent of the reward scale);
- an ensemble of critics regressing onto r + gamma * (1 - terminated) * Q'(s', mu(s', z')),
  Q' the mean (or min) of Polyak-averaged targets.

Offline, offline-to-online and online runs use the same update; the loop decides what the
buffer holds (see gprl.algos.offpolicy). Acting is one call of mu with fresh noise. The
deterministic evaluation policy is mu(s, 0), the mode of the noise; the reference evaluates with
fresh noise, as it acts.

Departures from the reference networks, none of which changes the method: gprl's flow network
embeds t sinusoidally (the reference feeds t raw), every MLP is orthogonally initialised, and
LayerNorm sits before the activation.

:class:`FlowCritic` is what FQL shares with the methods that act through the BC flow in other
ways (gprl.algos.qc): the BC flow, the critics and their TD target, learning in one gradient
step; a subclass adds the policy that acts.
"""

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import jax
import jax.numpy as jnp
import optax

from gprl.algos.base import OffPolicyAlgorithm, check_learning_rates, check_networks
from gprl.algos.imitating_base import ImitatingBase
from gprl.algos.offpolicy import (
    OffPolicyConfig,
    floored_at_return,
    off_policy_schedule,
    soft_update,
)
from gprl.networks import MLP, CustomNetworks, QEnsemble
from gprl.policies import FlowPolicy, FlowPolicyConfig
from gprl.rl_math import normalize, running_stats_init
from gprl.types import EnvSpec

EVALUATION_NOISE_SEED = 0
"""Seeds the N fixed noises that deterministic evaluations choose among."""


def evaluation_noises(count: int, dim: int, batch_shape, zero_first: bool = False):
    """count fixed noises of dim, the same for each of batch_shape's observations: a
    deterministic evaluation's candidates. zero_first: the first is zero, the base's mode."""
    noise = jax.random.normal(jax.random.PRNGKey(EVALUATION_NOISE_SEED), (count, dim))
    if zero_first:
        noise = noise.at[0].set(0.0)
    return jnp.broadcast_to(noise, (*batch_shape, count, dim))


DEFAULT_HIDDEN = (64, 64)
"""Widths of all three networks, sized for 300 env steps/s at update-to-data 1 on 2 CPU cores:
2 x 128 took 2.6x and the reference's 4 x 512 GELU ~120x longer per gradient step
(benchmarks/offpolicy.py, on a shared machine)."""


def _default_flow() -> FlowPolicyConfig:
    return FlowPolicyConfig(hidden=DEFAULT_HIDDEN, activation="relu", num_steps=10)


def check_target_subset(config) -> None:
    """Refuse a target_subset that is not a count of the config's critics."""
    subset = config.target_subset
    if subset is not None and not 1 <= subset <= config.num_critics:
        raise ValueError(
            f"target_subset must be between 1 and num_critics ({config.num_critics}), got {subset}"
        )


@dataclass(frozen=True)
class FlowCriticConfig(OffPolicyConfig):
    flow: FlowPolicyConfig = field(default_factory=_default_flow)
    """The BC flow policy (num_steps: its Euler steps when sampled, 10 as the reference; the
    reference's network is 4 x 512 GELU)."""
    critic_hidden: tuple[int, ...] = DEFAULT_HIDDEN
    """Hidden widths of each critic (reference: 512 512 512 512)."""
    activation: str = "relu"
    """Hidden activation of the critics and of a one-step policy (tanh, relu, silu, gelu, elu).
    The reference's GELU costs 1.5-2.4x the gradient step here (a 10-step flow evaluates it ten
    times per sample)."""
    num_critics: int = 2
    """Critics in the ensemble."""
    critic_layer_norm: bool = True
    """LayerNorm after each hidden layer of the critics (reference: on)."""
    q_aggregation: Literal["mean", "min"] = "mean"
    """How the critics combine, in the TD target and where the policy climbs them: mean
    (reference default) or min (clipped double Q, which the reference suggests for some
    tasks)."""
    target_subset: int | None = None
    """If set, the TD target is the minimum of this many target critics drawn at random for
    each gradient step (REDQ's M; RLPD and EXPO take 2 of 10), in place of q_aggregation over
    all of them; the policy still climbs q_aggregation over all."""
    learning_rate: float = 3e-4
    """Adam step size of all networks."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Polyak step of the target critics after every gradient step."""
    normalize_observations: bool = True
    """Standardise every network's observations with the offline dataset's mean and standard
    deviation (--dataset; fixed for the run, kept in its checkpoints, clipped to +-10, as
    `gprl pretrain` does). Without a dataset observations stay as the env gives them. The
    references do not standardise; on Meta-World's raw observations a BC flow fitted to 5
    demonstrations never succeeds (benchmarks/manipulation.py)."""
    values_before_added: ClassVar[dict] = {"normalize_observations": False}
    """Runs saved before normalize_observations existed saw raw observations."""

    def validate(self) -> None:
        super().validate()
        check_learning_rates(self, "learning_rate")
        if not self.num_critics > 0:
            raise ValueError(f"num_critics must be positive, got {self.num_critics}")
        check_target_subset(self)
        for name in ("gamma", "tau"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.flow.num_steps < 1:
            raise ValueError(f"flow.num_steps must be at least 1, got {self.flow.num_steps}")


@dataclass(frozen=True)
class BufferImitationConfig(FlowCriticConfig):
    """A flow critic whose BC flow imitates the replay buffer's transitions (FQL, QC-FQL, QC)."""

    imitate_returns_above: float | None = None
    """If set, the BC flow imitates only the transitions whose episode went on to return more
    than this (discounted return-to-go, tracked by the replay buffer; unknown, and so left out,
    for running episodes and those a time limit cut). On a sparse-reward task that ends on
    success, 0 keeps the demonstrations and the episodes that succeeded, and leaves out the
    failures that fill the buffer online (filtered behaviour cloning). None: every transition,
    as the references."""

    def tracks_returns(self) -> bool:
        return super().tracks_returns() or self.imitate_returns_above is not None

    def validate(self) -> None:
        super().validate()
        threshold = self.imitate_returns_above
        if threshold is not None and not math.isfinite(threshold):
            raise ValueError(f"imitate_returns_above must be finite or None, got {threshold}")


@dataclass(frozen=True)
class FQLConfig(BufferImitationConfig):
    actor_hidden: tuple[int, ...] = DEFAULT_HIDDEN
    """Hidden widths of the one-step policy mu(s, z) (reference: 512 512 512 512)."""
    actor_layer_norm: bool = False
    """LayerNorm after each hidden layer of the one-step policy (reference: off)."""
    alpha: float = 10.0
    """Weight of the distillation term ||mu(s, z) - ODE(s, z)||^2 against -Q: the method's one
    per-task knob (reference values 3 to 1000 on OGBench/D4RL; 0.03 to 10 with
    normalize_q_loss)."""
    normalize_q_loss: bool = False
    """Divide -Q in the actor's loss by the batch's mean |Q| (no gradient through it), so that
    alpha does not depend on the reward scale (the reference recommends it for new tasks)."""

    def validate(self) -> None:
        super().validate()
        if not self.alpha > 0:
            raise ValueError(f"alpha must be positive, got {self.alpha}")


class FlowCritic(OffPolicyAlgorithm):
    """A BC flow and an ensemble of critics learning from replay batches in one gradient step
    on the sum of their losses (one Adam, as the reference), and a policy that acts, which a
    subclass defines: its parameters (`_init_policy`, `_policy_params`), how it samples
    (`_sample`, `_deterministic`) and its losses (`_policy_losses`). Every network sees
    observations standardised with the offline dataset's statistics (normalize_observations):
    acting and the gradient step standardise them before a subclass's code sees them."""

    def __init__(
        self,
        config: FlowCriticConfig,
        spec: EnvSpec,
        num_envs: int,
        total_steps: int,
        networks=None,
    ):
        """networks (gprl.networks.CustomNetworks): a velocity torso for the BC flow and a critic
        torso, torso(obs, action), for every critic."""
        self.schedule = off_policy_schedule(config, num_envs, total_steps)
        check_networks(networks, ("critic", "velocity"), type(self).__name__)
        given = networks or CustomNetworks()
        self.num_iterations = self.schedule.num_iterations
        self.config = config
        self.spec = spec
        self.flow = self._build_flow(given.velocity)
        self.critic = QEnsemble(
            config.critic_hidden,
            config.num_critics,
            config.activation,
            config.critic_layer_norm,
            given.critic,
        )
        self.optimizer = optax.adam(config.learning_rate)

    def _build_flow(self, velocity_torso):
        """The policy in the BC flow's place (a subclass may put another kind there)."""
        return FlowPolicy(self.spec.action_dim, self.config.flow, velocity_torso)

    def _flow_noises(self, key, shape):
        """Unit noises of samples of the policy in the BC flow's place (shape (..., action_dim)),
        and the step noises it draws where it is a pretrained kind that does (else None)."""
        if isinstance(self.flow, ImitatingBase):
            return self.flow.noises(key, shape)
        return jax.random.normal(key, shape), None

    def _flow_actions(self, flow, obs, noise, step_noise=None):
        """Its actions, clipped to the box, from noises (..., action_dim)."""
        drawn = () if step_noise is None else (step_noise,)
        return jnp.clip(self.flow.sample(flow, obs, noise, *drawn), -1.0, 1.0)

    def init(self, key) -> dict:
        flow_key, policy_key, critic_key = jax.random.split(key, 3)
        obs = jnp.zeros((1, self.spec.obs_dim))
        action = jnp.zeros((1, self.spec.action_dim))
        params = {
            "flow": self.flow.init(flow_key, self.spec.obs_dim),
            "critic": self.critic.init(critic_key, obs, action),
        } | self._init_policy(policy_key)
        return {
            "params": params,
            "target_critic": params["critic"],
            "opt": self.optimizer.init(params),
            "iteration": jnp.asarray(0, jnp.int32),
            "obs_norm": running_stats_init((self.spec.obs_dim,)),
        }

    def with_offline_data(self, state, transitions: dict) -> dict:
        if not self.config.normalize_observations:
            return state
        obs = jnp.asarray(transitions["obs"], jnp.float32)
        count = jnp.asarray(len(obs), jnp.float32)
        return state | {"obs_norm": {"mean": obs.mean(0), "var": obs.var(0), "count": count}}

    def acting_params(self, state):
        return {"policy": self._acting_policy(state), "obs_norm": state["obs_norm"]}

    def _acting_policy(self, state):
        """What the policy acts with (a subclass may add to its parameters)."""
        return self._policy_params(state["params"])

    @staticmethod
    def _standardised(obs_norm, obs):
        """obs standardised with the offline data's statistics; as they are where none were
        taken (statistics of no data: count below one)."""
        return jnp.where(obs_norm["count"] >= 1.0, normalize(obs, obs_norm), obs)

    def act(self, acting, obs, key):
        obs = self._standardised(acting["obs_norm"], obs)
        return self._sample(acting["policy"], obs, key), {}

    def act_deterministic(self, acting, obs):
        obs = self._standardised(acting["obs_norm"], obs)
        return self._deterministic(acting["policy"], obs)

    def _q(self, critic, obs, action):
        q = self.critic.apply(critic, obs, action)
        return q.min(0) if self.config.q_aggregation == "min" else q.mean(0)

    def _target_q(self, target_critic, obs, action, key):
        """The target critics' value of action: q_aggregation over all of them, or the minimum
        of target_subset of them drawn with key."""
        subset = self.config.target_subset
        if subset is None:
            return self._q(target_critic, obs, action)
        q = self.critic.apply(target_critic, obs, action)
        chosen = jax.random.choice(key, q.shape[0], (subset,), replace=False)
        return q[chosen].min(0)

    def _td_target(self, state, batch, key):
        """r + gamma V(s'), ended only by terminations."""
        continues = 1.0 - batch.terminated.astype(jnp.float32)
        next_q = self._next_q(state, batch.next_obs, key)
        return batch.reward + self.config.gamma * continues * next_q

    def _next_q(self, state, next_obs, key):
        return self._sampled_next_q(state, next_obs, key)

    def _sampled_next_q(self, state, next_obs, key):
        """Q_target(s', a'), a' a sample of the acting policy."""
        next_action = self._sample(self._acting_policy(state), next_obs, key)
        subset_key = jax.random.fold_in(key, 1)
        return self._target_q(state["target_critic"], next_obs, next_action, subset_key)

    def _best_next_q(self, state, next_obs, key, count: int):
        """The max of Q_target(s', a) over count policy samples and count uniform actions in the
        box (count 0: one policy sample). Q-learning's max, estimated: the critics then value every
        optimum the data reached, not only those the current policy heads for."""
        if count == 0:
            return self._sampled_next_q(state, next_obs, key)
        sample_key, uniform_key = jax.random.split(key)
        shape = (*next_obs.shape[:-1], count, self.spec.action_dim)
        obs_shape = (*shape[:-1], next_obs.shape[-1])
        sampled = self._sample(
            self._acting_policy(state),
            jnp.broadcast_to(next_obs[..., None, :], obs_shape),
            sample_key,
        )
        uniform = jax.random.uniform(uniform_key, shape, minval=-1.0, maxval=1.0)
        candidates = jnp.concatenate([sampled, uniform], axis=-2)
        candidate_obs = jnp.broadcast_to(
            next_obs[..., None, :], (*shape[:-2], 2 * count, obs_shape[-1])
        )
        subset_key = jax.random.fold_in(key, 1)
        target = self._target_q(state["target_critic"], candidate_obs, candidates, subset_key)
        return target.max(-1)

    def _critic_loss(self, critic, batch, target):
        q = self.critic.apply(critic, batch.obs, batch.action)
        loss = jnp.mean((q - target) ** 2)
        return loss, {
            "critic/loss": loss,
            "critic/q_mean": q.mean(),
            "critic/q_max": q.max(),
            "critic/q_min": q.min(),
        }

    def _flow_loss(self, flow, batch, key):
        weights = self._imitated(batch)
        loss, _ = self.flow.loss(flow, batch.obs, batch.action, key, weights=weights)
        if weights is None:
            return loss, {"flow/loss": loss}
        return loss, {"flow/loss": loss, "flow/imitated_share": weights.mean()}

    def _imitated(self, batch):
        """1 for the transitions the BC flow imitates, 0 for the others; None: all of them."""
        config = self.config
        if not isinstance(config, BufferImitationConfig) or config.imitate_returns_above is None:
            return None
        return (batch.return_to_go > config.imitate_returns_above).astype(jnp.float32)

    def update(self, state, batch, key):
        batch = batch._replace(
            obs=self._standardised(state["obs_norm"], batch.obs),
            next_obs=self._standardised(state["obs_norm"], batch.next_obs),
        )
        return self._update(state, batch, key)

    def _update(self, state, batch, key):
        """One gradient step on a batch of standardised observations."""
        target_key, flow_key, policy_key = jax.random.split(key, 3)
        current = state["params"]
        target, floor_share = floored_at_return(
            self.config, self._td_target(state, batch, target_key), batch
        )

        def total_loss(params):
            losses = [
                self._critic_loss(params["critic"], batch, target),
                self._flow_loss(params["flow"], batch, flow_key),
                *self._policy_losses(params, current, batch, policy_key),
            ]
            metrics = {}
            for _, info in losses:
                metrics |= info
            return sum(loss for loss, _ in losses), metrics

        grads, info = jax.grad(total_loss, has_aux=True)(current)
        updates, opt = self.optimizer.update(grads, state["opt"], current)
        params = optax.apply_updates(current, updates)
        state = state | {
            "params": params,
            "target_critic": soft_update(state["target_critic"], params["critic"], self.config.tau),
            "opt": opt,
        }
        return state, info | {
            "critic/target_mean": target.mean(),
            "critic/return_floor_share": floor_share,
        }

    # ----- the acting policy, defined by a subclass ---------------------------------------------

    def _init_policy(self, key) -> dict:
        """Parameters of the acting policy beside the flow's and the critics', in the same
        gradient step."""
        return {}

    def _policy_params(self, params):
        """What the policy acts with, from all parameters (the acting parameters)."""
        raise NotImplementedError

    def _sample(self, policy, obs, key):
        """Stochastic actions in [-1, 1] of the policy, to act and in the TD target."""
        raise NotImplementedError

    def _deterministic(self, policy, obs):
        """The evaluation policy's actions in [-1, 1]."""
        raise NotImplementedError

    def _policy_losses(self, params, current, batch, key) -> list:
        """(loss, metrics) pairs of the policy's own losses on `params` (differentiated), with
        `current` the parameters before this gradient step."""
        return []


class FQL(FlowCritic):
    def __init__(
        self, config: FQLConfig, spec: EnvSpec, num_envs: int, total_steps: int, networks=None
    ):
        """networks (gprl.networks.CustomNetworks): a velocity torso for the BC flow and a critic
        torso, torso(obs, action), for every critic; the one-step policy mu(s, z) takes none."""
        super().__init__(config, spec, num_envs, total_steps, networks)
        self.actor = MLP(
            config.actor_hidden,
            spec.action_dim,
            config.activation,
            layer_norm=config.actor_layer_norm,
        )

    def _init_policy(self, key) -> dict:
        inputs = jnp.zeros((1, self.spec.obs_dim + self.spec.action_dim))
        return {"actor": self.actor.init(key, inputs)}

    def _policy_params(self, params):
        return params["actor"]

    def _one_step(self, actor, obs, noise):
        """mu(s, z), unclipped (the distillation compares raw outputs, as the reference)."""
        return self.actor.apply(actor, jnp.concatenate([obs, noise], axis=-1))

    def _sample(self, actor, obs, key):
        noise = jax.random.normal(key, (*obs.shape[:-1], self.spec.action_dim))
        return jnp.clip(self._one_step(actor, obs, noise), -1.0, 1.0)

    def _deterministic(self, policy, obs):
        noise = jnp.zeros((*obs.shape[:-1], self.spec.action_dim))
        return jnp.clip(self._one_step(policy, obs, noise), -1.0, 1.0)

    def _policy_losses(self, params, current, batch, key) -> list:
        noise = jax.random.normal(key, batch.action.shape)
        flow_action = jnp.clip(self.flow.sample(current["flow"], batch.obs, noise), -1.0, 1.0)
        # The actor climbs the critics as they were before this step (as the reference).
        return [self._actor_loss(params["actor"], current["critic"], batch, noise, flow_action)]

    def _actor_loss(self, actor, critic, batch, noise, flow_action):
        config = self.config
        action = self._one_step(actor, batch.obs, noise)
        distill_loss = jnp.mean((action - flow_action) ** 2)
        q = self._q(critic, batch.obs, jnp.clip(action, -1.0, 1.0))
        q_loss = -q.mean()
        if config.normalize_q_loss:
            q_loss = q_loss / jax.lax.stop_gradient(jnp.abs(q).mean())
        loss = config.alpha * distill_loss + q_loss
        return loss, {
            "actor/loss": loss,
            "actor/distill_loss": distill_loss,
            "actor/q_loss": q_loss,
            "actor/q": q.mean(),
            "actor/mse": jnp.mean((action - batch.action) ** 2),
        }
