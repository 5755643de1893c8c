"""Building envs from any env source, and learning a task's spec without keeping an env open."""

import copy
import dataclasses
from typing import TYPE_CHECKING

import gymnasium as gym

from gprl.envs.chunked import Chunking
from gprl.envs.common import EnvError, check_num_envs, check_success_options
from gprl.envs.envpool_backend import EnvpoolVecEnv
from gprl.envs.sources import EnvSource, ResolvedEnv, resolve_env
from gprl.envs.vector import (
    VecEnv,
    gymnasium_task_shape,
    instance_reports_success,
    sub_env_makers,
    worker_count,
)
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
    sparse_reward: bool = False,
    end_on_success: bool = False,
    env_workers: int | None = None,
    chunking: Chunking | None = None,
) -> "VecEnv | EnvpoolVecEnv | JaxVecEnv":
    """Build vector envs from an id, a gymnasium.Env instance, a factory or a JAX task.

    Args:
        source: a Gymnasium id (``Hopper-v5``), one in Gymnasium's ``module:EnvId-v0`` form
            (``my_pkg.envs:MyEnv-v0`` imports ``my_pkg.envs`` to register it first), a DeepMind
            Control id (``dm_control/hopper-stand-v0``) or its short form (``dmc:hopper-stand``),
            a Meta-World id (``metaworld:pick-place-v3``), an OGBench single-task id
            (``ogbench:cube-single-play-singletask-task2-v0``), a JAX id
            (``playground:CheetahRun``);
            a ``gymnasium.Env`` instance (env 0 is the instance, the others deep copies of it;
            closing the envs closes it), a zero-argument function returning a new
            ``gymnasium.Env``, or a JAX task object
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
        sparse_reward: reward 1.0 on steps where the env reports success (``info["success"]``
            or ``info["is_success"]``; ``spec.reports_success``), else 0.0.
        end_on_success: a step where the env reports success terminates its episode.
        env_workers: worker processes stepping blocks of the Gymnasium backend's envs beside
            this process, with the same results as without them (0: none); None chooses (see
            :func:`~gprl.envs.vector.worker_count`: Meta-World and OGBench tasks get one process
            per CPU core). envpool and JAX envs ignore it.
        chunking: each step executes an action chunk (:mod:`gprl.envs.chunked`); not on
            envpool.

    Raises:
        EnvError: unknown id or backend, a source the backend cannot run, an env that fails to
            build, copy or reset, a non-continuous or unbounded action space, num_envs < 1, or
            sparse_reward or end_on_success on an env that never reports success.
    """
    resolved = resolve_env(source, backend, render=render)
    return open_resolved(
        resolved,
        num_envs,
        seed,
        render=render,
        sparse_reward=sparse_reward,
        end_on_success=end_on_success,
        env_workers=env_workers,
        chunking=chunking,
    )


def open_resolved(
    resolved: ResolvedEnv,
    num_envs: int,
    seed: int = 0,
    *,
    render: bool = False,
    sparse_reward: bool = False,
    end_on_success: bool = False,
    env_workers: int | None = None,
    chunking: Chunking | None = None,
) -> "VecEnv | EnvpoolVecEnv | JaxVecEnv":
    """:func:`make_env` for a source already resolved by :func:`~gprl.envs.resolve_env`."""
    check_num_envs(num_envs)
    if chunking is not None and resolved.backend == "envpool":
        raise EnvError(
            f"envpool cannot execute action chunks, and {resolved.name} resolved to it: pass "
            "--env-backend gymnasium"
        )
    if resolved.backend != "gymnasium":
        # envpool's and gprl's JAX tasks have no success to report.
        check_success_options(resolved.name, False, sparse_reward, end_on_success)
    if resolved.backend == "jax":
        from gprl.envs.jax_envs import make_jax_env

        env = make_jax_env(resolved.source, num_envs)
        if chunking is None:
            return env
        from gprl.envs.jax_chunked import chunked_jax_env

        return chunked_jax_env(env, chunking)
    if resolved.backend == "envpool":
        env = EnvpoolVecEnv(resolved.source, resolved.envpool_task, num_envs)
    else:
        makers = sub_env_makers(resolved, num_envs, render=render)
        env = VecEnv(
            makers,
            resolved.name,
            render=render,
            sparse_reward=sparse_reward,
            end_on_success=end_on_success,
            workers=worker_count(resolved, num_envs, env_workers),
            chunking=chunking,
        )
    try:
        env.reset(seed)
    except EnvError:
        env.close()
        raise
    return env


def probe_spec(source: EnvSource, backend: str = "auto", start_state_group: int = 1) -> EnvSpec:
    """The spec of the envs :func:`make_env` would build from source, learnt cheaply: a JAX task
    is only inspected, envpool reads its task's spec, an id or factory on Gymnasium builds one
    env, resets and steps it once to learn whether it reports success, and closes it again, and
    a gymnasium.Env instance is inspected while a deep copy of it is reset and stepped once (the
    instance itself if it cannot be copied; make_env resets it with its own seed before use).

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
        spec = gymnasium_task_shape(resolved.source, resolved.name).spec
        return dataclasses.replace(spec, reports_success=_copy_reports_success(resolved.source))
    with VecEnv(sub_env_makers(resolved, 1), resolved.name) as env:
        return env.spec


def _copy_reports_success(instance: gym.Env) -> bool:
    """Whether the instance reports success, learnt on a copy so that the user's episode goes on
    undisturbed."""
    try:
        probe = copy.deepcopy(instance)
    except Exception:  # deepcopy of user objects raises anything
        return instance_reports_success(instance)
    try:
        return instance_reports_success(probe)
    finally:
        probe.close()
