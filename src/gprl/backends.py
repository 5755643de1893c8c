"""Where a run's envs live: host vector envs (Gymnasium or envpool) or JAX envs on the device,
with the matching collector and evaluator."""

from typing import Any, NamedTuple

from gprl.collectors import DeviceCollector, HostCollector
from gprl.envs import EnvSource, open_resolved, resolve_env
from gprl.envs import probe_spec as probe_spec  # the run's spec before its envs are built
from gprl.envs.sources import BACKENDS as BACKENDS
from gprl.evaluation import DeviceEvaluator, HostEvaluator
from gprl.types import EnvSpec


def resolve_backend(env: EnvSource, backend: str, start_state_group: int = 1) -> str:
    """The backend a run on env uses: 'gymnasium', 'envpool' or 'jax', as decided by
    :func:`gprl.envs.resolve_env`. Envs restarted in groups from one initial state
    (start_state_group > 1) rule envpool out."""
    return resolve_env(env, backend, start_state_group).backend


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
    env: EnvSource,
    backend: str,
    num_envs: int,
    eval_episodes: int,
    seed: int,
    eval_seed: int,
    start_state_group: int = 1,
    env_workers: int | None = None,
    **success_options: bool,
) -> Environments:
    """Training and evaluation envs for a run on env: an id, a gymnasium.Env instance (used in
    the training envs; every other env is a deep copy of it), a factory or a JAX task object.
    success_options (sparse_reward, end_on_success) and env_workers apply to both sets (see
    make_env)."""
    resolved = resolve_env(env, backend, start_state_group)
    train = open_resolved(resolved, num_envs, seed, env_workers=env_workers, **success_options)
    try:
        evaluation = open_resolved(
            resolved.for_another_set(),
            eval_episodes,
            eval_seed,
            env_workers=env_workers,
            **success_options,
        )
    except BaseException:
        if hasattr(train, "close"):
            train.close()
        raise
    return Environments(train, evaluation, train.spec, resolved.backend)


def make_collector(envs: Environments, act):
    if envs.backend == "jax":
        return DeviceCollector(envs.train, act)
    return HostCollector(envs.train, act)


def make_evaluator(envs: Environments, act_deterministic, seed: int):
    if envs.backend == "jax":
        return DeviceEvaluator(envs.evaluation, act_deterministic, seed)
    return HostEvaluator(envs.evaluation, act_deterministic, seed)
