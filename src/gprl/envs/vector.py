"""Vectorised environments with normalised [-1, 1] actions and flat float32 observations.

Every algorithm in gprl sees the same interface whatever the task: a batch of float32 observation
vectors in, a batch of actions in [-1, 1] out. This module hides the differences between
Gymnasium tasks (Box observations, arbitrary action bounds) and DeepMind Control tasks via shimmy
(Dict observations, time limits enforced inside dm_control). :func:`make_env` picks between this
Gymnasium path and envpool (:mod:`gprl.envs.envpool_backend`), which has the same semantics.
"""

import ctypes.util
import difflib
import importlib
import math
import os
from typing import TYPE_CHECKING, Any, Literal, get_args

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from gprl.types import EnvSpec, StepResult

if TYPE_CHECKING:
    from gprl.envs.envpool_backend import EnvpoolVecEnv

DMC_SHORT_PREFIX = "dmc:"
DMC_PREFIX = "dm_control/"
EnvBackend = Literal["auto", "gymnasium", "envpool"]
ENV_BACKENDS: tuple[str, ...] = get_args(EnvBackend)


class EnvError(ValueError):
    """An env cannot be built or driven the way gprl needs; the one-line message says why."""


class _ObsFlattener:
    """Turns Box or Dict-of-Box observations into float32 vectors (Dict keys in sorted order)."""

    def __init__(self, env_id: str, space: spaces.Space):
        if isinstance(space, spaces.Box):
            self.keys = None
            self.obs_dim = math.prod(space.shape)
        elif isinstance(space, spaces.Dict) and all(
            isinstance(subspace, spaces.Box) for subspace in space.spaces.values()
        ):
            self.keys = sorted(space.spaces)
            self.obs_dim = sum(math.prod(space.spaces[key].shape) for key in self.keys)
        else:
            raise EnvError(f"gprl needs Box or Dict-of-Box observations; {env_id} has {space}")

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


class _DiscardInfo(gym.Wrapper):
    """Returns empty info dicts: gprl never reads them, and batching them in SyncVectorEnv costs
    several percent of a MuJoCo step."""

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, _ = self.env.reset(seed=seed, options=options)
        return obs, {}

    def step(self, action: Any):
        obs, reward, terminated, truncated, _ = self.env.step(action)
        return obs, reward, terminated, truncated, {}


class ActionMapper:
    """Checks a batch of policy actions in [-1, 1] and maps it onto an env's true bounds."""

    def __init__(self, env_id: str, action_space: spaces.Box, num_envs: int):
        self.env_id = env_id
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
                f"{self.env_id} expects actions of shape {self.shape} (num_envs, action_dim), "
                f"got {action.shape}"
            )
        env_action = action.clip(-1.0, 1.0)
        # Clipping maps infinities onto the bounds, so NaN is the only invalid value left.
        if math.isnan(env_action.sum()):
            raise EnvError(f"{self.env_id} got NaN actions; check the policy's outputs")
        if self.rescale:
            env_action = self.offset + self.scale * env_action
        return env_action.astype(self.dtype, copy=False)


