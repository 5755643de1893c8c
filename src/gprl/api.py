"""The Python API: `gprl.train(...)` and `gprl.load(run_dir)`, for notebooks and scripts.

    import gprl
    run = gprl.train("ppo", env="Pendulum-v1", total_steps=20_000, out="runs/pendulum")
    action = run.act(observation)               # deterministic, in the env's action bounds
    actions = run.act(observations, deterministic=False)
    run = gprl.load("runs/pendulum")            # the same object, from any run directory

`train` takes what `gprl train` takes, as Python values: an algorithm name or config object, an
env id or a gymnasium.Env instance, a function making one, or a JAX task object (gprl.envs), and
any RunConfig field as a keyword. `networks=gprl.networks.CustomNetworks(...)` replaces the
algorithm's default networks with your flax modules (see gprl.networks).
"""

import csv
import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from gprl.algos import ALGORITHMS
from gprl.backends import probe_spec
from gprl.logger import METRICS_CSV
from gprl.pretrained import is_pretrain_run, load_pretrained
from gprl.rundir import saved_configs
from gprl.trainer import RunConfig, load_run, registered
from gprl.trainer import train as train_run
from gprl.types import EnvSpec


def train(
    algo="gorl",
    env=None,
    *,
    total_steps: int | None = None,
    networks=None,
    progress: bool = False,
    **run_options,
) -> "Run":
    """Train and return the finished run (see :class:`Run`).

    algo: a registered name ("ppo", "gorl", ...; `gprl --help` lists them) or an algorithm config
    object (e.g. gprl.algos.PPOConfig(learning_rate=1e-3)). env: an id, a gymnasium.Env, a
    function returning one, or a JAX task object; default gprl/TwoGoalPoint-v0. run_options: any
    other field of gprl.trainer.RunConfig (seed, num_envs, out, resume, overwrite, init, ...)."""
    algo_name, algo_config = _algorithm(algo)
    unknown = set(run_options) - {f.name for f in dataclasses.fields(RunConfig)}
    if unknown:
        raise TypeError(f"unknown run options {sorted(unknown)}; see gprl.trainer.RunConfig")
    run = RunConfig(env=env, total_steps=total_steps, progress=progress, **run_options)
    run_dir = train_run(algo_name, run, algo_config, networks=networks)
    return load(run_dir, networks=networks)


def _algorithm(algo):
    if isinstance(algo, str):
        return algo, registered(algo).default_config()
    for name, entry in ALGORITHMS.items():
        if type(algo) is entry.config:
            return name, algo
    raise ValueError(
        f"algo must be a registered name or an algorithm config, got {type(algo).__name__}"
    )


def load(run_dir, networks=None) -> "Run":
    """A finished or interrupted run (`gprl train` or `gprl pretrain`) from its directory. A run
    trained with custom networks needs the same `networks` again to be rebuilt."""
    run_dir = Path(run_dir)
    if is_pretrain_run(run_dir):
        return _load_pretrain_run(run_dir)
    algorithm, state, config = load_run(run_dir, networks)
    acting = algorithm.acting_params(state)
    policy = (
        jax.jit(lambda obs: algorithm.act_deterministic(acting, obs)),
        jax.jit(lambda obs, key: algorithm.act(acting, obs, key)[0]),
    )
    return Run(run_dir, config, algorithm.spec, algorithm, state, policy)


def _load_pretrain_run(run_dir: Path) -> "Run":
    pretrained = load_pretrained(run_dir)
    saved = saved_configs(run_dir)
    if "env_spec" in saved:
        spec = EnvSpec.from_record(saved["env_spec"])
    else:
        spec = probe_spec(pretrained.env_id, pretrained.env_backend)
    chunk_policy, acting = pretrained.policy, pretrained.acting
    policy = (
        jax.jit(
            lambda obs: chunk_policy.plan_from_noise(
                acting, obs, jnp.zeros((*obs.shape[:-1], chunk_policy.noise_dim))
            )
        ),
        jax.jit(lambda obs, key: chunk_policy.plan(acting, obs, key)),
    )
    return Run(run_dir, pretrained.config, spec, chunk_policy, acting, policy, chunked=True)


class Run:
    """A run's policy and state. `act` takes raw observations, one (obs_dim,) or a batch
    (N, obs_dim), and returns actions as the env receives them (in its action bounds).

    algorithm / state: the algorithm object and its state pytree, for research use (its
    networks, `algorithm.act_deterministic(algorithm.acting_params(state), obs)`, ...). For a
    pretrain run they are its gprl.pretrained.ChunkPolicy and acting parameters; `act` returns
    the first action of each planned chunk, `plan` the whole chunk."""

    def __init__(self, run_dir, config, spec: EnvSpec, algorithm, state, policy, chunked=False):
        self.run_dir, self.config, self.spec = run_dir, config, spec
        self.algorithm, self.state = algorithm, state
        self._deterministic, self._stochastic = policy
        self.chunked = chunked
        self._key = jax.random.PRNGKey(getattr(config, "seed", 0))

    def _normalized(self, obs, deterministic: bool):
        obs = jnp.asarray(obs, jnp.float32)
        if obs.shape[-1] != self.spec.obs_dim or obs.ndim not in (1, 2):
            raise ValueError(
                f"observations must have shape ({self.spec.obs_dim},) or (N, "
                f"{self.spec.obs_dim}), got {obs.shape}"
            )
        batch = obs[None] if obs.ndim == 1 else obs
        if deterministic:
            actions = self._deterministic(batch)
        else:
            self._key, key = jax.random.split(self._key)
            actions = self._stochastic(batch, key)
        actions = np.asarray(actions)
        return actions[0] if obs.ndim == 1 else actions

    def plan(self, obs, deterministic: bool = True) -> np.ndarray:
        """A pretrain run's chunk of actions (..., chunk_length, action_dim), in env units."""
        return self._to_env_units(self._normalized(obs, deterministic))

    def act(self, obs, deterministic: bool = True) -> np.ndarray:
        """Actions for raw observations, in the env's action bounds."""
        actions = self._normalized(obs, deterministic)
        if self.chunked:
            actions = actions[..., 0, :]
        return self._to_env_units(actions)

    __call__ = act

    def _to_env_units(self, actions: np.ndarray) -> np.ndarray:
        low, high = self.spec.action_low, self.spec.action_high
        return (low + (np.clip(actions, -1.0, 1.0) + 1.0) * (high - low) / 2).astype(np.float32)

    @property
    def metrics(self) -> list[dict]:
        """metrics.csv's rows (numbers as floats; a metric a row lacks is absent)."""
        with open(self.run_dir / METRICS_CSV, newline="") as f:
            return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]

    def __repr__(self) -> str:
        return f"Run({str(self.run_dir)!r}, env={getattr(self.config, 'env', self.spec.env_id)!r})"
