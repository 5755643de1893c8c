"""Gaussian PPO (clipped surrogate, GAE, normalised observations and rewards).

The pieces here (actor-critic, loss, minibatch update) are reused by GoRL, which runs the same PPO
on a latent Gaussian policy whose samples pass through a frozen generative decoder.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gprl.collector import HostCollector, Rollout
from gprl.networks import MLP
from gprl.policies import (
    GaussianPolicyConfig,
    GaussianPolicyNet,
    gaussian_entropy,
    gaussian_log_prob,
)
from gprl.rl_math import (
    explained_variance,
    gae_advantages,
    normalize,
    normalizer_arrays,
    ppo_policy_loss,
    running_stats_init,
    running_stats_update,
    value_loss,
)
from gprl.types import EnvSpec

Regularizer = Callable  # (mean, std) -> scalar penalty added to the loss


@dataclass(frozen=True)
class PPOConfig:
    rollout_steps: int = 128
    """Steps collected per env before each update (batch = rollout_steps * num_envs)."""
    num_epochs: int = 10
    """Passes over each rollout per update."""
    num_minibatches: int = 32
    """Minibatches per epoch (minibatch = batch / num_minibatches)."""
    learning_rate: float = 3e-4
    """Adam step size (the initial one when annealed)."""
    anneal_lr: bool = True
    """Decay the learning rate linearly to zero over training."""
    adam_eps: float = 1e-5
    """Adam epsilon."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda (bias-variance trade-off of the advantages)."""
    clip_eps: float = 0.2
    """PPO ratio clipping range."""
    value_clip_eps: float | None = None
    """Clip the value update to this range around the old prediction; None disables."""
    ent_coef: float = 0.0
    """Weight of the Gaussian entropy bonus."""
    vf_coef: float = 0.5
    """Weight of the value loss (0.5 * squared error)."""
    max_grad_norm: float = 0.5
    """Clip the global gradient norm to this value."""
    normalize_advantages: bool = True
    """Standardise advantages within each minibatch."""
    normalize_observations: bool = True
    """Standardise observations with running statistics (updated after each rollout, saved in
    checkpoints)."""
    normalize_rewards: bool = True
    """Divide rewards by the running std of the discounted return."""
    reward_scale: float = 1.0
    """Multiply env rewards by this before any normalisation."""
    action_squash: Literal["clip", "tanh"] = "clip"
    """How a Gaussian sample becomes an action in [-1, 1]: clipped (log-prob of the unclipped
    sample, as CleanRL) or tanh."""
    actor: GaussianPolicyConfig = field(default_factory=GaussianPolicyConfig)
    critic_hidden: tuple[int, ...] = (64, 64)
    """Hidden layer widths of the value network."""
    critic_activation: str = "tanh"
    """Activation of the value network (tanh, relu, silu, gelu, elu)."""


class GaussianActorCritic:
    """A Gaussian policy and a state-value critic with separate MLPs."""

    def __init__(self, config: PPOConfig, obs_dim: int, action_dim: int):
        self.obs_dim = obs_dim
        self.actor = GaussianPolicyNet(config.actor, action_dim)
        self.critic = MLP(config.critic_hidden, 1, config.critic_activation)

    def init_params(self, actor_key, critic_key) -> dict:
        dummy_obs = jnp.zeros((1, self.obs_dim))
        return {
            "actor": self.actor.init(actor_key, dummy_obs),
            "critic": self.critic.init(critic_key, dummy_obs),
        }

    def distribution(self, params, obs_normalized):
        return self.actor.apply(params["actor"], obs_normalized)

    def value(self, params, obs_normalized):
        return self.critic.apply(params["critic"], obs_normalized)[..., 0]


def make_optimizer(config: PPOConfig):
    # Clipping and the learning rate are applied in the update from runtime hyperparameters, so
    # one compiled update serves every stage of GoRL.
    return optax.scale_by_adam(eps=config.adam_eps)


def ppo_hyperparameters(config: PPOConfig, num_iterations: int, prior_coef: float = 0.0) -> dict:
    """Runtime hyperparameters of the update (changing them does not recompile)."""
    return {
        "clip_eps": np.float32(config.clip_eps),
        "max_grad_norm": np.float32(config.max_grad_norm),
        "learning_rate": np.float32(config.learning_rate),
        "num_updates": np.float32(num_iterations * config.num_epochs * config.num_minibatches),
        "prior_coef": np.float32(prior_coef),
    }


