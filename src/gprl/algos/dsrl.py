"""DSRL, diffusion steering (Wagenmaker et al. 2025, arXiv 2506.15799): SAC in the input noise
space of a frozen pretrained policy.

The pretrained flow or diffusion policy pi_base(s, w) maps a noise w to an action,
deterministically. DSRL never changes it: a tanh-squashed SAC actor picks w in the box
[-noise_bound, noise_bound]^d and the env receives a = pi_base(s, w). Two variants:

- plain (DSRL-SAC): SAC with w as the action. The critics are Q(s, w); the replay buffer keeps
  each transition's w (act's extras).
- noise_aliased (DSRL-NA): the critics learn Q(s, a) on the real actions (their TD target
  decodes the actor's next noise through pi_base), and a noise critic Q_w(s, w) is distilled
  from them on prior noises, Q_w(s, w) ~ Q(s, pi_base(s, w)) for w ~ N(0, I); the actor climbs
  Q_w. Noises that alias the same action share its value, so every stored transition teaches
  every noise that leads to its action.

Critics and actor see w / noise_bound (the actor's squashed sample, in [-1, 1]). Only forward
calls of pi_base are made, and its weights (with its observation and action statistics) live in
the training state under "frozen", so that checkpoints hold them and a resumed run is exact.
The actor starts at mean noise 0, so the first evaluation is the base policy's noise-0 action.
"""

from dataclasses import dataclass
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gprl.algos.sac import SAC, SACConfig
from gprl.networks import MLP, CustomNetworks, QEnsemble, output_kernel_init
from gprl.types import EnvSpec


@dataclass(frozen=True)
class DSRLConfig(SACConfig):
    variant: Literal["noise_aliased", "plain"] = "plain"
    """plain (DSRL-SAC): SAC with the noise as its action; noise_aliased (DSRL-NA, the
    reference's choice for every task): critics on real actions distilled into a noise critic
    that the actor climbs. NA decodes 1.5 batches of the frozen policy per gradient step, so its
    cost follows the base policy's size: 20-33 ms per step against plain's 1.9 with a 3 x 256
    flow base on Hopper-v5 (shared 2-core machine), far from 300 env steps/s at UTD 1."""
    noise_bound: float = 1.5
    """The actor's noise lives in [-noise_bound, noise_bound]^d (the reference's
    action_magnitude: 1.5; 2.5 on Walker2d)."""
    base_sampling_steps: int | None = None
    """Integration (denoising) steps of the frozen policy; None: the steps it was pretrained
    with. The reference samples its diffusion policies with 5 to 8 DDIM steps."""
    noise_critic_every: int = 2
    """noise_aliased: gradient steps per distillation step of the noise critic (the reference
    takes 10 per 20 critic steps)."""
    explore_noise: Literal["prior", "uniform"] = "prior"
    """Noise before learning starts: the base policy's own, N(0, I) clipped to the box (the
    reference's initial rollouts), or uniform over the box."""
    initial_log_std: float = 0.0
    """The actor's log standard deviation (before tanh) at the start, where its mean noise is
    0 (the reference's log_std_init)."""
    actor_layer_norm: bool = True
    """LayerNorm after each hidden layer of the actor (the reference's use_layer_norm applies
    to actor and critics)."""
    actor_hidden: tuple[int, ...] = (64, 64)
    """Hidden layer widths of the actor (reference: 3 x 128 on Hopper, up to 3 x 2048 on
    Walker2d and Robomimic). 2 x 64 is sized for 300 env steps/s at UTD 1 on 2 CPU cores: a
    plain gradient step took 1.9 ms against 6.9 ms at 3 x 128 (same run, shared machine)."""
    critic_hidden: tuple[int, ...] = (64, 64)
    """Hidden layer widths of each critic, and of each noise critic (reference: 3 x 128)."""
    activation: str = "tanh"
    """Hidden activation of actor and critics (reference: tanh)."""
    critic_layer_norm: bool = True
    """LayerNorm after each hidden layer of the critics (reference: on)."""
    target_entropy: float | None = 0.0
    """Entropy of the squashed noise that the temperature aims for (reference: 0); None:
    -noise_dim."""
    learning_starts: int = 8_000
    """Env steps of exploration noise (explore_noise) before the first update (reference: 2001
    vector steps of 4 envs)."""
    update_to_data: float = 1.0
    """Gradient steps per env step. The reference takes 20 per 2 vector steps of 4 envs (2.5
    per transition of a 4-action chunk), ~20x the CPU time of 1."""

    def validate(self) -> None:
        super().validate()
        if not (np.isfinite(self.noise_bound) and self.noise_bound > 0):
            raise ValueError(f"noise_bound must be a positive number, got {self.noise_bound}")
        if self.base_sampling_steps is not None and self.base_sampling_steps < 1:
            raise ValueError(
                f"base_sampling_steps must be at least 1, got {self.base_sampling_steps}"
            )
        if self.noise_critic_every < 1:
            raise ValueError(
                f"noise_critic_every must be at least 1, got {self.noise_critic_every}"
            )
        if not self.log_std_min < self.initial_log_std < self.log_std_max:
            raise ValueError(
                f"initial_log_std ({self.initial_log_std}) must lie strictly between log_std_min "
                f"({self.log_std_min}) and log_std_max ({self.log_std_max})"
            )


