"""ReinFlow / Flow-Noise: a learned noise network makes every Euler step of the flow policy a
Gaussian transition, so the likelihood of the whole chain is exact and serves as log pi in PPO,
one ratio per environment step (arXiv 2505.22094; pi_RL's Flow-Noise).

The chain log-likelihood is divided by (K + 1) x action dims, as the reference does, which keeps
the ratio's scale independent of K and the action size; the entropy bonus is on the transitions.
An optional W2 penalty keeps the deterministic (zero-step-noise) flow near a reference policy
from the same initial noise: the pretrained one when fine-tuning (--init), else the initial one.
"""

from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gprl.algos.flow_actor_critic import GaussianChainActorCritic, NarrowSourceConfig
from gprl.networks import MLP
from gprl.policies import gaussian_entropy


@dataclass(frozen=True)
class ReinFlowConfig(NarrowSourceConfig):
    min_noise_std: float | None = None
    """Lower bound of the learned per-step noise std. None: 0.1 from scratch (with max 0.3, higher
    on DMC cheetah-run and walker-walk than the reference's [0.08, 0.16]; README), 0.08 with
    --init (the reference's fine-tuning bounds)."""
    max_noise_std: float | None = None
    """Upper bound of the learned per-step noise std. None: 0.3 from scratch, 0.16 with --init."""
    noise_hidden: tuple[int, ...] = (64, 64)
    """Hidden widths of the noise network sigma(s, t_k) (one output per grid step)."""
    clip_eps: float = 0.01
    """PPO clip range of the normalised chain ratio (0.01 for state-based tasks)."""
    ent_coef: float = 0.0
    """Weight of the transitions' entropy bonus."""
    w2_coef: float = 0.0
    """Weight of the W2 penalty to the reference policy, the pretrained one with --init (0
    disables it)."""

    def validate(self) -> None:
        super().validate()
        for fine_tuning in (False, True):
            low, high = self.noise_std_bounds(fine_tuning)
            if not 0 < low < high:
                mode = "with --init" if fine_tuning else "from scratch"
                raise ValueError(
                    "noise std bounds must satisfy 0 < min_noise_std < max_noise_std; "
                    f"{mode} they are {low} and {high}"
                )
        for name in ("ent_coef", "w2_coef"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")

    def noise_std_bounds(self, fine_tuning: bool) -> tuple[float, float]:
        """The learned per-step std's (lower, upper) bounds a run uses (see min_noise_std)."""
        low, high = (0.08, 0.16) if fine_tuning else (0.1, 0.3)
        low = low if self.min_noise_std is None else self.min_noise_std
        high = high if self.max_noise_std is None else self.max_noise_std
        return low, high


class NoiseNet(nn.Module):
    """sigma(s, t_k) in [min_std, max_std]^d for each of the K grid times at once: a bounded
    log-std from an MLP on s with K x d outputs. The times are the sampler's fixed grid, so one
    output per step is the same function as an MLP on [s, t_k], at one call per sample instead
    of K when a chain is re-scored."""

    hidden: tuple[int, ...]
    num_steps: int
    action_dim: int
    min_std: float
    max_std: float

    @nn.compact
    def __call__(self, obs):
        raw = MLP(self.hidden, self.num_steps * self.action_dim, "tanh", output_scale=0.01)(obs)
        raw = raw.reshape(*obs.shape[:-1], self.num_steps, self.action_dim)
        low, high = np.log(self.min_std), np.log(self.max_std)
        return jnp.exp(low + (high - low) * jax.nn.sigmoid(raw))


class ReinFlow(GaussianChainActorCritic):
    def __init__(self, config: ReinFlowConfig, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        self.w2_coef = config.w2_coef
        self.noise_net = NoiseNet(
            config.noise_hidden,
            self.num_steps,
            self.spec.action_dim,
            *config.noise_std_bounds(fine_tuning=self.pretrained is not None),
        )
        # The initial noise x_0 counts among the K + 1 normalised terms (with the fixed N(0, I)
        # source its density does not depend on the parameters and adds nothing to the ratio).
        self.ratio_scale = 1.0 / ((self.num_steps + 1) * self.spec.action_dim)

    def extra_params(self, key):
        return {"noise": self.noise_net.init(key, jnp.zeros((1, self.spec.obs_dim)))}

    def transition(self, params, obs, aux, k, x, velocity, t):
        stds = self.noise_net.apply(params["noise"], obs)  # (..., K, d)
        # One step while sampling (k a scalar); every step, in order, when re-scoring.
        std = stds[..., k, :] if jnp.ndim(k) == 0 else jnp.moveaxis(stds, -2, 0)
        return x + velocity / self.num_steps, std

    def policy_terms(self, params, minibatch, frozen):
        log_ratios, stds = self.step_log_ratios(params, minibatch)
        log_ratio = jnp.sum(log_ratios, axis=-1) * self.ratio_scale
        entropy = jnp.mean(gaussian_entropy(stds))
        penalty, penalty_info = self.reference_penalty(params, minibatch, frozen)
        extra_loss = penalty - self.config.ent_coef * entropy
        info = {"entropy": entropy, "noise_std": jnp.mean(stds)} | penalty_info
        info = info | self.source_info(params)
        return log_ratio, 1.0, extra_loss, info
