"""JAX-native vectorised environments, stepped inside jitted code with no host round trip.

A :class:`JaxVecEnv` follows the same contract as :class:`gprl.envs.VecEnv`: actions in [-1, 1]
(clipped, then scaled to the task's true bounds), flat float32 observations and same-step
autoreset. ``reset`` and ``step`` are pure and jittable, and the :class:`EnvState` they return has
the same structure and dtypes, so a collector can carry it through ``lax.scan`` without retracing.

Supported ids (see :func:`make_jax_env`):

- the diagnostic tasks of :mod:`gprl.envs.diagnostics` (``gprl/BimodalBandit-v0``, ...),
  re-implemented in ``jax.numpy`` with the same observations, dynamics, rewards and time limits;
- MuJoCo Playground's DeepMind Control suite as ``playground:<Name>`` (``playground:CheetahRun``),
  which needs ``pip install 'gprl[playground]'``;
- a user's own :class:`JaxTask` object that declares its sizes and time limit.
"""

import dataclasses
import difflib
from collections.abc import Mapping
from importlib import metadata
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from gprl.envs.common import EnvError, first_line
from gprl.envs.diagnostics import (
    DIAGNOSTIC_ENVS,
    MODE_CONTEXT_SHIFT,
    MODE_OFFSET,
    MODE_WIDTH,
    POINT_GOAL_BONUS,
    POINT_GOAL_RADIUS,
    POINT_GOALS,
    POINT_HORIZON,
    POINT_SHAPING,
    POINT_START_NOISE,
    POINT_STEP_SIZE,
    TARGET_SCALE,
    TARGET_WEIGHTS,
)
from gprl.envs.sources import PLAYGROUND_PREFIX, env_source_name
from gprl.types import EnvSpec, StepResult

PLAYGROUND_INSTALL = "pip install 'gprl[playground]'"


class EnvState(NamedTuple):
    """What a :class:`JaxVecEnv` carries between steps; every leaf has a leading num_envs axis."""

    task_state: Any
    """The task's own state (positions, contexts, MuJoCo data, ...)."""
    steps: jax.Array
    """(N,) int32 steps taken in the current episode, for the time limit."""
    keys: jax.Array
    """(N,) per-env PRNG keys that seed the automatic resets."""


class JaxTask(Protocol):
    """One env's dynamics as pure jittable functions; :class:`JaxVecEnv` batches them with vmap.

    Actions arrive clipped and scaled to the task's true bounds. Time limits are the
    :class:`JaxVecEnv`'s business, not the task's: ``step`` never truncates.

    A task object passed in directly (to ``make_env``, ``open_environments`` or
    :func:`make_jax_env`) declares its sizes and time limit as attributes, read by
    :func:`jax_task_spec` without stepping it:

    - ``obs_dim``: int, the length of the flat observation ``reset`` and ``step`` return;
    - ``action_low``, ``action_high``: 1-D sequences of finite floats, the true action bounds
      (their common length is the action size; policies act in [-1, 1] and are scaled onto them);
    - ``max_episode_steps``: int, or None for episodes that end only by termination;
    - ``reset_is_expensive``: bool, optional (default False).

    Runs record such a task as ``python:<module>.<class>``, which cannot be opened again from
    the name alone.
    """

    reset_is_expensive: bool
    """True if a reset costs much more than a step, so it is worth skipping when none is due."""

    def reset(self, key: jax.Array) -> tuple[Any, jax.Array]:
        """Start an episode: (task_state, obs (obs_dim,) float32)."""
        ...

    def step(self, state: Any, action: jax.Array) -> tuple[Any, jax.Array, jax.Array, jax.Array]:
        """Advance one step: (task_state, obs, reward () float32, terminated () bool)."""
        ...


