"""`gprl collect`: record a Minari dataset with a trained policy or a Python policy.

The actions come from

- a run directory, any `gprl train` run (through the algorithm contract) or `gprl pretrain` run
  (through its chunk policy): `--policy deterministic` (default) is the evaluation policy,
  `act_deterministic` (a pretrain run acts from its configured noise scale: the Gaussian's mean,
  a generative policy's samples); `--policy stochastic` the training policy, `act` (a pretrain
  run samples with noise scale 1);
- or a Python policy, `--policy module:attr --env ID`: a callable on batches of observations, a
  scripted expert with `get_action(obs)` (Meta-World's), or a factory of either; see
  :mod:`gprl.python_policy`. Its envs are Gymnasium envs stepped in this process, seeded as
  gprl's own, so that it can read their infos;
- or, `--policy oracle --env ogbench:<dataset>`, OGBench's own oracles making the dataset the id
  names (play or noisy) as OGBench makes it, its rewards and successes the id's single task's
  (:mod:`gprl.envs.ogbench`); `--episode-steps` sets the episode length (1001, as OGBench's).

A train run's policy acts in the task as the run trained on it: with its --sparse-reward and
--end-on-success, so the dataset's rewards and episode ends are the ones its policy optimised.

Plus, with `--action-noise S`, Gaussian noise of std S in the normalised [-1, 1] action space,
clipped to it and drawn from --seed. Expert (S = 0), medium (an earlier or smaller run) and noisy
or mixed datasets (several collections, `minari.combine_datasets`) are all made this way.

Success: on envs that report it (info "success" or "is_success"), each step's success is kept as
the Minari episode's `infos["success"]` (:mod:`gprl.datasets`), an episode succeeding if any step
did. `--only-successful` keeps only successful episodes until --episodes are kept, trying at
most --max-attempts. The dataset's metadata, `minari.load_dataset(ID).storage.metadata
["gprl_collect"]`, records the policy, action noise, seed, episodes attempted, success rate and
each kept episode's success and return.

Episodes are attempted in a fixed order and kept in that order (:mod:`gprl.recording`): the
dataset depends only on the policy, the envs and the seed.

A first SIGINT or SIGTERM stops recording and writes the episodes kept so far as the dataset
(none: no dataset), then exits with 128 + the signal; a second one aborts and writes nothing.
"""

import math
import signal
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, NamedTuple

import jax
import numpy as np
import tyro

from gprl.backends import resolve_backend
from gprl.dataset_writer import write_dataset
from gprl.datasets import DatasetError, check_dataset_id, check_datasets_writable, dataset_path
from gprl.envs import EnvError, make_env
from gprl.envs.info_vector import InfoVecEnv
from gprl.envs.ogbench import is_ogbench_id, oracle_collection
from gprl.evaluation import ActionQueue
from gprl.python_policy import PythonPolicy, is_python_policy
from gprl.recording import Attempts, Recorded, record
from gprl.signals import StopSignals, TrainingInterrupted

HOST_BACKENDS = ("auto", "gymnasium", "envpool")
RUN_POLICIES = ("deterministic", "stochastic")
ORACLE_POLICY = "oracle"
METADATA_KEY = "gprl_collect"
ATTEMPTS_PER_EPISODE = 10
"""--only-successful tries at most this many episodes per episode asked for, by default."""


