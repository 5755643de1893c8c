"""GRPO for flow policies (Flow-GRPO), with GRPO-Guard's ratio normalisation as an option.

Critic-free: every Euler step of the flow is the Euler-Maruyama step of its marginal-preserving
SDE, so each denoising step has a Gaussian log-likelihood, and PPO's clip acts per step. The
advantage of an episode is its return standardised within its group: the `group_size`
consecutive envs, which the loop restarts from one initial state at every rollout. That makes
groups exact for tasks whose episodes have a fixed length (one-step bandits, fixed horizons);
where episode lengths differ, later episodes of a group start from different states and the
group mean becomes a plain batch baseline. Steps of episodes still running when the rollout
ends get advantage 0.

A sibling of the critic-based flow methods: it shares their flow policy and Gaussian-chain
sampling (gprl.algos.flow_onpolicy) but has no critic, no GAE and no reward normalisation, and
its config has none of their fields. Its state is the flow's, with "frozen" for the KL's
reference policy: the initial one, which with --init is the pretrained flow it fine-tunes.

GRPO-Guard: `normalize_step_ratios` centres each step's log-ratio distribution over the
minibatch and gives every step the same spread, so the clip constrains all noise levels alike;
`reweight_noise_levels` weights each step's surrogate by its noise variance, which evens out
the 1 / sigma^2 scale of Gaussian log-likelihood gradients across steps.

Polychromic objective (`polychromic_set_size` > 0; gprl.algos.polychromic): the advantage of an
episode becomes its share in the success x diversity of sets of its group's episodes, so that a
group whose episodes reach the same optimum in different ways is preferred to one that repeats
one way: PPO-style objectives are otherwise indifferent to how the policy splits between equal
optima. The shared start of each group is the paper's vine: several rollouts branched from one
state.
"""

from dataclasses import dataclass
from typing import Literal

import jax
import jax.numpy as jnp

from gprl.algos.flow_onpolicy import GaussianChainConfig, GaussianChainFlow
from gprl.algos.onpolicy import (
    advance_state,
    annealed_learning_rate,
    flatten_time,
    minibatch_epochs,
    set_hyperparameters,
)
from gprl.algos.polychromic import check_set_size, episode_outcomes, set_level_advantages
from gprl.policies.flow import sde_transition
from gprl.rl_math import normalize, ppo_policy_loss

STD_EPS = 1e-8


@dataclass(frozen=True)
class GRPOConfig(GaussianChainConfig):
    group_size: int = 8
    """Envs per group (G): they start every rollout from the same initial state."""
    noise_level: float = 0.7
    """Scale a of the SDE's diffusion g(t) = a sqrt((1 - t) / t) (Flow-GRPO's default)."""
    clip_eps: float = 0.2
    """PPO clip range per denoising step (Flow-GRPO uses ~1e-4 for image models; a flow policy
    trained from scratch needs larger steps)."""
    kl_coef: float = 0.0
    """Weight of the KL to the reference (initial) policy's transitions; 0 disables it, as a
    from-scratch policy has no reference worth staying near."""
    normalize_step_ratios: bool = False
    """GRPO-Guard: centre and equalise the spread of each step's log ratios."""
    reweight_noise_levels: bool = False
    """GRPO-Guard: weight each step's surrogate by its noise variance (normalised to mean 1)."""
    polychromic_set_size: int = 0
    """Polychromic objective: 0 (off) keeps the standardised returns; k >= 2 (below group_size)
    scores every set of k episodes of a group (polychromic_score) and gives each episode the
    mean score of its sets minus the group's mean, so different equally good episodes gain.
    Expects non-negative returns (successes). Keeps modes when fine-tuning, not from scratch."""
    polychromic_weight: float = 1.0
    """Polychromic objective: the advantage is this much of the set-level one plus (1 - weight)
    of the standardised return; 1 uses the set-level one alone."""
    polychromic_score: Literal["product", "best_per_outcome"] = "product"
    """Polychromic objective: a set's score, the paper's (mean return) x (share of distinct
    outcomes), or best_per_outcome: the best return of each distinct outcome, summed, / k."""
    polychromic_outcome: Literal["first_action", "final_obs"] = "first_action"
    """Polychromic objective: what tells episodes apart, the action of their first step (which
    picks the mode from a shared start) or the observation they end in."""
    polychromic_radius: float = 0.5
    """Polychromic objective: two episodes whose outcomes lie within this Euclidean distance
    (action units, or observation units for final_obs) count as the same outcome."""

    def validate(self) -> None:
        super().validate()
        if self.group_size < 2:
            raise ValueError(f"group_size must be at least 2, got {self.group_size}")
        if not self.noise_level > 0:
            raise ValueError(f"noise_level must be positive, got {self.noise_level}")
        if self.kl_coef < 0:
            raise ValueError(f"kl_coef must be non-negative, got {self.kl_coef}")
        if self.polychromic_set_size:
            check_set_size(self.polychromic_set_size, self.group_size)
        if not 0 <= self.polychromic_weight <= 1:
            raise ValueError(
                f"polychromic_weight must lie in [0, 1], got {self.polychromic_weight}"
            )
        if not self.polychromic_radius >= 0:
            raise ValueError(
                f"polychromic_radius must be non-negative, got {self.polychromic_radius}"
            )