class JaxVecEnv:
    """``num_envs`` copies of a :class:`JaxTask`, with time limits and same-step autoreset.

    Build it with :func:`make_jax_env`. Both methods are pure, so wrap them in ``jax.jit`` (or
    call them inside a jitted ``lax.scan``); the env object itself holds no mutable state.
    """

    def __init__(self, task: JaxTask, spec: EnvSpec, num_envs: int):
        if num_envs < 1:
            raise EnvError(f"num_envs must be at least 1, got {num_envs}")
        self.spec = spec
        self.num_envs = num_envs
        self.task = task
        self._reset_is_expensive = bool(getattr(task, "reset_is_expensive", False))
        # Plain numpy, so they are baked into the compiled code as constants.
        self._action_scale = (spec.action_high - spec.action_low) / 2
        self._action_offset = (spec.action_high + spec.action_low) / 2

    def reset(self, key: jax.Array, start_state_group: int = 1) -> tuple[EnvState, jax.Array]:
        """Start num_envs episodes; returns (env_state, obs (num_envs, obs_dim) float32). Each
        group of start_state_group consecutive envs starts from one state with one key stream."""
        group_keys = jax.random.split(key, self.num_envs // start_state_group)
        keys, reset_keys = _split_each(jnp.repeat(group_keys, start_state_group, axis=0))
        task_state, obs = jax.vmap(self.task.reset)(reset_keys)
        steps = jnp.zeros(self.num_envs, dtype=jnp.int32)
        return EnvState(task_state, steps, keys), obs

    def step(self, env_state: EnvState, action: jax.Array) -> tuple[EnvState, StepResult]:
        """Step every env with actions (num_envs, action_dim) in [-1, 1].

        Where an episode ends, the returned obs starts a fresh episode and ``final_obs`` holds the
        episode's true last observation.
        """
        env_action = self._action_offset + self._action_scale * jnp.clip(action, -1.0, 1.0)
        task_state, final_obs, reward, terminated = jax.vmap(self.task.step)(
            env_state.task_state, env_action
        )
        stepped_state = task_state
        steps = env_state.steps + 1
        if self.spec.max_episode_steps is None:
            truncated = jnp.zeros_like(terminated)
        else:
            truncated = (steps >= self.spec.max_episode_steps) & ~terminated
        ended = terminated | truncated
        keys, reset_keys = _split_each(env_state.keys)

        def start_new_episodes():
            fresh_state, fresh_obs = jax.vmap(self.task.reset)(reset_keys)
            return _where_ended(ended, (fresh_state, fresh_obs), (task_state, final_obs))

        if self._reset_is_expensive:
            # A MuJoCo reset runs hundreds of physics steps. DM Control episodes all hit the same
            # time limit together and terminate only on NaN, so most steps need no reset at all.
            # (Under an outer vmap the cond turns into a select that resets every step.)
            task_state, obs = lax.cond(
                ended.any(), start_new_episodes, lambda: (task_state, final_obs)
            )
        else:
            task_state, obs = start_new_episodes()

        # A task that executes action chunks (gprl.envs.jax_chunked) reports what it executed.
        executed = getattr(self.task, "executed", lambda _: {})(stepped_state)
        result = StepResult(
            obs=obs,
            reward=reward.astype(jnp.float32),
            terminated=terminated,
            truncated=truncated,
            final_obs=final_obs,
            success=jnp.zeros(terminated.shape, bool),  # no JAX task reports success
            **executed,
        )
        return EnvState(task_state, jnp.where(ended, 0, steps), keys), result

    def __repr__(self) -> str:
        return f"JaxVecEnv({self.spec.env_id!r}, num_envs={self.num_envs})"


def make_jax_env(
    env_id: "str | JaxTask", num_envs: int, *, max_episode_steps: int | None = None
) -> JaxVecEnv:
    """Build a :class:`JaxVecEnv` for a diagnostic task, a Playground DM Control task or a
    user's :class:`JaxTask` object.

    Args:
        env_id: a diagnostic id (``gprl/TwoGoalPoint-v0``), ``playground:<Name>`` for any name
            in MuJoCo Playground's DM Control suite (``playground:CheetahRun``), or a task object
            declaring its sizes (see :class:`JaxTask`).
        num_envs: number of copies stepped together.
        max_episode_steps: override the task's time limit (25 for TwoGoalPoint, 1000 for DM
            Control, ...); None keeps it.

    Raises:
        EnvError: unknown id, Playground missing or failing to build the task, a malformed task
            object, or num_envs < 1.
    """
    if not isinstance(env_id, str):
        task, spec = env_id, jax_task_spec(env_id)
    elif env_id in DIAGNOSTIC_ENVS:
        task, spec = _make_diagnostic(env_id)
    elif env_id.startswith(PLAYGROUND_PREFIX):
        task, spec = _make_playground(env_id)
    else:
        matches = difflib.get_close_matches(env_id, list(_DIAGNOSTIC_TASKS), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(map(repr, matches))}?" if matches else ""
        raise EnvError(
            f"unknown JAX environment id {env_id!r}: use one of {', '.join(_DIAGNOSTIC_TASKS)} "
            f"or {PLAYGROUND_PREFIX}<DM Control suite name> (e.g. {PLAYGROUND_PREFIX}CheetahRun)"
            f"{hint}"
        )
    if max_episode_steps is not None:
        if max_episode_steps < 1:
            raise EnvError(f"max_episode_steps must be at least 1, got {max_episode_steps}")
        spec = dataclasses.replace(spec, max_episode_steps=max_episode_steps)
    return JaxVecEnv(task, spec, num_envs)


def jax_task_spec(task: JaxTask) -> EnvSpec:
    """The spec a task object declares (see :class:`JaxTask`), checked against the shapes its
    ``reset`` and ``step`` give when traced (nothing runs); EnvError in one line if a
    declaration is missing or malformed."""
    name = env_source_name(task)
    obs_dim = getattr(task, "obs_dim", None)
    if not _is_positive_int(obs_dim):
        raise EnvError(f"JAX task {name} must declare obs_dim as a positive int, got {obs_dim!r}")
    low, high = (_declared_bounds(task, name, side) for side in ("action_low", "action_high"))
    if low.shape != high.shape or not (low <= high).all():
        raise EnvError(
            f"JAX task {name} must declare action_low <= action_high of one length, got "
            f"{low.tolist()} and {high.tolist()}"
        )
    limit = getattr(task, "max_episode_steps", "missing")
    if limit is not None and not _is_positive_int(limit):
        raise EnvError(
            f"JAX task {name} must declare max_episode_steps as a positive int or None, "
            f"got {limit!r}"
        )
    spec = EnvSpec(name, obs_dim, low.size, low, high, limit)
    _check_traced_shapes(task, spec)
    return spec


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool) and value >= 1


