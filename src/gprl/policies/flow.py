"""Conditional flow-matching policy (rectified flow).

Convention: x_t = (1 - t) x0 + t a with x0 ~ N(0, I) at t = 0 and the action a at t = 1; the
velocity target is a - x0. Sampling integrates dx/dt = v(s, x, t) with K Euler steps from a
noise that the caller supplies, so latent-space methods (GoRL, DSRL, FQL) can steer it.
"""

from dataclasses import dataclass
from typing import Literal

import jax
import jax.numpy as jnp

from gprl.networks import ConditionalField


@dataclass(frozen=True)
class FlowPolicyConfig:
    hidden: tuple[int, ...] = (64, 64, 64, 64)
    """Velocity MLP widths (GoRL's decoder: 4 x 64 SiLU)."""
    activation: str = "silu"
    """Hidden activation (tanh, relu, silu, gelu, elu)."""
    num_steps: int = 10
    """Euler integration steps K used for sampling."""
    time_embed_dim: int = 16
    """Size of the sinusoidal embedding of the flow time t."""
    time_sampling: Literal["uniform", "grid"] = "uniform"
    """Training times: continuous U[0, 1], or the K-step grid the sampler visits."""
    zero_init: bool = False
    """Zero the velocity head so an untrained policy is the identity map noise -> action."""


class FlowPolicy:
    """Pure functions of (params, ...) around a velocity network."""

    kind = "flow"

    def __init__(self, action_dim: int, config: FlowPolicyConfig = FlowPolicyConfig()):
        self.action_dim = action_dim
        self.config = config
        self.net = ConditionalField(
            config.hidden,
            action_dim,
            config.activation,
            config.time_embed_dim,
            output_scale=0.0 if config.zero_init else 0.01,
        )

    def init(self, key, cond_dim: int):
        cond = jnp.zeros((1, cond_dim))
        x = jnp.zeros((1, self.action_dim))
        return self.net.init(key, cond, x, jnp.zeros((1,)))

    def velocity(self, params, cond, x, t):
        return self.net.apply(params, cond, x, t)

    def sample(self, params, cond, noise, num_steps: int | None = None, return_chain=False):
        """Integrate from `noise` (shape (..., action_dim)) to an action.

        Returns the action, or (action, chain) with chain of shape (K + 1, ..., action_dim)
        holding every intermediate x_k, noise first.
        """
        steps = num_steps or self.config.num_steps
        dt = 1.0 / steps
        cond_features = self.net.apply(params, cond, method=ConditionalField.condition)
        grid = jnp.arange(steps, dtype=jnp.float32) * dt
        time_features = self.net.apply(params, grid, method=ConditionalField.time_features)

        def euler_step(x, time_feature):
            velocity = self.net.apply(
                params, cond_features, x, time_feature, method=ConditionalField.from_features
            )
            x_next = x + dt * velocity
            return x_next, x_next

        action, chain = jax.lax.scan(euler_step, noise, time_features)
        if return_chain:
            return action, jnp.concatenate([noise[None], chain], axis=0)
        return action

    def loss(self, params, cond, actions, key):
        """Conditional flow-matching (behaviour-cloning) loss on (cond, action) pairs."""
        noise_key, time_key = jax.random.split(key)
        noise = jax.random.normal(noise_key, actions.shape)
        batch_shape = actions.shape[:-1]
        if self.config.time_sampling == "grid":
            k = jax.random.randint(time_key, batch_shape, 0, self.config.num_steps)
            t = k / self.config.num_steps
        else:
            t = jax.random.uniform(time_key, batch_shape)
        x_t = (1.0 - t[..., None]) * noise + t[..., None] * actions
        target = actions - noise
        error = self.velocity(params, cond, x_t, t) - target
        loss = jnp.mean(jnp.sum(error**2, axis=-1))
        return loss, {"flow_loss": loss}
