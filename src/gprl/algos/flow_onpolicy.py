"""What the on-policy flow methods share: a flow policy beside a value critic, trained by PPO
through a likelihood (or likelihood surrogate) each method defines.

:class:`FlowOnPolicy` holds the networks, acting state, zero-noise evaluation and the update;
a method implements `act` and `policy_terms` (its log ratio). :class:`GaussianChainOnPolicy`
adds what the methods that make each Euler step a Gaussian transition share: sampling with
per-step noise, and re-scoring the stored chain exactly, under one time grid and one
transition for both (a method defines only `transition`).

Fine-tuning (`--init PRETRAIN_RUN`, for the methods that accept `pretrained=`): the flow takes
the pretrained network, weights and Euler steps, acts through the pretrained action map
clip(center + half_range * x_K, -1, 1), and standardises observations with the pretrained
statistics, frozen: the network was fitted to inputs standardised by them, and statistics that
drift with the rollouts would move the policy without a gradient step (and outside the PPO
clip), as DPPO and ReinFlow also keep their dataset normalisation. The deterministic policy at
step 0 is then the pretrained policy acting from zero noise. The critic starts fresh.
"""

from dataclasses import dataclass, field

import jax
import jax.numpy as jnp

from gprl.algos.base import OnPolicyAlgorithm, check_pretrained_flow
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
    """The flow policy: velocity network and the number of Euler steps K (with --init, the
    pretrain run's)."""
    num_epochs: int = 4
    """Passes over each rollout per update (4, as brax PPO's locomotion configs, rather than
    PPO's 10: every pass re-scores each sample K or N_mc times)."""
    critic_hidden: tuple[int, ...] = (64, 64)
    """Hidden layer widths of the value network."""
    critic_activation: str = "tanh"
    """Activation of the value network (tanh, relu, silu, gelu, elu)."""
    critic_warmup_iterations: int = 0
    """Updates at the start that train only the critic, the policy held where it starts (for
    fine-tuning with --init, as DPPO's and ReinFlow's reference code: the first policy steps
    then follow advantages of a fitted critic instead of a random one). They count toward the
    budget."""

    def validate(self) -> None:
        super().validate()
        if self.flow.num_steps < 1:
            raise ValueError(f"flow.num_steps must be positive, got {self.flow.num_steps}")
        if self.critic_warmup_iterations < 0:
            raise ValueError(
                f"critic_warmup_iterations must be non-negative, got "
                f"{self.critic_warmup_iterations}"
            )


