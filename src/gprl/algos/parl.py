"""PA-RL, policy-agnostic RL (Sobol Mark et al. 2024, "Policy Agnostic RL: Offline RL and Online
RL Fine-Tuning of Any Class and Backbone"; reference code MaxSobolMark/PolicyAgnosticRL): a base
policy of any kind, trained only by its own imitation loss, on actions a critic has improved.

The acting policy is an optimisation over the base's samples, at every decision:

1. global: sample N actions from the base for the state and keep the top m by Q;
2. local: take a few gradient-ascent steps on each kept action w.r.t. Q, clipped to the action
   box, each keeping the iterate of highest Q (the reference's keep_action_with_max_value);
3. act with the argmax of Q over the m optimised actions.

The base learns by distillation: its own loss of gprl.policies (flow matching, DDPM noise
prediction, Gaussian likelihood, ...) on the optimised action for each replayed state. So one
code path serves every `gprl pretrain` kind. The critics learn by TD with the same optimised-action
policy in the backup, r + gamma Q'(s', argmax), the online critics optimising and the target
critics valuing, as in gprl.algos.expo. The critic is a plain TD ensemble (gprl.algos.fql's
FlowCritic, whose BC flow's place the base takes): the paper's Cal-QL / IQL critic pre-trains
offline; here offline updates (--dataset, offline_updates) use the same TD critic, and online
runs may keep the dataset in the buffer (offline_fraction: RLPD-style balanced batches). Critics
and base learn in one gradient step on the sum of their losses (Adam at learning_rate for the
critics, base_learning_rate for the base).

The critic warm-up: the first critic_warmup_updates gradient steps (offline ones included; by
default with --init, the whole offline phase and 1000 online steps, none without) train only
the critics. Meanwhile the run acts, and the TD backup values, with the base's own sample (noise
scaled as its pretrain run draws it), so the critics learn Q of the base (policy evaluation,
which an argmax over an untrained critic cannot overestimate) from data as good as the base's;
the online part puts the base's own actions, which the critics will rank, into their training
data. The base's weights and its Adam state stay exactly as they were; distillation then starts
from a critic that ranks the base's samples by their returns. Distilling from the first step
pulled a pretrained base toward the argmax of random critics (Meta-World pick-place from a BC
start of 0.5 success: 0.0 after 240 gradient steps). Acting with the optimisation during the
warm-up, only without distillation, was the alternative: it would collect data, and evaluate,
with an untrained critic's choices, and back up their overestimated values.
The limit (that smoke, 10 episodes per evaluation, success 0.7 at the base's mode): the default
warm-up (480 offline, 1000 online steps) keeps it to its end, 3800 env steps; after it success
fell to 0.1, then 0.0. A frozen base (learning rate 1e-12) acting by the argmax held 0.3-0.5,
about its random samples' 0.46: this plain TD critic, without the conservatism of the
reference's Cal-QL, ranks the base's samples no better than chance, and distilling its choices
undoes the base (after 240 and 480 distillation steps: 0.0 and 0.0 at 5e-5, 0.4 and 0.2 at
1e-5).

The base: a `gprl pretrain` run (--init) of any kind, chunked or not (a chunked one arrives as its
flat chunk: one decision of Ta x d actions, see gprl.algos.base); without --init, an untrained
policy of base_kind (flow by default) that learns online by the same distillation. Its samples
use unit noise whatever the run's noise_scale (a Gaussian base acts from its mean in `gprl eval`;
here its spread is what the global optimisation ranks), but for the warm-up's. The deterministic
policy ranks N fixed noises, the first zero (the base's mode, which alone decides during the
warm-up, as every fine-tuner evaluates its pretrained start). Its observation and action maps stay
those of its pretrain run, fixed: the run keeps its --init (RUN_DIR/initial_policy), so a resumed
run rebuilds them. Before learning starts the run acts with the base's own samples.

A base learns toward actions only as far as its kind reaches them: a DDPM clips its denoised
action to its pretrain data's per-dimension range (clip_denoised), so a pretrained DDPM's samples,
and what distillation can teach it, stay within the range of its demonstrations.

Reference settings (its state-task configs): N = 32, top m = 10, 10 local steps of 3e-4 along
the gradient of the critics' mean, the online critics ranking and optimising, acting and
evaluating with the argmax; a DDPM base (3 residual blocks x 256, 5 denoising steps, distilled
at learning rate 5e-5); Cal-QL critics of 2 x 256 with LayerNorm (an ensemble of 10,
distributional), learning rate 3e-4, batch 256, offline and online data half and half
(mixing_ratio 0.5: offline_fraction here); the critic pre-trained offline (Cal-QL) before the
base distils. Departures: the critic (above) and its warm-up in place of Cal-QL's pre-training;
the base distils the argmax, where those configs distil all m optimised actions (distill_argmax
False).

CPU defaults here: N = 8, m = 4, 5 local steps of 3e-4, 2 x 64 critics and flow, critic
learning rate 3e-4, the base's 5e-5 with --init (as the reference) and 3e-4 without, a critic
warm-up with --init of the offline phase and 1000 online gradient steps, UTD 1. Each gradient
step samples N base actions (K flow steps each) and takes m x local_steps critic gradients, for
the batch's states (distillation targets) and for their next states (TD target); a warm-up step
samples one base action each.
"""

