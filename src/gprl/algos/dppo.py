"""DPPO, Diffusion Policy Policy Optimization (arXiv 2409.00588; irom-princeton/dppo): PPO on a
DDPM / DDIM policy whose denoising steps are Gaussian transitions, one ratio per step.

The policy is gprl's `ddpm` kind (`gprl pretrain ddpm` with --init, or a fresh one): S denoising
steps, step k drawn from N(mean_k, std_k^2) with mean_k the sampler's own (the DDPM posterior
mean, or DDIM's with eta). As the reference:

- sampling floors the step's std at min_sampling_std (every step, the last included) and clips
  its standard normal noise at +-noise_clip;
- scoring floors it at min_logprob_std; the per-dimension log densities are clamped to
  [-5, 2] and averaged over the action's dimensions (all Ta x d of a chunk);
- only the last `fine_tuned_steps` steps are trained. A frozen copy of the starting network
  (the pretrained one with --init; the random initial one from scratch) runs the earlier
  steps, so that training the last steps leaves the earlier ones' transitions exactly where
  they were (one shared network would move them with no ratio and no clip on them). Only the
  trained part of the chain, x_{S-k}..x_S, is stored and re-scored;
- every trained step has its PPO ratio, all sharing the env step's normalised advantage,
  discounted by denoising_discount^j for a step j steps before the last; the clip range grows
  exponentially over the trained steps from first_step_clip_eps to clip_eps.

Not here: the reference's annealing of the number of trained steps, advantage clipping at
quantiles, the BC loss and a learned eta. The deterministic policy (evaluation) follows the
step means from zero noise: the pretrained run's policy at noise scale 0, to start with.
The flow-policy variant the FPO paper compares against is gprl.algos.dppo_flow (dppo-flow).
"""

from dataclasses import dataclass, field, fields, replace
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from gprl.algos.flow_actor_critic import FlowActorCritic, ValueCriticConfig
from gprl.algos.onpolicy import pretrained_action_map
from gprl.policies.ddpm import DDPMPolicy, DDPMPolicyConfig
from gprl.policies.gaussian import LOG_2PI

LOG_PROB_RANGE = (-5.0, 2.0)
"""Clamp of each per-dimension log density (the reference's, for a stable ratio)."""
SAMPLER_FIELDS = ("sampler", "num_steps", "eta")
"""The ddpm options that may change from a pretrain run's (the network stays the run's)."""


def _ddpm_defaults() -> DDPMPolicyConfig:
    # Two hidden layers, as the on-policy flow methods: every epoch re-scores each sample's
    # trained steps, one network call each (see gprl.algos.flow_onpolicy).
    return DDPMPolicyConfig(hidden=(64, 64))


