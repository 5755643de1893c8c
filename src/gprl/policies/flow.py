"""Conditional flow-matching policy (rectified flow).

Convention: x_t = (1 - t) x0 + t a with x0 ~ N(0, I) at t = 0 and the action a at t = 1; the
velocity target is a - x0. Sampling integrates dx/dt = v(s, x, t) with K Euler steps from a
noise that the caller supplies, so latent-space methods (GoRL, DSRL, FQL) can steer it.

The sampler can also make each Euler step a Gaussian transition x_{k+1} ~ N(mean_k, std_k^2)
driven by per-step noises the caller supplies (:meth:`FlowPolicy.sample_stochastic`); a stored
chain can then be re-scored in one batched call (:meth:`FlowPolicy.chain_velocities`), and the
chain's exact log-likelihood is a sum of Gaussian densities (:func:`chain_log_prob`).
"""

from dataclasses import dataclass
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from gprl.networks import (
    check_mlp_shape,
    denoising_network,
    field_on_grid,
)
from gprl.policies.gaussian import LOG_2PI

TIME_SAMPLINGS = ("uniform", "grid")


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

    def validate(self) -> None:
        check_time_field("flow", self.hidden, self.activation, self.num_steps, self.time_embed_dim)
        if self.time_sampling not in TIME_SAMPLINGS:
            raise ValueError(
                f"flow: time_sampling must be one of {TIME_SAMPLINGS}, got '{self.time_sampling}'"
            )


def check_time_field(
    owner: str, hidden: tuple, activation: str, num_steps: int, time_embed_dim: int
) -> None:
    """The checks every config of a time-conditioned field shares, each refused in one line."""
    check_mlp_shape(owner, hidden, activation)
    if num_steps < 1:
        raise ValueError(f"{owner}: num_steps must be at least 1, got {num_steps}")
    if time_embed_dim < 2:
        raise ValueError(
            f"{owner}: time_embed_dim must be at least 2 (one sine, one cosine), "
            f"got {time_embed_dim}"
        )


def time_grid(num_steps: int):
    """The K times t_k = k / K at which the Euler sampler evaluates the velocity."""
    return jnp.arange(num_steps, dtype=jnp.float32) / num_steps


def ode_transition(x, velocity, t, dt):
    """The deterministic Euler step: (mean, std) with std = 0."""
    return x + dt * velocity, jnp.zeros_like(x)


def sde_transition(x, velocity, t, dt, noise_level):
    """Euler-Maruyama step of the SDE with the same marginals as the flow ODE (Flow-GRPO).

    With x_t = (1 - t) x0 + t a the score is -(x - t v) / (1 - t), and the diffusion
    g(t) = noise_level * sqrt((1 - t) / t) vanishes at the data end; t is floored at dt so that
    the first step, taken from pure noise, stays finite.
    """
    t = jnp.maximum(t, dt)
    g_squared = noise_level**2 * (1.0 - t) / t
    score = -(x - t * velocity) / (1.0 - t)
    mean = x + dt * (velocity + 0.5 * g_squared * score)
    return mean, jnp.broadcast_to(jnp.sqrt(g_squared * dt), x.shape)


def euler_integrate(net, params, cond, noise, time_inputs):
    """x_{k+1} = x_k + f(cond, x_k, time_inputs[k]) / K for the K rows of time_inputs (see
    :func:`gprl.networks.field_on_grid` for how f is evaluated). Returns (action, chain) with
    chain (K, ..., d) holding x_1..x_K.

    The flow's velocity takes t_k; one-step models take (t_k, 1 / K) and jump by their average
    velocity or shortcut direction over the step."""
    dt = 1.0 / time_inputs.shape[0]
    step_inputs, field = field_on_grid(net, params, cond, time_inputs)

    def euler_step(x, step_input):
        x_next = x + dt * field(x, step_input)
        return x_next, x_next

    return jax.lax.scan(euler_step, noise, step_inputs)


