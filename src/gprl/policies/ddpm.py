"""DDPM policy as DPPO fine-tunes it: epsilon-prediction over the whole (flat) action chunk, a
chain of K = 20 denoising steps on the cosine noise schedule, sampled by the DDPM posterior or by
DDIM.

Step k of a sampler with S steps goes from training step t_k to t_{k+1} (S strided steps of the
K, noisiest first, the last one ending at the clean action; with S = K every step):

    x0 = clip((x - sqrt(1 - a) eps) / sqrt(a))      a = alpha_bar(t_k), a' = alpha_bar(t_{k+1})
    eps = (x - sqrt(a) x0) / sqrt(1 - a)            the noise consistent with the clipped x0
    x' = sqrt(a') x0 + sqrt(1 - a' - sigma^2) eps + std z

with sigma^2 = (1 - a') / (1 - a) (1 - a / a') the posterior variance. The DDPM sampler draws
from the posterior q(x' | x, x0) (sigma as above, std = max(sigma, min_std) except on the last
step, where std = 0), which at S = K is the usual posterior mean coef1 x0 + coef2 x; DDIM scales
sigma by eta (std = sigma, eta = 0 deterministic). x0 is clipped to the action range [-1, 1] as
DPPO clips it (denoised_clip_value), and the DDPM floor on the std is DPPO's 1e-3.

How it differs from the `diffusion` kind, which stays as it was: `diffusion` trains T = 100
steps and samples only by deterministic DDIM (10 steps, eta 0, x0 clipped to [-3, 3] for
pre-tanh actions); `ddpm` is DPPO's model (K = 20, stochastic posterior sampling by default, x0
clipped to [-1, 1], DDIM with any eta) and takes the per-step noises z from the caller, so that
an RL method can drive, record and re-score the whole chain: `run_steps` runs any consecutive
steps with the caller's stds and parameters (DPPO runs its earlier steps with a frozen copy),
`chain_means` gives the means of a stored chain's steps in one batched call.

Sampling from a given noise: `sample(params, cond, noise, step_noise=...)` is a deterministic
function of x_K = noise and of the per-step noises step_noise (S, ..., d); without step_noise
they are zero, which makes DDIM with eta = 0 the deterministic map noise -> action that
latent-space methods steer (the DDPM sampler then follows posterior means: deterministic too,
but not a sample of the learned distribution). DDIM steps are spaced "trailing" (the first
starts at t = K - 1), not DPPO's "leading" (first at K - K / S): with few steps the leading
spacing starts at a nearly clean step and returns little more than the noise.
"""

from dataclasses import dataclass
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gprl.networks import field_on_grid
from gprl.policies.diffusion import NoisePredictor, noise_prediction_loss
from gprl.policies.flow import check_time_field

SAMPLERS = ("ddpm", "ddim")


@dataclass(frozen=True)
class DDPMPolicyConfig:
    hidden: tuple[int, ...] = (64, 64, 64, 64)
    """Noise-prediction MLP widths."""
    activation: str = "silu"
    """Hidden activation (tanh, relu, silu, gelu, elu)."""
    num_train_steps: int = 20
    """Denoising steps K of the chain (DPPO: 20)."""
    sampler: Literal["ddpm", "ddim"] = "ddpm"
    """ddpm: draw each step from the DDPM posterior (DPPO's sampler); ddim: DDIM with eta."""
    num_steps: int = 20
    """Sampling steps S <= num_train_steps, a strided subset of the K (S = K: every step)."""
    eta: float = 0.0
    """DDIM only: share of the posterior std kept per step (0: deterministic, 1: as DDPM)."""
    clip_denoised: float | None = 1.0
    """Clip the predicted clean chunk x0 to [-c, c] at every step (actions are scaled to
    [-1, 1]); None disables."""
    min_std: float = 1e-3
    """DDPM only: floor of the std of every step but the last (DPPO's)."""
    time_embed_dim: int = 16
    """Size of the sinusoidal embedding of the denoising step."""

    def validate(self) -> None:
        check_time_field("ddpm", self.hidden, self.activation, self.num_steps, self.time_embed_dim)
        if self.sampler not in SAMPLERS:
            raise ValueError(f"ddpm: sampler must be one of {SAMPLERS}, got '{self.sampler}'")
        if self.num_steps > self.num_train_steps:
            raise ValueError(
                f"ddpm: num_steps ({self.num_steps}) cannot exceed num_train_steps "
                f"({self.num_train_steps})"
            )
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"ddpm: eta must be in [0, 1], got {self.eta}")
        if self.sampler == "ddpm" and self.eta != 0.0:
            raise ValueError("ddpm: eta is the ddim sampler's; the ddpm sampler is the posterior")
        if self.clip_denoised is not None and not self.clip_denoised > 0:
            raise ValueError(f"ddpm: clip_denoised must be positive, got {self.clip_denoised}")
        if not 0.0 <= self.min_std < 1.0:
            raise ValueError(f"ddpm: min_std must be in [0, 1), got {self.min_std}")


