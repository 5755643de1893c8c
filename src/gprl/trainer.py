"""`gprl train`: an RL algorithm trained on an env, as a job of the shared run loop
(gprl.runloop), with the algorithm's base class picking the collection loop (gprl.loops).

Exact resumption: checkpoints are taken at iteration boundaries, and at every such boundary the
training envs restart from seeds derived from (seed, iteration), whether or not the run is
interrupted there. A resumed run therefore replays the uninterrupted one step for step.
Episodes cut at a boundary are bootstrapped like time-limit truncations and are not logged.
Arrays the loop owns (an off-policy loop's replay buffer) are saved with the checkpoint.

An off-policy run can start from a Minari dataset (--dataset): it fills the replay buffer's
offline region, and the algorithm's offline updates (gradient steps on the dataset alone) come
first, logged as iterations without env steps. Their gradient steps advance the evaluation and
checkpoint clocks like env steps, and the offline phase ends with an evaluation (the policy's
return before any env step) and a checkpoint.
"""

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import jax

from gprl import __version__
from gprl.algos import ALGORITHMS
from gprl.algos.base import OffPolicyAlgorithm
from gprl.backends import make_collector, make_evaluator, open_environments, probe_spec
from gprl.checkpoint import CONFIG_JSON, CheckpointError, load_checkpoint, save_checkpoint
from gprl.configs import Count, CountOrNone, from_jsonable, to_jsonable
from gprl.datasets import DatasetError, check_fits_env, check_records_env, load_demonstrations
from gprl.decision_data import as_run_sees, decision_transitions
from gprl.envs import EnvError, can_reopen, env_source_name
from gprl.evaluation import default_eval_episodes
from gprl.initial_policy import RunStart, keep_initial_policy, run_start
from gprl.logger import CURVE_PNG, METRICS_CSV, MetricsLogger, check_sinks, plot_learning_curve
from gprl.loops import make_loop
from gprl.rundir import RunDirectory, default_run_dir, has_checkpoint, identity, saved_configs
from gprl.runloop import (
    Schedule,
    Step,
    TrainingError,
    configure_jax,
    run_job,
    scalars,
    start_progress,
)
from gprl.seeding import MAX_SEED, boundary_seed, eval_seed
from gprl.signals import StopSignals, TrainingInterrupted
from gprl.types import EnvSpec

__all__ = [
    "RunConfig",
    "StopSignals",
    "TrainingError",
    "TrainingInterrupted",
    "boundary_seed",
    "complete_run",
    "configure_jax",
    "has_checkpoint",
    "load_run",
    "success_options",
    "train",
]

DEFAULT_ENV = "gprl/TwoGoalPoint-v0"
DEFAULT_TOTAL_STEPS = 300_000
# An evaluation is 10 episodes of up to 1000 steps (~0.5 s on a DM Control task here): at 20
# per run they took 30% of a 300k-step hopper-stand run (benchmarks/throughput.py, profile).
EVALUATIONS_PER_RUN = 10


