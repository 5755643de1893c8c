"""What every on-policy flow method shares, critic or not: the flow policy, its acting state and
zero-noise evaluation, and Gaussian-chain sampling and re-scoring.

:class:`FlowOnPolicy` holds the flow, the optimiser and the state; a method adds its update
(:class:`gprl.algos.flow_actor_critic.FlowActorCritic` for PPO with a value critic, GRPO its
group-relative one). :class:`GaussianChainFlow` adds what the methods that make each Euler step a
Gaussian transition share: sampling with per-step noise, and re-scoring the stored chain
exactly, under one time grid and one transition for both (a method defines only `transition`).

Fine-tuning (`--init PRETRAIN_RUN`, for the methods that accept `pretrained=`): the flow takes
the pretrained network, weights and Euler steps, acts through the pretrained action map
clip(center + half_range * x_K, -1, 1), and standardises observations with the pretrained
statistics, frozen: the network was fitted to inputs standardised by them, and statistics that
drift with the rollouts would move the policy without a gradient step (and outside the PPO
clip), as DPPO and ReinFlow also keep their dataset normalisation. The deterministic policy at
step 0 is then the pretrained policy acting from zero noise.
"""

from dataclasses import dataclass, field
from typing import ClassVar

import jax
import jax.numpy as jnp

from gprl.algos.base import OnPolicyAlgorithm, check_networks, check_pretrained_flow
from gprl.algos.onpolicy import (
    OnPolicyConfig,
    check_batch_geometry,
    iterations_for_budget,
    make_optimizer,
    pretrained_action_map,
)
from gprl.policies import FlowPolicy, FlowPolicyConfig
from gprl.policies.flow import chain_log_prob, time_grid
from gprl.policies.gaussian import gaussian_log_prob
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
    final_noise_scale: float = 1.0
    """Scale of the policy's sampling noise at the last update, reached linearly from 1 at the
    first: the source noise is x_0 ~ N(0, s^2 I) and every stochastic Euler step's std is
    multiplied by s. Below 1 it contracts the stochastic policy's spread as training proceeds,
    which nothing in these objectives asks of a flow (its randomness is the source noise carried
    through the velocity field); 1 keeps the noise as it is. Evaluation (zero noise) is
    unaffected."""

    def validate(self) -> None:
        super().validate()
        if self.flow.num_steps < 1:
            raise ValueError(f"flow.num_steps must be positive, got {self.flow.num_steps}")
        if not self.final_noise_scale > 0:
            raise ValueError(f"final_noise_scale must be positive, got {self.final_noise_scale}")


@dataclass(frozen=True)
class GaussianChainConfig(FlowOnPolicyConfig):
    """The settings of the flow methods whose Euler steps are Gaussian transitions."""

    source_std: float | None = None
    """Std of the source noise x_0 ~ N(0, source_std^2 I); where it is learned, its start. None:
    1 with --init (the source the pretrained flow was fitted with), else the method's default
    from scratch (`scratch_source_std`; README). The flow's randomness is mostly this noise
    carried through the velocity field, while the chain's likelihood credits only the Euler
    steps' noise for the velocity field's gradient: below 1, more of the exploration is noise
    the update can attribute."""
    learned_source_std: bool = False
    """Learn the source noise's std (one per action dimension) and count x_0's density in the
    chain's likelihood, so that it is contracted or widened as a Gaussian policy's std is."""

    scratch_source_std: ClassVar[float] = 1.0
    """The source std from scratch where source_std is None."""

    def validate(self) -> None:
        super().validate()
        if self.source_std is not None and not self.source_std > 0:
            raise ValueError(f"source_std must be positive, got {self.source_std}")

    def starting_source_std(self, fine_tuning: bool) -> float:
        """The source std a run starts with (see source_std)."""
        if self.source_std is not None:
            return self.source_std
        return 1.0 if fine_tuning else self.scratch_source_std

    def learns_source_std(self, fine_tuning: bool) -> bool:
        """Whether a run learns the source std; a method whose learned_source_std is None learns
        it from scratch and keeps the pretrained flow's source with --init."""
        if self.learned_source_std is None:
            return not fine_tuning
        return self.learned_source_std