@dataclass
class CollectArgs:
    """Record a Minari dataset with a trained policy (a `gprl train` or `gprl pretrain` run
    directory) or a Python policy (--policy module:attr --env ID)."""

    run_dir: Annotated[tyro.conf.Positional[Path | None], tyro.conf.arg(metavar="[RUN_DIR]")] = None
    """The run whose checkpoint acts; none with --policy module:attr."""
    out: str = tyro.MISSING
    """Minari id of the new dataset ([namespace/]name-vN), written to Minari's
    data path (MINARI_DATASETS_PATH); an existing dataset is never replaced."""
    episodes: int = 10
    """Complete episodes to record (to keep, with --only-successful)."""
    policy: str = "deterministic"
    """A run's `deterministic` (evaluation) or `stochastic` (training) policy,
    or a Python policy `module:attr` (with --env), imported from the current
    directory: a callable on observations (num_envs, obs_dim) returning actions
    (num_envs, action_dim) in the env's units; an object with get_action(obs)
    on one observation (applied to each env); or a class or no-argument
    callable building either. It is also given the envs' info dicts if it
    takes an `info` keyword, and episode starts if it takes `episode_start`.
    Meta-World's experts work as they are:
      --env metaworld:pick-place-v3
      --policy metaworld.policies:SawyerPickPlaceV3Policy
    the same as the two-line adapter (--policy my_module:act)
      expert = SawyerPickPlaceV3Policy()
      def act(obs): return np.stack([expert.get_action(o) for o in obs])
    or `oracle`: OGBench's oracles in an ogbench: --env, collecting its
    dataset (play or noisy, as the id says) as OGBench does."""
    env: str | None = None
    """Env id a Python policy acts in (a run directory acts in its own env)."""
    episode_steps: int | None = None
    """Steps of each --policy oracle episode (default 1001, as OGBench's
    datasets); other policies' episodes end as their env's do."""
    action_noise: float = 0.0
    """Std of Gaussian noise added to the actions in [-1, 1] (then clipped)."""
    only_successful: bool = False
    """Keep only episodes in which some step reported success (info "success"
    or "is_success") until --episodes are kept."""
    max_attempts: int | None = None
    """Most episodes --only-successful tries before giving up (default
    10 x --episodes)."""
    seed: int = 0
    """Seeds the envs (env i gets seed + i), the policy's sampling and the action noise."""
    num_envs: int = 8
    """Envs stepped together (at most the episodes to try are used)."""

    @property
    def attempt_limit(self) -> int:
        """The most episodes the collection tries."""
        if not self.only_successful:
            return self.episodes
        return self.max_attempts or ATTEMPTS_PER_EPISODE * self.episodes

    def validate(self) -> None:
        if self.out is tyro.MISSING:
            raise ValueError("--out is required: the Minari id of the new dataset")
        if self.episodes < 1:
            raise ValueError(f"--episodes must be at least 1, got {self.episodes}")
        if self.num_envs < 1:
            raise ValueError(f"--num-envs must be at least 1, got {self.num_envs}")
        if not (math.isfinite(self.action_noise) and self.action_noise >= 0):
            raise ValueError(
                f"--action-noise must be a non-negative number, got {self.action_noise}"
            )
        if not 0 <= self.seed < 2**31:
            raise ValueError(f"--seed must be in [0, 2^31), got {self.seed}")
        if self.max_attempts is not None and not self.only_successful:
            raise ValueError("--max-attempts applies only with --only-successful")
        if self.max_attempts is not None and self.max_attempts < self.episodes:
            raise ValueError(
                f"--max-attempts ({self.max_attempts}) must be at least --episodes "
                f"({self.episodes})"
            )
        self._validate_source()

    def _validate_source(self) -> None:
        if self.episode_steps is not None and self.policy != ORACLE_POLICY:
            raise ValueError("--episode-steps applies only to --policy oracle")
        if self.policy == ORACLE_POLICY:
            self._validate_oracle()
        elif is_python_policy(self.policy):
            if self.run_dir is not None:
                raise ValueError(
                    f"--policy {self.policy} is a Python policy acting in --env; give no run "
                    f"directory ({self.run_dir})"
                )
            if self.env is None:
                raise ValueError(f"--policy {self.policy} needs --env ID, the env it acts in")
        elif self.policy not in RUN_POLICIES:
            raise ValueError(
                "--policy must be deterministic, stochastic (a run's policy), module:attr (a "
                f"Python policy) or oracle (OGBench's), got {self.policy!r}"
            )
        elif self.run_dir is None:
            raise ValueError("give a run directory, or --policy module:attr --env ID")
        elif self.env is not None:
            raise ValueError("--env is for --policy module:attr; a run acts in its own env")

    def _validate_oracle(self) -> None:
        if self.run_dir is not None or not is_ogbench_id(self.env):
            raise ValueError(
                "--policy oracle collects an OGBench dataset: give --env ogbench:<dataset> "
                "(ogbench:cube-single-play-singletask-task2-v0) and no run directory"
            )
        if self.episode_steps is not None and self.episode_steps < 1:
            raise ValueError(f"--episode-steps must be at least 1, got {self.episode_steps}")


class Collected(NamedTuple):
    dataset_id: str
    path: Path
    episodes: int
    steps: int
    mean_return: float
    attempted: int
    """Episodes tried to keep `episodes` (more than it with --only-successful)."""
    success_rate: float | None
    """Share of the attempted episodes that succeeded; None for envs that never report it."""
    env_steps_per_second: float
    """All env steps taken (kept or not) per second of recording."""


