"""Environments for gprl: vectorised tasks with [-1, 1] actions and flat float32 observations.

Importing this package registers the diagnostic tasks (``gprl/BimodalBandit-v0``, ...) with
Gymnasium, so they can be made like any other id.
"""

from gprl.envs.diagnostics import register_diagnostic_envs
from gprl.envs.envpool_backend import EnvpoolVecEnv
from gprl.envs.vector import EnvError, EnvSpec, StepResult, VecEnv, env_backend_for, make_env

register_diagnostic_envs()

__all__ = [
    "EnvError",
    "EnvSpec",
    "EnvpoolVecEnv",
    "StepResult",
    "VecEnv",
    "env_backend_for",
    "make_env",
]
