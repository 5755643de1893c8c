"""Shortcut policy: a flow conditioned on its step size, trained so that one step of size 2d
equals two steps of size d (shortcut models, arXiv 2410.12557); one step of size 1 then lands on
the action.

Same convention as :mod:`gprl.policies.flow` (noise at t = 0, action at t = 1). The network
predicts s(cond, x_t, t, d), the step direction for a jump of size d: x_{t+d} = x_t + d s. At
d = 0 it is trained by flow matching; at d = 2^-j (j = 0 .. M-1) on a share of each batch by
self-consistency, s(x_t, t, 2d) = (s(x_t, t, d) + s(x_t + d s(x_t, t, d), t + d, d)) / 2, with
the smallest jumps built from d = 0 steps, so every level rests on the flow.
"""

from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp

from gprl.networks import denoising_network
from gprl.policies.flow import check_time_field, euler_integrate, time_grid


@dataclass(frozen=True)
class ShortcutPolicyConfig:
    hidden: tuple[int, ...] = (256, 256, 256)
    """Step-direction MLP widths."""
    activation: str = "silu"
    """Hidden activation (tanh, relu, silu, gelu, elu)."""
    num_steps: int = 1
    """Sampling steps K with step size 1/K (1: one-step policy). Powers of two up to
    2^max_level are trained directly; other K use the step-size embedding in between."""
    time_embed_dim: int = 16
    """Size of the sinusoidal embeddings of the time and of the step size."""
    max_level: int = 7
    """Smallest trained jump 2^-max_level (reference: 128 steps)."""
    consistency_fraction: float = 0.25
    """Share of each batch trained by self-consistency instead of flow matching (reference)."""

    def validate(self) -> None:
        check_time_field(
            "shortcut", self.hidden, self.activation, self.num_steps, self.time_embed_dim
        )
        if not 0.0 < self.consistency_fraction < 1.0:
            raise ValueError(
                f"shortcut: consistency_fraction must be in (0, 1), got {self.consistency_fraction}"
            )
        if self.max_level < 1:
            raise ValueError(f"shortcut: max_level must be at least 1, got {self.max_level}")


class ShortcutPolicy:
    """A step-direction network: gprl's ConditionalField, or `velocity_torso` (a flax module
    called as torso(cond, x, t) with t (..., 2) holding the time and the step size, see
    :mod:`gprl.networks`) followed by gprl's head."""

    kind = "shortcut"

    def __init__(
        self,
        action_dim: int,
        config: ShortcutPolicyConfig = ShortcutPolicyConfig(),
        velocity_torso: nn.Module | None = None,
    ):
        config.validate()
        self.action_dim = action_dim
        self.config = config
        self.net = denoising_network(config, action_dim, velocity_torso, num_times=2)

    def init(self, key, cond_dim: int):
        cond = jnp.zeros((1, cond_dim))
        return self.net.init(key, cond, jnp.zeros((1, self.action_dim)), jnp.zeros((1, 2)))

    def direction(self, params, cond, x, t, step_size):
        return self.net.apply(params, cond, x, jnp.stack([t, step_size], axis=-1))

    def sample(self, params, cond, noise, num_steps: int | None = None):
        """K jumps of size 1/K from `noise` (..., action_dim) to an action."""
        steps = num_steps or self.config.num_steps
        times = time_grid(steps)
        inputs = jnp.stack([times, jnp.full_like(times, 1.0 / steps)], axis=-1)
        return euler_integrate(self.net, params, cond, noise, inputs)[0]

    def loss(self, params, cond, actions, key):
        cfg = self.config
        batch = actions.shape[0]
        num_consistency = max(1, int(cfg.consistency_fraction * batch))
        noise_key, time_key, level_key, grid_key = jax.random.split(key, 4)
        noise = jax.random.normal(noise_key, actions.shape)

        # Flow matching at d = 0 on the rest of the batch.
        fm_cond, fm_actions, fm_noise = (
            cond[num_consistency:],
            actions[num_consistency:],
            noise[num_consistency:],
        )
        t = jax.random.uniform(time_key, fm_actions.shape[:-1])
        x_t = (1.0 - t[..., None]) * fm_noise + t[..., None] * fm_actions
        predicted = self.direction(params, fm_cond, x_t, t, jnp.zeros_like(t))
        flow_loss = jnp.sum((predicted - (fm_actions - fm_noise)) ** 2, axis=-1)

        # Self-consistency: a jump of 2^-level from t on the grid of that jump size.
        c_cond, c_actions, c_noise = (
            cond[:num_consistency],
            actions[:num_consistency],
            noise[:num_consistency],
        )
        level = jax.random.randint(level_key, (num_consistency,), 0, cfg.max_level)
        big = 2.0 ** (-level.astype(jnp.float32))
        small = big / 2
        t = big * jax.random.randint(grid_key, (num_consistency,), 0, 2**level)
        x_t = (1.0 - t[..., None]) * c_noise + t[..., None] * c_actions
        query = jnp.where(level == cfg.max_level - 1, 0.0, small)
        first = self.direction(params, c_cond, x_t, t, query)
        x_mid = x_t + small[..., None] * first
        second = self.direction(params, c_cond, x_mid, t + small, query)
        target = jax.lax.stop_gradient((first + second) / 2)
        predicted = self.direction(params, c_cond, x_t, t, big)
        consistency_loss = jnp.sum((predicted - target) ** 2, axis=-1)

        loss = jnp.mean(jnp.concatenate([consistency_loss, flow_loss]))
        return loss, {
            "flow_loss": jnp.mean(flow_loss),
            "consistency_loss": jnp.mean(consistency_loss),
        }
