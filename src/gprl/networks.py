"""Network building blocks shared by every policy and critic."""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

ACTIVATIONS = {"tanh": nn.tanh, "relu": nn.relu, "silu": nn.silu, "gelu": nn.gelu, "elu": nn.elu}


def activation_fn(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation '{name}'; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class MLP(nn.Module):
    """Orthogonally initialised MLP; `output_scale` sets the gain of the last layer.

    A small output gain (0.01) makes a policy start near its prior, and a zero gain makes a
    velocity field start at exactly zero (the identity flow).
    """

    hidden: Sequence[int]
    out_dim: int
    activation: str = "tanh"
    output_scale: float = 1.0
    layer_norm: bool = False

    @nn.compact
    def __call__(self, x):
        act = activation_fn(self.activation)
        for width in self.hidden:
            x = nn.Dense(width, kernel_init=nn.initializers.orthogonal(np.sqrt(2.0)))(x)
            if self.layer_norm:
                x = nn.LayerNorm()(x)
            x = act(x)
        if self.output_scale == 0.0:
            kernel_init = nn.initializers.zeros
        else:
            kernel_init = nn.initializers.orthogonal(self.output_scale)
        return nn.Dense(self.out_dim, kernel_init=kernel_init)(x)


def sinusoidal_embedding(t, dim: int, max_period: float = 1000.0):
    """Embed scalar times t (any shape) into `dim` sin/cos features, t expected in [0, 1]."""
    half = dim // 2
    freqs = jnp.exp(-jnp.log(max_period) * jnp.arange(half) / max(half - 1, 1))
    angles = (t[..., None] * max_period) * freqs
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class ConditionalField(nn.Module):
    """f(cond, x, t) -> R^out_dim: an MLP on [cond, x, sinusoidal(t)], with its first layer split
    by input so that a sampler can project the condition and the time grid once per call instead
    of once per integration step (the per-step work is then x's projection and the trunk, which
    is what a 10-step flow or diffusion policy spends its acting time on, measured on CPU)."""

    hidden: Sequence[int]
    out_dim: int
    activation: str
    time_embed_dim: int
    output_scale: float

    def setup(self):
        width = self.hidden[0]
        orthogonal = nn.initializers.orthogonal(np.sqrt(2.0))
        self.cond_in = nn.Dense(width, kernel_init=orthogonal)
        self.x_in = nn.Dense(width, use_bias=False, kernel_init=orthogonal)
        self.t_in = nn.Dense(width, use_bias=False, kernel_init=orthogonal)
        self.trunk = MLP(self.hidden[1:], self.out_dim, self.activation, self.output_scale)

    def condition(self, cond):
        return self.cond_in(cond)

    def time_features(self, t):
        return self.t_in(sinusoidal_embedding(t, self.time_embed_dim))

    def from_features(self, cond_features, x, time_features):
        act = activation_fn(self.activation)
        return self.trunk(act(cond_features + self.x_in(x) + time_features))

    def __call__(self, cond, x, t):
        return self.from_features(self.condition(cond), x, self.time_features(t))
