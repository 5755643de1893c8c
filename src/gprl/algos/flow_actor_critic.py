"""The critic-based on-policy flow methods' shared machinery: a flow policy beside a value
critic, trained by PPO through a likelihood (or likelihood surrogate) each method defines.

:class:`FlowActorCritic` adds the critic, the clipped objective and the update to the flow
methods' base (gprl.algos.flow_onpolicy); a method implements `act` and `policy_terms` (its log
ratio). :class:`GaussianChainActorCritic` is the same on Gaussian-chain sampling, with an
optional W2 penalty toward a reference policy. With `--init` the critic starts fresh.
:class:`ValueCriticConfig` holds the critic's settings, whatever the policy (DPPO's DDPM too).
"""

from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp

from gprl.algos.flow_onpolicy import (
    FlowOnPolicy,
    FlowOnPolicyConfig,
    GaussianChainConfig,
    GaussianChainFlow,
)
from gprl.algos.onpolicy import (
    ActorCriticConfig,
    annealed_learning_rate,
    ppo_objective,
    ppo_update,
    reward_normalizer_init,
    set_hyperparameters,
)
from gprl.networks import value_network


@dataclass(frozen=True)
class ValueCriticConfig(ActorCriticConfig):
    """The value critic of a critic-based method of this family, whatever its policy."""

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
        if self.critic_warmup_iterations < 0:
            raise ValueError(
                f"critic_warmup_iterations must be non-negative, got "
                f"{self.critic_warmup_iterations}"
            )


@dataclass(frozen=True)
class FlowActorCriticConfig(FlowOnPolicyConfig, ValueCriticConfig):
    """A flow policy beside a value critic."""


@dataclass(frozen=True)
class GaussianChainActorCriticConfig(FlowActorCriticConfig, GaussianChainConfig):
    """A Gaussian-chain flow policy beside a value critic."""


@dataclass(frozen=True)
class NarrowSourceConfig(GaussianChainActorCriticConfig):
    """A Gaussian-chain flow beside a value critic that samples x_0 from N(0, 0.1^2 I) when it
    trains from scratch."""

    source_std: float | None = None
    """Std of the source noise x_0 ~ N(0, source_std^2 I); where it is learned, its start. None:
    1 with --init (the source the pretrained flow was fitted with), else 0.1, which the update
    can credit far better than N(0, I) (chosen on DMC cheetah-run and walker-walk; README)."""
    scratch_source_std: ClassVar[float] = 0.1
    values_before_added: ClassVar[dict] = {"source_std": 1.0}
    """Runs saved before source_std existed sampled x_0 from N(0, I)."""


class FlowActorCritic(FlowOnPolicy):
    """A flow policy and a state-value critic ("critic" in the parameters), trained by PPO.

    Subclasses implement `act` and `policy_terms`, and may add networks (`extra_params`) and
    quantities computed once per update under the pre-update parameters (`score_rollout`).
    networks.critic (gprl.networks.CustomNetworks) replaces the value MLP's torso.
    """

    usable_networks = ("velocity", "critic")

    def __init__(self, config: FlowActorCriticConfig, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        critic_torso = None if self.networks is None else self.networks.critic
        self.critic = value_network(config.critic_hidden, config.critic_activation, critic_torso)

    def init_params(self, key) -> dict:
        critic_key = jax.random.split(key, 3)[1]
        critic = self.critic.init(critic_key, jnp.zeros((1, self.spec.obs_dim)))
        return super().init_params(key) | {"critic": critic}

    def init(self, key) -> dict:
        return super().init(key) | {"reward_norm": reward_normalizer_init(self.num_envs)}

    def acting_params(self, state) -> dict:
        actor = {k: v for k, v in state["params"].items() if k != "critic"}
        return super().acting_params(state) | {"params": actor}

    def value(self, params, obs_normalized):
        return self.critic.apply(params["critic"], obs_normalized)[..., 0]

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

    def optimizer_after_warmup(self, state):
        """The optimiser state, fresh for the first update that trains the policy. Adam's bias
        correction counts the warm-up's steps, in which the policy's moments stayed zero: kept,
        it made the policy's first update 3.3x a fresh Adam's after 640 warm-up steps (5 updates
        of 4 x 32 minibatches; measured on the fine-tuning tests' probe). One Adam serves policy
        and critic, so the critic's restarts too."""
        if not self.config.critic_warmup_iterations:
            return state["opt_state"]
        policy_starts = state["iteration"] == self.config.critic_warmup_iterations
        fresh = self.optimizer.init(state["params"])
        return jax.tree.map(
            lambda new, old: jnp.where(policy_starts, new, old), fresh, state["opt_state"]
        )

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
            set_hyperparameters(self.optimizer_after_warmup(state), learning_rate=learning_rate),
            self.optimizer,
            config,
            score_rollout=lambda data, score_key: self.score_rollout(old_params, data, score_key),
        )
        if self.pretrained is not None:
            state = state | {"obs_norm": obs_norm}  # frozen (see gprl.algos.flow_onpolicy)
        return state, metrics | {"learning_rate": learning_rate}


class GaussianChainActorCritic(GaussianChainFlow, FlowActorCritic):
    """Gaussian-chain sampling and exact re-scoring (GaussianChainFlow) under the critic-based
    PPO update, with an optional W2 penalty toward a reference policy. Each may start from a
    pretrained flow (--init), chunked ones included."""

    pretrained_policy = "optional"
    # A chunked --init arrives as the flow over the flat chunk: the likelihood of a decision is
    # the whole predicted chunk's, normalised over its Ta x d dimensions like one action's.
    fine_tunes_chunks = True
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
