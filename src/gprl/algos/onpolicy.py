"""What every PPO-style method shares: from raw transitions to advantages, the clipped objective,
and epochs of minibatch SGD under `lax.scan`.

:class:`OnPolicyConfig` holds what every on-policy method has (rollouts, epochs of minibatch
SGD, the optimiser, the clip); :class:`ActorCriticConfig` adds what a learned value critic
needs (discount, GAE, value loss, reward normalisation). A critic-based method supplies its own
loss (its likelihood, or a likelihood surrogate, plugged into :func:`ppo_objective` as a log
ratio); everything else is here, pure and jittable, so a whole rollout-and-update compiles into
one call on the device path.
"""

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import optax

from gprl.algos.base import check_learning_rates
from gprl.rl_math import (
    NORMALIZE_EPS,
    explained_variance,
    gae_advantages,
    normalize,
    ppo_policy_loss,
    running_stats_init,
    running_stats_update,
    value_loss,
)
from gprl.types import Transition


@dataclass(frozen=True)
class OnPolicyConfig:
    rollout_steps: int = 128
    """Steps collected per env before each update (batch = rollout_steps * num_envs)."""
    num_epochs: int = 10
    """Passes over each rollout per update."""
    num_minibatches: int = 32
    """Minibatches per epoch (minibatch = batch / num_minibatches; it must divide the batch)."""
    learning_rate: float = 3e-4
    """Adam step size (the initial one when annealed)."""
    anneal_lr: bool = True
    """Decay the learning rate linearly to zero over training (once per update)."""
    adam_eps: float = 1e-5
    """Adam epsilon."""
    clip_eps: float = 0.2
    """PPO ratio clipping range."""
    max_grad_norm: float = 0.5
    """Clip the global gradient norm to this value (inf: no clip)."""
    normalize_observations: bool = True
    """Standardise observations with running statistics (updated after each rollout, saved in
    checkpoints)."""
    reward_scale: float = 1.0
    """Multiply env rewards by this before any normalisation."""

    def validate(self) -> None:
        """Raise ValueError naming the first nonsensical field."""
        check_learning_rates(self, "learning_rate")
        positive = ("rollout_steps", "num_epochs", "num_minibatches", "adam_eps")
        positive += ("clip_eps", "max_grad_norm", "reward_scale")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


