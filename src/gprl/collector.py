"""Host collector: steps Gymnasium vector envs on the CPU, acting with one jitted call per step."""

from collections.abc import Callable
from typing import NamedTuple

import jax
import numpy as np

from gprl.envs import VecEnv
from gprl.rl_math import running_stats_update

PolicyStep = Callable  # (params, obs, key) -> (env_action, extras: dict of arrays, key)
ValueFn = Callable  # (params, obs) -> values (N,)


class Rollout(NamedTuple):
    obs: np.ndarray
    """(T, N, obs_dim) raw observations the policy acted on."""
    extras: dict
    """Policy outputs stacked over time, e.g. latent (T, N, A), log_prob and value (T, N)."""
    rewards: np.ndarray
    """(T, N) rewards after scaling, with gamma * V(final_obs) added where a time limit hit."""
    dones: np.ndarray
    """(T, N) 1.0 where an episode ended (terminated or truncated) after the step."""
    last_obs: np.ndarray
    """(N, obs_dim) raw observations after the last step, for bootstrapping."""


class HostCollector:
    def __init__(self, env: VecEnv, gamma: float, normalize_rewards: bool, reward_scale: float):
        self.env = env
        self.gamma = gamma
        self.normalize_rewards = normalize_rewards
        self.reward_scale = reward_scale
        self.obs: np.ndarray | None = None

    def reset(self, seed: int) -> None:
        """Start fresh episodes in every env (episodes in flight are dropped, not logged)."""
        n = self.env.num_envs
        self.obs = self.env.reset(seed=seed)
        self.episode_return = np.zeros(n, np.float64)
        self.episode_length = np.zeros(n, np.int64)
        self.discounted_return = np.zeros(n, np.float64)

    def rollout(
        self,
        policy_step: PolicyStep,
        value_fn: ValueFn | None,
        params,
        key,
        num_steps: int,
        return_stats: dict,
    ):
        """Collect num_steps vector steps.

        Returns (rollout, key, return_stats, episodes) where episodes is a list of
        (return, length) of the episodes that ended during the rollout.
        """
        if self.obs is None:
            raise RuntimeError("call reset(seed) before rollout")
        n, obs_dim = self.env.num_envs, self.env.spec.obs_dim
        obs_buffer = np.empty((num_steps, n, obs_dim), np.float32)
        rewards = np.empty((num_steps, n), np.float64)
        discounted_returns = np.empty((num_steps, n), np.float64)
        dones = np.empty((num_steps, n), np.float32)
        extras_per_step = []
        bootstrap_steps = []
        episodes = []
        for t in range(num_steps):
            obs_buffer[t] = self.obs
            action, extras, key = policy_step(params, self.obs, key)
            extras_per_step.append(extras)
            step = self.env.step(np.asarray(action))
            self.episode_return += step.reward
            self.episode_length += 1
            rewards[t] = step.reward * self.reward_scale
            self.discounted_return = self.discounted_return * self.gamma + rewards[t]
            discounted_returns[t] = self.discounted_return
            done = step.terminated | step.truncated
            dones[t] = done
            if step.truncated.any() and value_fn is not None:
                bootstrap_steps.append((t, step.truncated, value_fn(params, step.final_obs)))
            if done.any():
                for i in np.flatnonzero(done):
                    episodes.append((float(self.episode_return[i]), int(self.episode_length[i])))
                self.episode_return[done] = 0.0
                self.episode_length[done] = 0
                self.discounted_return[done] = 0.0
            self.obs = step.obs
        if self.normalize_rewards:
            # One statistics update per rollout (not per step) keeps the host loop lean; rewards
            # are scaled by the std of the discounted return, as in CleanRL / SB3 VecNormalize.
            return_stats = running_stats_update(return_stats, discounted_returns.reshape(-1, 1))
            rewards /= np.sqrt(return_stats["var"][0] + 1e-8)
        for t, truncated, final_values in bootstrap_steps:
            rewards[t] += self.gamma * np.where(truncated, np.asarray(final_values), 0.0)
        # Stacking on the host: jnp.stack would compile a new T-operand concatenation per length.
        extras = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *extras_per_step)
        rollout = Rollout(obs_buffer, extras, rewards.astype(np.float32), dones, self.obs.copy())
        return rollout, key, return_stats, episodes
