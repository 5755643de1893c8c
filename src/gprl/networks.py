"""Network building blocks shared by every policy and critic, and the protocol for your own.

Your own networks
-----------------
Any flax ``nn.Module`` can stand in for gprl's MLPs as a *torso*: it maps its inputs to a feature
vector of any width, and gprl adds the output layer, whose size and initial scale are gprl's
business (a zero-initialised velocity head makes an untrained flow the identity map, a small-gain
policy head starts a Gaussian policy near its prior). Write the torso without that last layer,
with no subclassing of gprl's networks. What each torso is called with (``...`` is any batch
shape, the same for every argument):

- actor torso, ``torso(obs)``: obs (..., obs_dim). gprl's head gives the Gaussian mean (and, for
  the 'softplus' std_type, the scale).
- critic torso, what the critic is a function of: ``torso(obs)`` for a state value V(s), and
  ``torso(obs, action)`` with two arguments for a Q-value Q(s, a) (concatenate them, or not, as
  you like). A torso meant for both can take ``action=None``. The head is one unit; a Q-ensemble
  builds one torso per member.
- velocity / denoising torso, ``torso(cond, x, t)``: cond (..., cond_dim) the observation the
  policy acts on, x (..., action_dim) the current sample, t (...) the time of each sample: the
  flow time in [0, 1] (noise at 0, action at 1) or the diffusion step as a fraction of the
  training steps (0 clean). One-step policies (MeanFlow, shortcut) pass t as (..., 2): an
  interval's start and its length.

Pass torsos to the policies (``FlowPolicy(action_dim, config, velocity_torso=MyTorso())``,
``GaussianPolicy(..., actor_torso=...)``, ``QEnsemble(..., torso=...)``) or, to an algorithm,
bundled as :class:`CustomNetworks`. A torso replaces the MLP widths and activation of the config;
every other field still applies. A checkpoint holds a torso's parameters, not its code: load it
with the same torso passed again. The samplers call a custom velocity torso whole at every
integration step; gprl's own :class:`ConditionalField` computes its condition and time
projections once per sample instead (see :func:`field_on_grid`).
"""

import functools
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, fields

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

ACTIVATIONS = {"tanh": nn.tanh, "relu": nn.relu, "silu": nn.silu, "gelu": nn.gelu, "elu": nn.elu}


def activation_fn(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation '{name}'; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def check_mlp_shape(
    owner: str, hidden: Sequence[int], activation: str, allow_empty: bool = False
) -> None:
    """Refuse, in one line naming `owner`, widths and activations no MLP can be built from."""
    if not hidden and not allow_empty:
        raise ValueError(f"{owner}: hidden needs at least one layer width")
    if any(not isinstance(width, numbers.Integral) or width < 1 for width in hidden):
        raise ValueError(f"{owner}: hidden widths must be positive integers, got {tuple(hidden)}")
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"{owner}: unknown activation '{activation}'; choose one of {sorted(ACTIVATIONS)}"
        )


def output_kernel_init(scale: float):
    """Orthogonal with gain `scale`, or zeros for scale 0 (an output that starts at exactly 0)."""
    if scale == 0.0:
        return nn.initializers.zeros
    return nn.initializers.orthogonal(scale)


@dataclass(frozen=True)
class CustomNetworks:
    """A user's own torsos (see this module's docstring); None keeps gprl's MLP for that part."""

    actor: nn.Module | None = None
    """Torso of the Gaussian actor, called as torso(obs)."""
    critic: nn.Module | None = None
    """Torso of the critic, called as torso(obs) (state value) or torso(obs, action) (Q)."""
    velocity: nn.Module | None = None
    """Torso of the velocity / denoising network of a flow or diffusion policy, torso(cond, x,
    t)."""

    def describe(self) -> dict[str, str]:
        """{part: torso class name} of the parts given, as a run directory records them."""
        return {
            field.name: type(module).__name__
            for field in fields(self)
            if (module := getattr(self, field.name)) is not None
        }


