"""MeanFlow policy: a flow that learns the average velocity over an interval, so that one step
is accurate (MeanFlow, arXiv 2505.13447; used for policies by MP1 and DM1).

Same convention as :mod:`gprl.policies.flow`: x_t = (1 - t) x0 + t a, noise at t = 0, action at
t = 1. The network predicts u(s, x, t0, t1) = (1 / (t1 - t0)) * integral of v over [t0, t1] along
the flow, so x_{t1} = x_{t0} + (t1 - t0) u; one step from the noise is a = x0 + u(s, x0, 0, 1).

Differentiating (t1 - t0) u(x_{t0}, t0, t1) = integral over [t0, t1] of v with respect to t0 gives
the training target u = v + (t1 - t0) du/dt0, where du/dt0 = v . grad_x u + d_t0 u is the total
derivative along the flow (one Jacobian-vector product) and v is the conditional velocity a - x0.
With t1 = t0 this is plain flow matching.
"""

from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp

from gprl.networks import denoising_network
from gprl.policies.flow import check_time_field, euler_integrate, time_grid


@dataclass(frozen=True)
class MeanFlowPolicyConfig:
    hidden: tuple[int, ...] = (256, 256, 256)
    """Average-velocity MLP widths."""
    activation: str = "silu"
    """Hidden activation (tanh, relu, silu, gelu, elu)."""
    num_steps: int = 1
    """Sampling steps K: K equal intervals, one network call each (1: one-step policy)."""
    time_embed_dim: int = 16
    """Size of the sinusoidal embedding of the interval start and of its length."""
    time_max_period: float = 10.0
    """max_period of the sinusoidal time embeddings. The training target contains the
    derivative of u in t, which the usual 1000 (fastest feature sin(1000 t)) makes so large that
    training diverged on the probe tasks."""
    adaptive_weight_power: float = 0.0
    """Per-sample loss weight 1 / (error^2 + 1e-3)^p, not differentiated. MeanFlow's images use
    p = 1; on BimodalBandit p = 1 put 77% of one-step samples on one mode, p = 0 (plain squared
    error) kept them balanced."""
    flow_matching_fraction: float = 0.75
    """Share of training samples with an empty interval (t1 = t0), i.e. plain flow matching
    (MeanFlow's reference ratio)."""

    def validate(self) -> None:
        check_time_field(
            "meanflow", self.hidden, self.activation, self.num_steps, self.time_embed_dim
        )
        if not self.time_max_period > 0:
            raise ValueError(
                f"meanflow: time_max_period must be positive, got {self.time_max_period}"
            )
        if not self.adaptive_weight_power >= 0:
            raise ValueError(
                "meanflow: adaptive_weight_power must be non-negative, "
                f"got {self.adaptive_weight_power}"
            )
        if not 0.0 <= self.flow_matching_fraction <= 1.0:
            raise ValueError(
                "meanflow: flow_matching_fraction must be in [0, 1], "
                f"got {self.flow_matching_fraction}"
            )


class MeanFlowPolicy:
    """An average-velocity network: gprl's ConditionalField, or `velocity_torso` (a flax module
    called as torso(cond, x, t) with t (..., 2) holding an interval's start and length, see
    :mod:`gprl.networks`; it must be differentiable in t) followed by gprl's head."""

    kind = "meanflow"

    def __init__(
        self,
        action_dim: int,
        config: MeanFlowPolicyConfig = MeanFlowPolicyConfig(),
        velocity_torso: nn.Module | None = None,
    ):
        config.validate()
        self.action_dim = action_dim
        self.config = config
        self.net = denoising_network(
            config, action_dim, velocity_torso, num_times=2, max_period=config.time_max_period
        )

    def init(self, key, cond_dim: int):
        cond = jnp.zeros((1, cond_dim))
        return self.net.init(key, cond, jnp.zeros((1, self.action_dim)), jnp.zeros((1, 2)))

    def average_velocity(self, params, cond, x, start, end):
        return self.net.apply(params, cond, x, jnp.stack([start, end - start], axis=-1))

    def sample(self, params, cond, noise, num_steps: int | None = None):
        """K jumps over equal intervals from `noise` (..., action_dim) to an action."""
        steps = num_steps or self.config.num_steps
        starts = time_grid(steps)
        intervals = jnp.stack([starts, jnp.full_like(starts, 1.0 / steps)], axis=-1)
        return euler_integrate(self.net, params, cond, noise, intervals)[0]

    def loss(self, params, cond, actions, key):
        noise_key, time_key, mix_key = jax.random.split(key, 3)
        noise = jax.random.normal(noise_key, actions.shape)
        batch_shape = actions.shape[:-1]
        times = jax.random.uniform(time_key, (*batch_shape, 2))
        start, end = times.min(axis=-1), times.max(axis=-1)
        empty = jax.random.uniform(mix_key, batch_shape) < self.config.flow_matching_fraction
        end = jnp.where(empty, start, end)
        x = (1.0 - start[..., None]) * noise + start[..., None] * actions
        velocity = actions - noise

        def u_fn(x, start, end):
            return self.average_velocity(params, cond, x, start, end)

        u, du_dstart = jax.jvp(
            u_fn, (x, start, end), (velocity, jnp.ones_like(start), jnp.zeros_like(end))
        )
        target = jax.lax.stop_gradient(velocity + (end - start)[..., None] * du_dstart)
        squared_error = jnp.sum((u - target) ** 2, axis=-1)
        weight = jax.lax.stop_gradient((squared_error + 1e-3) ** -self.config.adaptive_weight_power)
        loss = jnp.mean(weight * squared_error)
        return loss, {"meanflow_loss": loss, "meanflow_squared_error": jnp.mean(squared_error)}
