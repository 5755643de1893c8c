"""What every host env backend shares: the one-line EnvError, observation flattening, action
mapping and the EnvSpec built from a task's spaces.

The Gymnasium path (:mod:`gprl.envs.vector`) and envpool (:mod:`gprl.envs.envpool_backend`)
both build their envs from these pieces, so the two cannot drift apart in what an algorithm sees.
"""

import ctypes.util
import math
import os
from typing import Any

import numpy as np
from gymnasium import spaces

from gprl.types import EnvSpec

DMC_SHORT_PREFIX = "dmc:"
DMC_PREFIX = "dm_control/"


class EnvError(ValueError):
    """An env cannot be built or driven the way gprl needs; the one-line message says why."""


def first_line(exc: BaseException) -> str:
    """The exception's type and first message line, for one-line EnvErrors."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def canonical_env_id(env_id: str) -> str:
    """env_id with the DeepMind Control short form expanded: ``dmc:hopper-stand`` becomes
    ``dm_control/hopper-stand-v0``; any other id is returned as it is."""
    if env_id.startswith(DMC_SHORT_PREFIX):
        return f"{DMC_PREFIX}{env_id[len(DMC_SHORT_PREFIX) :]}-v0"
    return env_id


def prefer_headless_rendering() -> None:
    # MuJoCo's default GL backend (GLFW) needs a display, and dm_control fixes its backend when
    # first imported, so choose EGL up front on headless machines that have it.
    has_display = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    if "MUJOCO_GL" not in os.environ and not has_display and ctypes.util.find_library("EGL"):
        os.environ["MUJOCO_GL"] = "egl"


class ObsFlattener:
    """Turns Box or Dict-of-Box observations into float32 vectors (Dict keys in sorted order)."""

    def __init__(self, env_name: str, space: spaces.Space):
        if isinstance(space, spaces.Box):
            self.keys = None
            self.obs_dim = math.prod(space.shape)
        elif isinstance(space, spaces.Dict) and all(
            isinstance(subspace, spaces.Box) for subspace in space.spaces.values()
        ):
            self.keys = sorted(space.spaces)
            self.obs_dim = sum(math.prod(space.spaces[key].shape) for key in self.keys)
        else:
            raise EnvError(f"gprl needs Box or Dict-of-Box observations; {env_name} has {space}")

    def batch(self, obs: Any, num_envs: int) -> np.ndarray:
        # Always returns a fresh array: the vector env reuses its observation buffers.
        if self.keys is None:
            return obs.reshape(num_envs, self.obs_dim).astype(np.float32)
        parts = [obs[key].reshape(num_envs, -1) for key in self.keys]
        return np.concatenate(parts, axis=1, dtype=np.float32)

    def single(self, obs: Any) -> np.ndarray:
        if self.keys is None:
            return np.asarray(obs, dtype=np.float32).ravel()
        return np.concatenate([np.ravel(obs[key]) for key in self.keys], dtype=np.float32)


def check_action_space(env_name: str, space: spaces.Space) -> spaces.Box:
    """The space if gprl can map [-1, 1] actions onto it: a bounded 1-D float Box."""
    if not isinstance(space, spaces.Box) or not np.issubdtype(space.dtype, np.floating):
        raise EnvError(f"gprl needs a continuous (Box) action space; {env_name} has {space}")
    if len(space.shape) != 1:
        raise EnvError(f"gprl needs a one-dimensional Box action space; {env_name} has {space}")
    if not (np.isfinite(space.low).all() and np.isfinite(space.high).all()):
        raise EnvError(
            f"gprl needs a bounded Box action space to rescale actions from [-1, 1]; "
            f"{env_name} has {space}"
        )
    return space


class TaskShape:
    """A host task as gprl drives it: its observation flattener, its checked action space and
    the EnvSpec algorithms see. Raises EnvError for spaces gprl cannot use."""

    def __init__(
        self,
        env_name: str,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        max_episode_steps: int | None,
    ):
        self.flattener = ObsFlattener(env_name, observation_space)
        self.action_space = check_action_space(env_name, action_space)
        self.spec = EnvSpec(
            env_id=env_name,
            obs_dim=self.flattener.obs_dim,
            action_dim=self.action_space.shape[0],
            action_low=self.action_space.low.astype(np.float32),
            action_high=self.action_space.high.astype(np.float32),
            max_episode_steps=max_episode_steps,
        )


class ActionMapper:
    """Checks a batch of policy actions in [-1, 1] and maps it onto an env's true bounds."""

    def __init__(self, env_name: str, action_space: spaces.Box, num_envs: int):
        self.env_name = env_name
        self.shape = (num_envs, action_space.shape[0])
        self.dtype = action_space.dtype
        # Mapped as offset + scale * action; most tasks already use [-1, 1], and skipping the
        # no-op saves a measurable part of step()'s own time.
        low, high = action_space.low, action_space.high
        self.rescale = not (np.all(low == -1.0) and np.all(high == 1.0))
        self.scale = ((high - low) / 2).astype(self.dtype)
        self.offset = ((high + low) / 2).astype(self.dtype)

    def __call__(self, action) -> np.ndarray:
        """Actions outside [-1, 1] are clipped; a wrong shape or NaN is an EnvError."""
        action = np.asarray(action)
        if action.shape != self.shape:
            raise EnvError(
                f"{self.env_name} expects actions of shape {self.shape} (num_envs, action_dim), "
                f"got {action.shape}"
            )
        env_action = action.clip(-1.0, 1.0)
        # Clipping maps infinities onto the bounds, so NaN is the only invalid value left.
        if math.isnan(env_action.sum()):
            raise EnvError(f"{self.env_name} got NaN actions; check the policy's outputs")
        if self.rescale:
            env_action = self.offset + self.scale * env_action
        return env_action.astype(self.dtype, copy=False)


SUCCESS_INFO_KEYS = ("success", "is_success")
"""Where Gymnasium envs report success on a step: Meta-World and OGBench use "success",
Gymnasium-Robotics "is_success"."""


def reported_success(info: dict) -> bool | None:
    """Whether a single env's step info reports success, or None if it does not say."""
    for key in SUCCESS_INFO_KEYS:
        if key in info:
            return bool(info[key])
    return None


def check_success_options(
    env_name: str, reports_success: bool, sparse_reward: bool, end_on_success: bool
) -> None:
    """EnvError in one line if sparse_reward or end_on_success is asked of an env that never
    reports success: both would silently change nothing or zero every reward."""
    if (sparse_reward or end_on_success) and not reports_success:
        asked = " and ".join(
            name
            for name, on in (("sparse_reward", sparse_reward), ("end_on_success", end_on_success))
            if on
        )
        raise EnvError(
            f"{env_name} never reports success (no info['success'] or info['is_success'] on its "
            f"steps), so {asked} cannot be used with it"
        )


def check_num_envs(num_envs: int) -> None:
    if num_envs < 1:
        raise EnvError(f"num_envs must be at least 1, got {num_envs}")