class FlowOnPolicy(OnPolicyAlgorithm):
    """A flow policy (actions = clip(x_K, -1, 1)) trained on-policy.

    state = {"params": {"policy", ...}, "opt_state", "obs_norm", "iteration"} (and "frozen"
    for weights the loss reads but does not train); `init_params` and `init` are where a
    subclass adds networks and state. Evaluation integrates the ODE from zero noise: the flow's
    most typical action, and deterministic. With `pretrained` (a gprl.pretrain.Pretrained flow
    of single actions) the flow starts from it (see the module's docstring); config.flow is
    then unused. networks.velocity (gprl.networks.CustomNetworks) replaces the velocity MLP.
    """

    usable_networks: tuple[str, ...] = ("velocity",)
    """The gprl.networks.CustomNetworks fields this method can use."""

    def __init__(
        self,
        config: FlowOnPolicyConfig,
        spec: EnvSpec,
        num_envs: int,
        total_steps: int,
        pretrained=None,
        networks=None,
    ):
        config.validate()
        check_batch_geometry(config, num_envs)
        check_networks(networks, self.usable_networks, type(self).__name__)
        self.config = config
        self.spec = spec
        self.num_envs = num_envs
        self.pretrained = pretrained
        self.networks = networks
        self.policy = self._flow_policy(config, spec, pretrained, networks)
        self.num_steps = self.policy.config.num_steps
        self.optimizer = make_optimizer(config)
        self.rollout_steps = config.rollout_steps
        self.num_iterations = iterations_for_budget(
            total_steps, config.rollout_steps * num_envs, "total_steps"
        )

    def _flow_policy(self, config, spec, pretrained, networks) -> FlowPolicy:
        """The flow to train, and the action map (`to_action`) it acts through."""
        self.action_center, self.action_half_range = 0.0, 1.0
        velocity_torso = None if networks is None else networks.velocity
        if pretrained is None:
            return FlowPolicy(spec.action_dim, config.flow, velocity_torso)
        check_pretrained_flow(pretrained, type(self).__name__)
        if config.flow != type(config)().flow:
            raise ValueError(
                "--init takes the flow policy (network and Euler steps) from the pretrain run; "
                "drop the flow options"
            )
        if velocity_torso is not None:
            raise ValueError("--init takes the velocity network from the pretrain run; give none")
        self.action_center, self.action_half_range = pretrained_action_map(config, pretrained)
        return pretrained.policy.policy

    # ----- parameters and state ---------------------------------------------------------------

    def extra_params(self, key) -> dict:
        """Networks beside the policy that the method trains (a noise network, ...)."""
        return {}

    def init_params(self, key) -> dict:
        """The trained parameters: the flow ("policy") and `extra_params`."""
        # The middle key is the critic's in the methods that have one (see FlowActorCritic).
        policy_key, _, extra_key = jax.random.split(key, 3)
        if self.pretrained is None:
            policy = self.policy.init(policy_key, self.spec.obs_dim)
        else:
            policy = self.pretrained.acting["params"]
        return {"policy": policy} | self.extra_params(extra_key)

    def init(self, key) -> dict:
        params = self.init_params(key)
        obs_dim = self.spec.obs_dim
        if self.pretrained is None:
            obs_norm = running_stats_init((obs_dim,))
        else:
            obs_norm = self.pretrained.acting["obs_norm"]
        return {
            "params": params,
            "opt_state": self.optimizer.init(params),
            "obs_norm": obs_norm,
            "iteration": jnp.asarray(0, jnp.int32),
        }

    def acting_params(self, state) -> dict:
        return {"params": state["params"], "obs_norm": state["obs_norm"]}

    def noise_scale(self, iteration):
        """The sampling noise's scale s during update `iteration` (see final_noise_scale)."""
        progress = jnp.minimum(iteration / max(self.num_iterations - 1, 1), 1.0)
        return 1.0 + (self.config.final_noise_scale - 1.0) * progress

    def normalized(self, acting, obs):
        return normalize(obs, acting["obs_norm"], self.config.normalize_observations)

    # ----- acting -------------------------------------------------------------------------------

    def to_action(self, x):
        """The env action of a flow sample (the pretrained action map, else the identity)."""
        return jnp.clip(self.action_center + self.action_half_range * x, -1.0, 1.0)

    def act_deterministic(self, acting, obs):
        obs = self.normalized(acting, obs)
        noise = jnp.zeros((*obs.shape[:-1], self.spec.action_dim))
        return self.to_action(self.policy.sample(acting["params"]["policy"], obs, noise))

    def score_rollout(self, params, data: dict, key) -> dict:
        """Quantities of the pre-update policy over the flattened rollout (old log-likelihoods),
        computed once per update and added to its data."""
        return {}