class NoiseActor(nn.Module):
    """SAC's actor network (mean and raw log std), with a zero output layer: it starts at mean
    noise 0 and the raw log std `raw_log_std_start`. A user's `torso`, torso(obs), replaces the
    hidden layers (hidden, activation and layer_norm then go unused)."""

    hidden: tuple[int, ...]
    noise_dim: int
    activation: str
    layer_norm: bool
    raw_log_std_start: float
    torso: nn.Module | None = None

    @nn.compact
    def __call__(self, obs):
        if self.torso is None:
            mlp = MLP(self.hidden, 2 * self.noise_dim, self.activation, 0.0, self.layer_norm)
            out = mlp(obs)
        else:
            head = nn.Dense(2 * self.noise_dim, kernel_init=output_kernel_init(0.0), name="head")
            out = head(self.torso(obs))
        mean, raw_log_std = jnp.split(out, 2, axis=-1)
        return jnp.concatenate([mean, raw_log_std + self.raw_log_std_start], axis=-1)


def check_frozen_base(pretrained, method: str, verb: str) -> None:
    """Refuse a missing base, and one of chunks not seen through its flat chunk."""
    if pretrained is None:
        raise ValueError(f"{method} {verb} a pretrained policy: pass --init RUN_DIR")
    if pretrained.policy.chunk_length != 1:
        raise ValueError(
            f"{method} {verb} a policy of one action per decision; this one plans chunks of "
            f"{pretrained.policy.chunk_length}: pass its flat-chunk view "
            f"(gprl.initial_policy.flat_chunk_policy), as `gprl train {method} --init` does"
        )


def starting_actor(config: SACConfig, out_dim: int, torso=None) -> "NoiseActor":
    """The squashed actor of out_dim outputs, at mean 0 and config.initial_log_std (a config
    with the actor fields of DSRLConfig)."""
    # SAC's squashing maps raw log std r to min + (max - min) (tanh(r) + 1) / 2.
    span = config.log_std_max - config.log_std_min
    raw_start = float(np.arctanh(2 * (config.initial_log_std - config.log_std_min) / span - 1))
    return NoiseActor(
        config.actor_hidden,
        out_dim,
        config.activation,
        config.actor_layer_norm,
        raw_start,
        torso,
    )


