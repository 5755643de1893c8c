"""What the on-policy flow methods share: a flow policy beside a value critic, trained by PPO
through a likelihood (or likelihood surrogate) each method defines.

:class:`FlowOnPolicy` holds the networks, acting state, zero-noise evaluation and the update;
a method implements `act` and `policy_terms` (its log ratio). :class:`GaussianChainOnPolicy`
adds what the methods that make each Euler step a Gaussian transition share: sampling with
per-step noise, and re-scoring the stored chain exactly, under one time grid and one
transition for both (a method defines only `transition`).
"""

from dataclasses import dataclass, field

import jax
import jax.numpy as jnp

from gprl.algos.base import OnPolicyAlgorithm
from gprl.algos.onpolicy import (
    OnPolicyConfig,
    annealed_learning_rate,
    check_batch_geometry,
    iterations_for_budget,
    make_optimizer,
    ppo_objective,
    ppo_update,
    reward_normalizer_init,
    set_hyperparameters,
)
from gprl.networks import MLP
from gprl.policies import FlowPolicy, FlowPolicyConfig
from gprl.policies.flow import chain_log_prob, time_grid
from gprl.rl_math import normalize, running_stats_init
from gprl.types import EnvSpec


def _flow_policy_defaults() -> FlowPolicyConfig:
    # Re-scoring a K-step chain makes each sample cost K network calls in every epoch; with 2
    # hidden layers and 4 epochs (brax PPO's locomotion setting) the update of a 10-step method
    # is ~170 ms per 2048 steps on one CPU core, against ~700 ms with GoRL's 4 x 64 decoder and
    # PPO's 10 epochs (measured), which no flow method could afford at half PPO's speed.
    return FlowPolicyConfig(hidden=(64, 64))


@dataclass(frozen=True)
class FlowOnPolicyConfig(OnPolicyConfig):
    flow: FlowPolicyConfig = field(default_factory=_flow_policy_defaults)
    """The flow policy: velocity network and the number of Euler steps K."""
    num_epochs: int = 4
    """Passes over each rollout per update (4, as brax PPO's locomotion configs, rather than
    PPO's 10: every pass re-scores each sample K or N_mc times)."""
    critic_hidden: tuple[int, ...] = (64, 64)
    """Hidden layer widths of the value network."""
    critic_activation: str = "tanh"
    """Activation of the value network (tanh, relu, silu, gelu, elu)."""

    def validate(self) -> None:
        super().validate()
        if self.flow.num_steps < 1:
            raise ValueError(f"flow.num_steps must be positive, got {self.flow.num_steps}")


class FlowOnPolicy(OnPolicyAlgorithm):
    """A flow policy (actions = clip(x_K, -1, 1)) and a state-value critic.

    Subclasses implement `act` and `policy_terms`, and may add networks (`extra_params`) and
    quantities computed once per update under the pre-update parameters (`score_rollout`).
    Evaluation integrates the ODE from zero noise: the flow's most typical action, and
    deterministic.
    """

    has_critic = True

    def __init__(self, config: FlowOnPolicyConfig, spec: EnvSpec, num_envs: int, total_steps: int):
        config.validate()
        check_batch_geometry(config, num_envs)
        self.config = config
        self.spec = spec
        self.num_envs = num_envs
        self.num_steps = config.flow.num_steps
        self.policy = FlowPolicy(spec.action_dim, config.flow)
        self.critic = MLP(config.critic_hidden, 1, config.critic_activation)
        self.optimizer = make_optimizer(config)
        self.rollout_steps = config.rollout_steps
        self.num_iterations = iterations_for_budget(
            total_steps, config.rollout_steps * num_envs, "total_steps"
        )

    # ----- parameters and state ---------------------------------------------------------------

    def extra_params(self, key) -> dict:
        """Networks beside the policy and the critic (a noise network, ...)."""
        return {}

    def init(self, key) -> dict:
        policy_key, critic_key, extra_key = jax.random.split(key, 3)
        obs_dim = self.spec.obs_dim
        params = {"policy": self.policy.init(policy_key, obs_dim)} | self.extra_params(extra_key)
        if self.has_critic:
            params["critic"] = self.critic.init(critic_key, jnp.zeros((1, obs_dim)))
        return {
            "params": params,
            "opt_state": self.optimizer.init(params),
            "obs_norm": running_stats_init((obs_dim,)),
            "reward_norm": reward_normalizer_init(self.num_envs),
            "iteration": jnp.asarray(0, jnp.int32),
        }

    def acting_params(self, state) -> dict:
        actor = {k: v for k, v in state["params"].items() if k != "critic"}
        return {"params": actor, "obs_norm": state["obs_norm"]}

    def normalized(self, acting, obs):
        return normalize(obs, acting["obs_norm"], self.config.normalize_observations)

    def value(self, params, obs_normalized):
        return self.critic.apply(params["critic"], obs_normalized)[..., 0]

    # ----- acting -------------------------------------------------------------------------------

    def act_deterministic(self, acting, obs):
        obs = self.normalized(acting, obs)
        noise = jnp.zeros((*obs.shape[:-1], self.spec.action_dim))
        return jnp.clip(self.policy.sample(acting["params"]["policy"], obs, noise), -1.0, 1.0)

    # ----- update -------------------------------------------------------------------------------

    def score_rollout(self, params, data: dict, key) -> dict:
        """Quantities of the pre-update policy over the flattened rollout (old log-likelihoods)."""
        return {}

    def policy_terms(self, params, minibatch: dict, frozen: dict):
        """(log_ratio, advantage_weights, extra_loss, info): the method's log ratio, (B,) or
        (B, ...) sharing each sample's advantage, weights broadcast like it, and any loss added
        to the clipped surrogate (entropy bonus, penalties). frozen is state["frozen"]: weights
        the loss reads but does not train (a reference policy)."""
        raise NotImplementedError

    negative_advantages = "clip"

    def loss(self, params, minibatch, clip_eps, frozen):
        log_ratio, weights, extra_loss, info = self.policy_terms(params, minibatch, frozen)
        values = self.value(params, minibatch["obs"])
        loss, objective_info = ppo_objective(
            log_ratio,
            values,
            minibatch,
            clip_eps,
            self.config,
            weights,
            self.negative_advantages,
        )
        return loss + extra_loss, info | objective_info

    def update(self, state, batch, key):
        config = self.config
        learning_rate = annealed_learning_rate(config, state["iteration"], self.num_iterations)
        old_params = state["params"]
        state, metrics = ppo_update(
            state,
            batch,
            key,
            lambda params, minibatch: self.loss(
                params, minibatch, config.clip_eps, state.get("frozen", {})
            ),
            lambda obs: self.value(old_params, obs),
            set_hyperparameters(state["opt_state"], learning_rate=learning_rate),
            self.optimizer,
            config,
            score_rollout=lambda data, score_key: self.score_rollout(old_params, data, score_key),
        )
        return state, metrics | {"learning_rate": learning_rate}