def grouped_episode_returns(rewards, dones, group_size: int):
    """(T, N) rewards and episode ends -> (returns, finished, ordinal).

    returns and finished are (T, N / G, G): row j holds episode j of each env (counted from the
    rollout's start), its return and whether it ended within the rollout; ordinal (T, N) is each
    step's episode number, for spreading per-episode values back over the steps.
    """
    steps, num_envs = rewards.shape
    dones = dones.astype(jnp.int32)
    ordinal = jnp.cumsum(dones, axis=0) - dones
    segment = (ordinal * num_envs + jnp.arange(num_envs)).ravel()
    segments = steps * num_envs
    returns = jax.ops.segment_sum(rewards.ravel(), segment, segments)
    finished = jax.ops.segment_max(dones.ravel(), segment, segments) > 0
    grouped = (steps, num_envs // group_size, group_size)
    return returns.reshape(grouped), finished.reshape(grouped), ordinal


def per_step(per_episode, ordinal):
    """(T, N / G, G) per-episode values -> (T, N): each step gets its episode's value."""
    return jnp.take_along_axis(per_episode.reshape(ordinal.shape), ordinal, axis=0)


def group_relative_advantages(rewards, dones, group_size: int):
    """(T, N) rewards and episode ends -> (T, N) advantages.

    Episode j of env n (counted from the rollout's start) is compared with episode j of the
    other envs of its group; every step of it gets that episode's standardised return. Unfinished
    episodes, and groups with fewer than two finished episodes, get 0.
    """
    returns, finished, ordinal = grouped_episode_returns(rewards, dones, group_size)
    mask = finished.astype(jnp.float32)
    count = mask.sum(-1, keepdims=True)
    mean = (returns * mask).sum(-1, keepdims=True) / jnp.maximum(count, 1.0)
    var = (((returns - mean) ** 2) * mask).sum(-1, keepdims=True) / jnp.maximum(count, 1.0)
    standardised = (returns - mean) / (jnp.sqrt(var) + STD_EPS)
    return per_step(jnp.where((mask > 0) & (count >= 2), standardised, 0.0), ordinal)


def polychromic_advantages(rewards, dones, outcome_values, config: GRPOConfig):
    """(T, N) advantages from the polychromic objective's set-level scores of each group's
    episodes (gprl.algos.polychromic), divided by their root mean square over the group;
    outcome_values (T, N, d) are the rollout's actions or next observations, as
    config.polychromic_outcome says."""
    returns, finished, ordinal = grouped_episode_returns(rewards, dones, config.group_size)
    outcomes = episode_outcomes(
        outcome_values, dones.astype(jnp.int32), ordinal, config.polychromic_outcome
    )
    outcomes = outcomes.reshape(*returns.shape, -1)
    advantages = set_level_advantages(
        returns,
        outcomes,
        finished,
        config.polychromic_set_size,
        config.polychromic_radius,
        config.polychromic_score,
    )
    # Standardised within the group, as GRPO's returns are: the clipped surrogate is not
    # normalised, and raw set scores of a policy that rarely succeeds are tiny.
    count = jnp.maximum(finished.sum(-1, keepdims=True), 1)
    spread = jnp.sqrt((advantages**2).sum(-1, keepdims=True) / count)
    return per_step(advantages / (spread + STD_EPS), ordinal)


class GRPO(GaussianChainFlow):
    pretrained_policy = "optional"

    def __init__(
        self,
        config: GRPOConfig,
        spec,
        num_envs: int,
        total_steps: int,
        pretrained=None,
        networks=None,
    ):
        if num_envs % config.group_size:
            raise ValueError(
                f"num_envs ({num_envs}) must be a multiple of grpo.group_size ({config.group_size})"
            )
        super().__init__(config, spec, num_envs, total_steps, pretrained, networks)
        self.start_state_group = config.group_size

    def init(self, key):
        state = super().init(key)
        if self.config.kl_coef > 0:
            state["frozen"] = {"reference_policy": state["params"]["policy"]}
        return state

    def transition(self, params, obs, aux, k, x, velocity, t):
        return sde_transition(x, velocity, t, 1.0 / self.num_steps, self.config.noise_level)

    def loss(self, params, minibatch, frozen):
        """Per-step clipped surrogate on the group-relative advantages, plus the KL term."""
        config = self.config
        log_ratio, stds = self.step_log_ratios(params, minibatch)
        if config.normalize_step_ratios:
            centre = jax.lax.stop_gradient(log_ratio.mean(axis=0))
            spread = jax.lax.stop_gradient(log_ratio.std(axis=0))
            log_ratio = (log_ratio - centre) * (spread.mean() / (spread + STD_EPS))
        advantages = minibatch["advantages"][:, None]
        if config.reweight_noise_levels:
            variance = jnp.mean(stds**2, axis=(1, 2))
            if self.learns_source_std:  # x_0's term comes first
                source_std = self.scaled_source_std(params, minibatch["noise_scale"])
                variance = jnp.concatenate([jnp.mean(source_std**2)[None], variance])
            variance = jax.lax.stop_gradient(variance)
            advantages = advantages * variance / variance.mean()
        loss, info = ppo_policy_loss(log_ratio, advantages, config.clip_eps)
        if config.kl_coef > 0:
            kl = self.kl_to_reference(params, minibatch, frozen["reference_policy"])
            loss = loss + config.kl_coef * kl
            info = info | {"kl_to_reference": kl}
        return loss, info | {"policy_loss": loss} | self.source_info(params)

    def kl_to_reference(self, params, minibatch, reference_policy):
        """Mean per-step KL between this and the reference policy's transitions from the stored
        states (equal stds: |mean - reference mean|^2 / (2 std^2))."""
        _, means, stds = self.chain_transitions(params, minibatch)
        reference_params = params | {"policy": reference_policy}
        _, reference_means, _ = self.chain_transitions(reference_params, minibatch)
        return jnp.mean(jnp.sum((means - reference_means) ** 2 / (2.0 * stds**2), axis=-1))

    def advantages(self, batch):
        """(T, N) per-step advantages: standardised group-relative returns, the polychromic
        objective's set-level ones, or a weighted sum of both."""
        config = self.config
        dones = jnp.logical_or(batch.terminated, batch.truncated)
        rewards = jnp.asarray(batch.reward, jnp.float32) * config.reward_scale
        standard = group_relative_advantages(rewards, dones, config.group_size)
        if not config.polychromic_set_size:
            return standard
        first_action = config.polychromic_outcome == "first_action"
        values = batch.action if first_action else batch.next_obs
        values = jnp.asarray(values, jnp.float32).reshape(*rewards.shape, -1)
        set_level = polychromic_advantages(rewards, dones, values, config)
        weight = config.polychromic_weight
        return (1.0 - weight) * standard + weight * set_level

    def update(self, state, batch, key):
        config = self.config
        learning_rate = annealed_learning_rate(config, state["iteration"], self.num_iterations)
        advantages = self.advantages(batch)
        obs = normalize(batch.obs, state["obs_norm"], config.normalize_observations)
        data = flatten_time({"obs": obs, "advantages": advantages} | batch.extras)
        score_key, key = jax.random.split(key)
        data = data | self.score_rollout(state["params"], data, score_key)
        frozen = state.get("frozen", {})
        params, opt_state, info = minibatch_epochs(
            lambda params, minibatch: self.loss(params, minibatch, frozen),
            state["params"],
            set_hyperparameters(state["opt_state"], learning_rate=learning_rate),
            self.optimizer,
            data,
            key,
            config,
        )
        state = advance_state(state, batch, params, opt_state, config)
        advantage_info = {"finished_share": jnp.mean(advantages != 0)}
        return state, info | advantage_info | {"learning_rate": learning_rate}