class DSRL(SAC):
    pretrained_policy = "required"
    # A chunked --init arrives as the policy of the flat chunk, so the noise the actor picks is
    # the whole chunk's (Ta x d), as the reference steers its chunked diffusion policies.
    fine_tunes_chunks = True

    def __init__(
        self,
        config: DSRLConfig,
        spec: EnvSpec,
        num_envs: int,
        total_steps: int,
        pretrained=None,
        networks=None,
    ):
        """networks (gprl.networks.CustomNetworks): an actor torso, torso(obs), for the noise
        actor, and a critic torso for the critics and the noise critics (torso(obs, action) and
        torso(obs, noise)); the frozen base policy keeps its own network."""
        super().__init__(config, spec, num_envs, total_steps, networks)
        given = networks or CustomNetworks()
        check_frozen_base(pretrained, "dsrl", "steers")
        self.pretrained = pretrained
        self.base = pretrained.policy
        self.actor = starting_actor(config, self.base.noise_dim, given.actor)
        self.noise_critic = QEnsemble(
            config.critic_hidden,
            config.num_critics,
            config.activation,
            config.critic_layer_norm,
            given.critic,
        )
        self.noise_critic_optimizer = optax.adam(config.critic_learning_rate)

    def init(self, key) -> dict:
        sac_key, noise_critic_key = jax.random.split(key)
        state = super().init(sac_key)
        # Copies: the loop donates the state's arrays to its compiled calls.
        state["frozen"] = jax.tree.map(jnp.array, self.pretrained.acting)
        if self.config.variant == "noise_aliased":
            obs = jnp.zeros((1, self.spec.obs_dim))
            noise = jnp.zeros((1, self.base.noise_dim))
            noise_critic = self.noise_critic.init(noise_critic_key, obs, noise)
            state["noise_critic"] = noise_critic
            state["noise_critic_opt"] = self.noise_critic_optimizer.init(noise_critic)
            state["gradient_steps"] = jnp.asarray(0, jnp.int32)
            state["noise_critic_info"] = {
                "noise_critic/loss": jnp.zeros(()),
                "noise_critic/q_mean": jnp.zeros(()),
            }
        return state

    def acting_params(self, state):
        return {"actor": state["actor"], "frozen": state["frozen"]}

    def _decode(self, frozen, obs, noise):
        """pi_base(s, w): the frozen policy's action for noise w."""
        chunk = self.base.plan_from_noise(frozen, obs, noise, self.config.base_sampling_steps)
        return chunk[..., 0, :]

    def act(self, acting, obs, key):
        squashed, _ = self._sample(acting["actor"], obs, key)
        noise = self.config.noise_bound * squashed
        return self._decode(acting["frozen"], obs, noise), {"noise": noise}

    def act_deterministic(self, acting, obs):
        mean, _ = self._distribution(acting["actor"], obs)
        return self._decode(acting["frozen"], obs, self.config.noise_bound * jnp.tanh(mean))

    def explore(self, acting, obs, key):
        bound, shape = self.config.noise_bound, (obs.shape[0], self.base.noise_dim)
        if self.config.explore_noise == "prior":
            noise = jnp.clip(jax.random.normal(key, shape), -bound, bound)
        else:
            noise = jax.random.uniform(key, shape, minval=-bound, maxval=bound)
        return self._decode(acting["frozen"], obs, noise), {"noise": noise}

    # SAC's update with the critics' inputs of the chosen variant.

    def _critic_action(self, state, obs, squashed):
        if self.config.variant == "plain":
            return squashed
        return self._decode(state["frozen"], obs, self.config.noise_bound * squashed)

    def _replayed_critic_action(self, batch):
        if self.config.variant == "plain":
            return batch.extras["noise"] / self.config.noise_bound
        return batch.action

    def _actor_value(self, state, critic, obs, squashed):
        if self.config.variant == "plain":
            return self.critic.apply(critic, obs, squashed).min(0)
        return self.noise_critic.apply(state["noise_critic"], obs, squashed).min(0)

    def update(self, state, batch, key):
        sac_key, distill_key = jax.random.split(key)
        state, metrics = super().update(state, batch, sac_key)
        if self.config.variant == "plain":
            return state, metrics
        due = state["gradient_steps"] % self.config.noise_critic_every == 0
        state = jax.lax.cond(due, self._distill, lambda s, *_: s, state, batch.obs, distill_key)
        state["gradient_steps"] = state["gradient_steps"] + 1
        # Steps between distillations report the latest one.
        return state, metrics | state["noise_critic_info"]

    def _distill(self, state, obs, key):
        """One step of Q_w(s, w) towards Q(s, pi_base(s, w)), member by member, w ~ N(0, I)
        restricted to the box the actor acts in: outside it Q_w would be fitted where the actor
        never asks it, and inside it be fitted on fewer samples."""
        bound = self.config.noise_bound
        shape = (obs.shape[0], self.base.noise_dim)
        noise = jax.random.truncated_normal(key, -bound, bound, shape)
        action = self._decode(state["frozen"], obs, noise)
        target = self.critic.apply(state["critic"], obs, action)

        def noise_critic_loss(noise_critic):
            q = self.noise_critic.apply(noise_critic, obs, noise / self.config.noise_bound)
            loss = jnp.sum(jnp.mean((q - target) ** 2, axis=1))
            return loss, {"noise_critic/loss": loss, "noise_critic/q_mean": jnp.mean(q)}

        grads, info = jax.grad(noise_critic_loss, has_aux=True)(state["noise_critic"])
        updates, opt = self.noise_critic_optimizer.update(grads, state["noise_critic_opt"])
        noise_critic = optax.apply_updates(state["noise_critic"], updates)
        return state | {
            "noise_critic": noise_critic,
            "noise_critic_opt": opt,
            "noise_critic_info": info,
        }