class _RunActor:
    """A run's policy on a host vector env: actor(obs) -> actions in [-1, 1];
    episode_ended(mask) after each step (chunked policies replan there)."""

    def __init__(self, run_dir: Path, stochastic: bool, num_envs: int, key):
        from gprl.pretrain import is_pretrain_run, load_pretrained
        from gprl.trainer import load_run

        self._queue = None
        self.source = f"{'stochastic' if stochastic else 'deterministic'} policy of {run_dir}"
        self.env_options = {}
        """make_env options of the task as the run saw it (a train run's reward and episode end)."""
        if is_pretrain_run(run_dir):
            pretrained = load_pretrained(run_dir)
            policy = pretrained.policy
            if stochastic:
                policy.noise_scale = 1.0
            plan = jax.jit(policy.plan)
            self._queue = ActionQueue(
                lambda obs, key: plan(pretrained.acting, obs, key),
                num_envs,
                pretrained.config.execute_steps,
                key,
                pretrained.config.obs_history,
            )
            self.env_id, self.backend = pretrained.env_id, pretrained.env_backend
            self.description = f"gprl pretrain {pretrained.kind}"
            return
        algo, state, run = load_run(run_dir)
        acting = algo.acting_params(state)
        self.env_id = run.env
        self.env_options = dict(sparse_reward=run.sparse_reward, end_on_success=run.end_on_success)
        self.backend = run.env_backend if run.env_backend in HOST_BACKENDS else "auto"
        if resolve_backend(run.env, self.backend) == "jax":
            raise EnvError(f"{run.env} is a JAX environment; gprl collect records host envs")
        self.description = f"gprl {type(algo).__name__}"
        if stochastic:
            act = jax.jit(algo.act)
            self._key = key

            def policy(obs):
                self._key, act_key = jax.random.split(self._key)
                return act(acting, obs, act_key)[0]

        else:
            act_deterministic = jax.jit(algo.act_deterministic)

            def policy(obs):
                return act_deterministic(acting, obs)

        self._policy = policy

    def __call__(self, obs) -> np.ndarray:
        if self._queue is not None:
            return self._queue(obs)
        return np.asarray(self._policy(obs))

    def episode_ended(self, ended) -> None:
        if self._queue is not None:
            self._queue.episode_ended(ended)


class _PythonActor:
    """A Python policy on an InfoVecEnv: actor(obs) -> its actions mapped from the env's action
    bounds onto [-1, 1] (clipped); it sees the infos that came with obs and episode starts."""

    def __init__(self, policy: PythonPolicy, env: InfoVecEnv):
        self._policy, self._env = policy, env
        spec = env.spec
        self._scale = (spec.action_high.astype(np.float64) - spec.action_low) / 2
        self._offset = (spec.action_high.astype(np.float64) + spec.action_low) / 2
        self._episode_start = np.ones(env.num_envs, bool)
        self.source = self.description = f"Python policy {policy.target}"

    def __call__(self, obs) -> np.ndarray:
        infos = list(self._env.infos)
        actions = self._policy(obs, infos, self._episode_start.copy(), self._env.spec.action_dim)
        return np.clip((actions - self._offset) / self._scale, -1.0, 1.0)

    def episode_ended(self, ended) -> None:
        self._episode_start = np.array(ended, bool)


def collect(args: CollectArgs) -> Collected:
    """Record args.episodes episodes with the policy args names and write them as a Minari
    dataset. Bad arguments, an existing dataset id, an unwritable dataset folder, an unusable
    run or policy fail before any env is stepped. A first SIGINT / SIGTERM writes the episodes
    kept so far and raises TrainingInterrupted; a second raises KeyboardInterrupt and writes
    nothing."""
    args.validate()
    if dataset_path(check_dataset_id(args.out)).exists():
        raise DatasetError(f"dataset {args.out} already exists; choose another --out")
    check_datasets_writable()
    policy_key, noise_seed = jax.random.split(jax.random.PRNGKey(args.seed))
    num_envs = min(args.num_envs, args.attempt_limit)
    with StopSignals() as stop:
        actor, env = _open(args, num_envs, policy_key)
        try:
            _check_reports_success(args, env.spec)
            attempts = Attempts(num_envs, args.episodes, args.attempt_limit, args.only_successful)
            recorded = record(env, actor, attempts, args.action_noise, args.seed, noise_seed, stop)
        finally:
            env.close()
        _check_enough_kept(recorded, args, env.spec.env_id, stop)
        stop.raise_if_aborted()
        path = write_dataset(
            args.out,
            recorded.episodes,
            env.spec,
            _description(args, actor, recorded),
            actor.description,
            {METADATA_KEY: _metadata(args, actor, recorded, env.spec.reports_success)},
        )
    if stop.received is not None:
        raise TrainingInterrupted(
            f"{_signal_name(stop.received)}: stopped after {len(recorded.episodes)} of "
            f"{args.episodes} episodes and wrote them as dataset {args.out} ({path})",
            stop.received,
        )
    return _summary(args.out, path, recorded, env.spec.reports_success)