class VecEnv:
    """``num_envs`` copies of one task stepped in lock-step, taking actions in [-1, 1].

    Runs a Gymnasium ``SyncVectorEnv`` with same-step autoreset: when an episode ends, ``step``
    returns the first observation of the next episode in ``obs`` and the episode's true last
    observation in ``final_obs`` (needed to bootstrap values at time limits).
    Build it with :func:`make_env`.
    """

    def __init__(self, env_id: str, num_envs: int = 1, *, render: bool = False):
        if num_envs < 1:
            raise EnvError(f"num_envs must be at least 1, got {num_envs}")
        _prefer_headless_rendering()
        env_id = _resolve_env_id(env_id)

        def make_sub_env(index: int):
            # Only env 0 is ever rendered; renderers for the others would waste GL contexts.
            # render_mode is passed only when rendering: some envs' constructors do not take it.
            kwargs = {"render_mode": "rgb_array"} if render and index == 0 else {}
            return lambda: _DiscardInfo(gym.make(env_id, **kwargs))

        try:
            self._envs = gym.vector.SyncVectorEnv(
                [make_sub_env(index) for index in range(num_envs)],
                # Flattening copies the vector env's buffers, so its own copy is redundant.
                copy=False,
                autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
            )
        except Exception as exc:  # user constructors raise anything
            raise EnvError(f"cannot make {env_id}: {_first_line(exc)}") from exc
        try:
            self._flattener = _ObsFlattener(env_id, self._envs.single_observation_space)
            action_space = _check_action_space(env_id, self._envs.single_action_space)
        except EnvError:
            self._envs.close()
            raise

        self.num_envs = num_envs
        self._render = render
        self._env_action = ActionMapper(env_id, action_space, num_envs)
        low, high = action_space.low, action_space.high
        self.spec = EnvSpec(
            env_id=env_id,
            obs_dim=self._flattener.obs_dim,
            action_dim=action_space.shape[0],
            action_low=low.astype(np.float32),
            action_high=high.astype(np.float32),
            max_episode_steps=_max_episode_steps(self._envs.envs[0]),
        )

    def reset(self, seed: int) -> np.ndarray:
        """Start new episodes, env i seeded with seed + i; returns (num_envs, obs_dim) float32."""
        try:
            obs, _ = self._envs.reset(seed=int(seed))
        except Exception as exc:  # user envs' reset raises anything
            raise EnvError(f"cannot reset {self.spec.env_id}: {_first_line(exc)}") from exc
        return self._flattener.batch(obs, self.num_envs)

    def restart(self, seed: int, start_state_group: int = 1) -> np.ndarray:
        """Start a new episode in every env: the training loop's restarts. Here the same as
        reset(seed), which is cheap; envpool's pools continue their streams instead. With
        start_state_group G > 1, envs i and j share a seed (and so an initial state) when
        i // G == j // G."""
        if start_state_group == 1:
            return self.reset(seed)
        seeds = [int(seed) + i // start_state_group for i in range(self.num_envs)]
        try:
            obs, _ = self._envs.reset(seed=seeds)
        except Exception as exc:  # user envs' reset raises anything
            raise EnvError(f"cannot reset {self.spec.env_id}: {_first_line(exc)}") from exc
        return self._flattener.batch(obs, self.num_envs)

    def get_state(self) -> dict:
        """Nothing beyond the seed of the last restart is needed to replay these envs."""
        return {}

    def set_state(self, state: dict) -> None:
        pass

    def step(self, action: np.ndarray) -> StepResult:
        """Step every env with normalised actions of shape (num_envs, action_dim) in [-1, 1].

        Actions outside [-1, 1] are clipped, then rescaled to the env's true bounds.
        """
        obs, reward, terminated, truncated, infos = self._envs.step(self._env_action(action))
        flat_obs = self._flattener.batch(obs, self.num_envs)
        final_obs = flat_obs.copy()
        ended = infos.get("_final_obs")
        if ended is not None:
            for index in np.flatnonzero(ended):
                final_obs[index] = self._flattener.single(infos["final_obs"][index])
        return StepResult(
            obs=flat_obs,
            reward=reward.astype(np.float32),
            terminated=terminated,
            truncated=truncated & ~terminated,
            final_obs=final_obs,
        )

    def render(self) -> np.ndarray | None:
        """RGB frame (H, W, 3) uint8 of env 0, or None if made without render=True."""
        if not self._render:
            return None
        try:
            return self._envs.envs[0].render()
        except Exception as exc:  # GL backends and missing extras fail with many exception types
            raise EnvError(
                f"cannot render {self.spec.env_id} ({_first_line(exc)}); "
                "for MuJoCo tasks on a headless machine set MUJOCO_GL=egl (or osmesa) "
                "before anything imports mujoco"
            ) from exc

    def close(self) -> None:
        self._envs.close()

    def __enter__(self) -> "VecEnv":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VecEnv({self.spec.env_id!r}, num_envs={self.num_envs})"


def make_env(
    env_id: str,
    num_envs: int = 1,
    seed: int = 0,
    *,
    render: bool = False,
    backend: EnvBackend = "auto",
) -> "VecEnv | EnvpoolVecEnv":
    """Build vector envs for any registered Gymnasium id or DeepMind Control task.

    Args:
        env_id: a Gymnasium id (``Hopper-v5``), one in Gymnasium's ``module:EnvId-v0`` form
            (``my_pkg.envs:MyEnv-v0`` imports ``my_pkg.envs`` to register it first), a DeepMind
            Control id (``dm_control/hopper-stand-v0``) or its short form (``dmc:hopper-stand``).
        num_envs: number of copies stepped together.
        seed: the envs are reset once with it (env i with seed + i), so the envs are
            deterministic from the start; ``reset(seed)`` starts over with another seed.
        render: make env 0 with ``render_mode="rgb_array"`` so that ``render()`` returns frames.
        backend: ``"gymnasium"`` for a :class:`VecEnv`, ``"envpool"`` for an
            :class:`~gprl.envs.envpool_backend.EnvpoolVecEnv` (same semantics, several times the
            steps per second), or ``"auto"``: envpool where :func:`env_backend_for` says so.

    Raises:
        EnvError: unknown id or backend, a task envpool lacks under ``backend="envpool"``, an
            env that fails to build or reset, non-continuous or unbounded action space, or
            num_envs < 1.
    """
    if env_backend_for(env_id, backend, render=render) == "envpool":
        from gprl.envs.envpool_backend import EnvpoolVecEnv

        env = EnvpoolVecEnv(env_id, num_envs)
    else:
        env = VecEnv(env_id, num_envs, render=render)
    try:
        env.reset(seed)
    except EnvError:
        env.close()
        raise
    return env


def env_backend_for(
    env_id: str, backend: EnvBackend = "auto", *, render: bool = False
) -> Literal["gymnasium", "envpool"]:
    """The backend :func:`make_env` uses for env_id: ``"gymnasium"`` or ``"envpool"``.

    ``"auto"`` means envpool when it is installed, has the task, its port was checked against
    the original (Gymnasium MuJoCo v4/v5 tasks; the cheetah, hopper and walker DeepMind Control
    domains) and nothing is rendered, else Gymnasium.

    Raises:
        EnvError: an unknown backend, or ``"envpool"`` for a task it cannot run or with render.
    """
    if backend not in ENV_BACKENDS:
        raise EnvError(f"unknown env backend {backend!r}; choose one of {', '.join(ENV_BACKENDS)}")
    if backend == "gymnasium" or (backend == "auto" and render):
        return "gymnasium"
    if backend == "envpool" and render:
        raise EnvError(f"envpool cannot render {env_id}; use backend='gymnasium' or 'auto'")
    # envpool_backend imports this module, so it is imported here rather than at the top.
    from gprl.envs.envpool_backend import auto_uses_envpool, envpool_unavailable_reason

    if backend == "auto":
        return "envpool" if auto_uses_envpool(env_id) else "gymnasium"
    reason = envpool_unavailable_reason(env_id)
    if reason is not None:
        raise EnvError(reason)
    return "envpool"


def canonical_env_id(env_id: str) -> str:
    """env_id with the DeepMind Control short form expanded: ``dmc:hopper-stand`` becomes
    ``dm_control/hopper-stand-v0``; any other id is returned as it is."""
    if env_id.startswith(DMC_SHORT_PREFIX):
        return f"{DMC_PREFIX}{env_id[len(DMC_SHORT_PREFIX) :]}-v0"
    return env_id


def _prefer_headless_rendering() -> None:
    # MuJoCo's default GL backend (GLFW) needs a display, and dm_control fixes its backend when
    # first imported, so choose EGL up front on headless machines that have it.
    has_display = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    if "MUJOCO_GL" not in os.environ and not has_display and ctypes.util.find_library("EGL"):
        os.environ["MUJOCO_GL"] = "egl"


def _resolve_env_id(env_id: str) -> str:
    """The id to give gym.make, after importing whatever registers it; EnvError if unknown."""
    env_id = canonical_env_id(env_id)
    # Gymnasium's "module:EnvId-v0" form: importing the module registers EnvId-v0. The full
    # form is kept, so that the spec's env_id works in a fresh process too.
    module, _, registered_id = env_id.rpartition(":")
    if module:
        try:
            importlib.import_module(module)
        except Exception as exc:  # a module can fail to import with any exception
            raise EnvError(
                f"cannot import module {module!r} for {env_id}: {_first_line(exc)}"
            ) from exc
    if registered_id.startswith(DMC_PREFIX) or registered_id not in gym.registry:
        # shimmy registers the dm_control/* ids on import; it is slow to import, so only do it
        # when a DeepMind Control task is asked for or an unknown id needs close matches.
        try:
            importlib.import_module("shimmy")
        except ImportError as exc:
            if registered_id.startswith(DMC_PREFIX):
                raise EnvError(f"{env_id} needs shimmy: pip install 'shimmy[dm-control]'") from exc
    if registered_id not in gym.registry:
        matches = difflib.get_close_matches(registered_id, list(gym.registry), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(map(repr, matches))}?" if matches else ""
        raise EnvError(f"unknown environment id {registered_id!r}{hint}")
    return env_id


def _check_action_space(env_id: str, space: spaces.Space) -> spaces.Box:
    if not isinstance(space, spaces.Box) or not np.issubdtype(space.dtype, np.floating):
        raise EnvError(f"gprl needs a continuous (Box) action space; {env_id} has {space}")
    if len(space.shape) != 1:
        raise EnvError(f"gprl needs a one-dimensional Box action space; {env_id} has {space}")
    if not (np.isfinite(space.low).all() and np.isfinite(space.high).all()):
        raise EnvError(
            f"gprl needs a bounded Box action space to rescale actions from [-1, 1]; "
            f"{env_id} has {space}"
        )
    return space


def _max_episode_steps(env: gym.Env) -> int | None:
    if env.spec is not None and env.spec.max_episode_steps is not None:
        return env.spec.max_episode_steps
    # DeepMind Control tasks enforce their time limit inside dm_control (shimmy reports it as
    # truncation), so it is missing from the Gymnasium spec.
    step_limit = getattr(getattr(env.unwrapped, "_env", None), "_step_limit", None)
    if isinstance(step_limit, float | int) and math.isfinite(step_limit):
        return round(step_limit)
    return None


def _first_line(exc: BaseException) -> str:
    """The exception's type and first message line, for one-line EnvErrors."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
