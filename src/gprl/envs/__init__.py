"""Environments for gprl: vectorised tasks with [-1, 1] actions and flat float32 observations.

Envs are built from an env source (:mod:`gprl.envs.sources`): an id, a ``gymnasium.Env``
instance, a factory returning one, or a JAX task object. Importing this package registers the
diagnostic tasks (``gprl/BimodalBandit-v0``, ``gprl/TwoGoalGrid-v0``, ...) with Gymnasium, so
they can be made like any other id.
"""

from gprl.envs.common import EnvError
from gprl.envs.diagnostics import register_diagnostic_envs
from gprl.envs.envpool_backend import EnvpoolVecEnv
from gprl.envs.gridworld import register_grid_envs
from gprl.envs.make import make_env, open_resolved, probe_spec
from gprl.envs.sources import (
    EnvSource,
    ResolvedEnv,
    can_reopen,
    env_source_name,
    resolve_env,
)
from gprl.envs.vector import VecEnv
from gprl.types import EnvSpec, StepResult

register_diagnostic_envs()
register_grid_envs()

__all__ = [
    "EnvError",
    "EnvSource",
    "EnvSpec",
    "EnvpoolVecEnv",
    "ResolvedEnv",
    "StepResult",
    "VecEnv",
    "can_reopen",
    "env_source_name",
    "make_env",
    "open_resolved",
    "probe_spec",
    "resolve_env",
]