def _declared_bounds(task: JaxTask, name: str, side: str) -> np.ndarray:
    try:
        bounds = np.asarray(getattr(task, side), dtype=np.float32)
    except (AttributeError, TypeError, ValueError) as exc:
        raise EnvError(f"JAX task {name} must declare {side} ({first_line(exc)})") from None
    if bounds.ndim != 1 or bounds.size == 0 or not np.isfinite(bounds).all():
        raise EnvError(
            f"JAX task {name} must declare {side} as a 1-D sequence of finite floats, "
            f"got {bounds.tolist()}"
        )
    return bounds


def _check_traced_shapes(task: JaxTask, spec: EnvSpec) -> None:
    def reset_then_step(key: jax.Array):
        state, obs = task.reset(key)
        return obs, task.step(state, jnp.zeros(spec.action_dim, jnp.float32))[1:]

    try:
        reset_obs, (step_obs, reward, terminated) = jax.eval_shape(
            reset_then_step, jax.random.key(0)
        )
    except Exception as exc:  # user code fails in any way while traced
        raise EnvError(f"cannot trace JAX task {spec.env_id}: {first_line(exc)}") from exc
    shapes = (reset_obs.shape, step_obs.shape, reward.shape, terminated.shape)
    expected = ((spec.obs_dim,), (spec.obs_dim,), (), ())
    if tuple(tuple(shape) for shape in shapes) != expected:
        raise EnvError(
            f"JAX task {spec.env_id} gives shapes {shapes} (reset obs, step obs, reward, "
            f"terminated) where obs_dim={spec.obs_dim} means {expected}"
        )


def _split_each(keys: jax.Array) -> tuple[jax.Array, jax.Array]:
    pairs = jax.vmap(jax.random.split)(keys)
    return pairs[:, 0], pairs[:, 1]


def _where_ended(ended: jax.Array, if_ended: Any, otherwise: Any) -> Any:
    """Pick per env between two batched pytrees of the same structure."""

    def select(new: jax.Array, old: jax.Array) -> jax.Array:
        return jnp.where(ended.reshape(-1, *[1] * (old.ndim - 1)), new, old)

    return jax.tree.map(select, if_ended, otherwise)


