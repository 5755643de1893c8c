"""What gprl builds envs from, what it calls them, and the one place a backend is chosen.

An env source is one of:

- an id string: a Gymnasium id (``Hopper-v5``, ``my_pkg.envs:MyEnv-v0``), a DeepMind Control id
  (``dm_control/hopper-stand-v0`` or ``dmc:hopper-stand``), a Meta-World id
  (``metaworld:pick-place-v3``, see :mod:`gprl.envs.metaworld`), an OGBench single-task id
  (``ogbench:cube-single-play-singletask-task2-v0``, see :mod:`gprl.envs.ogbench`), or a JAX id
  (``playground:CheetahRun``, or a diagnostic id with backend ``"jax"``);
- a ``gymnasium.Env`` instance: it becomes env 0 of the first set of envs built from it, and
  every other env is a ``copy.deepcopy`` of it;
- a factory: any zero-argument callable returning a new ``gymnasium.Env`` (a class, a function,
  a ``functools.partial``), called once per env;
- a JAX task object (see :class:`gprl.envs.jax_envs.JaxTask`): anything with ``reset`` and
  ``step`` methods that is not a ``gymnasium.Env``.

:func:`resolve_env` turns a source into a :class:`ResolvedEnv` once; everything that builds envs
works from that record.
"""

import copy
import dataclasses
from collections.abc import Callable
from typing import Any, Literal, get_args

import gymnasium as gym

from gprl.envs.common import EnvError, canonical_env_id, first_line
from gprl.envs.envpool_backend import (
    GROUPED_RESTARTS_UNSUPPORTED,
    envpool_port_checked,
    envpool_task_id,
    envpool_unavailable_reason,
)
from gprl.envs.metaworld import is_metaworld_id, metaworld_task_name
from gprl.envs.ogbench import is_ogbench_id, ogbench_env_name

EnvSource = str | gym.Env | Callable[[], gym.Env] | Any
"""An id, a gymnasium.Env instance, a factory returning one, or a JAX task object."""
EnvBackend = Literal["auto", "gymnasium", "envpool", "jax"]
BACKENDS: tuple[str, ...] = get_args(EnvBackend)
PYTHON_PREFIX = "python:"
PLAYGROUND_PREFIX = "playground:"
"""Ids of MuJoCo Playground tasks, which run only on JAX."""
SourceKind = Literal["id", "instance", "factory", "jax_task"]


@dataclasses.dataclass(frozen=True)
class ResolvedEnv:
    """An env source with its backend decided: what the env builders work from."""

    source: Any
    """What to build from: the canonical id, the instance, the factory or the JAX task."""
    name: str
    """What the env is called: see :func:`env_source_name`."""
    backend: Literal["gymnasium", "envpool", "jax"]
    envpool_task: str | None = None
    """envpool's own id for the task when the backend is envpool."""

    def for_another_set(self) -> "ResolvedEnv":
        """The same env for a second set of envs (evaluation beside training): an instance is
        deep-copied for it instead of being shared by both sets."""
        if not isinstance(self.source, gym.Env):
            return self
        return dataclasses.replace(self, source=InstanceCopies(self.source, self.name))


def source_kind(source: EnvSource) -> SourceKind:
    """Which kind of env source this is; EnvError for anything gprl cannot build envs from."""
    if isinstance(source, str):
        return "id"
    if isinstance(source, gym.Env):
        return "instance"
    if isinstance(source, gym.vector.VectorEnv):
        raise EnvError(
            "gprl vectorises envs itself; pass one gymnasium.Env or a function returning one, "
            f"not a {type(source).__name__}"
        )
    has_methods = callable(getattr(source, "reset", None)) and callable(
        getattr(source, "step", None)
    )
    if has_methods and not isinstance(source, type):
        return "jax_task"
    if callable(source):
        return "factory"
    raise EnvError(
        "an env must be an id, a gymnasium.Env, a function returning one, or a JAX task object; "
        f"got {type(source).__name__}"
    )


def env_source_name(source: EnvSource) -> str:
    """What a run records as its env: the id for an id (DeepMind Control's short form expanded);
    for an instance, its registered Gymnasium id when ``gym.make`` rebuilds it as it is;
    otherwise ``python:<module>.<name>`` of the env's class, the factory or the JAX task's class,
    which :func:`can_reopen` says cannot be opened again from the string."""
    kind = source_kind(source)
    if kind == "id":
        return canonical_env_id(source)
    if kind == "instance":
        return gymnasium_env_name(source)
    return python_name(source if kind == "factory" else type(source))


def ends_on_success(source: EnvSource) -> bool:
    """Whether the env ends its episodes on success by itself (OGBench's single tasks do), as
    --end-on-success makes any env that reports success do."""
    return is_ogbench_id(source)


def can_reopen(name: str) -> bool:
    """Whether an env name recorded by a run (:func:`env_source_name`, ``EnvSpec.env_id``)
    opens the env again on its own: ids do, ``python:...`` descriptions of objects do not."""
    return not name.startswith(PYTHON_PREFIX)