from dataclasses import dataclass, replace

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gprl.algos.base import check_learning_rates, check_networks
from gprl.algos.fql import FlowCritic, FlowCriticConfig, evaluation_noises
from gprl.algos.imitating_base import (
    check_base,
    pretrained_base,
    untrained_base,
    with_observation_maps,
)
from gprl.policies import POLICIES

OPTIMISED = "optimised_action"
"""The batch's extras entry that carries the distillation targets into the base's loss."""
PRETRAINED_BASE_LEARNING_RATE = 5e-5
PRETRAINED_ONLINE_WARMUP_UPDATES = 1000


@dataclass(frozen=True)
class PARLConfig(FlowCriticConfig):
    """The critics as FQL's, with their CPU defaults (2 x 64; reference: 2 x 256, Cal-QL);
    `flow` is the network of an untrained flow base (no --init)."""

    learning_rate: float = 3e-4
    """Adam step size of the critics (reference: 3e-4)."""
    normalize_observations: bool | None = None
    """Standardise observations with the offline dataset's statistics (FQL's option); None: on
    without --init, off with it, whose base standardises them with its pretrain statistics
    (the critics then see them as the env gives them). On with --init is refused: the base
    would standardise them twice."""

    num_samples: int = 8
    """Base actions sampled per state, ranked by Q (reference N: 32)."""
    num_kept: int = 4
    """Of them, the top m by Q that the local optimisation refines (reference: 10)."""
    local_steps: int = 5
    """Gradient-ascent steps on each kept action w.r.t. Q (reference: 10); 0: global only."""
    local_step_size: float = 3e-4
    """Step size of the local ascent, in action units per unit of dQ/da (reference: 3e-4; it
    moves an action by step x |dQ/da| per step, so its reach follows the reward scale)."""
    base_kind: str = "flow"
    """Kind of the untrained base when there is no --init (a `gprl pretrain` kind: flow, ddpm,
    gaussian, ...); its network is `flow` for a flow, else the kind's RL defaults. With --init
    the pretrain run's kind and network are used."""
    base_sampling_steps: int | None = None
    """Integration (denoising) steps of the base when sampled; None: its own (flow.num_steps
    untrained, the pretrain run's with --init)."""
    base_learning_rate: float | None = None
    """Adam step size of the base's distillation; None: 5e-5 with --init (the reference's, for
    its pretrained DDPM: a pretrained base moves slowly toward the critic's choices), else
    learning_rate."""
    critic_warmup_updates: int | None = None
    """Gradient steps at the start (offline ones included) that train only the critics, the run
    acting, and backing up, with the base's own samples as its pretrain run draws them; the base
    then distils from a critic of its own returns, not an untrained one. None: with --init, all
    offline updates and 1000 online ones (five time constants of the target critics at tau
    0.005, on the base's own actions), else 0."""

    def validate(self) -> None:
        super().validate()
        if self.base_learning_rate is not None:
            check_learning_rates(self, "base_learning_rate")
        if self.critic_warmup_updates is not None and self.critic_warmup_updates < 0:
            raise ValueError(
                f"critic_warmup_updates must be non-negative, got {self.critic_warmup_updates}"
            )
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {self.num_samples}")
        if not 1 <= self.num_kept <= self.num_samples:
            raise ValueError(
                f"num_kept must be between 1 and num_samples ({self.num_samples}), got "
                f"{self.num_kept}"
            )
        if self.local_steps < 0:
            raise ValueError(f"local_steps must be non-negative, got {self.local_steps}")
        if not (np.isfinite(self.local_step_size) and self.local_step_size >= 0):
            raise ValueError(
                f"local_step_size must be a non-negative number, got {self.local_step_size}"
            )
        if self.base_kind not in POLICIES:
            raise ValueError(
                f"base_kind must be one of {', '.join(POLICIES)}, got '{self.base_kind}'"
            )
        if self.base_sampling_steps is not None and self.base_sampling_steps < 1:
            raise ValueError(
                f"base_sampling_steps must be at least 1, got {self.base_sampling_steps}"
            )