class GaussianChainFlow(FlowOnPolicy):
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

    @property
    def starting_source_std(self) -> float:
        return self.config.starting_source_std(fine_tuning=self.pretrained is not None)

    @property
    def learns_source_std(self) -> bool:
        return self.config.learns_source_std(fine_tuning=self.pretrained is not None)

    def init_params(self, key) -> dict:
        params = super().init_params(key)
        if self.learns_source_std:
            log_std = jnp.log(self.starting_source_std)
            params["source_log_std"] = jnp.full(self.spec.action_dim, log_std)
        return params

    def source_std(self, params):
        """The source noise's std: learned per action dimension, or the configured one."""
        if self.learns_source_std:
            return jnp.exp(params["source_log_std"])
        return self.starting_source_std

    def scaled_source_std(self, params, noise_scale):
        """(..., d) std of the source a sample with this noise scale is drawn from."""
        return noise_scale[..., None] * self.source_std(params)

    def source_info(self, params) -> dict:
        """The learned source std's mean, for the update's metrics ({} with the fixed one)."""
        if not self.learns_source_std:
            return {}
        return {"source_std": jnp.mean(self.source_std(params))}

    def source_log_prob(self, params, minibatch: dict):
        """Log density (B,) of each stored x_0 under the source std of `params`, times the
        noise scale the sample was drawn with."""
        std = self.scaled_source_std(params, minibatch["noise_scale"])
        return gaussian_log_prob(0.0, std, minibatch["chain"][..., 0, :])

    def sampling_aux(self, acting, obs, key) -> dict:
        """Per-action random choices the transitions depend on (kept with the transition)."""
        return {}

    aux_names: tuple[str, ...] = ()
    """The keys `sampling_aux` returns, read back from the minibatch when re-scoring."""

    def acting_params(self, state) -> dict:
        return super().acting_params(state) | {"noise_scale": self.noise_scale(state["iteration"])}

    def act(self, acting, obs, key):
        obs = self.normalized(acting, obs)
        noise_key, step_key, aux_key = jax.random.split(key, 3)
        shape = (*obs.shape[:-1], self.spec.action_dim)
        # Kept with each sample, so that re-scoring uses the scale the sample was drawn with.
        scale = jnp.broadcast_to(acting["noise_scale"], obs.shape[:-1])
        params = acting["params"]
        noise = self.scaled_source_std(params, scale) * jax.random.normal(noise_key, shape)
        step_noise = jax.random.normal(step_key, (self.num_steps, *shape))
        aux = self.sampling_aux(acting, obs, aux_key)

        def transition(k, x, velocity, t):
            mean, std = self.transition(params, obs, aux, k, x, velocity, t)
            return mean, scale[..., None] * std

        action, chain = self.policy.sample_stochastic(
            params["policy"], obs, noise, step_noise, transition
        )
        # Batch-major, as the collector stacks extras along time: (T, N, K + 1, d).
        extras = {"chain": jnp.moveaxis(chain, 0, -2), "noise_scale": scale}
        return self.to_action(action), extras | aux

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
        return chain, means, minibatch["noise_scale"][..., None] * stds

    def step_log_probs(self, params, minibatch: dict):
        """Per-step log-likelihoods (B, K) and the transitions' stds (K, B, d)."""
        chain, means, stds = self.chain_transitions(params, minibatch)
        return chain_log_prob(chain, means, stds).T, stds

    def step_log_ratios(self, params, minibatch: dict):
        """Log ratios, new over old, of the chain's terms (B, K), with x_0's first (B, K + 1)
        when its std is learned; and the transitions' stds (K, B, d)."""
        log_probs, stds = self.step_log_probs(params, minibatch)
        log_ratios = log_probs - minibatch["old_step_log_prob"]
        if self.learns_source_std:
            source = self.source_log_prob(params, minibatch) - minibatch["old_source_log_prob"]
            log_ratios = jnp.concatenate([source[:, None], log_ratios], axis=-1)
        return log_ratios, stds

    def score_rollout(self, params, data, key):
        old = {"old_step_log_prob": self.step_log_probs(params, data)[0]}
        if self.learns_source_std:
            old["old_source_log_prob"] = self.source_log_prob(params, data)
        return old
