"""Gaussian PPO: clipped surrogate, GAE, normalised observations and rewards (CleanRL-style).

The actor-critic here is reused by GoRL, which runs the same PPO on a latent Gaussian policy
whose samples pass through a frozen generative decoder.
"""

from dataclasses import dataclass, field, replace
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from gprl.algos.base import OnPolicyAlgorithm, check_networks
from gprl.algos.onpolicy import (
    ActorCriticConfig,
    annealed_learning_rate,
    check_batch_geometry,
    iterations_for_budget,
    make_optimizer,
    ppo_objective,
    ppo_update,
    pretrained_action_map,
    reward_normalizer_init,
    set_hyperparameters,
)
from gprl.networks import CustomNetworks, value_network
from gprl.policies import (
    GaussianPolicyConfig,
    GaussianPolicyNet,
    gaussian_entropy,
    gaussian_log_prob,
)
from gprl.rl_math import normalize, running_stats_init
from gprl.types import EnvSpec


@dataclass(frozen=True)
class PPOConfig(ActorCriticConfig):
    ent_coef: float = 0.0
    """Weight of the Gaussian entropy bonus."""
    action_squash: Literal["clip", "tanh"] = "clip"
    """How a Gaussian sample becomes an action in [-1, 1]: clipped (log-prob of the unclipped
    sample, as CleanRL) or tanh (log-prob of the sample before tanh)."""
    actor: GaussianPolicyConfig = field(default_factory=GaussianPolicyConfig)
    critic_hidden: tuple[int, ...] = (64, 64)
    """Hidden layer widths of the value network."""
    critic_activation: str = "tanh"
    """Activation of the value network (tanh, relu, silu, gelu, elu)."""


class GaussianActorCritic:
    """A Gaussian policy and a state-value critic with separate MLPs, or the user's torsos
    (torso(obs) each, see :mod:`gprl.networks`) under gprl's output layers."""

    def __init__(
        self,
        config: PPOConfig,
        obs_dim: int,
        action_dim: int,
        actor_torso: nn.Module | None = None,
        critic_torso: nn.Module | None = None,
    ):
        config.actor.validate()
        self.obs_dim = obs_dim
        self.actor = GaussianPolicyNet(config.actor, action_dim, actor_torso)
        self.critic = value_network(config.critic_hidden, config.critic_activation, critic_torso)

    def init_params(self, key) -> dict:
        actor_key, critic_key = jax.random.split(key)
        dummy_obs = jnp.zeros((1, self.obs_dim))
        return {
            "actor": self.actor.init(actor_key, dummy_obs),
            "critic": self.critic.init(critic_key, dummy_obs),
        }

    def distribution(self, actor_params, obs_normalized):
        return self.actor.apply(actor_params, obs_normalized)

    def value(self, critic_params, obs_normalized):
        return self.critic.apply(critic_params, obs_normalized)[..., 0]


def gaussian_ppo_loss(params, minibatch, model, config: PPOConfig, clip_eps):
    """PPO loss of a Gaussian policy over minibatch["sample"] (the pre-squash draw)."""
    mean, std = model.distribution(params["actor"], minibatch["obs"])
    log_prob = gaussian_log_prob(mean, std, minibatch["sample"])
    values = model.value(params["critic"], minibatch["obs"])
    loss, info = ppo_objective(
        log_prob - minibatch["log_prob"], values, minibatch, clip_eps, config
    )
    entropy = jnp.mean(gaussian_entropy(std))
    info |= {"entropy": entropy, "policy_std": jnp.mean(std)}
    return loss - config.ent_coef * entropy, info, (mean, std)