def sampling_schedule(alpha_bars: np.ndarray, num_steps: int) -> dict:
    """The S = num_steps steps a sampler visits, noisiest first, as (S,) arrays: the training
    step index, alpha_bar there and at the next visited step (1 after the last), and the
    posterior std sigma of the step."""
    stride = len(alpha_bars) / num_steps
    index = np.round(np.arange(num_steps)[::-1] * stride + stride - 1).astype(np.int32)
    alpha_bar = alpha_bars[index].astype(np.float64)
    alpha_bar_next = np.concatenate([alpha_bar[1:], [1.0]])
    variance = (1 - alpha_bar_next) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_next)
    return {
        "index": index,
        "alpha_bar": alpha_bar,
        "alpha_bar_next": alpha_bar_next,
        "sigma": np.sqrt(np.maximum(variance, 0.0)),
    }


class DDPMPolicy(NoisePredictor):
    """DPPO's DDPM / DDIM sampling of a :class:`~gprl.policies.diffusion.NoisePredictor`."""

    kind = "ddpm"

    def __init__(
        self,
        action_dim: int,
        config: DDPMPolicyConfig = DDPMPolicyConfig(),
        velocity_torso: nn.Module | None = None,
    ):
        super().__init__(action_dim, config, velocity_torso)

    def loss(self, params, cond, actions, key):
        """Epsilon-prediction loss on (cond, action) pairs (DPPO's pretraining loss)."""
        loss = noise_prediction_loss(self, params, cond, actions, key)
        return loss, {"ddpm_loss": loss}

    def step_noise_steps(self, num_steps: int | None = None) -> int:
        """How many per-step noises the configured sampler draws: S, or 0 for DDIM at eta 0."""
        stochastic = self.config.sampler == "ddpm" or self.config.eta > 0
        return (num_steps or self.config.num_steps) if stochastic else 0

    def step_sigmas(self, num_steps: int) -> tuple[dict, np.ndarray, np.ndarray]:
        """(schedule, sigma, direction coefficient sqrt(1 - a' - sigma^2)) of each step, sigma
        the sampler's own std before any floor: the posterior's, eta times it for DDIM."""
        schedule = sampling_schedule(self.alpha_bars_host, num_steps)
        sigma = schedule["sigma"]
        if self.config.sampler == "ddim":
            sigma = self.config.eta * sigma
        direction = np.sqrt(np.maximum(1 - schedule["alpha_bar_next"] - sigma**2, 0.0))
        return schedule, sigma, direction

    def step_scales(self, num_steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(schedule, direction coefficient sqrt(1 - a' - sigma^2), std) of each step."""
        schedule, sigma, direction = self.step_sigmas(num_steps)
        std = sigma
        if self.config.sampler == "ddpm":
            std = np.maximum(sigma, self.config.min_std)
            std[-1] = 0.0
        return schedule, direction, std

    def step_coefficients(self, num_steps: int | None = None) -> dict:
        """What each of the S steps needs, as (S,) float32 arrays: "time" (the network's step
        input), "alpha_bar", "alpha_bar_next", "direction", "sigma" (the sampler's own std) and
        "std" (the one `sample` draws with: sigma floored at min_std for DDPM, 0 at its end)."""
        steps = num_steps or self.config.num_steps
        schedule, sigma, direction = self.step_sigmas(steps)
        coefficients = {
            "time": schedule["index"] / self.config.num_train_steps,
            "alpha_bar": schedule["alpha_bar"],
            "alpha_bar_next": schedule["alpha_bar_next"],
            "direction": direction,
            "sigma": sigma,
            "std": self.step_scales(steps)[2],
        }
        return {name: jnp.asarray(value, jnp.float32) for name, value in coefficients.items()}

    def step_mean(self, x, eps, coefficients: dict):
        """The mean of a step from x given the predicted noise eps: sqrt(a') x0 + direction eps,
        x0 the clean prediction (clipped) and eps the noise consistent with it. coefficients
        hold the step's alpha_bar, alpha_bar_next and direction, broadcastable against x."""
        alpha_bar = coefficients["alpha_bar"]
        clean = (x - jnp.sqrt(1 - alpha_bar) * eps) / jnp.sqrt(alpha_bar)
        clip = self.config.clip_denoised
        if clip is not None:
            clean = jnp.clip(clean, -clip, clip)
            eps = (x - jnp.sqrt(alpha_bar) * clean) / jnp.sqrt(1 - alpha_bar)
        return jnp.sqrt(coefficients["alpha_bar_next"]) * clean + coefficients["direction"] * eps

    def run_steps(self, params, cond, x, step_noise, coefficients: dict, stds):
        """Denoise from x through the steps whose coefficients (n,) are given (a slice of
        `step_coefficients`): step k draws mean_k + stds[k] * step_noise[k], step_noise
        (n, ..., d). Returns (x after them, chain (n + 1, ..., d), x first)."""
        step_inputs, field = field_on_grid(self.net, params, cond, coefficients["time"])
        names = ("alpha_bar", "alpha_bar_next", "direction")

        def denoise(x, inputs):
            step_input, step, std, z = inputs
            x_next = self.step_mean(x, field(x, step_input), step) + std * z
            return x_next, x_next

        steps = {name: coefficients[name] for name in names}
        x_last, chain = jax.lax.scan(denoise, x, (step_inputs, steps, stds, step_noise))
        return x_last, jnp.concatenate([x[None], chain], axis=0)

    def chain_means(self, params, cond, chain, coefficients: dict):
        """The means (n, ..., d) of the n steps of a stored chain segment (n + 1, ..., d) whose
        coefficients (n,) are given, in one batched network call (no sequential sampling)."""
        steps = chain.shape[0] - 1
        step_inputs, field = field_on_grid(self.net, params, cond, coefficients["time"])
        # One size-1 axis per batch axis of the chain, between the step axis and the features.
        batch_axes = (1,) * (chain.ndim - 2)
        step_inputs = step_inputs.reshape(steps, *batch_axes, *step_inputs.shape[1:])
        eps = field(chain[:-1], step_inputs)
        per_step = {
            name: coefficients[name].reshape(steps, *batch_axes, 1)
            for name in ("alpha_bar", "alpha_bar_next", "direction")
        }
        return self.step_mean(chain[:-1], eps, per_step)

    def sample(
        self,
        params,
        cond,
        noise,
        num_steps: int | None = None,
        step_noise=None,
        return_chain: bool = False,
    ):
        """Denoise from x_K = noise (..., action_dim) with the configured sampler, the per-step
        noises step_noise (S, ..., action_dim) (None: zero). Chain: (S + 1, ..., action_dim)."""
        coefficients = self.step_coefficients(num_steps)
        if step_noise is None:
            step_noise = jnp.zeros((len(coefficients["time"]), *noise.shape), noise.dtype)
        action, chain = self.run_steps(
            params, cond, noise, step_noise, coefficients, coefficients["std"]
        )
        return (action, chain) if return_chain else action