def ppo_loss(params, model: GaussianActorCritic, batch, config: PPOConfig, hparams, regularizer):
    mean, std = model.distribution(params, batch["obs"])
    log_prob = gaussian_log_prob(mean, std, batch["latent"])
    advantages = batch["advantages"]
    if config.normalize_advantages:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    policy_loss, info = ppo_policy_loss(
        log_prob, batch["log_prob"], advantages, hparams["clip_eps"]
    )
    values = model.value(params, batch["obs"])
    critic_loss = value_loss(values, batch["value"], batch["returns"], config.value_clip_eps)
    entropy = jnp.mean(gaussian_entropy(std))
    loss = policy_loss + config.vf_coef * critic_loss - config.ent_coef * entropy
    info |= {
        "policy_loss": policy_loss,
        "value_loss": critic_loss,
        "entropy": entropy,
        "policy_std": jnp.mean(std),
    }
    if regularizer is not None:
        prior_penalty = hparams["prior_coef"] * regularizer(mean, std)
        loss = loss + prior_penalty
        info["prior_penalty"] = prior_penalty
    return loss, info


def make_ppo_update(model, config: PPOConfig, optimizer, regularizer: Regularizer | None = None):
    """Build the jitted PPO update: GAE, then epochs x minibatches of clipped-surrogate steps.

    update(params, opt_state, rollout, obs_norm, key, hparams) -> (params, opt_state, info)
    """

    def update(params, opt_state, rollout: dict, obs_norm: dict, key, hparams: dict):
        obs = normalize(rollout["obs"], obs_norm)
        values = rollout["value"]
        last_value = model.value(params, normalize(rollout["last_obs"], obs_norm))
        advantages, returns = gae_advantages(
            rollout["rewards"],
            values,
            rollout["dones"],
            last_value,
            config.gamma,
            config.gae_lambda,
        )
        data = {
            "obs": obs,
            "latent": rollout["latent"],
            "log_prob": rollout["log_prob"],
            "value": values,
            "advantages": advantages,
            "returns": returns,
        }
        data = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), data)
        batch_size = data["obs"].shape[0]
        minibatch_size = batch_size // config.num_minibatches

        def minibatch_step(carry, minibatch):
            params, opt_state = carry
            grad_fn = jax.grad(ppo_loss, has_aux=True)
            grads, info = grad_fn(params, model, minibatch, config, hparams, regularizer)
            grad_norm = optax.tree.norm(grads)
            scale = jnp.minimum(1.0, hparams["max_grad_norm"] / (grad_norm + 1e-6))
            grads = jax.tree.map(lambda g: g * scale, grads)
            directions, opt_state = optimizer.update(grads, opt_state, params)
            learning_rate = hparams["learning_rate"]
            if config.anneal_lr:
                done_fraction = (opt_state.count - 1) / hparams["num_updates"]
                learning_rate = learning_rate * jnp.maximum(1.0 - done_fraction, 0.0)
            params = jax.tree.map(lambda p, d: p - learning_rate * d, params, directions)
            info |= {"grad_norm": grad_norm, "learning_rate": learning_rate}
            return (params, opt_state), info

        def epoch(carry, epoch_key):
            order = jax.random.permutation(epoch_key, batch_size)[
                : minibatch_size * config.num_minibatches
            ]
            minibatches = jax.tree.map(
                lambda x: x[order].reshape(config.num_minibatches, minibatch_size, *x.shape[1:]),
                data,
            )
            return jax.lax.scan(minibatch_step, carry, minibatches)

        epoch_keys = jax.random.split(key, config.num_epochs)
        (params, opt_state), infos = jax.lax.scan(epoch, (params, opt_state), epoch_keys)
        info = jax.tree.map(jnp.mean, infos)
        info["explained_variance"] = explained_variance(values.ravel(), returns.ravel())
        info["value_mean"] = jnp.mean(values)
        return params, opt_state, info

    return jax.jit(update)


def rollout_arrays(rollout: Rollout) -> dict:
    return {
        "obs": rollout.obs,
        "latent": rollout.extras["latent"],
        "log_prob": rollout.extras["log_prob"],
        "value": rollout.extras["value"],
        "rewards": rollout.rewards,
        "dones": rollout.dones,
        "last_obs": rollout.last_obs,
    }


def iterations_for_budget(env_steps: int, steps_per_iteration: int, what: str) -> int:
    iterations = env_steps // steps_per_iteration
    if iterations < 1:
        raise ValueError(
            f"{what} of {env_steps} env steps is smaller than one update "
            f"({steps_per_iteration} = rollout_steps x num_envs); raise the budget"
        )
    return iterations