@dataclass(frozen=True)
class DPPOConfig(ValueCriticConfig):
    ddpm: DDPMPolicyConfig = field(default_factory=_ddpm_defaults)
    """The DDPM / DDIM policy: noise network, K, sampler and its S steps (with --init, the
    pretrain run's network and K; its sampler, num_steps and eta may be changed)."""
    rollout_steps: int = 32
    """Decisions collected per env before each update, all in one minibatch: 4 times the
    updates of gprl's usual 128 at the same gradient steps per env step (Meta-World pick-place
    from BC: 0.83 mean success against 0.78, benchmarks/manipulation.py)."""
    num_minibatches: int = 1
    """Minibatches per epoch (one: the whole rollout, 5,120 trained steps with 16 envs)."""
    num_epochs: int = 10
    """Passes over each rollout per update (DPPO's update_epochs)."""
    learning_rate: float = 1e-4
    """Adam step size of the policy (DPPO's actor_lr), held constant (anneal_lr False)."""
    anneal_lr: bool = False
    """Decay both step sizes linearly to zero over training (the reference holds them)."""
    critic_learning_rate: float | None = 1e-3
    """Adam step size of the critic (DPPO's critic_lr: 10 times the policy's)."""
    values_before_added: ClassVar[dict] = {"critic_learning_rate": None}
    """Runs saved before critic_learning_rate existed stepped the critic at the policy's rate."""
    critic_hidden: tuple[int, ...] = (256, 256, 256)
    """Value network widths (DPPO's critic mlp_dims)."""
    critic_activation: str = "silu"
    """Value network activation (tanh, relu, silu, gelu, elu; SiLU where the reference uses
    Mish)."""
    max_grad_norm: float = float("inf")
    """Clip of the global norm of the policy's and critic's gradients together; inf (no clip)
    as DPPO's configs: gprl's usual 0.5 shrank the policy's steps most where episodes end
    (Meta-World pick-place from BC: 0.91 mean success without it, 0.83 with it)."""
    fine_tuned_steps: int | None = 10
    """Train only the last k of the S denoising steps, a frozen copy of the starting network
    running the earlier ones (DPPO's ft_denoising_steps; 10 of 20 in its configs); None trains
    all S."""
    min_sampling_std: float = 0.1
    """Floor of each step's std when sampling (DPPO's min_sampling_denoising_std)."""
    min_logprob_std: float = 0.1
    """Floor of each step's std in its log-likelihood (DPPO's min_logprob_denoising_std)."""
    noise_clip: float = 3.0
    """Clip each step's standard normal noise to [-c, c] (DPPO's randn_clip_value)."""
    denoising_discount: float = 0.99
    """Advantage discount per denoising step before the last (DPPO's gamma_denoising)."""
    clip_eps: float = 0.01
    """PPO clip range of the last denoising step (DPPO's clip_ploss_coef)."""
    first_step_clip_eps: float = 1e-3
    """PPO clip range of the first trained step (DPPO's clip_ploss_coef_base)."""
    clip_growth_rate: float = 3.0
    """Rate of the exponential growth of the clip range over the trained steps (DPPO's
    clip_ploss_coef_rate)."""

    def validate(self) -> None:
        super().validate()
        if self.fine_tuned_steps is not None and self.fine_tuned_steps < 1:
            raise ValueError(f"fine_tuned_steps must be positive, got {self.fine_tuned_steps}")
        if self.min_sampling_std < 0:
            raise ValueError(f"min_sampling_std must be non-negative, got {self.min_sampling_std}")
        for name in ("min_logprob_std", "noise_clip", "clip_growth_rate"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 < self.denoising_discount <= 1:
            raise ValueError(f"denoising_discount must be in (0, 1], got {self.denoising_discount}")
        if not 0 < self.first_step_clip_eps <= self.clip_eps:
            raise ValueError(
                f"first_step_clip_eps must be in (0, clip_eps={self.clip_eps}], got "
                f"{self.first_step_clip_eps}"
            )

    @classmethod
    def refuse_saved(cls, saved: dict) -> None:
        """Refuse, in one line, the record of a run of the flow variant saved under this name."""
        if "denoising_std" in saved:
            raise ValueError(
                "this run is the flow variant of DPPO, since renamed dppo-flow, whose runs "
                "cannot be resumed or loaded under the name dppo: train it again with `gprl "
                "train dppo-flow`, or finish it with the gprl that started it"
            )


def step_clip_ranges(config: DPPOConfig, trained: int) -> np.ndarray:
    """The PPO clip range of each of the `trained` steps, first to last: first_step_clip_eps
    growing exponentially to clip_eps (one trained step: clip_eps)."""
    if trained == 1:
        return np.array([config.clip_eps], np.float32)
    position = np.arange(trained) / (trained - 1)
    rate = config.clip_growth_rate
    growth = np.expm1(rate * position) / np.expm1(rate)
    base = config.first_step_clip_eps
    return (base + (config.clip_eps - base) * growth).astype(np.float32)


def step_advantage_weights(config: DPPOConfig, trained: int) -> np.ndarray:
    """denoising_discount^j of each trained step, j the steps after it: 1 for the last."""
    steps_before_last = np.arange(trained - 1, -1, -1)
    return (config.denoising_discount**steps_before_last).astype(np.float32)


class DPPO(FlowActorCritic):
    pretrained_policy = "optional"
    # A chunked --init arrives as the policy of the flat chunk: the log-likelihoods average
    # over all its dimensions, as the reference's over chunk and action dimensions.
    fine_tunes_chunks = True

    def __init__(self, config: DPPOConfig, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        trained = config.fine_tuned_steps or self.num_steps
        if trained > self.num_steps:  # with --init, S is the pretrain run's
            raise ValueError(
                f"fine_tuned_steps ({trained}) exceeds the policy's {self.num_steps} denoising "
                "steps; pass --dppo.fine-tuned-steps at most that"
            )
        self.first_trained_step = self.num_steps - trained
        self.coefficients = self.policy.step_coefficients()
        self.step_clips = jnp.asarray(step_clip_ranges(config, trained))
        self.step_weights = jnp.asarray(step_advantage_weights(config, trained))

    def _flow_policy(self, config, spec, pretrained, networks) -> DDPMPolicy:
        """The DDPM policy to train and the action map it acts through (see FlowOnPolicy)."""
        self.action_center, self.action_half_range = 0.0, 1.0
        noise_torso = None if networks is None else networks.velocity
        if pretrained is None:
            return DDPMPolicy(spec.action_dim, config.ddpm, noise_torso)
        if pretrained.kind != "ddpm":
            raise ValueError(
                f"DPPO fine-tunes 'ddpm' pretrain runs; --init holds a '{pretrained.kind}' "
                "policy (dppo-flow fine-tunes 'flow' ones)"
            )
        if noise_torso is not None:
            raise ValueError("--init takes the noise network from the pretrain run; give none")
        self.action_center, self.action_half_range = pretrained_action_map(config, pretrained)
        return with_sampler_options(pretrained.policy.policy, config.ddpm)

    # ----- state --------------------------------------------------------------------------------

    def init(self, key) -> dict:
        state = super().init(key)
        if self.first_trained_step > 0:
            state["frozen"] = {"base_policy": state["params"]["policy"]}
        return state

    def acting_params(self, state) -> dict:
        acting = super().acting_params(state)
        if self.first_trained_step > 0:
            acting["base_policy"] = state["frozen"]["base_policy"]
        return acting

    # ----- sampling -----------------------------------------------------------------------------

    def steps(self, first: int, count: int) -> dict:
        """The coefficients of denoising steps first .. first + count - 1."""
        return {name: value[first : first + count] for name, value in self.coefficients.items()}

    def denoise(self, acting, obs, noise, step_noise):
        """(x_S, chain of the trained steps x_{S-k}..x_S (k + 1, ..., d)) from x_0 = noise and
        the per-step noises (S, ..., d): the frozen base's steps, then the trained network's."""
        first = self.first_trained_step
        stds = jnp.maximum(self.coefficients["sigma"], self.config.min_sampling_std)
        x = noise
        if first > 0:
            frozen = self.steps(0, first)
            x, _ = self.policy.run_steps(
                acting["base_policy"], obs, x, step_noise[:first], frozen, stds[:first]
            )
        trained = self.steps(first, self.num_steps - first)
        policy = acting["params"]["policy"]
        return self.policy.run_steps(policy, obs, x, step_noise[first:], trained, stds[first:])

    def act(self, acting, obs, key):
        obs = self.normalized(acting, obs)
        noise_key, step_key = jax.random.split(key)
        shape = (*obs.shape[:-1], self.spec.action_dim)
        noise = jax.random.normal(noise_key, shape)
        clip = self.config.noise_clip
        step_noise = jnp.clip(jax.random.normal(step_key, (self.num_steps, *shape)), -clip, clip)
        action, chain = self.denoise(acting, obs, noise, step_noise)
        # Batch-major, as the collector stacks extras along time: (T, N, k + 1, d).
        return self.to_action(action), {"chain": jnp.moveaxis(chain, 0, -2)}

    def act_deterministic(self, acting, obs):
        obs = self.normalized(acting, obs)
        zeros = jnp.zeros((self.num_steps, *obs.shape[:-1], self.spec.action_dim))
        return self.to_action(self.denoise(acting, obs, zeros[0], zeros)[0])

    # ----- likelihood and loss ------------------------------------------------------------------

    def segment_log_probs(self, policy_params, obs, chain, first: int):
        """(..., n) log-likelihoods of the n steps of a chain segment (n + 1, ..., d) starting
        at step `first`: per-dimension Gaussian densities (std floored at min_logprob_std),
        clamped to LOG_PROB_RANGE and averaged over the dimensions."""
        count = chain.shape[0] - 1
        steps = self.steps(first, count)
        means = self.policy.chain_means(policy_params, obs, chain, steps)
        stds = jnp.maximum(steps["sigma"], self.config.min_logprob_std)
        stds = stds.reshape(count, *(1,) * (chain.ndim - 1))
        z = (chain[1:] - means) / stds
        per_dim = jnp.clip(-0.5 * z**2 - jnp.log(stds) - 0.5 * LOG_2PI, *LOG_PROB_RANGE)
        return jnp.moveaxis(jnp.mean(per_dim, axis=-1), 0, -1)

    def step_log_probs(self, params, minibatch: dict):
        """(B, k) log-likelihoods of the stored trained steps under params."""
        chain = jnp.moveaxis(minibatch["chain"], -2, 0)
        return self.segment_log_probs(
            params["policy"], minibatch["obs"], chain, self.first_trained_step
        )

    def score_rollout(self, params, data, key):
        return {"old_step_log_prob": self.step_log_probs(params, data)}

    def policy_terms(self, params, minibatch, frozen):
        log_ratio = self.step_log_probs(params, minibatch) - minibatch["old_step_log_prob"]
        return log_ratio, self.step_weights, 0.0, {}

    def loss(self, params, minibatch, clip_eps, frozen, train_policy=True):
        # clip_eps is the last step's; each trained step has its own (step_clip_ranges).
        return super().loss(params, minibatch, self.step_clips, frozen, train_policy)


def with_sampler_options(policy: DDPMPolicy, options: DDPMPolicyConfig) -> DDPMPolicy:
    """The pretrained policy, sampled with the sampler options changed from their defaults;
    any other ddpm option changed is refused (the network and schedule are the run's)."""
    default = DPPOConfig().ddpm
    changed = [
        f.name for f in fields(options) if getattr(options, f.name) != getattr(default, f.name)
    ]
    fixed = [name for name in changed if name not in SAMPLER_FIELDS]
    if fixed:
        raise ValueError(
            "--init takes the DDPM network and schedule from the pretrain run; drop "
            f"--dppo.ddpm.{fixed[0].replace('_', '-')} (only {', '.join(SAMPLER_FIELDS)} "
            "may change)"
        )
    if not changed:
        return policy
    sampler = {name: getattr(options, name) for name in changed}
    return DDPMPolicy(policy.action_dim, replace(policy.config, **sampler))