class GaussianChainOnPolicy(FlowOnPolicy):
    """Flow policies whose Euler steps are Gaussian transitions x_{k+1} ~ N(mean_k, std_k^2).

    The whole chain x_0..x_K is kept with each action, so its log-likelihood is exact: a sum of
    Gaussian densities, recomputed in one batched call. Sampling and re-scoring call the same
    `transition` on the same time grid, so under unchanged parameters the ratio is exactly 1.
    """

    def transition(self, params, obs, aux: dict, k, x, velocity, t):
        """(mean, std) of step k from x with velocity v at time t; std 0 for a deterministic
        step. obs and aux are batch-shaped; k and t are scalars while sampling, and (K, 1) and
        (K, 1, 1) when re-scoring (k broadcasts against the batch, t against x)."""
        raise NotImplementedError

    def sampling_aux(self, acting, obs, key) -> dict:
        """Per-action random choices the transitions depend on (kept with the transition)."""
        return {}

    def act(self, acting, obs, key):
        obs = self.normalized(acting, obs)
        noise_key, step_key, aux_key = jax.random.split(key, 3)
        shape = (*obs.shape[:-1], self.spec.action_dim)
        noise = jax.random.normal(noise_key, shape)
        step_noise = jax.random.normal(step_key, (self.num_steps, *shape))
        aux = self.sampling_aux(acting, obs, aux_key)
        params = acting["params"]

        def transition(k, x, velocity, t):
            return self.transition(params, obs, aux, k, x, velocity, t)

        action, chain = self.policy.sample_stochastic(
            params["policy"], obs, noise, step_noise, transition
        )
        # Batch-major, as the collector stacks extras along time: (T, N, K + 1, d).
        return jnp.clip(action, -1.0, 1.0), {"chain": jnp.moveaxis(chain, 0, -2)} | aux

    def chain_transitions(self, params, minibatch: dict):
        """(chain (K + 1, B, d), means (K, B, d), stds (K, B, d)) of a stored minibatch."""
        chain = jnp.moveaxis(minibatch["chain"], -2, 0)
        velocities = self.policy.chain_velocities(params["policy"], minibatch["obs"], chain)
        steps = jnp.arange(self.num_steps).reshape(-1, 1)
        times = time_grid(self.num_steps).reshape(-1, 1, 1)
        aux = {name: minibatch[name] for name in self.aux_names}
        means, stds = self.transition(
            params, minibatch["obs"], aux, steps, chain[:-1], velocities, times
        )
        return chain, means, stds

    aux_names: tuple[str, ...] = ()
    """The keys `sampling_aux` returns, read back from the minibatch when re-scoring."""

    def step_log_probs(self, params, minibatch: dict):
        """Per-step log-likelihoods (B, K) and the transitions' stds (K, B, d)."""
        chain, means, stds = self.chain_transitions(params, minibatch)
        return chain_log_prob(chain, means, stds).T, stds

    def score_rollout(self, params, data, key):
        return {"old_step_log_prob": self.step_log_probs(params, data)[0]}
