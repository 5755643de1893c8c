"""Gaussian SAC: a tanh-squashed Gaussian actor, an ensemble of Q critics with Polyak-averaged
targets, and an automatically tuned entropy temperature (Haarnoja et al. 2018; CleanRL / SB3
defaults).

One `update` is one gradient step on a sampled batch: the critics regress onto
r + gamma * (1 - terminated) * (min_k Q'_k(s', a') - alpha * log pi(a'|s')), a' ~ pi(s')
(truncated transitions bootstrap, terminated ones do not); then the actor maximises
min_k Q_k(s, a) - alpha * log pi(a|s) under the updated critics; then alpha moves the policy's
entropy towards target_entropy; then the targets track the critics.
"""

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gprl.algos.base import OffPolicyAlgorithm, check_learning_rates, check_networks
from gprl.algos.offpolicy import (
    OffPolicyConfig,
    floored_at_return,
    off_policy_schedule,
    soft_update,
)
from gprl.networks import MLP, CustomNetworks, QEnsemble, TorsoHead
from gprl.policies import gaussian_log_prob
from gprl.types import EnvSpec


@dataclass(frozen=True)
class SACConfig(OffPolicyConfig):
    actor_hidden: tuple[int, ...] = (256, 256)
    """Hidden layer widths of the actor."""
    critic_hidden: tuple[int, ...] = (256, 256)
    """Hidden layer widths of each critic."""
    activation: str = "relu"
    """Hidden activation of actor and critics (tanh, relu, silu, gelu, elu)."""
    num_critics: int = 2
    """Critics in the ensemble; targets and the actor use their minimum (clipped double Q)."""
    critic_layer_norm: bool = False
    """LayerNorm after each hidden layer of the critics."""
    actor_learning_rate: float = 3e-4
    """Adam step size of the actor."""
    critic_learning_rate: float = 3e-4
    """Adam step size of the critics."""
    alpha_learning_rate: float = 3e-4
    """Adam step size of log(alpha)."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Polyak step of the target critics after every gradient step."""
    initial_alpha: float = 1.0
    """Entropy temperature at the start (fixed, if autotune_alpha is off)."""
    autotune_alpha: bool = True
    """Tune alpha so that the policy's entropy tracks target_entropy."""
    target_entropy: float | None = None
    """Entropy the temperature aims for; None: -action_dim."""
    log_std_min: float = -5.0
    """Lower bound of the actor's log standard deviation (before tanh squashing)."""
    log_std_max: float = 2.0
    """Upper bound of the actor's log standard deviation."""

    def validate(self) -> None:
        super().validate()
        check_learning_rates(self, "actor_learning_rate", "critic_learning_rate")
        check_learning_rates(self, "alpha_learning_rate")
        for name in ("initial_alpha", "num_critics"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("gamma", "tau"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not self.log_std_min < self.log_std_max:
            raise ValueError(
                f"log_std_min ({self.log_std_min}) must be below log_std_max ({self.log_std_max})"
            )


def squashed_log_prob(mean, std, sample):
    """Log density of tanh(sample) for sample ~ N(mean, std^2): the Gaussian's, minus the log
    Jacobian of tanh, log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)) (stable for large u)."""
    log_jacobian = 2.0 * (np.log(2.0) - sample - jax.nn.softplus(-2.0 * sample))
    return gaussian_log_prob(mean, std, sample) - jnp.sum(log_jacobian, axis=-1)


class SAC(OffPolicyAlgorithm):
    def __init__(
        self, config: SACConfig, spec: EnvSpec, num_envs: int, total_steps: int, networks=None
    ):
        """networks (gprl.networks.CustomNetworks): an actor torso, torso(obs), under the
        mean-and-log-std layer, and a critic torso, torso(obs, action), for every critic."""
        self.schedule = off_policy_schedule(config, num_envs, total_steps)
        check_networks(networks, ("actor", "critic"), type(self).__name__)
        given = networks or CustomNetworks()
        self.num_iterations = self.schedule.num_iterations
        self.config = config
        self.spec = spec
        if given.actor is None:
            self.actor = MLP(config.actor_hidden, 2 * spec.action_dim, config.activation)
        else:
            self.actor = TorsoHead(given.actor, 2 * spec.action_dim)
        self.critic = QEnsemble(
            config.critic_hidden,
            config.num_critics,
            config.activation,
            config.critic_layer_norm,
            given.critic,
        )
        self.actor_optimizer = optax.adam(config.actor_learning_rate)
        self.critic_optimizer = optax.adam(config.critic_learning_rate)
        self.alpha_optimizer = optax.adam(config.alpha_learning_rate)
        self.target_entropy = (
            -float(spec.action_dim) if config.target_entropy is None else config.target_entropy
        )

    def init(self, key) -> dict:
        actor_key, critic_key = jax.random.split(key)
        obs = jnp.zeros((1, self.spec.obs_dim))
        action = jnp.zeros((1, self.spec.action_dim))
        actor = self.actor.init(actor_key, obs)
        return self.state_of(actor, self.critic.init(critic_key, obs, action))

    def state_of(self, actor, critic) -> dict:
        """A fresh training state around initialised actor and critic parameters."""
        log_alpha = jnp.log(jnp.asarray(self.config.initial_alpha, jnp.float32))
        return {
            "actor": actor,
            "critic": critic,
            "target_critic": critic,
            "log_alpha": log_alpha,
            "actor_opt": self.actor_optimizer.init(actor),
            "critic_opt": self.critic_optimizer.init(critic),
            "alpha_opt": self.alpha_optimizer.init(log_alpha),
            "iteration": jnp.asarray(0, jnp.int32),
        }

    def acting_params(self, state):
        return state["actor"]

    def _distribution(self, actor, obs):
        config = self.config
        mean, raw_log_std = jnp.split(self.actor.apply(actor, obs), 2, axis=-1)
        # Squash the raw output into [log_std_min, log_std_max] instead of clipping it, so that
        # the bound never stops the gradient (as CleanRL).
        log_std = config.log_std_min + 0.5 * (config.log_std_max - config.log_std_min) * (
            jnp.tanh(raw_log_std) + 1.0
        )
        return mean, jnp.exp(log_std)

    def _sample(self, actor, obs, key):
        mean, std = self._distribution(actor, obs)
        sample = mean + std * jax.random.normal(key, mean.shape)
        return jnp.tanh(sample), squashed_log_prob(mean, std, sample)

    def act(self, acting, obs, key):
        return self._sample(acting, obs, key)[0], {}

    def act_deterministic(self, acting, obs):
        return jnp.tanh(self._distribution(acting, obs)[0])

    def _critic_action(self, state, obs, squashed):
        """The critics' action input for a squashed actor sample: the action itself (a method
        acting through a decoder of the sample maps it here)."""
        return squashed

    def _replayed_critic_action(self, batch):
        """The critics' action input for a replayed transition."""
        return batch.action

    def _actor_value(self, state, critic, obs, squashed):
        """The value the actor climbs for its squashed sample, under the updated critics."""
        return self.critic.apply(critic, obs, squashed).min(0)

    def update(self, state, batch, key):
        config = self.config
        target_key, actor_key = jax.random.split(key)
        alpha = jnp.exp(state["log_alpha"])

        next_sample, next_log_prob = self._sample(state["actor"], batch.next_obs, target_key)
        next_action = self._critic_action(state, batch.next_obs, next_sample)
        next_q = self.critic.apply(state["target_critic"], batch.next_obs, next_action).min(0)
        continues = 1.0 - batch.terminated.astype(jnp.float32)
        target = batch.reward + config.gamma * continues * (next_q - alpha * next_log_prob)
        target, floor_share = floored_at_return(config, target, batch)
        replayed_action = self._replayed_critic_action(batch)

        def critic_loss(critic):
            q = self.critic.apply(critic, batch.obs, replayed_action)
            loss = jnp.sum(jnp.mean((q - target) ** 2, axis=1))
            return loss, {
                "critic/loss": loss,
                "critic/q_mean": jnp.mean(q),
                "critic/return_floor_share": floor_share,
            }

        grads, critic_info = jax.grad(critic_loss, has_aux=True)(state["critic"])
        updates, critic_opt = self.critic_optimizer.update(grads, state["critic_opt"])
        critic = optax.apply_updates(state["critic"], updates)

        def actor_loss(actor):
            sample, log_prob = self._sample(actor, batch.obs, actor_key)
            q = self._actor_value(state, critic, batch.obs, sample)
            loss = jnp.mean(alpha * log_prob - q)
            return loss, (log_prob, {"actor/loss": loss, "actor/entropy": -jnp.mean(log_prob)})

        grads, (log_prob, actor_info) = jax.grad(actor_loss, has_aux=True)(state["actor"])
        updates, actor_opt = self.actor_optimizer.update(grads, state["actor_opt"])
        actor = optax.apply_updates(state["actor"], updates)

        log_alpha, alpha_opt = state["log_alpha"], state["alpha_opt"]
        if config.autotune_alpha:
            entropy_gap = jax.lax.stop_gradient(jnp.mean(log_prob) + self.target_entropy)
            alpha_grad = -entropy_gap  # d/d(log alpha) of -log(alpha) * (log pi + target)
            updates, alpha_opt = self.alpha_optimizer.update(alpha_grad, alpha_opt)
            log_alpha = optax.apply_updates(log_alpha, updates)

        state = state | {
            "actor": actor,
            "critic": critic,
            "target_critic": soft_update(state["target_critic"], critic, config.tau),
            "log_alpha": log_alpha,
            "actor_opt": actor_opt,
            "critic_opt": critic_opt,
            "alpha_opt": alpha_opt,
        }
        metrics = critic_info | actor_info | {"alpha": alpha, "critic/target_mean": target.mean()}
        return state, metrics
