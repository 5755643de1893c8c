"""Executing action chunks as single decisions: the env an RL algorithm sees when it fine-tunes a
policy that predicts chunks of actions (and may condition on a history of observations).

:class:`ChunkExecution` wraps ONE Gymnasium env, inside the vector env, so that envs whose
episodes end in the middle of a chunk stop there while the others execute theirs: the vector env
stays synchronous at the level of decisions. One step of the wrapper is one decision:

- its action is the flat predicted chunk of ``chunk_length`` (Ta) actions, Ta x action_dim
  values (mapped from [-1, 1] onto the env's bounds per action by the vector env, with the bounds
  tiled);
- it executes the first ``execute_steps`` (Te) of them; a termination or truncation ends the
  decision at that step and the remaining actions are dropped;
- its reward is the raw sum of the executed steps' rewards (what episode returns add up), and its
  info carries ``discounted_reward`` = sum_k discount^k r_k (what an algorithm learns from, its
  bootstrap then discounted by discount^Te) and ``env_steps``, the env steps it executed (what
  the budget and episode lengths count);
- success: any executed step succeeded;
- its observation is the last ``obs_history`` (H) observations, flat and oldest first, the first
  repeated at an episode's start, the layout a pretrain run's policy was trained on
  (gprl.pretrain.history_windows, gprl.evaluation.ObservationHistory).

The spec the algorithm sees (:func:`chunked_spec`) is the decision-level task's: Ta x action_dim
actions with the bounds tiled, H x obs_dim observations, and the time limit in decisions. A
truncation inside a chunk would need the bootstrap discount^k with k < Te, which one discount per
decision cannot give: :func:`check_fits` refuses envs whose time limit is not a multiple of Te, so
that time limits always fall on the last executed step of a chunk. JAX tasks execute chunks the
same way (:mod:`gprl.envs.jax_chunked`); envpool's do not.

An offline dataset reaches a chunked run as the same decisions (gprl.decision_data).
"""

import dataclasses
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from gprl.envs.common import EnvError, ObsFlattener, TaskShape
from gprl.types import EnvSpec

ENV_STEPS = "env_steps"
DISCOUNTED_REWARD = "discounted_reward"
"""The info keys through which a decision reports what it executed."""


@dataclass(frozen=True)
class Chunking:
    """How a run executes a policy's chunks: Ta actions predicted, the first Te executed, H
    observations conditioned on, and the discount per env step of the decision's reward."""

    chunk_length: int
    execute_steps: int
    obs_history: int = 1
    discount: float = 1.0

    def __post_init__(self):
        if not 1 <= self.execute_steps <= self.chunk_length:
            raise EnvError(
                f"a chunk executes 1 to chunk_length ({self.chunk_length}) actions, not "
                f"execute_steps={self.execute_steps}"
            )
        if self.obs_history < 1:
            raise EnvError(f"obs_history must be at least 1, got {self.obs_history}")
        if not 0.0 <= self.discount <= 1.0:
            raise EnvError(f"a chunk's discount must be in [0, 1], not {self.discount}")


def check_fits(spec: EnvSpec, chunking: Chunking) -> None:
    """EnvError in one line unless the env's time limit is a multiple of Te (see the module)."""
    limit, execute = spec.max_episode_steps, chunking.execute_steps
    if limit is not None and limit % execute:
        raise EnvError(
            f"{spec.env_id} truncates episodes at {limit} steps, not a multiple of the "
            f"{execute} executed actions per chunk, so a truncation would fall inside a chunk "
            "and its bootstrap could not be discounted exactly; execute chunks of a length "
            f"dividing {limit} (--execute-steps of a pretrain run, a method's chunk_length)"
        )


def chunked_shape(shape: TaskShape, chunking: Chunking) -> TaskShape:
    """The task as the wrapped envs present it: observations of H x obs_dim, actions of
    Ta x action_dim with the bounds tiled, the time limit in decisions (a multiple of Te env
    steps: see :func:`check_fits`)."""
    space = shape.action_space
    low, high = (np.tile(bound, chunking.chunk_length) for bound in (space.low, space.high))
    history = (chunking.obs_history * shape.spec.obs_dim,)
    limit = shape.spec.max_episode_steps
    return TaskShape(
        shape.spec.env_id,
        spaces.Box(-np.inf, np.inf, history, np.float32),
        spaces.Box(low, high, dtype=space.dtype),
        None if limit is None else limit // chunking.execute_steps,
    )


def chunked_spec(spec: EnvSpec, chunking: Chunking) -> EnvSpec:
    """The EnvSpec an algorithm sees on the wrapped envs of a task with this spec."""
    box = spaces.Box(spec.action_low, spec.action_high, dtype=np.float32)
    obs = spaces.Box(-np.inf, np.inf, (spec.obs_dim,), np.float32)
    shape = TaskShape(spec.env_id, obs, box, spec.max_episode_steps)
    chunked = chunked_shape(shape, chunking).spec
    return dataclasses.replace(chunked, reports_success=spec.reports_success)


class ChunkExecution(gym.Wrapper):
    """One env stepping whole chunks: see the module docstring. The wrapped env is the one the
    vector env would step (success already read from its infos)."""

    def __init__(self, env: gym.Env, chunking: Chunking):
        super().__init__(env)
        self._chunking = chunking
        self._flattener = ObsFlattener(str(env), env.observation_space)
        self._action_dim = env.action_space.shape[0]
        shape = TaskShape(str(env), env.observation_space, env.action_space, None)
        chunked = chunked_shape(shape, chunking)
        self.observation_space = spaces.Box(-np.inf, np.inf, (chunked.spec.obs_dim,), np.float32)
        self.action_space = chunked.action_space
        self._window = None

    def _observe(self, obs, episode_start: bool) -> np.ndarray:
        """The history window after obs (the first observation repeated at an episode start)."""
        frame = self._flattener.single(obs)
        if episode_start:
            self._window = np.tile(frame, (self._chunking.obs_history, 1))
        else:
            self._window = np.concatenate([self._window[1:], frame[None]])
        return self._window.ravel()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, _ = self.env.reset(seed=seed, options=options)
        return self._observe(obs, episode_start=True), {}

    def step(self, action):
        actions = np.asarray(action).reshape(self._chunking.chunk_length, self._action_dim)
        total, discounted, weight = 0.0, 0.0, 1.0
        success = None
        for executed in range(1, self._chunking.execute_steps + 1):
            obs, reward, terminated, truncated, info = self.env.step(actions[executed - 1])
            total += float(reward)
            discounted += weight * float(reward)
            weight *= self._chunking.discount
            if "success" in info:
                success = bool(success) or bool(info["success"])
            window = self._observe(obs, episode_start=False)
            if terminated or truncated:
                break
        info = {ENV_STEPS: executed, DISCOUNTED_REWARD: discounted}
        if success is not None:
            info["success"] = success
        return window, total, terminated, truncated, info


def chunk_infos(infos: dict, num_envs: int) -> tuple[np.ndarray, np.ndarray]:
    """(env steps (N,) int64, discounted rewards (N,) float32) of a vector step of wrapped envs.
    Where an episode ended its step's info is under "final_info", the reset's (empty) on top, so
    each key is the sum of both (absent entries are zero)."""
    values = []
    for key, dtype in ((ENV_STEPS, np.int64), (DISCOUNTED_REWARD, np.float32)):
        total = np.zeros(num_envs, dtype)
        for holder in (infos, infos.get("final_info", {})):
            if key in holder:
                total += np.where(holder[f"_{key}"], holder[key], 0).astype(dtype)
        values.append(total)
    return values[0], values[1]