class PPO(OnPolicyAlgorithm):
    """With `pretrained` (a `gprl pretrain gaussian` run, the behaviour-cloning baseline of the
    fine-tuning papers) the actor starts from its network and weights, acts through its action
    map clip(center + half_range * sample, -1, 1) and reads observations standardised with its
    statistics, frozen (as the flow fine-tuners, gprl.algos.flow_onpolicy); the critic starts
    fresh. A chunked one arrives as the Gaussian over its flat chunk (gprl.algos.base)."""

    pretrained_policy = "optional"
    fine_tunes_chunks = True

    def __init__(
        self,
        config: PPOConfig,
        spec: EnvSpec,
        num_envs: int,
        total_steps: int,
        pretrained=None,
        networks=None,
    ):
        """networks (gprl.networks.CustomNetworks): actor and critic torsos, torso(obs) each."""
        config.validate()
        check_batch_geometry(config, num_envs)
        check_networks(networks, ("actor", "critic"), "PPO")
        given = networks or CustomNetworks()
        self.config = config
        self.spec = spec
        self.num_envs = num_envs
        self.pretrained = pretrained
        self.action_center, self.action_half_range = 0.0, 1.0
        model_config = config
        if pretrained is not None:
            model_config = self._start_from(pretrained, config, given)
        self.model = GaussianActorCritic(
            model_config, spec.obs_dim, spec.action_dim, given.actor, given.critic
        )
        self.optimizer = make_optimizer(config)
        self.rollout_steps = config.rollout_steps
        self.num_iterations = iterations_for_budget(
            total_steps, config.rollout_steps * num_envs, "total_steps"
        )

    def _start_from(self, pretrained, config: PPOConfig, given: CustomNetworks) -> PPOConfig:
        """The config whose actor is the pretrained Gaussian's network, once the run is checked
        to be able to act as it does."""
        if pretrained.kind != "gaussian":
            raise ValueError(
                f"ppo fine-tunes 'gaussian' pretrain runs; --init holds a '{pretrained.kind}' "
                "policy (fine-tune it with reinflow, dppo, flow-sde, gorl or dsrl)"
            )
        if config.actor != PPOConfig().actor or given.actor is not None:
            raise ValueError("--init takes the actor network from the pretrain run; drop the actor")
        if config.action_squash != "clip":
            raise ValueError("--init needs action_squash clip, as the pretrained Gaussian acts")
        self.action_center, self.action_half_range = pretrained_action_map(config, pretrained)
        return replace(config, actor=pretrained.policy_config)

    def squash(self, sample):
        """The action in [-1, 1] of a Gaussian sample; the likelihood stays the sample's (kept
        in act's extras)."""
        if self.config.action_squash == "tanh":
            return jnp.tanh(sample)
        return jnp.clip(self.action_center + self.action_half_range * sample, -1.0, 1.0)

    def init(self, key) -> dict:
        params = self.model.init_params(key)
        obs_norm = running_stats_init((self.spec.obs_dim,))
        if self.pretrained is not None:
            params = params | {"actor": self.pretrained.acting["params"]}
            obs_norm = self.pretrained.acting["obs_norm"]
        return {
            "params": params,
            "opt_state": self.optimizer.init(params),
            "obs_norm": obs_norm,
            "reward_norm": reward_normalizer_init(self.num_envs),
            "iteration": jnp.asarray(0, jnp.int32),
        }

    def acting_params(self, state) -> dict:
        return {"actor": state["params"]["actor"], "obs_norm": state["obs_norm"]}

    def _distribution(self, acting, obs):
        obs = normalize(obs, acting["obs_norm"], self.config.normalize_observations)
        return self.model.distribution(acting["actor"], obs)

    def act(self, acting, obs, key):
        mean, std = self._distribution(acting, obs)
        sample = mean + std * jax.random.normal(key, mean.shape)
        extras = {"sample": sample, "log_prob": gaussian_log_prob(mean, std, sample)}
        return self.squash(sample), extras

    def act_deterministic(self, acting, obs):
        return self.squash(self._distribution(acting, obs)[0])

    def update(self, state, batch, key):
        config = self.config
        learning_rate = annealed_learning_rate(config, state["iteration"], self.num_iterations)
        obs_norm = state["obs_norm"]

        def loss_fn(params, minibatch):
            loss, info, _ = gaussian_ppo_loss(
                params, minibatch, self.model, config, config.clip_eps
            )
            return loss, info

        state, metrics = ppo_update(
            state,
            batch,
            key,
            loss_fn,
            lambda obs: self.model.value(state["params"]["critic"], obs),
            set_hyperparameters(state["opt_state"], learning_rate=learning_rate),
            self.optimizer,
            config,
        )
        if self.pretrained is not None:
            state = state | {"obs_norm": obs_norm}  # frozen, as the pretrained policy's
        return state, metrics | {"learning_rate": learning_rate}