class FlowOnPolicy(OnPolicyAlgorithm):
    """A flow policy (actions = clip(x_K, -1, 1)) and a state-value critic.

    Subclasses implement `act` and `policy_terms`, and may add networks (`extra_params`) and
    quantities computed once per update under the pre-update parameters (`score_rollout`).
    Evaluation integrates the ODE from zero noise: the flow's most typical action, and
    deterministic. With `pretrained` (a gprl.pretrain.Pretrained flow of single actions) the
    flow starts from it (see the module's docstring); config.flow is then unused.
    """

    has_critic = True

    def __init__(
        self,
        config: FlowOnPolicyConfig,
        spec: EnvSpec,
        num_envs: int,
        total_steps: int,
        pretrained=None,
    ):
        config.validate()
        check_batch_geometry(config, num_envs)
        self.config = config
        self.spec = spec
        self.num_envs = num_envs
        self.pretrained = pretrained
        flow_config = config.flow
        self.action_center, self.action_half_range = 0.0, 1.0
        if pretrained is not None:
            check_pretrained_flow(pretrained, type(self).__name__)
            if config.flow != type(config)().flow:
                raise ValueError(
                    "--init takes the flow policy (network and Euler steps) from the pretrain "
                    "run; drop the flow options"
                )
            if not config.normalize_observations:
                raise ValueError(
                    "--init needs normalize_observations: the pretrained policy reads "
                    "observations standardised with its dataset's statistics"
                )
            flow_config = pretrained.policy_config
            action_norm = pretrained.acting["action_norm"]
            self.action_center = action_norm["center"]
            self.action_half_range = action_norm["half_range"]
        self.num_steps = flow_config.num_steps
        self.policy = FlowPolicy(spec.action_dim, flow_config)
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
        if self.pretrained is None:
            policy, obs_norm = self.policy.init(policy_key, obs_dim), running_stats_init((obs_dim,))
        else:
            policy, obs_norm = self.pretrained.acting["params"], self.pretrained.acting["obs_norm"]
        params = {"policy": policy} | self.extra_params(extra_key)
        if self.has_critic:
            params["critic"] = self.critic.init(critic_key, jnp.zeros((1, obs_dim)))
        return {
            "params": params,
            "opt_state": self.optimizer.init(params),
            "obs_norm": obs_norm,
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

    def to_action(self, x):
        """The env action of a flow sample (the pretrained action map, else the identity)."""
        return jnp.clip(self.action_center + self.action_half_range * x, -1.0, 1.0)

    def act_deterministic(self, acting, obs):
        obs = self.normalized(acting, obs)
        noise = jnp.zeros((*obs.shape[:-1], self.spec.action_dim))
        return self.to_action(self.policy.sample(acting["params"]["policy"], obs, noise))

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

    def loss(self, params, minibatch, clip_eps, frozen, train_policy=True):
        # During the critic warm-up the policy's parameters pass through stop_gradient: zero
        # gradients leave Adam's moments, and so the parameters, exactly where they are.
        policy = {name: p for name, p in params.items() if name != "critic"}
        params = params | jax.tree.map(
            lambda p: jnp.where(train_policy, p, jax.lax.stop_gradient(p)), policy
        )
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
        old_params, obs_norm = state["params"], state["obs_norm"]
        train_policy = state["iteration"] >= config.critic_warmup_iterations
        state, metrics = ppo_update(
            state,
            batch,
            key,
            lambda params, minibatch: self.loss(
                params, minibatch, config.clip_eps, state.get("frozen", {}), train_policy
            ),
            lambda obs: self.value(old_params, obs),
            set_hyperparameters(state["opt_state"], learning_rate=learning_rate),
            self.optimizer,
            config,
            score_rollout=lambda data, score_key: self.score_rollout(old_params, data, score_key),
        )
        if self.pretrained is not None:
            state = state | {"obs_norm": obs_norm}  # frozen (see the module's docstring)
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
        return self.to_action(action), {"chain": jnp.moveaxis(chain, 0, -2)} | aux

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

    # ----- penalty toward a reference policy ----------------------------------------------------

    w2_coef: float = 0.0
    """Weight of the W2 penalty to the reference policy; a method offering it sets it from its
    config."""

    def init(self, key):
        state = super().init(key)
        if self.w2_coef > 0:
            # The starting policy: the pretrained one with --init, else the initial one.
            state["frozen"] = {"reference_policy": state["params"]["policy"]}
        return state

    def reference_penalty(self, params, minibatch, frozen):
        """(loss, info) of the W2 penalty, (0, {}) when it is off."""
        if self.w2_coef == 0:
            return 0.0, {}
        w2 = self.w2_to_reference(params, minibatch, frozen["reference_policy"])
        return self.w2_coef * w2, {"w2_to_reference": w2}

    def w2_to_reference(self, params, minibatch, reference_policy):
        """Mean squared distance between this and the reference flow's deterministic samples
        from the same initial noise (the stored x_0), in the flow's (normalised) action space:
        an upper bound on the squared W2 distance."""
        noise = minibatch["chain"][..., 0, :]
        action = self.policy.sample(params["policy"], minibatch["obs"], noise)
        reference = self.policy.sample(reference_policy, minibatch["obs"], noise)
        return jnp.mean(jnp.sum((action - reference) ** 2, axis=-1))
