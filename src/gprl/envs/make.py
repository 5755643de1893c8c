"""Building envs from any env source, and learning a task's spec without keeping an env open."""

from typing import TYPE_CHECKING

import gymnasium as gym

from gprl.envs.common import EnvError, check_num_envs
from gprl.envs.envpool_backend import EnvpoolVecEnv
from gprl.envs.sources import EnvSource, ResolvedEnv, resolve_env
from gprl.envs.vector import VecEnv, gymnasium_task_shape, sub_env_makers
from gprl.types import EnvSpec

if TYPE_CHECKING:
    from gprl.envs.jax_envs import JaxVecEnv


def make_env(
    source: EnvSource,
    num_envs: int = 1,
    seed: int = 0,
    *,
    render: bool = False,
    backend: str = "auto",
) -> "VecEnv | EnvpoolVecEnv | JaxVecEnv":
    """Build vector envs from an id, a gymnasium.Env instance, a factory or a JAX task.

    Args:
        source: a Gymnasium id (``Hopper-v5``), one in Gymnasium's ``module:EnvId-v0`` form
            (``my_pkg.envs:MyEnv-v0`` imports ``my_pkg.envs`` to register it first), a DeepMind
            Control id (``dm_control/hopper-stand-v0``) or its short form (``dmc:hopper-stand``),
            a JAX id (``playground:CheetahRun``); a ``gymnasium.Env`` instance (env 0 is the
            instance, the others deep copies of it; closing the envs closes it), a zero-argument
            function returning a new ``gymnasium.Env``, or a JAX task object
            (:class:`~gprl.envs.jax_envs.JaxTask`). See :mod:`gprl.envs.sources`.
        num_envs: number of copies stepped together.
        seed: the host envs are reset once with it (env i with seed + i), so the envs are
            deterministic from the start; ``reset(seed)`` starts over with another seed. JAX
            envs are pure and take a key in their own ``reset`` instead.
        render: make env 0 with ``render_mode="rgb_array"`` so that ``render()`` returns frames
            (ids only; an instance or factory renders as it was built to).
        backend: ``"gymnasium"`` for a :class:`VecEnv`, ``"envpool"`` for an
            :class:`~gprl.envs.envpool_backend.EnvpoolVecEnv` (same semantics, several times the
            steps per second), ``"jax"`` for a :class:`~gprl.envs.jax_envs.JaxVecEnv`, or
            ``"auto"``: see :func:`~gprl.envs.sources.resolve_env`.

    Raises:
        EnvError: unknown id or backend, a source the backend cannot run, an env that fails to
            build, copy or reset, a non-continuous or unbounded action space, or num_envs < 1.
    """
    return open_resolved(resolve_env(source, backend, render=render), num_envs, seed, render=render)


def open_resolved(
    resolved: ResolvedEnv, num_envs: int, seed: int = 0, *, render: bool = False
) -> "VecEnv | EnvpoolVecEnv | JaxVecEnv":
    """:func:`make_env` for a source already resolved by :func:`~gprl.envs.resolve_env`."""
    check_num_envs(num_envs)
    if resolved.backend == "jax":
        from gprl.envs.jax_envs import make_jax_env

        return make_jax_env(resolved.source, num_envs)
    if resolved.backend == "envpool":
        env = EnvpoolVecEnv(resolved.source, resolved.envpool_task, num_envs)
    else:
        makers = sub_env_makers(resolved, num_envs, render=render)
        env = VecEnv(makers, resolved.name, render=render)
    try:
        env.reset(seed)
    except EnvError:
        env.close()
        raise
    return env


def probe_spec(source: EnvSource, backend: str = "auto", start_state_group: int = 1) -> EnvSpec:
    """The spec of the envs :func:`make_env` would build from source, learnt cheaply: a JAX task
    or a gymnasium.Env instance is only inspected, envpool reads its task's spec, and an id or
    factory on Gymnasium builds one env, never resets it, and closes it again.

    Raises:
        EnvError: as :func:`make_env`.
    """
    resolved = resolve_env(source, backend, start_state_group)
    if resolved.backend == "jax":
        from gprl.envs.jax_envs import make_jax_env

        return make_jax_env(resolved.source, 1).spec
    if resolved.backend == "envpool":
        return EnvpoolVecEnv(resolved.source, resolved.envpool_task).spec
    if isinstance(resolved.source, gym.Env):
        return gymnasium_task_shape(resolved.source, resolved.name).spec
    with VecEnv(sub_env_makers(resolved, 1), resolved.name) as env:
        return env.spec
