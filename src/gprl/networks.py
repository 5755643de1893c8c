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
    """f(cond, x, t) -> R^out_dim with x of size out_dim: an MLP on [cond, x, sinusoidal(t)].

    A sampler calls it K times with the same condition, so its first layer is also applied in
    parts (one kernel, sliced by input): the condition's and the time grid's projections once per
    call, then per step only x's projection and the trunk, which is what a 10-step flow or
    diffusion policy spends its acting time on (measured on CPU).

    With num_times > 1, t has a trailing axis of that many times (one-step policies take an
    interval: its start and its length), each embedded separately."""

    hidden: Sequence[int]
    out_dim: int
    activation: str
    time_embed_dim: int
    output_scale: float
    num_times: int = 1
    max_period: float = 1000.0
    """Period of the slowest time feature; the fastest turns once per unit of t * max_period /
    (2 pi), so a smaller value makes the field smoother in t (MeanFlow differentiates it in t)."""

    def setup(self):
        self.first = nn.Dense(self.hidden[0], kernel_init=nn.initializers.orthogonal(np.sqrt(2.0)))
        self.trunk = MLP(self.hidden[1:], self.out_dim, self.activation, self.output_scale)

    def _embed_times(self, t):
        features = sinusoidal_embedding(t, self.time_embed_dim, self.max_period)
        if self.num_times == 1:
            return features
        return features.reshape(*t.shape[:-1], -1)

    def __call__(self, cond, x, t):
        t_features = self._embed_times(t)
        hidden = self.first(jnp.concatenate([cond, x, t_features], axis=-1))
        return self.trunk(activation_fn(self.activation)(hidden))

    def _first_layer(self):
        """(kernel rows for cond, for x, for t, bias): the kernel is laid out as [cond | x | t]."""
        kernel, bias = (
            self.first.variables["params"]["kernel"],
            self.first.variables["params"]["bias"],
        )
        # What sinusoidal_embedding returns, per time.
        embed_size = self.num_times * 2 * (self.time_embed_dim // 2)
        x_start = kernel.shape[0] - self.out_dim - embed_size
        t_start = kernel.shape[0] - embed_size
        return kernel[:x_start], kernel[x_start:t_start], kernel[t_start:], bias

    def condition(self, cond):
        cond_rows, _, _, bias = self._first_layer()
        return cond @ cond_rows + bias

    def time_features(self, t):
        _, _, t_rows, _ = self._first_layer()
        return self._embed_times(t) @ t_rows

    def from_features(self, cond_features, x, time_features):
        """f from condition(cond) and time_features(t): equal to __call__(cond, x, t)."""
        _, x_rows, _, _ = self._first_layer()
        return self.trunk(
            activation_fn(self.activation)(cond_features + x @ x_rows + time_features)
        )


class QEnsemble(nn.Module):
    """`num` independent Q(s, a) MLPs run as one vmapped network: (num, batch) values.

    Each member has its own initialisation; LayerNorm after every hidden layer (layer_norm)
    keeps Q estimates bounded at high update-to-data ratios."""

    hidden: Sequence[int]
    num: int
    activation: str = "relu"
    layer_norm: bool = False

    @nn.compact
    def __call__(self, obs, action):
        members = nn.vmap(
            MLP,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=0,
            axis_size=self.num,
        )
        inputs = jnp.concatenate([obs, action], axis=-1)
        return members(self.hidden, 1, self.activation, 1.0, self.layer_norm)(inputs)[..., 0]