@dataclass
class RunConfig:
    env: str | None = None
    """Gymnasium id (Hopper-v5, dm_control/hopper-stand-v0, gprl/BimodalBandit-v0, ...).
    Default: gprl/TwoGoalPoint-v0, or the run's env with --resume."""
    total_steps: CountOrNone = None
    """Env-step budget. Default: 300000, or the run's budget with --resume."""
    seed: int = 0
    """Seeds parameters, sampling and the training envs (env i gets seed + i)."""
    num_envs: int = 16
    """Training envs stepped together (host vector env, or vmapped on the device)."""
    env_backend: Literal["auto", "gymnasium", "envpool", "jax"] = "auto"
    """Where the envs run. auto: envpool for the tasks it has (Gymnasium MuJoCo, DM Control),
    JAX for playground: ids, else Gymnasium. jax: JAX envs stepped inside jit (playground:NAME,
    and gprl's diagnostic tasks)."""
    env_workers: int | None = None
    """Worker processes stepping blocks of the Gymnasium backend's envs beside this process, with
    the same results as without them (0: every env in this process). Default: one process per
    CPU core on Meta-World tasks, whose slow steps gain from them (benchmarks/env_workers.py),
    else 0; use 0 on a machine busy with other work or shared by several runs. envpool and JAX
    envs ignore it; --resume takes it from the command line, not the run."""
    out: Path | None = None
    """Run directory. Default: runs/ALGO-ENV-sSEED-TIMESTAMP."""
    resume: Path | None = None
    """Continue the run in this directory from its checkpoint (its saved config is used)."""
    overwrite: bool = False
    """Replace an existing run directory given by --out."""
    eval_every: CountOrNone = None
    """Env steps between deterministic evaluations (0: only the one at the end). Default:
    total_steps / 10."""
    eval_episodes: int | None = None
    """Episodes per evaluation, run in parallel on separate envs with fixed seeds. Default: 50
    on envs that report success (the success rates of the papers are over 50 episodes), else
    10; the run's number with --resume."""
    checkpoint_every: Count = 100_000
    """Env steps between checkpoints (one is always written at the end). Training envs restart
    at every checkpoint, interrupted or not, so that a resumed run is exact."""
    progress: bool = True
    """Show a progress bar."""
    tensorboard: bool = False
    """Also write TensorBoard event files to RUN_DIR/tensorboard."""
    wandb_project: str | None = None
    """Also log to this Weights & Biases project."""
    init: Path | None = None
    """A `gprl pretrain` run whose policy this run starts from and fine-tunes (for the
    algorithms that can); its env, observation size and action size must match this run's. An
    evaluation before the first update records the starting return. Its checkpoint is copied
    into RUN_DIR/initial_policy, so resuming or evaluating never needs it again. A policy of
    action chunks acts one decision per executed chunk (methods that fine-tune chunks only)."""
    dataset: str | None = None
    """Minari dataset id (e.g. mujoco/hopper/medium-v0) whose transitions pre-fill the replay
    buffer of an off-policy algorithm, kept there for the whole run; its --ALGO.offline-updates
    gradient steps on it alone come before the first env step. It must record --env (the
    default env) with the env's shapes and action bounds. A run that executes action chunks
    stores its windows of steps as decisions (gprl.decision_data.decision_transitions). With
    --sparse-reward or --end-on-success (or an env that ends episodes on success, as OGBench's
    single tasks) its rewards and terminal steps are relabelled from its recorded successes."""
    sparse_reward: bool = False
    """Replace the env's reward by 1 on steps where it reports success and 0 elsewhere, in
    training and evaluation (envs that report success only, e.g. metaworld: tasks)."""
    end_on_success: bool = False
    """End an episode (as terminal) at its first successful step, in training and evaluation
    (envs that report success only). With --sparse-reward an episode's return is then 1 if it
    succeeded, else 0."""