def gymnasium_env_name(env: gym.Env) -> str:
    """The env's registered id when ``gym.make(id)`` rebuilds it as it is (same kwargs and
    wrappers; a render mode does not count), else ``python:<module>.<class>``."""
    spec = env.spec
    if spec is not None and spec.id in gym.registry:
        kwargs = {key: value for key, value in spec.kwargs.items() if key != "render_mode"}
        if dataclasses.replace(spec, kwargs=kwargs) == gym.registry[spec.id]:
            return spec.id
    return python_name(type(env.unwrapped))


def python_name(target: Any) -> str:
    target = getattr(target, "func", target)  # a functools.partial is named after its function
    module = getattr(target, "__module__", None) or type(target).__module__
    name = getattr(target, "__qualname__", None) or type(target).__qualname__
    return f"{PYTHON_PREFIX}{module}.{name}"


class InstanceCopies:
    """A factory of deep copies of one env instance, for the envs beyond the instance itself."""

    def __init__(self, instance: gym.Env, name: str):
        self._instance = instance
        self._name = name

    def __call__(self) -> gym.Env:
        try:
            return copy.deepcopy(self._instance)
        except Exception as exc:  # deepcopy of user objects raises anything
            raise EnvError(
                f"cannot copy the {self._name} instance for more envs ({first_line(exc)}); "
                "pass a factory (a function returning a new env) instead of an instance"
            ) from exc


def resolve_env(
    source: EnvSource,
    backend: str = "auto",
    start_state_group: int = 1,
    *,
    render: bool = False,
) -> ResolvedEnv:
    """Decide once which backend runs source: the only place gprl chooses a backend.

    ``"auto"`` runs JAX tasks and ``playground:`` ids on JAX, gymnasium.Env instances,
    factories, ``metaworld:`` and ``ogbench:`` ids on Gymnasium, and other ids on envpool when
    it is installed, has the task, its port was checked against the original (Gymnasium MuJoCo
    v4/v5 tasks; the cheetah, hopper and walker DeepMind Control domains) and nothing is
    rendered, else on Gymnasium. Envs restarted in groups from one initial state
    (start_state_group > 1) rule envpool out.

    Raises:
        EnvError: an unknown backend, a source the backend cannot run, an unknown Meta-World
            task or OGBench env, or rendering on envpool or JAX.
    """
    if backend not in BACKENDS:
        raise EnvError(f"unknown env backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    kind = source_kind(source)
    if kind == "id":
        resolved = _resolve_id(canonical_env_id(source), backend, start_state_group, render)
    else:
        runs_on = "jax" if kind == "jax_task" else "gymnasium"
        resolved = ResolvedEnv(source, env_source_name(source), runs_on)
        if backend not in ("auto", runs_on):
            what = "a JAX task" if kind == "jax_task" else "a gymnasium.Env"
            raise EnvError(
                f"{resolved.name} is given as {what}, which runs on backend {runs_on!r}; "
                f"use that or 'auto', not {backend!r}"
            )
    if render and resolved.backend != "gymnasium":
        raise EnvError(
            f"{resolved.backend} cannot render {resolved.name}; use backend='gymnasium' or 'auto'"
        )
    return resolved


def _resolve_id(env_id: str, backend: str, start_state_group: int, render: bool) -> ResolvedEnv:
    if not can_reopen(env_id):
        raise EnvError(
            f"{env_id} names a Python env object, which cannot be opened from its name; "
            "pass the object (or a factory) itself"
        )
    if env_id.startswith(PLAYGROUND_PREFIX):
        if backend not in ("auto", "jax"):
            raise EnvError(f"{env_id} is a JAX environment; use --env-backend jax (or auto)")
        return ResolvedEnv(env_id, env_id, "jax")
    if is_metaworld_id(env_id) or is_ogbench_id(env_id):
        # An unknown task fails here, before anything is built.
        (metaworld_task_name if is_metaworld_id(env_id) else ogbench_env_name)(env_id)
        if backend not in ("auto", "gymnasium"):
            raise EnvError(
                f"{env_id} runs on Gymnasium only; use --env-backend gymnasium (or auto)"
            )
        return ResolvedEnv(env_id, env_id, "gymnasium")
    if backend == "jax":
        return ResolvedEnv(env_id, env_id, "jax")
    if start_state_group > 1:
        if backend == "envpool":
            raise EnvError(GROUPED_RESTARTS_UNSUPPORTED)
        backend = "gymnasium"
    task_id = envpool_task_id(env_id)
    on_envpool = ResolvedEnv(env_id, env_id, "envpool", task_id)
    if backend == "envpool":
        # Rendering is refused by the caller, before envpool is asked about the task.
        reason = None if render else envpool_unavailable_reason(env_id, task_id)
        if reason is not None:
            raise EnvError(reason)
        return on_envpool
    # Under "auto", whether envpool has the task is asked last: that imports envpool (1 s).
    auto_envpool = backend == "auto" and not render and envpool_port_checked(env_id)
    if auto_envpool and envpool_unavailable_reason(env_id, task_id) is None:
        return on_envpool
    return ResolvedEnv(env_id, env_id, "gymnasium")
