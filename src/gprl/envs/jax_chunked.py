"""Executing action chunks as single decisions on JAX tasks: :class:`ChunkedTask` is what
:class:`~gprl.envs.chunked.ChunkExecution` is to a Gymnasium env, with the same semantics (see
:mod:`gprl.envs.chunked`), as a :class:`~gprl.envs.jax_envs.JaxTask` that the JAX vector env
batches, limits in time and resets like any other.

Inside a decision, a ``lax.scan`` runs the Te executed steps; once the episode terminates, a mask
holds the task's state, observations and rewards where they were for the rest of the chunk. The
vector env counts decisions against the chunked spec's time limit (a multiple of Te env steps),
so its truncations fall on the last executed step of a chunk, as on the host.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from gprl.envs.chunked import Chunking, check_fits, chunked_spec
from gprl.envs.jax_envs import JaxVecEnv


class ChunkState(NamedTuple):
    task_state: Any
    window: jax.Array
    """(H, obs_dim) the last H observations, oldest first."""
    env_steps: jax.Array
    """() int32 env steps the last decision executed."""
    discounted_reward: jax.Array
    """() float32 the last decision's rewards summed with the discount per env step."""


class ChunkedTask:
    """A JaxTask whose step executes the first Te actions of a flat chunk (see the module)."""

    def __init__(self, task, chunking: Chunking, action_dim: int):
        self.task = task
        self.chunking = chunking
        self.action_dim = action_dim
        self.reset_is_expensive = bool(getattr(task, "reset_is_expensive", False))

    def reset(self, key):
        task_state, obs = self.task.reset(key)
        window = jnp.tile(obs, (self.chunking.obs_history, 1))
        zero = jnp.zeros((), jnp.float32)
        state = ChunkState(task_state, window, jnp.zeros((), jnp.int32), zero)
        return state, window.ravel()

    def step(self, state: ChunkState, action):
        chunking = self.chunking
        actions = action.reshape(chunking.chunk_length, self.action_dim)[: chunking.execute_steps]

        def execute(carry, env_action):
            task_state, window, ended, total, discounted, weight, executed = carry
            stepped, obs, reward, terminated = self.task.step(task_state, env_action)
            live = ~ended
            task_state = jax.tree.map(
                lambda new, old: jnp.where(live, new, old), stepped, task_state
            )
            window = jnp.where(live, jnp.concatenate([window[1:], obs[None]]), window)
            reward = jnp.where(live, reward, 0.0)
            carry = (
                task_state,
                window,
                ended | terminated,
                total + reward,
                discounted + weight * reward,
                weight * chunking.discount,
                executed + live.astype(jnp.int32),
            )
            return carry, None

        zero = jnp.zeros((), jnp.float32)
        start = (state.task_state, state.window, jnp.zeros((), bool), zero, zero, 1.0 + zero)
        carry, _ = lax.scan(execute, (*start, jnp.zeros((), jnp.int32)), actions)
        task_state, window, terminated, total, discounted, _, executed = carry
        state = ChunkState(task_state, window, executed, discounted)
        return state, window.ravel(), total, terminated

    @staticmethod
    def executed(state: ChunkState) -> dict:
        """What the decisions of a batch of states executed, as StepResult fields."""
        return {"env_steps": state.env_steps, "discounted_reward": state.discounted_reward}


def chunked_jax_env(env: JaxVecEnv, chunking: Chunking) -> JaxVecEnv:
    """The JAX vector env of env's task stepping whole chunks; EnvError where they do not fit."""
    check_fits(env.spec, chunking)
    task = ChunkedTask(env.task, chunking, env.spec.action_dim)
    return JaxVecEnv(task, chunked_spec(env.spec, chunking), env.num_envs)