def _open(args: CollectArgs, num_envs: int, policy_key):
    """The actor and the envs it acts in."""
    if args.policy == ORACLE_POLICY:
        make, oracle_policy, source = oracle_collection(args.env, args.episode_steps)
        env = InfoVecEnv(make, num_envs, args.seed)
        # Named as the task the dataset is for, not the collection envs' own id.
        env.spec = replace(env.spec, env_id=args.env)
        actor = _PythonActor(PythonPolicy(oracle_policy), env)
        actor.source = actor.description = source
        return actor, env
    if not is_python_policy(args.policy):
        actor = _RunActor(args.run_dir, args.policy == "stochastic", num_envs, policy_key)
        env = make_env(
            actor.env_id, num_envs, args.seed, backend=actor.backend, **actor.env_options
        )
        return actor, env
    # The policy is imported first: a typo in its name fails before an env is built.
    policy = PythonPolicy(args.policy)
    if resolve_backend(args.env, "auto") == "jax":
        raise EnvError(f"{args.env} is a JAX environment; gprl collect records host envs")
    env = InfoVecEnv(args.env, num_envs, args.seed)
    return _PythonActor(policy, env), env


def _check_reports_success(args: CollectArgs, spec) -> None:
    if args.only_successful and not spec.reports_success:
        raise EnvError(
            f"{spec.env_id} never reports success (no info['success'] or info['is_success'] "
            "on its steps), so --only-successful would keep nothing"
        )


def _signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def _check_enough_kept(recorded: Recorded, args: CollectArgs, env_id: str, stop) -> None:
    """TrainingInterrupted if a signal came before an episode was kept; ValueError if
    --only-successful ran out of attempts (nothing is written either way)."""
    if stop.received is not None and not recorded.episodes:
        raise TrainingInterrupted(
            f"{_signal_name(stop.received)}: stopped before an episode was kept; wrote no dataset",
            stop.received,
        )
    if stop.received is None and len(recorded.episodes) < args.episodes:
        raise ValueError(
            f"--only-successful: {recorded.successful} of {recorded.attempted} episodes of "
            f"{env_id} succeeded, fewer than --episodes {args.episodes}; wrote no dataset "
            "(raise --max-attempts or lower --episodes)"
        )


def _description(args: CollectArgs, actor, recorded: Recorded) -> str:
    kept = " successful" if args.only_successful else ""
    return (
        f"{len(recorded.episodes)}{kept} episodes (of {recorded.attempted} attempted) of the "
        f"{actor.source}, action noise {args.action_noise}, seed {args.seed}"
    )


def _metadata(args: CollectArgs, actor, recorded: Recorded, reports_success: bool) -> dict:
    """What the dataset's metadata records about its collection (JSON types)."""
    return {
        "policy": actor.source,
        "action_noise": args.action_noise,
        "seed": args.seed,
        "num_envs": min(args.num_envs, args.attempt_limit),
        "only_successful": args.only_successful,
        "episodes_attempted": recorded.attempted,
        "success_rate": _success_rate(recorded, reports_success),
        "episode_success": [e.succeeded for e in recorded.episodes] if reports_success else None,
        "episode_return": [float(np.sum(e.rewards)) for e in recorded.episodes],
    }


def _success_rate(recorded: Recorded, reports_success: bool) -> float | None:
    return recorded.successful / recorded.attempted if reports_success else None


def _summary(dataset_id: str, path: Path, recorded: Recorded, reports_success) -> Collected:
    returns = [float(np.sum(e.rewards)) for e in recorded.episodes]
    return Collected(
        dataset_id=dataset_id,
        path=path,
        episodes=len(recorded.episodes),
        steps=sum(len(e.rewards) for e in recorded.episodes),
        mean_return=float(np.mean(returns)),
        attempted=recorded.attempted,
        success_rate=_success_rate(recorded, reports_success),
        env_steps_per_second=recorded.env_steps / max(recorded.seconds, 1e-9),
    )
