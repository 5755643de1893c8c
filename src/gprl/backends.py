"""Where a run's envs live: host vector envs (Gymnasium or envpool) or JAX envs on the device,
with the matching collector and evaluator."""

from typing import Any, NamedTuple

from gprl.collectors import DeviceCollector, HostCollector
from gprl.envs import EnvError, env_backend_for, make_env
from gprl.envs.envpool_backend import GROUPED_RESTARTS_UNSUPPORTED
from gprl.envs.vector import ENV_BACKENDS
from gprl.evaluation import DeviceEvaluator, HostEvaluator
from gprl.types import EnvSpec

BACKENDS = (*ENV_BACKENDS, "jax")
JAX_ONLY_PREFIX = "playground:"


def resolve_backend(env_id: str, backend: str, start_state_group: int = 1) -> str:
    """The backend a run on env_id uses: 'gymnasium', 'envpool' or 'jax'. Envs restarted in
    groups from one initial state (start_state_group > 1) rule envpool out."""
    if backend not in BACKENDS:
        raise EnvError(f"unknown env backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if env_id.startswith(JAX_ONLY_PREFIX):
        if backend not in ("auto", "jax"):
            raise EnvError(f"{env_id} is a JAX environment; use --env-backend jax (or auto)")
        return "jax"
    if backend == "jax":
        return "jax"
    if start_state_group > 1:
        if backend == "envpool":
            raise EnvError(GROUPED_RESTARTS_UNSUPPORTED)
        backend = "gymnasium"
    return env_backend_for(env_id, backend)


class Environments(NamedTuple):
    train: Any
    evaluation: Any
    spec: EnvSpec
    backend: str

    def close(self) -> None:
        for env in (self.train, self.evaluation):
            if hasattr(env, "close"):
                env.close()

    def checkpoint_state(self) -> dict:
        """What a checkpoint must hold to restart these envs exactly where they were: nothing
        for envs that reseed cheaply at every restart (Gymnasium, JAX), each env's episode
        count for envpool pools, whose seeds are fixed when built."""
        if self.backend == "jax":
            return {}
        return {"train": self.train.get_state(), "evaluation": self.evaluation.get_state()}

    def restore_state(self, state: dict) -> None:
        if self.backend != "jax":
            self.train.set_state(state.get("train", {}))
            self.evaluation.set_state(state.get("evaluation", {}))


def open_environments(
    env_id: str,
    backend: str,
    num_envs: int,
    eval_episodes: int,
    seed: int,
    eval_seed: int,
    start_state_group: int = 1,
) -> Environments:
    backend = resolve_backend(env_id, backend, start_state_group)
    if backend == "jax":
        from gprl.envs.jax_envs import make_jax_env

        train = make_jax_env(env_id, num_envs)
        evaluation = make_jax_env(env_id, eval_episodes)
    else:
        train = make_env(env_id, num_envs, seed, backend=backend)
        try:
            evaluation = make_env(env_id, eval_episodes, eval_seed, backend=backend)
        except BaseException:
            train.close()
            raise
    return Environments(train, evaluation, train.spec, backend)


def make_collector(envs: Environments, act):
    if envs.backend == "jax":
        return DeviceCollector(envs.train, act)
    return HostCollector(envs.train, act)


def make_evaluator(envs: Environments, act_deterministic, seed: int):
    if envs.backend == "jax":
        return DeviceEvaluator(envs.evaluation, act_deterministic, seed)
    return HostEvaluator(envs.evaluation, act_deterministic, seed)