def chain_log_prob(chain, means, stds):
    """Per-step log densities (K, ...) of a chain (K + 1, ..., d) under Gaussian transitions
    N(means[k], stds[k]^2) (K, ..., d), summed over d. Deterministic steps (std 0) score 0."""
    stochastic = stds > 0
    safe_std = jnp.where(stochastic, stds, 1.0)
    z = (chain[1:] - means) / safe_std
    # The mask goes inside the sum so that a deterministic dimension adds neither a density nor
    # a gradient (where the std is 0 the density is a point mass).
    log_density = -0.5 * z**2 - jnp.log(safe_std) - 0.5 * LOG_2PI
    return jnp.sum(jnp.where(stochastic, log_density, 0.0), axis=-1)


class FlowPolicy:
    """Pure functions of (params, ...) around a velocity network: gprl's ConditionalField, or
    `velocity_torso` (a flax module called as torso(cond, x, t), see :mod:`gprl.networks`)
    followed by gprl's velocity head."""

    kind = "flow"

    def __init__(
        self,
        action_dim: int,
        config: FlowPolicyConfig = FlowPolicyConfig(),
        velocity_torso: nn.Module | None = None,
    ):
        config.validate()
        self.action_dim = action_dim
        self.config = config
        output_scale = 0.0 if config.zero_init else 0.01
        self.net = denoising_network(config, action_dim, velocity_torso, output_scale)

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
        action, chain = euler_integrate(self.net, params, cond, noise, time_grid(steps))
        if return_chain:
            return action, jnp.concatenate([noise[None], chain], axis=0)
        return action

    def sample_stochastic(self, params, cond, noise, step_noise, transition):
        """Sample with Gaussian Euler steps: x_{k+1} = mean_k + std_k * step_noise[k].

        transition(k, x_k, v_k, t_k) -> (mean_k, std_k) defines the step (see
        :func:`ode_transition`, :func:`sde_transition`); step_noise has shape (K, ..., d) and
        fixes K. Returns (action, chain) with chain (K + 1, ..., d), noise first.
        """
        steps = step_noise.shape[0]
        grid = time_grid(steps)
        step_inputs, field = field_on_grid(self.net, params, cond, grid)

        def stochastic_step(x, inputs):
            k, t, step_input, eps = inputs
            mean, std = transition(k, x, field(x, step_input), t)
            x_next = mean + std * eps
            return x_next, x_next

        inputs = (jnp.arange(steps), grid, step_inputs, step_noise)
        action, chain = jax.lax.scan(stochastic_step, noise, inputs)
        return action, jnp.concatenate([noise[None], chain], axis=0)

    def chain_velocities(self, params, cond, chain):
        """v(s, x_k, t_k) at every step of a stored chain (K + 1, ..., d) -> (K, ..., d), as one
        batched call (re-scoring needs no sequential integration)."""
        steps = chain.shape[0] - 1
        step_inputs, field = field_on_grid(self.net, params, cond, time_grid(steps))
        # One size-1 axis per batch axis of the chain, between the step axis and the features.
        batch_axes = (1,) * (chain.ndim - 2)
        step_inputs = step_inputs.reshape(steps, *batch_axes, *step_inputs.shape[1:])
        return field(chain[:-1], step_inputs)

    def loss(self, params, cond, actions, key, noise=None, weights=None):
        """Conditional flow-matching (behaviour-cloning) loss on (cond, action) pairs; with
        `weights` (one per pair), their weighted mean (0 where every weight is).

        With `noise` given, each action is paired with its own noise instead of a fresh draw:
        the flow then learns that coupling, and sampling from a noise returns the action it was
        paired with (the straight paths of a deterministic coupling do not cross when the map
        noise -> action is monotone, as a Gaussian policy's reparameterisation is)."""
        noise_key, time_key = jax.random.split(key)
        if noise is None:
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
        squared = jnp.sum(error**2, axis=-1)
        if weights is None:
            loss = jnp.mean(squared)
        else:
            loss = jnp.sum(weights * squared) / jnp.maximum(jnp.sum(weights), 1e-8)
        return loss, {"flow_loss": loss}