# Diagnostic tasks: the dynamics of gprl.envs.diagnostics in jax.numpy. Contexts and positions
# are float32 here (the numpy TwoGoalPoint tracks its position in float64).

_POINT_GOALS = POINT_GOALS.astype(np.float32)


class _BimodalBandit:
    reset_is_expensive = False

    def reset(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        context = jax.random.uniform(key, (2,), minval=-1.0, maxval=1.0)
        return context, context

    def step(self, context: jax.Array, action: jax.Array):
        shift = MODE_CONTEXT_SHIFT * context[0]
        modes = jnp.stack([shift - MODE_OFFSET, shift + MODE_OFFSET])
        distance = jnp.abs(modes - action[0]).min()
        reward = jnp.exp(-(distance**2) / (2 * MODE_WIDTH**2))
        return context, context, reward, jnp.array(True)


class _PointState(NamedTuple):
    position: jax.Array
    steps: jax.Array


class _TwoGoalPoint:
    reset_is_expensive = False

    def reset(self, key: jax.Array) -> tuple[_PointState, jax.Array]:
        position = jax.random.uniform(
            key, (2,), minval=-POINT_START_NOISE, maxval=POINT_START_NOISE
        )
        state = _PointState(position, jnp.array(0, dtype=jnp.int32))
        return state, self._observation(state)

    def step(self, state: _PointState, action: jax.Array):
        position = jnp.clip(state.position + POINT_STEP_SIZE * action, -1.0, 1.0)
        next_state = _PointState(position, state.steps + 1)
        goal_distance = self._nearest_goal_distance(position)
        reached = goal_distance <= POINT_GOAL_RADIUS
        reward = POINT_SHAPING * (self._nearest_goal_distance(state.position) - goal_distance)
        reward = reward + jnp.where(reached, POINT_GOAL_BONUS, 0.0)
        return next_state, self._observation(next_state), reward, reached

    @staticmethod
    def _nearest_goal_distance(position: jax.Array) -> jax.Array:
        return jnp.sqrt(((_POINT_GOALS - position) ** 2).sum(axis=1)).min()

    @staticmethod
    def _observation(state: _PointState) -> jax.Array:
        time_fraction = jnp.minimum(state.steps / POINT_HORIZON, 1.0)
        return jnp.append(state.position, time_fraction).astype(jnp.float32)


class _ContextualTarget:
    reset_is_expensive = False

    def reset(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        context = jax.random.uniform(key, (3,), minval=-1.0, maxval=1.0)
        return context, context

    def step(self, context: jax.Array, action: jax.Array):
        error = action - TARGET_SCALE * jnp.tanh(TARGET_WEIGHTS @ context)
        return context, context, -jnp.dot(error, error), jnp.array(True)


class _TruncationProbe:
    reset_is_expensive = False

    def reset(self, key: jax.Array) -> tuple[tuple, jax.Array]:
        return (), jnp.ones(1, dtype=jnp.float32)

    def step(self, state: tuple, action: jax.Array):
        return (), jnp.ones(1, dtype=jnp.float32), jnp.float32(1.0), jnp.array(False)


_DIAGNOSTIC_TASKS: dict[str, type[JaxTask]] = {
    "gprl/BimodalBandit-v0": _BimodalBandit,
    "gprl/TwoGoalPoint-v0": _TwoGoalPoint,
    "gprl/ContextualTarget-v0": _ContextualTarget,
    "gprl/TruncationProbe-v0": _TruncationProbe,
}


def _make_diagnostic(env_id: str) -> tuple[JaxTask, EnvSpec]:
    # The numpy env defines the spaces, so the two versions cannot drift apart.
    numpy_class, max_episode_steps = DIAGNOSTIC_ENVS[env_id]
    numpy_env = numpy_class()
    action_space = numpy_env.action_space
    spec = EnvSpec(
        env_id=env_id,
        obs_dim=numpy_env.observation_space.shape[0],
        action_dim=action_space.shape[0],
        action_low=action_space.low.astype(np.float32),
        action_high=action_space.high.astype(np.float32),
        max_episode_steps=max_episode_steps,
    )
    return _DIAGNOSTIC_TASKS[env_id](), spec


# MuJoCo Playground's DM Control suite.


class _PlaygroundTask:
    """A Playground env without its training wrappers: JaxVecEnv does vmap, limits and resets."""

    reset_is_expensive = True

    def __init__(self, env: Any):
        self._env = env

    def reset(self, key: jax.Array) -> tuple[Any, jax.Array]:
        # Some leaves come out weak-typed (cheetah's data.time is a Python float); step's are
        # not, so strong types here keep the scan carry's type fixed.
        state = jax.tree.map(_strong_type, self._env.reset(key))
        return state, _flat_obs(state.obs)

    def step(self, state: Any, action: jax.Array):
        new_state = self._env.step(state, action)
        # Step may add metrics or info keys that reset lacks, or change a leaf's weak type;
        # conform to the incoming state so that reset and step return one pytree type.
        new_state = new_state.replace(
            metrics=_same_keys(new_state.metrics, like=state.metrics),
            info=_same_keys(new_state.info, like=state.info),
        )
        new_state = jax.tree.map(_cast_like, new_state, state)
        return new_state, _flat_obs(new_state.obs), new_state.reward, new_state.done.astype(bool)


def _same_keys(new: dict, like: dict) -> dict:
    """new's values for exactly like's keys, keeping like's value where new lacks one."""
    return {key: new.get(key, value) for key, value in like.items()}


def _is_key(x: jax.Array) -> bool:
    return jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _strong_type(x: Any) -> jax.Array:
    # Casting to its own dtype drops the weak type; keys are never weak and cannot be cast.
    x = jnp.asarray(x)
    return x if _is_key(x) else x.astype(x.dtype)


def _cast_like(x: jax.Array, like: jax.Array) -> jax.Array:
    return x if _is_key(like) else jnp.asarray(x).astype(like.dtype)


def _flat_obs(obs: jax.Array | Mapping[str, jax.Array]) -> jax.Array:
    # DM Control suite observations are vectors; other Playground envs use dicts of arrays.
    if isinstance(obs, Mapping):
        obs = jnp.concatenate([jnp.ravel(obs[key]) for key in sorted(obs)])
    return obs.astype(jnp.float32)


def _make_playground(env_id: str) -> tuple[JaxTask, EnvSpec]:
    name = env_id[len(PLAYGROUND_PREFIX) :]
    try:
        # Imported only here: it is slow (seconds) and optional. Its locomotion and manipulation
        # envs clone mujoco_menagerie from GitHub when loaded; the DM Control suite ships its
        # XMLs, so nothing below touches the network.
        from mujoco_playground import dm_control_suite
    except ImportError as exc:
        raise EnvError(f"{env_id} needs MuJoCo Playground: {PLAYGROUND_INSTALL}") from exc
    if name not in dm_control_suite.ALL_ENVS:
        matches = difflib.get_close_matches(name, dm_control_suite.ALL_ENVS, n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(PLAYGROUND_PREFIX + m for m in matches)}?"
        raise EnvError(
            f"unknown Playground DM Control task {name!r}; "
            + (hint if matches else f"choose from {', '.join(dm_control_suite.ALL_ENVS)}")
        )
    config = dm_control_suite.get_default_config(name)
    if config.get("action_repeat", 1) != 1:
        raise EnvError(f"{env_id} repeats actions, which gprl's JAX envs do not support")
    try:
        # MJX's default Warp backend is for GPUs and crawls on CPU; the JAX one runs everywhere.
        env = dm_control_suite.load(name, config_overrides={"impl": "jax"})
    except Exception as exc:  # version mismatches surface as any exception type
        versions = (
            f"playground {metadata.version('playground')}, mujoco {metadata.version('mujoco')}"
        )
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise EnvError(
            f"{versions} cannot build {name} ({type(exc).__name__}: {reason}); "
            "gprl's playground extra pins the versions it was tested with"
        ) from exc

    model = env.mj_model
    if not model.actuator_ctrllimited.all():
        raise EnvError(f"gprl needs bounded actions; {env_id} has unlimited actuators")
    low, high = model.actuator_ctrlrange.astype(np.float32).T
    task = _PlaygroundTask(env)
    obs_shape = jax.eval_shape(task.reset, jax.random.key(0))[1].shape
    spec = EnvSpec(
        env_id=env_id,
        obs_dim=obs_shape[0],
        action_dim=env.action_size,
        action_low=low,
        action_high=high,
        max_episode_steps=int(config.episode_length),
    )
    return task, spec