@dataclass(frozen=True)
class ActorCriticConfig(OnPolicyConfig):
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda (bias-variance trade-off of the advantages)."""
    value_clip_eps: float | None = None
    """Clip the value update to this range around the old prediction; None disables."""
    vf_coef: float = 0.5
    """Weight of the value loss (0.5 * squared error)."""
    normalize_advantages: bool = True
    """Standardise advantages within each minibatch."""
    normalize_rewards: bool = True
    """Divide rewards by the running std of the discounted return."""
    critic_learning_rate: float | None = None
    """Adam step size of the critic (annealed in proportion with learning_rate); None: the
    policy's learning_rate. DPPO's reference code gives its critic 10 times the actor's."""

    def validate(self) -> None:
        super().validate()
        if self.critic_learning_rate is not None:
            check_learning_rates(self, "critic_learning_rate")
        for name in ("gamma", "gae_lambda"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.vf_coef < 0:
            raise ValueError(f"vf_coef must be non-negative, got {self.vf_coef}")
        if self.value_clip_eps is not None and self.value_clip_eps <= 0:
            raise ValueError(f"value_clip_eps must be positive or None, got {self.value_clip_eps}")


def make_optimizer(config: OnPolicyConfig) -> optax.GradientTransformation:
    """Adam behind global-norm clipping, with the learning rate and the clip norm injected as
    state so that an update (or a new stage of a staged method) can change them without
    recompiling. An actor-critic's critic_learning_rate scales the "critic" parameters' steps."""
    critic_scale = critic_step_scale(config)

    def adam_with_clipping(learning_rate, max_grad_norm):
        # One flat vector instead of a pytree: a few large ops in place of a dozen small ones
        # per parameter leaf, which is what the update's time goes to on CPU.
        adam = optax.flatten(
            optax.chain(
                optax.clip_by_global_norm(max_grad_norm),
                optax.adam(learning_rate, eps=config.adam_eps),
            )
        )
        if critic_scale == 1.0:
            return adam
        # Adam's step does not change with its gradient's scale, so the critic's own step size
        # scales Adam's step, not the critic's gradient.
        return optax.chain(adam, optax.masked(optax.scale(critic_scale), critic_mask))

    return optax.inject_hyperparams(adam_with_clipping)(
        learning_rate=config.learning_rate, max_grad_norm=config.max_grad_norm
    )


def critic_mask(params: dict) -> dict:
    """True on an actor-critic's "critic" parameters, False on the others."""
    return {name: name == "critic" for name in params}


def critic_step_scale(config: OnPolicyConfig) -> float:
    """The critic's step size over the policy's (1 where the method has no critic of its own
    step size)."""
    if not isinstance(config, ActorCriticConfig) or config.critic_learning_rate is None:
        return 1.0
    return config.critic_learning_rate / config.learning_rate


def set_hyperparameters(opt_state, **values):
    """Return opt_state with injected hyperparameters replaced (traceable)."""
    hyperparams = dict(opt_state.hyperparams)
    for name, value in values.items():
        hyperparams[name] = jnp.asarray(value, hyperparams[name].dtype)
    return opt_state._replace(hyperparams=hyperparams)


def annealed_learning_rate(config: OnPolicyConfig, update_index, num_updates):
    """The learning rate of the update_index-th of num_updates updates (0-based)."""
    if not config.anneal_lr:
        return jnp.asarray(config.learning_rate, jnp.float32)
    remaining = 1.0 - update_index.astype(jnp.float32) / num_updates
    return config.learning_rate * jnp.maximum(remaining, 0.0)


def check_batch_geometry(config: OnPolicyConfig, num_envs: int) -> None:
    """Refuse minibatches that do not split the batch evenly (the remainder would be dropped
    from every epoch)."""
    batch_size = config.rollout_steps * num_envs
    if batch_size % config.num_minibatches:
        raise ValueError(
            f"num_minibatches ({config.num_minibatches}) must divide the batch size "
            f"rollout_steps x num_envs ({config.rollout_steps} x {num_envs} = {batch_size})"
        )


def iterations_for_budget(env_steps: int, steps_per_iteration: int, what: str) -> int:
    iterations = env_steps // steps_per_iteration
    if iterations < 1:
        raise ValueError(
            f"{what} of {env_steps} env steps is smaller than one update "
            f"({steps_per_iteration} = rollout_steps x num_envs); raise the budget"
        )
    return iterations


# ----- rewards and advantages ------------------------------------------------------------------


def reward_normalizer_init(num_envs: int) -> dict:
    """Running statistics of the discounted return, and each env's return so far."""
    return running_stats_init((1,)) | {"discounted": jnp.zeros(num_envs, jnp.float32)}


def normalize_rewards(normalizer: dict, rewards, dones, gamma: float):
    """Divide (T, N) rewards by the running std of the discounted return, after updating it with
    this rollout's returns (as CleanRL / SB3 VecNormalize, one statistics update per rollout)."""

    def accumulate(discounted, inputs):
        reward, done = inputs
        discounted = discounted * gamma + reward
        return jnp.where(done, 0.0, discounted), discounted

    discounted, returns = jax.lax.scan(accumulate, normalizer["discounted"], (rewards, dones))
    stats = running_stats_update(
        {k: normalizer[k] for k in ("mean", "var", "count")}, returns.reshape(-1, 1)
    )
    scaled = rewards / jnp.sqrt(stats["var"][0] + NORMALIZE_EPS)
    return scaled, stats | {"discounted": discounted}


def advantages_and_returns(
    batch: Transition,
    value_fn,
    obs_stats: dict,
    reward_normalizer: dict,
    config: ActorCriticConfig,
):
    """Turn a raw (T, N) rollout into PPO training data.

    value_fn(obs_normalized) -> (T, N) values. Rewards are scaled (and normalised), time-limit
    truncations are bootstrapped with gamma * V(final observation), terminations are not.
    Returns (data, reward_normalizer, info); data holds (T, N) normalised obs, old values,
    advantages and returns.
    """
    obs = normalize(batch.obs, obs_stats, config.normalize_observations)
    next_obs = normalize(batch.next_obs, obs_stats, config.normalize_observations)
    values, next_values = value_fn(obs), value_fn(next_obs)
    dones = jnp.logical_or(batch.terminated, batch.truncated)
    rewards = batch.reward.astype(jnp.float32) * config.reward_scale
    if config.normalize_rewards:
        rewards, reward_normalizer = normalize_rewards(
            reward_normalizer, rewards, dones, config.gamma
        )
    rewards = rewards + config.gamma * next_values * batch.truncated
    # next_obs of the last step is the observation the next rollout starts from, except where
    # an episode ended, and there the done mask ignores it.
    advantages, returns = gae_advantages(
        rewards, values, dones.astype(jnp.float32), next_values[-1], config.gamma, config.gae_lambda
    )
    data = {"obs": obs, "value": values, "advantages": advantages, "returns": returns}
    info = {
        "explained_variance": explained_variance(values.ravel(), returns.ravel()),
        "value_mean": jnp.mean(values),
    }
    return data, reward_normalizer, info


# ----- objective and optimisation --------------------------------------------------------------


def ppo_objective(
    log_ratio,
    values,
    minibatch: dict,
    clip_eps,
    config: ActorCriticConfig,
    advantage_weights=1.0,
    negative_advantages="clip",
):
    """Clipped surrogate on log_ratio plus the weighted value loss, as one scalar to minimise.

    log_ratio is (B,) or (B, ...) when a sample has several ratios (denoising steps, Monte Carlo
    pairs); they share the sample's advantage, times advantage_weights (broadcast like log_ratio).
    """
    advantages = minibatch["advantages"]
    if config.normalize_advantages:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    advantages = advantages.reshape(advantages.shape + (1,) * (log_ratio.ndim - 1))
    policy_loss, info = ppo_policy_loss(
        log_ratio, advantages * advantage_weights, clip_eps, negative_advantages
    )
    critic_loss = value_loss(
        values, minibatch["value"], minibatch["returns"], config.value_clip_eps
    )
    loss = policy_loss + config.vf_coef * critic_loss
    return loss, info | {"policy_loss": policy_loss, "value_loss": critic_loss}


def minibatch_epochs(loss_fn, params, opt_state, optimizer, data: dict, key, config):
    """config.num_epochs passes of config.num_minibatches gradient steps over data (leading axis
    = samples). loss_fn(params, minibatch) -> (loss, info). Returns (params, opt_state, info
    averaged over all steps)."""
    batch_size = jax.tree.leaves(data)[0].shape[0]
    minibatch_size = batch_size // config.num_minibatches  # exact: see check_batch_geometry

    def gradient_step(carry, minibatch):
        params, opt_state = carry
        grads, info = jax.grad(loss_fn, has_aux=True)(params, minibatch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (params, opt_state), info | {"grad_norm": optax.tree.norm(grads)}

    def epoch(carry, epoch_key):
        order = jax.random.permutation(epoch_key, batch_size)
        minibatches = jax.tree.map(
            lambda x: x[order].reshape(config.num_minibatches, minibatch_size, *x.shape[1:]), data
        )
        return jax.lax.scan(gradient_step, carry, minibatches)

    epoch_keys = jax.random.split(key, config.num_epochs)
    (params, opt_state), infos = jax.lax.scan(epoch, (params, opt_state), epoch_keys)
    return params, opt_state, jax.tree.map(jnp.mean, infos)


def ppo_update(
    state,
    batch: Transition,
    key,
    loss_fn,
    value_fn,
    opt_state,
    optimizer,
    config,
    score_rollout=None,
):
    """The update every PPO-style method runs: advantages, config.num_epochs of minibatch SGD on
    loss_fn(params, minibatch), then the observation statistics.

    state holds params, obs_norm, reward_norm and iteration; the minibatches hold the
    normalised obs, old values, advantages, returns and the rollout's extras. value_fn(obs)
    gives the pre-update critic's values. score_rollout(data, key) -> dict, if given, adds what
    a method computes once under the pre-update parameters (its old log-likelihoods) to the
    flattened (T * N, ...) data. Returns (state, metrics).
    """
    data, reward_norm, info = advantages_and_returns(
        batch, value_fn, state["obs_norm"], state["reward_norm"], config
    )
    data = flatten_time(data | batch.extras)
    if score_rollout is not None:
        key, score_key = jax.random.split(key)
        data = data | score_rollout(data, score_key)
    params, opt_state, sgd_info = minibatch_epochs(
        loss_fn, state["params"], opt_state, optimizer, data, key, config
    )
    state = advance_state(state, batch, params, opt_state, config) | {"reward_norm": reward_norm}
    return state, info | sgd_info


def advance_state(state, batch: Transition, params, opt_state, config) -> dict:
    """The state after an update: new weights and optimiser state, the observation statistics
    updated with the rollout (after the update, which used the ones the rollout acted with),
    and one more iteration."""
    obs_norm = state["obs_norm"]
    if config.normalize_observations:
        obs_norm = running_stats_update(obs_norm, batch.obs.reshape(-1, batch.obs.shape[-1]))
    return state | {
        "params": params,
        "opt_state": opt_state,
        "obs_norm": obs_norm,
        "iteration": state["iteration"] + 1,
    }


def flatten_time(tree):
    """(T, N, ...) leaves -> (T * N, ...)."""
    return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), tree)


def pretrained_action_map(config, pretrained) -> tuple:
    """(center, half_range) of a pretrained policy's action map, clip(center + half_range * x),
    which a method fine-tuning it acts through, on observations standardised with its statistics
    (so config.normalize_observations must stay on)."""
    if not config.normalize_observations:
        raise ValueError(
            "--init needs normalize_observations: the pretrained policy reads observations "
            "standardised with its dataset's statistics"
        )
    action_norm = pretrained.acting["action_norm"]
    return action_norm["center"], action_norm["half_range"]
