"""Diagonal Gaussian policy: the tractable policy of PPO and the latent encoder of GoRL."""

from dataclasses import dataclass
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gprl.networks import MLP, TorsoHead, check_mlp_shape

LOG_2PI = float(np.log(2.0 * np.pi))
STD_TYPES = ("learned", "softplus")


@dataclass(frozen=True)
class GaussianPolicyConfig:
    hidden: tuple[int, ...] = (64, 64)
    """Hidden layer widths of the mean (and scale) network."""
    activation: str = "tanh"
    """Hidden activation (tanh, relu, silu, gelu, elu)."""
    std_type: Literal["learned", "softplus"] = "learned"
    """'learned': one state-independent log-std per action dim (CleanRL PPO);
    'softplus': a state-dependent softplus scale head (GoRL's encoder)."""
    init_std: float = 1.0
    """Standard deviation at initialisation."""
    min_std: float = 1e-3
    """Floor on the standard deviation (softplus head only)."""

    def validate(self) -> None:
        # No hidden layer is allowed here: a linear Gaussian policy.
        check_mlp_shape("gaussian policy", self.hidden, self.activation, allow_empty=True)
        if self.std_type not in STD_TYPES:
            raise ValueError(
                f"gaussian policy: std_type must be one of {STD_TYPES}, got '{self.std_type}'"
            )
        if not 0.0 < self.init_std < np.inf:
            raise ValueError(f"gaussian policy: init_std must be positive, got {self.init_std}")
        if not 0.0 <= self.min_std < np.inf:
            raise ValueError(f"gaussian policy: min_std must be non-negative, got {self.min_std}")


class GaussianPolicyNet(nn.Module):
    """obs -> (mean, std): gprl's MLP, or `torso` (a flax module called as torso(obs), see
    :mod:`gprl.networks`) followed by gprl's small-gain output layer."""

    config: GaussianPolicyConfig
    action_dim: int
    torso: nn.Module | None = None

    def _mlp(self, out_dim: int) -> nn.Module:
        if self.torso is None:
            return MLP(self.config.hidden, out_dim, self.config.activation, output_scale=0.01)
        # An unparented copy, so that its parameters live under the head's module.
        return TorsoHead(self.torso.clone(parent=None), out_dim, output_scale=0.01)

    @nn.compact
    def __call__(self, obs):
        cfg = self.config
        if cfg.std_type == "learned":
            mean = self._mlp(self.action_dim)(obs)
            log_std = self.param(
                "log_std", nn.initializers.constant(np.log(cfg.init_std)), (self.action_dim,)
            )
            std = jnp.broadcast_to(jnp.exp(log_std), mean.shape)
        elif cfg.std_type == "softplus":
            out = self._mlp(2 * self.action_dim)(obs)
            mean, raw_scale = jnp.split(out, 2, axis=-1)
            # Shift so that a near-zero head output gives init_std.
            offset = np.log(np.expm1(max(cfg.init_std - cfg.min_std, 1e-6)))
            std = jax.nn.softplus(raw_scale + offset) + cfg.min_std
        else:
            raise ValueError(f"unknown std_type '{cfg.std_type}'; use 'learned' or 'softplus'")
        return mean, std


def gaussian_log_prob(mean, std, x):
    """Log density of x under N(mean, diag(std^2)), summed over the last axis."""
    z = (x - mean) / std
    return jnp.sum(-0.5 * z**2 - jnp.log(std) - 0.5 * LOG_2PI, axis=-1)


def gaussian_entropy(std):
    return jnp.sum(jnp.log(std) + 0.5 * (1.0 + LOG_2PI), axis=-1)


def kl_to_standard_normal(mean, std):
    """KL(N(mean, std^2) || N(0, I)), summed over the last axis."""
    return jnp.sum(0.5 * (mean**2 + std**2 - 1.0) - jnp.log(std), axis=-1)


class GaussianPolicy:
    """A Gaussian policy as an imitation learner: fitted by maximum likelihood, sampled as
    mean + std * noise from a noise the caller supplies (noise 0 gives the mean).

    A unimodal fit averages the modes of multimodal demonstrations, which is what the
    generative policies next to it are for."""

    kind = "gaussian"

    def __init__(
        self,
        action_dim: int,
        config: GaussianPolicyConfig = GaussianPolicyConfig(),
        actor_torso: nn.Module | None = None,
    ):
        config.validate()
        self.action_dim = action_dim
        self.config = config
        self.net = GaussianPolicyNet(config, action_dim, actor_torso)

    def init(self, key, cond_dim: int):
        return self.net.init(key, jnp.zeros((1, cond_dim)))

    def sample(self, params, cond, noise, num_steps: int | None = None):
        """mean + std * noise; num_steps is accepted for the common interface and unused."""
        mean, std = self.net.apply(params, cond)
        return mean + std * noise

    def loss(self, params, cond, actions, key):
        """Negative log-likelihood of the actions (key unused: the loss is deterministic)."""
        mean, std = self.net.apply(params, cond)
        loss = -jnp.mean(gaussian_log_prob(mean, std, actions))
        return loss, {"gaussian_nll": loss, "mean_squared_error": jnp.mean((mean - actions) ** 2)}
