"""A base policy of any `gprl pretrain` kind in the place of FlowCritic's BC flow, trained by the
kind's own imitation loss (flow matching, DDPM noise prediction, Gaussian likelihood, ...): the
pretrained policy of --init, seen through its flat chunk, or an untrained one. Methods whose base
learns only by imitation (of the replayed actions, or of actions a critic improved) share it."""

from dataclasses import replace

import jax
import jax.numpy as jnp

from gprl.algos.dsrl import check_frozen_base
from gprl.policies import POLICIES
from gprl.pretrained import PretrainConfig, build_policy
from gprl.rl_math import running_stats_init


class ImitatingBase:
    """init, sample and loss over actions in [-1, 1], as FlowCritic's BC flow: a
    gprl.pretrained.ChunkPolicy of one decision, its observation and action maps fixed, its
    weights trained by the kind's own imitation loss."""

    def __init__(self, chunk_policy, maps: dict, sampling_steps: int | None, start=None):
        self.chunk_policy = chunk_policy
        self.maps = maps
        """{"obs_norm", "action_norm"} of the pretrain run (the identity without one)."""
        self.sampling_steps = sampling_steps
        self.start = start
        """The pretrained weights, or None for a fresh initialisation."""

    @property
    def noise_dim(self) -> int:
        return self.chunk_policy.noise_dim

    def step_noise_steps(self) -> int:
        """Noises a sample draws at each sampling step beside its initial one (DDPM's)."""
        counted = getattr(self.chunk_policy.policy, "step_noise_steps", lambda _: 0)
        return counted(self.sampling_steps)

    def noises(self, key, shape):
        """Unit noises of samples (shape: (..., noise_dim)) and their step noises (None for a
        kind that draws none)."""
        noise_key, step_key = jax.random.split(key)
        steps = self.step_noise_steps()
        step_noise = jax.random.normal(step_key, (steps, *shape)) if steps else None
        return jax.random.normal(noise_key, shape), step_noise

    def init(self, key, obs_dim: int):
        if self.start is None:
            return self.chunk_policy.policy.init(key, obs_dim)
        # Copies: the loop donates the state's arrays to its compiled calls.
        return jax.tree.map(jnp.array, self.start)

    def sample(self, params, obs, noise, step_noise=None):
        """Actions in [-1, 1] for noise (..., noise_dim), and step noises (S, ..., noise_dim)
        where the kind draws them (None: zero)."""
        acting = self.maps | {"params": params}
        chunk = self.chunk_policy.plan_from_noise(
            acting, obs, noise, self.sampling_steps, step_noise
        )
        return chunk[..., 0, :]

    def loss(self, params, obs, action, key, weights=None):
        """The kind's imitation loss of actions in [-1, 1], mapped as its pretrain run's data;
        with `weights` (one per action, a flow's loss only), their weighted mean."""
        cond = self.chunk_policy.condition(self.maps | {"params": params}, obs)
        norm = self.maps["action_norm"]
        weighted = {} if weights is None else {"weights": weights}
        return self.chunk_policy.policy.loss(
            params, cond, (action - norm["center"]) / norm["half_range"], key, **weighted
        )


def pretrained_base(pretrained, sampling_steps: int | None = None) -> ImitatingBase:
    """The --init policy (over its flat chunk), starting from its pretrained weights."""
    maps = {name: pretrained.acting[name] for name in ("obs_norm", "action_norm")}
    return ImitatingBase(pretrained.policy, maps, sampling_steps, pretrained.acting["params"])


def untrained_base(kind: str, flow_config, spec, sampling_steps: int | None) -> ImitatingBase:
    """A fresh policy of a `gprl pretrain` kind over the spec's actions, identity maps; its
    network is flow_config's for a flow, else the kind's RL defaults."""
    policy_config = flow_config if kind == "flow" else POLICIES[kind].config()
    chunk_policy, _ = build_policy(
        kind, PretrainConfig(), policy_config, spec.obs_dim, spec.action_dim
    )
    maps = {
        "obs_norm": running_stats_init((spec.obs_dim,)),
        "action_norm": {
            "center": jnp.zeros(spec.action_dim),
            "half_range": jnp.ones(spec.action_dim),
        },
    }
    return ImitatingBase(chunk_policy, maps, sampling_steps)


def check_base(pretrained, spec, method: str, verb: str) -> None:
    """Refuse a base that does not act in this run's decisions (one action or one flat chunk)."""
    if pretrained is None:
        return
    check_frozen_base(pretrained, method, verb)
    if pretrained.policy.noise_dim != spec.action_dim:
        raise ValueError(
            f"--init decides {pretrained.policy.noise_dim} action values at once; this run's "
            f"decisions have {spec.action_dim}"
        )


def with_observation_maps(config, pretrained: bool):
    """config with normalize_observations resolved: None means on without --init and off with
    it; on with --init is refused (the base standardises observations itself)."""
    if pretrained and config.normalize_observations:
        raise ValueError(
            "normalize_observations standardises observations before the base sees them, and a "
            "pretrained base (--init) standardises them itself: leave it unset"
        )
    if config.normalize_observations is None:
        return replace(config, normalize_observations=not pretrained)
    return config