def resolved_config(config: PARLConfig, pretrained: bool, offline_updates: int) -> PARLConfig:
    """config with its defaults that depend on --init and the offline phase (offline_updates
    gradient steps) filled in."""
    config = with_observation_maps(config, pretrained)
    if config.base_learning_rate is None:
        rate = PRETRAINED_BASE_LEARNING_RATE if pretrained else config.learning_rate
        config = replace(config, base_learning_rate=rate)
    if config.critic_warmup_updates is None:
        updates = offline_updates + PRETRAINED_ONLINE_WARMUP_UPDATES if pretrained else 0
        config = replace(config, critic_warmup_updates=updates)
    return config


class PARL(FlowCritic):
    pretrained_policy = "optional"
    fine_tunes_chunks = True

    def __init__(
        self,
        config: PARLConfig,
        spec,
        num_envs: int,
        total_steps: int,
        pretrained=None,
        networks=None,
    ):
        """networks (gprl.networks.CustomNetworks): a critic torso, torso(obs, action), for every
        critic; the base keeps its own network (its pretrain run's, or base_kind's)."""
        check_networks(networks, ("critic",), "pa-rl")
        super().__init__(config, spec, num_envs, total_steps, networks)
        check_base(pretrained, spec, "pa-rl", "distils into")
        schedule = self.schedule
        offline_updates = (
            schedule.offline_iterations * schedule.calls_per_iteration * schedule.gradient_steps
        )
        self.config = config = resolved_config(config, pretrained is not None, offline_updates)
        self.flow = (
            untrained_base(config.base_kind, config.flow, spec, config.base_sampling_steps)
            if pretrained is None
            else pretrained_base(pretrained, config.base_sampling_steps)
        )
        rates = {"base": config.base_learning_rate, "critic": config.learning_rate}
        self.optimizer = optax.multi_transform(
            {part: optax.adam(rate) for part, rate in rates.items()},
            {"flow": "base", "critic": "critic"},
        )

    def init(self, key) -> dict:
        return super().init(key) | {"updates": jnp.asarray(0, jnp.int32)}

    def _acting_policy(self, state):
        warming_up = state["updates"] < self.config.critic_warmup_updates
        return self._policy_params(state["params"]) | {"warming_up": warming_up}

    def _policy_params(self, params):
        return {"base": params["flow"], "critic": params["critic"]}

    def _sample(self, policy, obs, key):
        noise, step_noise = self._noises(key, obs.shape[:-1])
        return self.decide(policy, obs, noise, step_noise)[0]

    def _deterministic(self, policy, obs):
        # The same N noises for every state (as EXPO and QC), zero step noises. The first is
        # zero: during the warm-up the base's mode decides, as other fine-tuners evaluate their
        # pretrained start, and after it the mode stays among the candidates.
        noise = evaluation_noises(
            self.config.num_samples, self.flow.noise_dim, obs.shape[:-1], zero_first=True
        )
        return self.decide(policy, obs, noise)[0]

    def decide(self, policy, obs, noise, step_noise=None):
        """`optimised`, or during the critic warm-up the base's own sample from the first noise
        (scaled as its pretrain run draws it: a Gaussian base acts from its mean)."""
        return jax.lax.cond(
            policy["warming_up"], self._base_decision, self.optimised, policy, obs, noise,
            step_noise,
        )  # fmt: skip

    def _base_decision(self, policy, obs, noise, step_noise=None):
        scale = self.flow.chunk_policy.noise_scale
        first_step_noise = None if step_noise is None else scale * step_noise[..., 0, :]
        action = self.flow.sample(policy["base"], obs, scale * noise[..., 0, :], first_step_noise)
        q = self._q(policy["critic"], obs, action).mean()
        return action, q, q

    def explore(self, acting, obs, key):
        """Before learning starts: one sample of the base per state."""
        noise, step_noise = self._noises(key, obs.shape[:-1], 1)
        step_noise = None if step_noise is None else step_noise[..., 0, :]
        obs = self._standardised(acting["obs_norm"], obs)
        base = acting["policy"]["base"]
        return self.flow.sample(base, obs, noise[..., 0, :], step_noise), {}

    def _noises(self, key, batch_shape, count=None):
        """Unit noises of `count` (default N) base samples per state, and their step noises."""
        shape = (*batch_shape, count or self.config.num_samples, self.flow.noise_dim)
        return self.flow.noises(key, shape)

    def optimised(self, policy, obs, noise, step_noise=None):
        """The PA-RL action for obs (..., obs_dim) from base noises (..., N, noise_dim): the top
        num_kept of the N base samples by Q, each ascended along dQ/da, then the best by Q.
        Returns (action, the mean Q of the base samples, the Q of the action)."""
        config = self.config
        repeated = jnp.broadcast_to(obs[..., None, :], (*noise.shape[:-1], obs.shape[-1]))
        samples = self.flow.sample(policy["base"], repeated, noise, step_noise)
        sample_q = self._q(policy["critic"], repeated, samples)
        _, top = jax.lax.top_k(sample_q, config.num_kept)
        kept = jnp.take_along_axis(samples, top[..., None], axis=-2)
        kept_obs = repeated[..., : config.num_kept, :]
        ascended, q = self._ascend(policy["critic"], kept_obs, kept)
        best = jnp.argmax(q, axis=-1)
        action = jnp.take_along_axis(ascended, best[..., None, None], axis=-2)[..., 0, :]
        return action, sample_q.mean(), jnp.max(q, axis=-1).mean()

    def _ascend(self, critic, obs, actions):
        """local_steps of a <- clip(a + step dQ/da) on each action, keeping each one's iterate
        of highest Q; returns (those iterates, their Q)."""

        def summed_q(actions):
            q = self._q(critic, obs, actions)
            return q.sum(), q

        def step(carry, _):
            current, best, best_q = carry
            (_, q), grad = jax.value_and_grad(summed_q, has_aux=True)(current)
            better = q > best_q
            best = jnp.where(better[..., None], current, best)
            best_q = jnp.maximum(q, best_q)
            moved = jnp.clip(current + self.config.local_step_size * grad, -1.0, 1.0)
            return (moved, best, best_q), None

        start_q = jnp.full(actions.shape[:-1], -jnp.inf)
        (last, best, best_q), _ = jax.lax.scan(
            step, (actions, actions, start_q), None, length=self.config.local_steps
        )
        last_q = self._q(critic, obs, last)
        better = last_q > best_q
        return jnp.where(better[..., None], last, best), jnp.maximum(last_q, best_q)

    def _update(self, state, batch, key):
        """FlowCritic's gradient step, the base imitating the optimised actions of the batch's
        states (found with the parameters before the step); during the critic warm-up only the
        critics learn."""
        target_key, noise_key = jax.random.split(key)
        noise, step_noise = self._noises(noise_key, batch.obs.shape[:-1])
        policy = self._acting_policy(state)
        optimised, base_q, optimised_q = self.decide(policy, batch.obs, noise, step_noise)
        batch = batch._replace(extras=batch.extras | {OPTIMISED: optimised})
        updated, info = super()._update(state, batch, target_key)
        updated = held_base(state, updated, policy["warming_up"])
        return updated | {"updates": state["updates"] + 1}, info | {
            "base/q": base_q,
            "base/optimised_q": optimised_q,
            "base/distilling": 1.0 - policy["warming_up"].astype(jnp.float32),
        }

    def _flow_loss(self, flow, batch, key):
        loss, _ = self.flow.loss(flow, batch.obs, batch.extras[OPTIMISED], key)
        return loss, {"base/distill_loss": loss}


def held_base(before: dict, after: dict, holding) -> dict:
    """after, with the base's weights and its Adam state as in before where holding: exactly
    unchanged, and its first distillation steps then a fresh Adam's (after a warm-up of zero
    gradients, its spent bias correction would make them several times too large)."""

    def keep(old, new):
        return jnp.where(holding, old, new)

    flow = jax.tree.map(keep, before["params"]["flow"], after["params"]["flow"])
    inner = after["opt"].inner_states
    base_opt = jax.tree.map(keep, before["opt"].inner_states["base"], inner["base"])
    return after | {
        "params": after["params"] | {"flow": flow},
        "opt": after["opt"]._replace(inner_states=inner | {"base": base_opt}),
    }
