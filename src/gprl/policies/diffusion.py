"""Conditional diffusion policy: epsilon-prediction DDPM training, deterministic DDIM sampling.

Sampling starts from a noise the caller supplies (x_T) and runs K DDIM steps with eta = 0, so the
map noise -> action is deterministic and can serve as a GoRL decoder.
"""

from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gprl.networks import denoising_network, field_on_grid
from gprl.policies.flow import check_time_field


@dataclass(frozen=True)
class DiffusionPolicyConfig:
    hidden: tuple[int, ...] = (64, 64, 64, 64)
    """Noise-prediction MLP widths."""
    activation: str = "silu"
    """Hidden activation (tanh, relu, silu, gelu, elu)."""
    num_train_steps: int = 100
    """Diffusion steps T of the training noise schedule."""
    num_steps: int = 10
    """DDIM sampling steps K (a strided subset of the T training steps)."""
    time_embed_dim: int = 16
    """Size of the sinusoidal embedding of the diffusion step."""
    clip_sample: float | None = 3.0
    """Clip the predicted clean sample to [-c, c] at every DDIM step; None disables. The cosine
    schedule ends at alpha_bar_T ~ 1e-6, so the first DDIM step multiplies the noise-prediction
    error by ~1e3 without it (3.0 covers pre-tanh actions: tanh(3) = 0.995)."""

    def validate(self) -> None:
        check_time_field(
            "diffusion", self.hidden, self.activation, self.num_steps, self.time_embed_dim
        )
        if self.num_steps > self.num_train_steps:
            raise ValueError(
                f"diffusion: DDIM num_steps ({self.num_steps}) cannot exceed num_train_steps "
                f"({self.num_train_steps})"
            )
        if self.clip_sample is not None and not self.clip_sample > 0:
            raise ValueError(f"diffusion: clip_sample must be positive, got {self.clip_sample}")


def cosine_alpha_bars(num_steps: int, s: float = 0.008) -> np.ndarray:
    """Cumulative signal fractions alpha_bar_t, t = 1..T, of the cosine schedule."""
    grid = np.linspace(0, num_steps, num_steps + 1) / num_steps
    f = np.cos((grid + s) / (1 + s) * np.pi / 2) ** 2
    alpha_bars = f[1:] / f[0]
    betas = np.clip(1 - alpha_bars / np.concatenate([[1.0], alpha_bars[:-1]]), 0, 0.999)
    return np.cumprod(1 - betas).astype(np.float32)


class NoisePredictor:
    """A noise-prediction network eps(cond, x_t, t) around gprl's ConditionalField, or
    `velocity_torso` (a flax module called as torso(cond, x, t), see :mod:`gprl.networks`)
    followed by gprl's head, on the cosine schedule of config.num_train_steps steps."""

    def __init__(self, action_dim: int, config, velocity_torso: nn.Module | None = None):
        config.validate()
        self.action_dim = action_dim
        self.config = config
        self.net = denoising_network(config, action_dim, velocity_torso)
        self.alpha_bars_host = cosine_alpha_bars(config.num_train_steps)
        self.alpha_bars = jnp.asarray(self.alpha_bars_host)

    def init(self, key, cond_dim: int):
        cond = jnp.zeros((1, cond_dim))
        x = jnp.zeros((1, self.action_dim))
        return self.net.init(key, cond, x, jnp.zeros((1,)))

    def predict_noise(self, params, cond, x, step_index):
        t = step_index / self.config.num_train_steps
        return self.net.apply(params, cond, x, jnp.broadcast_to(t, x.shape[:-1]))


class DiffusionPolicy(NoisePredictor):
    """Deterministic DDIM sampling of a :class:`NoisePredictor`."""

    kind = "diffusion"

    def __init__(
        self,
        action_dim: int,
        config: DiffusionPolicyConfig = DiffusionPolicyConfig(),
        velocity_torso: nn.Module | None = None,
    ):
        super().__init__(action_dim, config, velocity_torso)

    def _ddim_schedule(self, num_steps: int):
        """Training-step indices visited by DDIM, from the noisiest down to the cleanest."""
        stride = self.config.num_train_steps / num_steps
        return np.round(np.arange(num_steps)[::-1] * stride + stride - 1).astype(np.int32)

    def sample(self, params, cond, noise, num_steps: int | None = None, return_chain=False):
        """Deterministic DDIM (eta = 0) from x_T = noise. Chain: (K + 1, ..., action_dim)."""
        steps = num_steps or self.config.num_steps
        indices = self._ddim_schedule(steps)
        prev_alpha_bars = jnp.concatenate([self.alpha_bars[indices[1:]], jnp.ones(1)])
        times = jnp.asarray(indices, jnp.float32) / self.config.num_train_steps
        step_inputs, field = field_on_grid(self.net, params, cond, times)

        def ddim_step(x, inputs):
            index, alpha_bar_prev, step_input = inputs
            alpha_bar = self.alpha_bars[index]
            eps = field(x, step_input)
            clean = (x - jnp.sqrt(1 - alpha_bar) * eps) / jnp.sqrt(alpha_bar)
            if self.config.clip_sample is not None:
                clean = jnp.clip(clean, -self.config.clip_sample, self.config.clip_sample)
                eps = (x - jnp.sqrt(alpha_bar) * clean) / jnp.sqrt(1 - alpha_bar)
            x_prev = jnp.sqrt(alpha_bar_prev) * clean + jnp.sqrt(1 - alpha_bar_prev) * eps
            return x_prev, x_prev

        action, chain = jax.lax.scan(
            ddim_step, noise, (jnp.asarray(indices), prev_alpha_bars, step_inputs)
        )
        if return_chain:
            return action, jnp.concatenate([noise[None], chain], axis=0)
        return action

    def loss(self, params, cond, actions, key):
        """DDPM epsilon-prediction loss on (cond, action) pairs."""
        loss = noise_prediction_loss(self, params, cond, actions, key)
        return loss, {"diffusion_loss": loss}


def noise_prediction_loss(policy, params, cond, actions, key):
    """E ||eps - eps_theta(cond, sqrt(alpha_bar_t) a + sqrt(1 - alpha_bar_t) eps, t)||^2 over a
    uniform training step t and a standard normal eps, summed over the action's dimensions.
    `policy` has alpha_bars (T,) and predict_noise(params, cond, x, step_index)."""
    noise_key, time_key = jax.random.split(key)
    noise = jax.random.normal(noise_key, actions.shape)
    index = jax.random.randint(time_key, actions.shape[:-1], 0, len(policy.alpha_bars))
    alpha_bar = policy.alpha_bars[index][..., None]
    x_t = jnp.sqrt(alpha_bar) * actions + jnp.sqrt(1 - alpha_bar) * noise
    error = policy.predict_noise(params, cond, x_t, index) - noise
    return jnp.mean(jnp.sum(error**2, axis=-1))