def ppo_iteration(
    state, collector, acting, policy_step, value_fn, update, hparams, config, obs_dim
):
    """Collect one rollout with `policy_step`, then run the PPO `update` on it."""
    rollout, key, return_norm, episodes = collector.rollout(
        policy_step, value_fn, acting, state["key"], config.rollout_steps, state["return_norm"]
    )
    key, update_key = jax.random.split(key)
    params, opt_state, info = update(
        state["params"],
        state["opt_state"],
        rollout_arrays(rollout),
        acting["obs_norm"],
        update_key,
        hparams,
    )
    state = state | {
        "params": params,
        "opt_state": opt_state,
        "key": key,
        "return_norm": return_norm,
        "obs_norm": running_stats_update(state["obs_norm"], rollout.obs.reshape(-1, obs_dim)),
        "iteration": np.asarray(state["iteration"] + 1),
    }
    return state, jax.device_get(info), episodes


class PPO:
    """The PPO algorithm as the trainer drives it: init_state, iterate, evaluation policy."""

    name = "ppo"

    def __init__(self, config: PPOConfig, spec: EnvSpec, num_envs: int, total_steps: int):
        if config.num_minibatches > config.rollout_steps * num_envs:
            raise ValueError("num_minibatches exceeds the batch size rollout_steps * num_envs")
        self.config = config
        self.spec = spec
        self.model = GaussianActorCritic(config, spec.obs_dim, spec.action_dim)
        self.steps_per_iteration = config.rollout_steps * num_envs
        self.num_iterations = iterations_for_budget(
            total_steps, self.steps_per_iteration, "total_steps"
        )
        self.optimizer = make_optimizer(config)
        self.hparams = ppo_hyperparameters(config, self.num_iterations)
        self._update = make_ppo_update(self.model, config, self.optimizer)
        self._policy_step = jax.jit(self._policy_step_impl)
        self._value = jax.jit(self._value_impl)
        self._eval_action = jax.jit(self._eval_action_impl)

    def squash(self, latent):
        return jnp.tanh(latent) if self.config.action_squash == "tanh" else latent

    def init_state(self, key) -> dict:
        actor_key, critic_key, key = jax.random.split(key, 3)
        params = self.model.init_params(actor_key, critic_key)
        return {
            "params": params,
            "opt_state": self.optimizer.init(params),
            "key": key,
            "obs_norm": running_stats_init((self.spec.obs_dim,)),
            "return_norm": running_stats_init((1,)),
            "iteration": np.asarray(0, np.int64),
        }

    def total_iterations(self) -> int:
        return self.num_iterations

    def make_collector(self, env) -> HostCollector:
        cfg = self.config
        return HostCollector(env, cfg.gamma, cfg.normalize_rewards, cfg.reward_scale)

    def acting_params(self, state) -> dict:
        obs_norm = normalizer_arrays(state["obs_norm"], self.config.normalize_observations)
        return {"model": state["params"], "obs_norm": obs_norm}

    def _policy_step_impl(self, acting, obs, key):
        key, noise_key = jax.random.split(key)
        obs_n = normalize(obs, acting["obs_norm"])
        mean, std = self.model.distribution(acting["model"], obs_n)
        latent = mean + std * jax.random.normal(noise_key, mean.shape)
        extras = {
            "latent": latent,
            "log_prob": gaussian_log_prob(mean, std, latent),
            "value": self.model.value(acting["model"], obs_n),
        }
        return self.squash(latent), extras, key

    def _value_impl(self, acting, obs):
        return self.model.value(acting["model"], normalize(obs, acting["obs_norm"]))

    def _eval_action_impl(self, acting, obs):
        mean, _ = self.model.distribution(acting["model"], normalize(obs, acting["obs_norm"]))
        return self.squash(mean)

    def eval_action_fn(self, state):
        """Deterministic policy for evaluation: the squashed Gaussian mean."""
        return self._eval_action

    def sample_action_fn(self, state):
        return self._policy_step

    def observe_evaluation(self, state: dict, mean_return: float) -> dict:
        return state

    def iterate(self, state: dict, collector: HostCollector):
        """One rollout and one PPO update. Returns (state, metrics, episodes, env_steps)."""
        state, info, episodes = ppo_iteration(
            state,
            collector,
            self.acting_params(state),
            self._policy_step,
            self._value,
            self._update,
            self.hparams,
            self.config,
            self.spec.obs_dim,
        )
        return state, info, episodes, self.steps_per_iteration
