"""Collectors: step envs with an algorithm's `act` and emit raw transitions.

Both collectors have one interface, `reset(seed)`, `collect(acting, key, num_steps)` and
`make_train_step(acting_fn, update_fn, num_steps)`:

- :class:`HostCollector` steps a host vector env (Gymnasium or envpool) with one jitted acting
  call per vector step;
- :class:`DeviceCollector` steps a JAX env inside `jit(lax.scan)`, and fuses a rollout with the
  update into one compiled call, with no host round trip per step.

Both draw per-step keys the same way, so the same policy on the same JAX task gives the same
rollout on either.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gprl.types import Transition


class EpisodeStats(NamedTuple):
    """Episodes that ended during a collection: how many, and their summed returns and lengths
    (raw rewards, env steps); and the env steps the collection took."""

    count: int
    return_sum: float
    length_sum: float
    env_steps: int

    @property
    def mean_return(self) -> float:
        return self.return_sum / self.count if self.count else float("nan")

    @property
    def mean_length(self) -> float:
        return self.length_sum / self.count if self.count else float("nan")


def _policy_step(act):
    def step(acting, obs, key):
        key, act_key = jax.random.split(key)
        action, extras = act(acting, obs, act_key)
        return action, extras, key

    return step


split_key = jax.jit(jax.random.split)
"""key -> (key, subkey) as one compiled call (eager splitting dispatches several ops)."""


class HostCollector:
    """Steps a host vector env (numpy in, numpy out)."""

    def __init__(self, env, act):
        self.env = env
        self._policy_step = jax.jit(_policy_step(act))
        self.obs = None

    def reset(self, seed: int, start_state_group: int = 1) -> None:
        """Start fresh episodes in every env (episodes in flight are dropped, not logged), each
        group of start_state_group consecutive envs from one initial state."""
        self.obs = self.env.restart(seed, start_state_group)
        self.episode_return = np.zeros(self.env.num_envs, np.float64)
        self.episode_length = np.zeros(self.env.num_envs, np.int64)

    def collect(self, acting, key, num_steps: int):
        """num_steps vector steps; returns (Transition of (T, N, ...) numpy arrays, key, stats)."""
        if self.obs is None:
            raise RuntimeError("call reset(seed) before collect")
        n, obs_dim = self.env.num_envs, self.env.spec.obs_dim
        obs = np.empty((num_steps, n, obs_dim), np.float32)
        next_obs = np.empty((num_steps, n, obs_dim), np.float32)
        actions = np.empty((num_steps, n, self.env.spec.action_dim), np.float32)
        rewards = np.empty((num_steps, n), np.float32)
        terminated = np.empty((num_steps, n), bool)
        truncated = np.empty((num_steps, n), bool)
        extras_per_step = []
        count, return_sum, length_sum, env_steps = 0, 0.0, 0.0, 0
        for t in range(num_steps):
            obs[t] = self.obs
            action, extras, key = self._policy_step(acting, self.obs, key)
            actions[t] = action
            extras_per_step.append(extras)
            step = self.env.step(actions[t])
            rewards[t], terminated[t], truncated[t] = (
                step.learned_reward(),
                step.terminated,
                step.truncated,
            )
            next_obs[t] = step.final_obs
            executed = 1 if step.env_steps is None else step.env_steps
            env_steps += n if step.env_steps is None else int(np.sum(step.env_steps))
            self.episode_return += step.reward
            self.episode_length += executed
            done = step.terminated | step.truncated
            if done.any():
                count += int(done.sum())
                return_sum += float(self.episode_return[done].sum())
                length_sum += float(self.episode_length[done].sum())
                self.episode_return[done] = 0.0
                self.episode_length[done] = 0
            self.obs = step.obs
        # Stacking on the host: jnp.stack would compile a new T-operand concatenation per length.
        extras = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *extras_per_step)
        batch = Transition(obs, actions, rewards, terminated, truncated, next_obs, extras)
        return batch, key, EpisodeStats(count, return_sum, length_sum, env_steps)

    def make_train_step(self, acting_fn, update_fn, num_steps: int, donate: bool = False):
        """(state, key) -> (state, key, metrics, episode stats): collect, then a jitted update.
        donate: the update may write the state's arrays in place (the caller drops the old
        state; a replay buffer is then not copied at every call)."""
        update = jax.jit(update_fn, donate_argnums=0 if donate else ())

        def train_step(state, key):
            batch, key, episodes = self.collect(acting_fn(state), key, num_steps)
            key, update_key = split_key(key)
            state, metrics = update(state, batch, update_key)
            return state, key, jax.device_get(metrics), episodes

        return train_step


class DeviceCollector:
    """Steps a JAX vector env (:class:`gprl.envs.jax_envs.JaxVecEnv`) inside jit."""

    def __init__(self, env, act):
        self.env = env
        self._policy_step = _policy_step(act)
        self._reset = jax.jit(self._reset_impl, static_argnums=1)
        self._collect = jax.jit(self.rollout, static_argnums=3)
        self.carry = None

    def _reset_impl(self, key, start_state_group):
        env_state, obs = self.env.reset(key, start_state_group)
        zeros = jnp.zeros(self.env.num_envs, jnp.float32)
        return {
            "env_state": env_state,
            "obs": obs,
            "episode_return": zeros,
            "episode_length": zeros,
        }

    def reset(self, seed: int, start_state_group: int = 1) -> None:
        self.carry = self._reset(jax.random.PRNGKey(seed), start_state_group)

    def rollout(self, carry, acting, key, num_steps: int):
        """Pure: num_steps vector steps under lax.scan. Returns (carry, batch, key, stats)."""

        def step(inputs, _):
            carry, key, stats = inputs
            action, extras, key = self._policy_step(acting, carry["obs"], key)
            env_state, result = self.env.step(carry["env_state"], action)
            transition = Transition(
                carry["obs"],
                action,
                result.learned_reward(),
                result.terminated,
                result.truncated,
                result.final_obs,
                extras,
            )
            executed = 1.0 if result.env_steps is None else result.env_steps
            executed = jnp.broadcast_to(executed, result.reward.shape)
            episode_return = carry["episode_return"] + result.reward
            episode_length = carry["episode_length"] + executed
            done = jnp.logical_or(result.terminated, result.truncated)
            stats = (
                stats[0] + jnp.sum(done),
                stats[1] + jnp.sum(jnp.where(done, episode_return, 0.0)),
                stats[2] + jnp.sum(jnp.where(done, episode_length, 0.0)),
                stats[3] + jnp.sum(executed),
            )
            carry = {
                "env_state": env_state,
                "obs": result.obs,
                "episode_return": jnp.where(done, 0.0, episode_return),
                "episode_length": jnp.where(done, 0.0, episode_length),
            }
            return (carry, key, stats), transition

        zero = jnp.zeros((), jnp.float32)
        (carry, key, stats), batch = jax.lax.scan(
            step, (carry, key, (zero, zero, zero, zero)), None, length=num_steps
        )
        return carry, batch, key, stats

    def _check_reset(self):
        if self.carry is None:
            raise RuntimeError("call reset(seed) before collect")

    def collect(self, acting, key, num_steps: int):
        self._check_reset()
        self.carry, batch, key, stats = self._collect(self.carry, acting, key, num_steps)
        return batch, key, _episode_stats(stats)

    def make_train_step(self, acting_fn, update_fn, num_steps: int, donate: bool = False):
        """(state, key) -> (state, key, metrics, episode stats): one compiled call that rolls out
        and updates (donate: as for HostCollector)."""

        def rollout_and_update(carry, state, key):
            carry, batch, key, stats = self.rollout(carry, acting_fn(state), key, num_steps)
            key, update_key = jax.random.split(key)
            state, metrics = update_fn(state, batch, update_key)
            return carry, state, key, metrics, stats

        compiled = jax.jit(rollout_and_update, donate_argnums=1 if donate else ())

        def train_step(state, key):
            self._check_reset()
            self.carry, state, key, metrics, stats = compiled(self.carry, state, key)
            metrics, stats = jax.device_get((metrics, stats))
            return state, key, metrics, _episode_stats(stats)

        return train_step


def _episode_stats(stats) -> EpisodeStats:
    count, return_sum, length_sum, env_steps = (float(x) for x in jax.device_get(stats))
    return EpisodeStats(int(count), return_sum, length_sum, int(env_steps))