def denoising_network(
    config, out_dim: int, torso: nn.Module | None, output_scale: float = 0.01, **field_options
) -> nn.Module:
    """The network of a flow or diffusion policy: gprl's ConditionalField built from the policy
    config's hidden, activation and time_embed_dim (field_options: its other fields), or the
    user's torso followed by gprl's head."""
    if torso is not None:
        return TorsoHead(torso, out_dim, output_scale=output_scale)
    return ConditionalField(
        config.hidden,
        out_dim,
        config.activation,
        config.time_embed_dim,
        output_scale=output_scale,
        **field_options,
    )


class TorsoHead(nn.Module):
    """A user's torso followed by gprl's output layer: Dense(out_dim) with gain output_scale."""

    torso: nn.Module
    out_dim: int
    output_scale: float = 1.0

    @nn.compact
    def __call__(self, *inputs):
        features = self.torso(*inputs)
        return nn.Dense(
            self.out_dim, kernel_init=output_kernel_init(self.output_scale), name="head"
        )(features)


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
        return nn.Dense(self.out_dim, kernel_init=output_kernel_init(self.output_scale))(x)


def value_network(
    hidden: Sequence[int], activation: str, torso: nn.Module | None = None
) -> nn.Module:
    """A one-output critic: gprl's MLP of `hidden` widths, or `torso` followed by gprl's head."""
    if torso is None:
        return MLP(hidden, 1, activation)
    return TorsoHead(torso, 1)


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


def field_on_grid(net: nn.Module, params, cond, times):
    """Prepare a field net(cond, x, t) for many evaluations at one condition and a grid of times
    (K, ...): returns (step_inputs, evaluate) with evaluate(x, step_inputs[k]) equal to net(cond,
    x, times[k]) at every sample of x. All K steps at once: step_inputs reshaped to (K, 1, ..., 1,
    *step_inputs.shape[1:]), with one 1 per batch axis, evaluates a stored chain x (K, ..., d).

    gprl's ConditionalField projects the condition and the times here, once, leaving per step
    only x's projection and the trunk (the sampler's fast path); any other network, a user's
    torso with its head, is called whole on (cond, x, t) at every step."""
    if isinstance(net, ConditionalField):
        cond_features = net.apply(params, cond, method=ConditionalField.condition)
        time_features = net.apply(params, times, method=ConditionalField.time_features)

        def evaluate_projected(x, time_feature):
            return net.apply(
                params, cond_features, x, time_feature, method=ConditionalField.from_features
            )

        return time_features, evaluate_projected

    time_shape = times.shape[1:]

    def evaluate_whole(x, t):
        batch_shape = x.shape[:-1]
        batch_cond = jnp.broadcast_to(cond, (*batch_shape, cond.shape[-1]))
        return net.apply(params, batch_cond, x, jnp.broadcast_to(t, (*batch_shape, *time_shape)))

    return times, evaluate_whole


class QEnsemble(nn.Module):
    """`num` independent Q(s, a) MLPs run as one vmapped network: (num, batch) values.

    Each member has its own initialisation; LayerNorm after every hidden layer (layer_norm)
    keeps Q estimates bounded at high update-to-data ratios."""

    hidden: Sequence[int]
    num: int
    activation: str = "relu"
    layer_norm: bool = False
    torso: nn.Module | None = None
    """A user's Q torso, called as torso(obs, action); replaces the MLP (hidden, activation and
    layer_norm then go unused). Each member gets its own copy."""

    @nn.compact
    def __call__(self, obs, action):
        vmap_members = functools.partial(
            nn.vmap,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=0,
            axis_size=self.num,
        )
        if self.torso is not None:
            # An unparented copy, so that each member owns its torso's parameters.
            members = vmap_members(TorsoHead)(self.torso.clone(parent=None), 1)
            return members(obs, action)[..., 0]
        members = vmap_members(MLP)(self.hidden, 1, self.activation, 1.0, self.layer_norm)
        return members(jnp.concatenate([obs, action], axis=-1))[..., 0]