def complete_run(run: RunConfig) -> RunConfig:
    """Fill in the defaults that depend on other fields, in place, and reject nonsense values.
    eval_episodes depends on the env and is left to :func:`train`."""
    run.env = DEFAULT_ENV if run.env is None else run.env
    run.total_steps = DEFAULT_TOTAL_STEPS if run.total_steps is None else run.total_steps
    if run.eval_every is None:
        run.eval_every = max(run.total_steps // EVALUATIONS_PER_RUN, 1)
    for name in ("total_steps", "num_envs", "eval_episodes", "checkpoint_every"):
        if getattr(run, name) is not None and getattr(run, name) < 1:
            raise ValueError(
                f"--{name.replace('_', '-')} must be at least 1, got {getattr(run, name)}"
            )
    if run.env_workers is not None and run.env_workers < 0:
        raise ValueError(f"--env-workers must be 0 (none) or more, got {run.env_workers}")
    if not 0 <= run.seed < MAX_SEED:
        raise ValueError(f"--seed must be in [0, {MAX_SEED}), got {run.seed}")
    if run.eval_every < 0:
        raise ValueError(
            f"--eval-every must be 0 (only at the end) or positive, got {run.eval_every}"
        )
    return run


def registered(algo_name: str):
    if algo_name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm '{algo_name}'; choose one of {sorted(ALGORITHMS)}")
    return ALGORITHMS[algo_name]


# ----- starting a run -------------------------------------------------------------------------


def train(
    algo_name: str,
    run: RunConfig,
    algo_config=None,
    on_iteration=None,
    networks=None,
) -> Path:
    """Train `algo_name` and return the run directory.

    run.env may also be a gymnasium.Env, a function making one, or a JAX task object (see
    gprl.envs); the run directory then records its name. `networks` (gprl.networks.
    CustomNetworks) replaces the algorithm's default networks. on_iteration(iteration, row) is
    called after each logged iteration (tests interrupt a run by raising from it)."""
    entry = registered(algo_name)
    configure_jax()
    run, source = _with_env_name(dataclasses.replace(run))
    algo_config = entry.default_config() if algo_config is None else algo_config
    if run.resume is not None:
        run, algo_config = _resolve_resume(algo_name, run, networks)
        source = _reopenable_source(run) if source is None else source
    demos = _load_dataset(algo_name, run)
    complete_run(run)
    source = run.env if source is None else source
    check_sinks(run.tensorboard, run.wandb_project)
    spec = probe_spec(source, run.env_backend)
    if run.eval_episodes is None:
        run.eval_episodes = default_eval_episodes(spec)
    if demos is not None:
        check_records_env(demos, run.env)
        check_fits_env(demos, spec)
    start = run_start(algo_name, entry.algorithm, algo_config, run, spec, run.resume)
    discount = entry.algorithm.step_discount(algo_config)
    offline = None if demos is None else decision_transitions(demos, start.chunking, discount)
    algo = build_algorithm(algo_name, start, run, networks)
    envs = open_environments(
        source,
        run.env_backend,
        run.num_envs,
        run.eval_episodes,
        run.seed,
        eval_seed(run.seed),
        algo.start_state_group,
        env_workers=run.env_workers,
        **success_options(run),
        **start.env_options(),
    )
    # The run records the task's spec; a chunked run's algorithm sees the chunked one.
    envs = envs._replace(spec=spec) if start.chunking else envs
    try:
        job = TrainJob(algo_name, algo, algo_config, run, envs, demos, networks, offline)
        return job.run(on_iteration)
    finally:
        envs.close()


def success_options(run: RunConfig) -> dict[str, bool]:
    """The make_env options every env of the run is opened with (training, evaluation, `gprl
    eval`, video)."""
    return {"sparse_reward": run.sparse_reward, "end_on_success": run.end_on_success}


def _with_env_name(run: RunConfig):
    """(run with env as a name, the env object when one was given instead of an id)."""
    if run.env is None or isinstance(run.env, str):
        return run, None
    source = run.env
    run.env = env_source_name(source)
    return run, source


def _reopenable_source(run: RunConfig):
    if can_reopen(run.env):
        return None
    raise EnvError(
        f"{run.resume} was trained on a Python env object ({run.env}); resume it from Python "
        "with gprl.train(..., env=<the same env>, resume=...)"
    )


def _resolve_resume(algo_name: str, run: RunConfig, networks):
    """Load the saved configs of --resume, rejecting a different algorithm, env or budget."""
    saved = saved_configs(run.resume)
    if saved.get("algo") != algo_name:
        raise CheckpointError(f"{run.resume} holds a '{saved.get('algo')}' run, not '{algo_name}'")
    saved_run = from_jsonable(RunConfig, saved["run"])
    for name in ("env", "dataset"):
        given, kept = getattr(run, name), getattr(saved_run, name)
        if given is not None and given != kept:
            raise CheckpointError(f"{run.resume} was trained with --{name} {kept}, not {given}")
    if run.total_steps is not None and run.total_steps != saved_run.total_steps:
        raise CheckpointError(
            f"{run.resume} has a budget of {saved_run.total_steps} env steps; the learning-rate "
            "and stage schedules depend on it, so --total-steps cannot change on resume"
        )
    _check_networks(saved, networks, run.resume)
    saved_run = dataclasses.replace(
        saved_run,
        resume=run.resume,
        out=run.resume,
        progress=run.progress,
        overwrite=False,
        env_workers=run.env_workers,
    )
    return saved_run, from_jsonable(ALGORITHMS[algo_name].config, saved["algo_config"])


def _check_networks(saved: dict, networks, run_dir) -> None:
    recorded = saved.get("custom_networks")
    given = None if networks is None else networks.describe()
    if recorded != given:
        raise CheckpointError(
            f"{run_dir} was trained with custom networks {recorded or 'none'}, and this call "
            f"gives {given or 'none'}: pass the same networks=..."
        )


def _load_dataset(algo_name: str, run: RunConfig):
    """The demonstrations of --dataset (the env defaults to the one they record) as the run's
    envs would have recorded them (gprl.decision_data.as_run_sees), or None."""
    if run.dataset is None:
        return None
    if not issubclass(ALGORITHMS[algo_name].algorithm, OffPolicyAlgorithm):
        raise ValueError(
            f"--dataset fills a replay buffer, and '{algo_name}' is on-policy (it has none); "
            "pretrain a policy on it with `gprl pretrain` instead"
        )
    demos = load_demonstrations(run.dataset)
    if run.env is None and demos.env_id is None:
        raise DatasetError(f"dataset {run.dataset} records no environment; pass --env ID")
    run.env = demos.env_id if run.env is None else run.env
    return as_run_sees(demos, run.env, run.sparse_reward, run.end_on_success)


def build_algorithm(algo_name, start: RunStart, run: RunConfig, networks=None):
    starting_point = {} if start.pretrained is None else {"pretrained": start.pretrained}
    if networks is not None:
        starting_point["networks"] = networks
    algo_cls = ALGORITHMS[algo_name].algorithm
    budget = start.decisions(run.total_steps)
    return algo_cls(start.algo_config, start.spec, run.num_envs, budget, **starting_point)


# ----- the job --------------------------------------------------------------------------------


class TrainJob:
    """An algorithm, its collection loop and its envs, as a job of the run loop: an iteration is
    the collection loop's (an update on a rollout, a stage boundary, or offline updates); the
    clock is env steps plus offline gradient steps. `offline`: the transitions of `demos` that
    pre-fill the replay buffer (gprl.decision_data.decision_transitions)."""

    clock_name = "env_steps"

    def __init__(self, algo_name, algo, algo_config, run, envs, demos, networks, offline=None):
        self.algo_name, self.algo, self.run_config, self.envs = algo_name, algo, run, envs
        self.loop = make_loop(
            algo,
            lambda act: make_collector(envs, act),
            offline,
        )
        self.evaluator = make_evaluator(envs, algo.act_deterministic, eval_seed(run.seed))
        self.record = {
            "algo": algo_name,
            "run": to_jsonable(run),
            "algo_config": to_jsonable(algo_config),
            "env_spec": envs.spec.to_record(),
            "gprl_version": __version__,
        }
        if networks is not None:
            self.record["custom_networks"] = networks.describe()
        self.identity = identity(algo_name, run.env, envs.spec, demos)
        init_key, key = jax.random.split(jax.random.PRNGKey(run.seed))
        fresh = algo.init(init_key)
        fresh = fresh if offline is None else algo.with_offline_data(fresh, offline)
        self.state = {"algo": fresh, "key": key}
        self.pretrained = run.init is not None

    # ----- the run loop's interface -----------------------------------------------------------

    def clock(self, progress: dict) -> int:
        return progress["env_steps"] + progress["offline_updates"]

    def finished(self, progress: dict) -> bool:
        return progress["iteration"] >= self.algo.num_iterations

    def iterate(self, progress: dict) -> Step:
        before_boundary = None
        if self.loop.at_stage_boundary(self.state["algo"]):
            before_boundary = self.evaluate()
        result = self.loop.iterate(self.state["algo"], self.state["key"])
        self.state = {"algo": result.state, "key": result.key}
        progress["iteration"] = int(result.state["iteration"])
        progress["env_steps"] += result.counted_steps
        progress["uncounted_env_steps"] += result.env_steps - result.counted_steps
        progress["offline_updates"] += result.offline_updates
        row = {
            "iteration": progress["iteration"],
            "env_steps": progress["env_steps"],
            "train_return": result.episodes.mean_return,
            "train_length": result.episodes.mean_length,
            "episodes": result.episodes.count,
        }
        if result.ended_stage:
            row["refit"] = 1
        if before_boundary is not None:
            row["eval_return_before_refit"] = before_boundary["eval_return"]
        for counter in ("uncounted_env_steps", "offline_updates"):
            if progress[counter]:
                row[counter] = progress[counter]
        offline_done = result.offline_updates > 0 and not self.loop.offline_pending(result.state)
        return Step(
            row,
            scalars(result.metrics),
            result.env_steps,
            evaluate=offline_done or before_boundary is not None,
            checkpoint=offline_done,
        )

    def evaluate(self) -> dict:
        evaluation = self.evaluator.evaluate(self.algo.acting_params(self.state["algo"]))
        self.state["algo"] = self.algo.on_evaluation(self.state["algo"], evaluation)
        return evaluation

    def save(self, progress: dict) -> None:
        meta = self.identity | {
            "progress": progress,
            "backend": self.envs.backend,
            "env_state": self.envs.checkpoint_state(),
            "gprl_version": __version__,
        }
        state = self.state | self.loop.checkpoint_state()
        save_checkpoint(self.run_dir.path, state, meta, self.record)

    def after_checkpoint(self, progress: dict) -> None:
        self.loop.reset(boundary_seed(self.run_config.seed, progress["iteration"]))

    # ----- setting up and running ---------------------------------------------------------------

    def run(self, on_iteration) -> Path:
        run = self.run_config
        resuming = run.resume is not None and has_checkpoint(run.resume)
        if run.resume is not None:
            self.run_dir = RunDirectory(Path(run.resume))
        else:
            out = run.out or default_run_dir(self.algo_name, run.env, run.seed)
            self.run_dir = RunDirectory.create(out, run.overwrite)
        with self.run_dir:
            progress = self._restore() if resuming else self._start()
            logger = MetricsLogger(
                self.run_dir.path,
                progress["iteration"] if resuming else None,
                run.tensorboard,
                run.wandb_project,
                self.record,
            )
            if self.pretrained and not resuming:
                logger.log({"iteration": 0, "env_steps": 0} | self.evaluate())
            iteration = progress["iteration"]
            self.loop.reset(run.seed if iteration == 0 else boundary_seed(run.seed, iteration))
            schedule = Schedule(
                run.total_steps,
                run.eval_every,
                run.checkpoint_every,
                f"{self.algo_name} {run.env}",
                run.progress,
            )
            run_job(self, schedule, progress, self.run_dir, logger, on_iteration)
        title = f"{self.algo_name} on {run.env}"
        plot_learning_curve(logger.rows, self.run_dir.path / CURVE_PNG, title)
        return self.run_dir.path

    def _start(self) -> dict:
        run_dir = self.run_dir.path
        for stale in (CURVE_PNG, METRICS_CSV):
            (run_dir / stale).unlink(missing_ok=True)
        (run_dir / CONFIG_JSON).write_text(json.dumps(self.record, indent=2))
        if self.pretrained:
            keep_initial_policy(Path(self.run_config.init), run_dir)
        counters = {"env_steps": 0, "uncounted_env_steps": 0, "offline_updates": 0}
        return start_progress(counters, 0, self.run_config.checkpoint_every)

    def _restore(self) -> dict:
        run_dir = self.run_dir.path
        template = self.state | self.loop.checkpoint_state()
        try:
            saved, meta = load_checkpoint(run_dir, template, self.identity)
        except CheckpointError as e:
            if "dataset_sha256" in str(e):
                raise CheckpointError(
                    f"dataset {self.run_config.dataset} changed since {run_dir} started"
                ) from None
            raise
        if meta.get("backend") != self.envs.backend:
            raise CheckpointError(
                f"{run_dir} was trained on the {meta.get('backend')} env backend and would "
                f"resume on {self.envs.backend}, which cannot continue its episodes exactly"
            )
        self.loop.restore(saved)
        self.state = {"algo": saved["algo"], "key": saved["key"]}
        self.envs.restore_state(meta.get("env_state", {}))
        return {"offline_updates": 0} | meta["progress"]


# ----- loading a finished run -------------------------------------------------------------------


def load_run(run_dir: Path, networks=None):
    """Rebuild the algorithm of a run directory and restore its checkpoint, opening no env.

    Returns (algo, algo_state, run_config). Runs written before the env spec was recorded in
    config.json open one env to learn it."""
    saved = saved_configs(run_dir)
    if "algo" not in saved and "pretrain" in saved:
        raise CheckpointError(f"{run_dir} is a pretrain run; load it with gprl.load")
    algo_name = saved.get("algo")
    if algo_name not in ALGORITHMS:
        raise CheckpointError(f"{run_dir} holds an unknown algorithm '{algo_name}'")
    _check_networks(saved, networks, run_dir)
    run = from_jsonable(RunConfig, saved["run"])
    if "env_spec" in saved:
        spec = EnvSpec.from_record(saved["env_spec"])
    else:
        spec = probe_spec(run.env, run.env_backend)
    entry = ALGORITHMS[algo_name]
    algo_config = from_jsonable(entry.config, saved["algo_config"])
    start = run_start(algo_name, entry.algorithm, algo_config, run, spec, run_dir)
    algo = build_algorithm(algo_name, start, run, networks)
    template = {"algo": algo.init(jax.random.PRNGKey(0)), "key": jax.random.PRNGKey(0)}
    state, _ = load_checkpoint(run_dir, template, identity(algo_name, run.env, spec))
    return algo, state["algo"], run
