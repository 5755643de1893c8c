"""The training loop shared by every algorithm: collect, update, evaluate, log, save. The
algorithm's base class picks the loop (on-policy or off-policy, see gprl.loops).

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

import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import signal
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

import jax
import numpy as np

from gprl import __version__
from gprl.algos import ALGORITHMS
from gprl.algos.base import OffPolicyAlgorithm
from gprl.backends import make_collector, make_evaluator, open_environments
from gprl.checkpoint import (
    CHECKPOINT,
    CONFIG_JSON,
    CheckpointError,
    load_checkpoint,
    read_config,
    save_checkpoint,
)
from gprl.configs import from_jsonable, to_jsonable
from gprl.datasets import (
    DatasetError,
    check_fits_env,
    check_records_env,
    load_demonstrations,
)
from gprl.logger import CURVE_PNG, MetricsLogger, check_sinks, plot_learning_curve
from gprl.loops import make_loop
from gprl.signals import StopSignals, TrainingInterrupted

DEFAULT_ENV = "gprl/TwoGoalPoint-v0"
DEFAULT_TOTAL_STEPS = 300_000
# An evaluation is 10 episodes of up to 1000 steps (~0.5 s on a DM Control task here): at 20
# per run they took 30% of a 300k-step hopper-stand run (benchmarks/throughput.py, profile).
EVALUATIONS_PER_RUN = 10
INITIAL_POLICY_DIR = "initial_policy"
"""The run directory's copy of its --init run (checkpoint and config)."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a NaN loss); the last checkpoint is left intact."""


@dataclass
class RunConfig:
    env: str | None = None
    """Gymnasium id (Hopper-v5, dm_control/hopper-stand-v0, gprl/BimodalBandit-v0, ...).
    Default: gprl/TwoGoalPoint-v0, or the run's env with --resume."""
    total_steps: int | None = None
    """Env-step budget. Default: 300000, or the run's budget with --resume."""
    seed: int = 0
    """Seeds parameters, sampling and the training envs (env i gets seed + i)."""
    num_envs: int = 16
    """Training envs stepped together (host vector env, or vmapped on the device)."""
    env_backend: Literal["auto", "gymnasium", "envpool", "jax"] = "auto"
    """Where the envs run. auto: envpool for the tasks it has (Gymnasium MuJoCo, DM Control),
    JAX for playground: ids, else Gymnasium. jax: JAX envs stepped inside jit (playground:NAME,
    and gprl's diagnostic tasks)."""
    out: Path | None = None
    """Run directory. Default: runs/ALGO-ENV-sSEED-TIMESTAMP."""
    resume: Path | None = None
    """Continue the run in this directory from its checkpoint (its saved config is used)."""
    overwrite: bool = False
    """Replace an existing run directory given by --out."""
    eval_every: int | None = None
    """Env steps between deterministic evaluations (0: only the one at the end). Default:
    total_steps / 10."""
    eval_episodes: int = 10
    """Episodes per evaluation, run in parallel on separate envs with fixed seeds."""
    checkpoint_every: int = 100_000
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
    into RUN_DIR/initial_policy, so resuming or evaluating never needs it again."""
    dataset: str | None = None
    """Minari dataset id (e.g. mujoco/hopper/medium-v0) whose transitions pre-fill the replay
    buffer of an off-policy algorithm, kept there for the whole run; its --ALGO.offline-updates
    gradient steps on it alone come before the first env step. It must record --env (the
    default env) with the env's shapes and action bounds."""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


# Env i of a vector env gets seed + i, and envpool takes int32 seeds: keep room for the envs.
MAX_SEED = 2**31 - 2**16


def boundary_seed(seed: int, iteration: int) -> int:
    return int(np.random.SeedSequence([seed, iteration]).generate_state(1)[0]) % MAX_SEED


def _eval_seed(seed: int) -> int:
    return boundary_seed(seed, 2**31 - 1)


def complete_run(run: RunConfig) -> RunConfig:
    """Fill in the defaults that depend on other fields, in place, and reject nonsense values."""
    run.env = DEFAULT_ENV if run.env is None else run.env
    run.total_steps = DEFAULT_TOTAL_STEPS if run.total_steps is None else run.total_steps
    if run.eval_every is None:
        run.eval_every = max(run.total_steps // EVALUATIONS_PER_RUN, 1)
    _validate(run)
    return run


def _validate(run: RunConfig) -> None:
    for name in ("total_steps", "num_envs", "eval_episodes", "checkpoint_every"):
        if getattr(run, name) < 1:
            raise ValueError(
                f"--{name.replace('_', '-')} must be at least 1, got {getattr(run, name)}"
            )
    if not 0 <= run.seed < MAX_SEED:
        raise ValueError(f"--seed must be in [0, {MAX_SEED}), got {run.seed}")
    if run.eval_every < 0:
        raise ValueError(
            f"--eval-every must be 0 (only at the end) or positive, got {run.eval_every}"
        )


def saved_configs(run_dir: Path) -> dict:
    """The configs of a run: from its checkpoint, or from its run directory when it was stopped
    before the first checkpoint."""
    try:
        return read_config(run_dir)
    except CheckpointError:
        path = Path(run_dir) / CONFIG_JSON
        if not path.is_file():
            raise
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"unreadable run config {path}: {e}") from None


def _resolve_resume(algo_name: str, run: RunConfig):
    """Load the saved configs of --resume, rejecting a different algorithm, env or budget."""
    saved = saved_configs(run.resume)
    if saved.get("algo") != algo_name:
        raise CheckpointError(f"{run.resume} holds a '{saved.get('algo')}' run, not '{algo_name}'")
    saved_run = from_jsonable(RunConfig, saved["run"])
    if run.env is not None and run.env != saved_run.env:
        raise CheckpointError(f"{run.resume} was trained on {saved_run.env}, not {run.env}")
    if run.dataset is not None and run.dataset != saved_run.dataset:
        raise CheckpointError(
            f"{run.resume} was trained with --dataset {saved_run.dataset}, not {run.dataset}"
        )
    if run.total_steps is not None and run.total_steps != saved_run.total_steps:
        raise CheckpointError(
            f"{run.resume} has a budget of {saved_run.total_steps} env steps; the learning-rate "
            "and stage schedules depend on it, so --total-steps cannot change on resume"
        )
    config_cls = ALGORITHMS[algo_name].config
    saved_run = dataclasses.replace(
        saved_run, resume=run.resume, out=run.resume, progress=run.progress, overwrite=False
    )
    return saved_run, from_jsonable(config_cls, saved["algo_config"])


def prepare_run_dir(algo_name: str, run: RunConfig) -> Path:
    if run.resume is not None:
        return Path(run.resume)
    if run.out is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run.out = Path("runs") / f"{algo_name}-{_slug(run.env)}-s{run.seed}-{stamp}"
    run_dir = Path(run.out)
    if run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(f"--out {run_dir} is an existing file, not a run directory")
    if run_dir.exists() and any(run_dir.iterdir()):
        if not run.overwrite:
            raise FileExistsError(
                f"run directory {run_dir} already exists; pass --resume {run_dir} to continue "
                "it or --overwrite to replace it"
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _check_finite(metrics: dict, iteration: int, env_steps: int, run_dir: Path) -> None:
    for key, value in metrics.items():
        if isinstance(value, float | np.floating) and "loss" in key and not math.isfinite(value):
            raise TrainingError(
                f"{key} is {value} at iteration {iteration} (env step {env_steps}); stopped "
                f"without saving, the last checkpoint in {run_dir} is intact"
            )


def _scalars(metrics: dict) -> dict:
    out = {}
    for key, value in metrics.items():
        value = np.asarray(value)
        if value.ndim == 0:
            out[key] = value.item()
    return out


def configure_jax() -> None:
    """Synchronous CPU dispatch and a persistent compilation cache.

    The host loop makes one small jitted call per env step; dispatching it on the calling thread
    instead of handing it to a worker thread cut a 16-env acting call from ~110 to ~67 us here.
    The cache reuses compiled updates across processes (first compiles take seconds on CPU):
    GPRL_COMPILATION_CACHE=0 disables it; GPRL_COMPILATION_CACHE_DIR moves it."""
    jax.config.update("jax_cpu_enable_async_dispatch", False)
    if os.environ.get("GPRL_COMPILATION_CACHE", "1") == "0":
        return
    default = Path.home() / ".cache" / "gprl" / "jax"
    jax.config.update(
        "jax_compilation_cache_dir", os.environ.get("GPRL_COMPILATION_CACHE_DIR", str(default))
    )
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def _identity(algo_name: str, env_id: str, spec, demos=None) -> dict:
    """Checkpoint fields that must match the run that loads it."""
    identity = {
        "algo": algo_name,
        "env_id": env_id,
        "obs_dim": spec.obs_dim,
        "action_dim": spec.action_dim,
    }
    if demos is not None:
        identity["dataset_sha256"] = demos.sha256
    return identity


def train(algo_name: str, run: RunConfig, algo_config, on_iteration=None) -> Path:
    """Train `algo_name` and return the run directory.

    on_iteration(iteration, row) is called after each logged iteration (tests use it to
    simulate an interruption by raising).
    """
    if algo_name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm '{algo_name}'; choose one of {sorted(ALGORITHMS)}")
    configure_jax()
    run = dataclasses.replace(run)
    if run.resume is not None:
        run, algo_config = _resolve_resume(algo_name, run)
    demos = _load_dataset(algo_name, run)
    complete_run(run)
    if demos is not None:
        check_records_env(demos, run.env)
    check_sinks(run.tensorboard, run.wandb_project)

    envs = open_environments(
        run.env,
        run.env_backend,
        run.num_envs,
        run.eval_episodes,
        run.seed,
        _eval_seed(run.seed),
        ALGORITHMS[algo_name].algorithm.start_state_group(algo_config),
    )
    try:
        pretrained = load_initial_policy(algo_name, run.init, run.env, envs.spec, run.resume)
        if demos is not None:
            check_fits_env(demos, envs.spec)
        return _train(algo_name, run, algo_config, envs, pretrained, demos, on_iteration)
    finally:
        envs.close()


def _load_dataset(algo_name: str, run: RunConfig):
    """The demonstrations of --dataset (the env defaults to the one they record), or None."""
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
    return demos


def keep_initial_policy(init: Path, run_dir: Path) -> None:
    """Copy the --init run's checkpoint into the run directory, so that resuming and evaluating
    the run never need the pretrain run again."""
    kept = run_dir / INITIAL_POLICY_DIR
    if (kept / CHECKPOINT).is_dir():
        return
    shutil.copytree(init / CHECKPOINT, kept / CHECKPOINT, dirs_exist_ok=True)
    if (init / CONFIG_JSON).is_file():
        shutil.copy2(init / CONFIG_JSON, kept / CONFIG_JSON)


def load_initial_policy(
    algo_name: str, init: Path | None, env_id: str, spec, run_dir: Path | None = None
):
    """The pretrained policy (gprl.pretrain.Pretrained) named by --init, checked against the
    task, or None; refuses --init for algorithms that cannot use it and its absence for those
    that need it. A run directory's own copy of it (RUN_DIR/initial_policy) comes first."""
    use = ALGORITHMS[algo_name].algorithm.pretrained_policy
    if init is None:
        if use == "required":
            raise ValueError(
                f"{algo_name} fine-tunes a pretrained policy: pass --init RUN_DIR, a "
                "`gprl pretrain` run on this task"
            )
        return None
    if use == "unused":
        raise ValueError(f"{algo_name} cannot start from a pretrained policy (--init {init})")
    from gprl.pretrain import load_pretrained  # the pretrain module builds on this one

    kept = None if run_dir is None else Path(run_dir) / INITIAL_POLICY_DIR
    source = kept if kept is not None and (kept / CHECKPOINT).is_dir() else Path(init)
    try:
        pretrained = load_pretrained(source)
    except CheckpointError as e:
        raise CheckpointError(f"--init: {e}") from None
    if pretrained.env_id != env_id:
        raise CheckpointError(f"--init {init} was pretrained on {pretrained.env_id}, not {env_id}")
    shapes = (pretrained.obs_dim, pretrained.action_dim)
    if shapes != (spec.obs_dim, spec.action_dim):
        raise CheckpointError(
            f"--init {init} has observation and action sizes {shapes}, the env has "
            f"{(spec.obs_dim, spec.action_dim)}"
        )
    return pretrained


def build_algorithm(algo_name: str, algo_config, spec, run: "RunConfig", pretrained):
    algo_cls = ALGORITHMS[algo_name].algorithm
    starting_point = {} if pretrained is None else {"pretrained": pretrained}
    return algo_cls(algo_config, spec, run.num_envs, run.total_steps, **starting_point)


def _train(algo_name, run: RunConfig, algo_config, envs, pretrained, demos, on_iteration):
    algo = build_algorithm(algo_name, algo_config, envs.spec, run, pretrained)
    offline_data = None if demos is None else demos.transitions()
    loop = make_loop(algo, lambda act: make_collector(envs, act), run.num_envs, offline_data)
    run_dir = prepare_run_dir(algo_name, run)
    config_record = {
        "algo": algo_name,
        "run": to_jsonable(run),
        "algo_config": to_jsonable(algo_config),
        "gprl_version": __version__,
    }
    identity = _identity(algo_name, run.env, envs.spec, demos)
    init_key, key = jax.random.split(jax.random.PRNGKey(run.seed))
    state = {"algo": algo.init(init_key), "key": key}
    progress = {
        "iteration": 0,
        "env_steps": 0,
        "uncounted_env_steps": 0,
        "offline_updates": 0,
        "wall_time": 0.0,
        "next_eval": 0,
        "next_checkpoint": run.checkpoint_every,
    }
    resuming = run.resume is not None and has_checkpoint(run_dir)
    if resuming:
        try:
            saved, meta = load_checkpoint(run_dir, state | loop.checkpoint_state(), identity)
        except CheckpointError as e:
            if "dataset_sha256" in str(e):
                raise CheckpointError(
                    f"dataset {run.dataset} changed since {run_dir} started"
                ) from None
            raise
        loop.restore(saved)
        state = {"algo": saved["algo"], "key": saved["key"]}
        progress = {"offline_updates": 0} | meta["progress"]
        if meta.get("backend") != envs.backend:
            raise CheckpointError(
                f"{run_dir} was trained on the {meta.get('backend')} env backend and would "
                f"resume on {envs.backend}, which cannot continue its episodes exactly"
            )
        envs.restore_state(meta.get("env_state", {}))
    else:
        for stale in (CURVE_PNG, "metrics.csv"):
            (run_dir / stale).unlink(missing_ok=True)
        (run_dir / CONFIG_JSON).write_text(json.dumps(config_record, indent=2))
        if pretrained is not None:
            keep_initial_policy(Path(run.init), run_dir)

    logger = MetricsLogger(
        run_dir,
        progress["iteration"] if resuming else None,
        run.tensorboard,
        run.wandb_project,
        config_record,
    )
    evaluator = make_evaluator(envs, algo.act_deterministic, _eval_seed(run.seed))
    if pretrained is not None and not resuming:
        starting = evaluator.evaluate(algo.acting_params(state["algo"]))
        state["algo"] = algo.observe_evaluation(state["algo"], starting["eval_return"])
        logger.log({"iteration": 0, "env_steps": 0} | starting)
    iteration = progress["iteration"]
    loop.reset(run.seed if iteration == 0 else boundary_seed(run.seed, iteration))

    def save():
        meta = identity | {
            "progress": progress,
            "backend": envs.backend,
            "env_state": envs.checkpoint_state(),
            "gprl_version": __version__,
        }
        save_checkpoint(run_dir, state | loop.checkpoint_state(), meta, config_record)

    bar = ProgressBar(run.progress, run.total_steps, f"{algo_name} {run.env}")
    started = time.perf_counter() - progress["wall_time"]
    last_eval = None
    with contextlib.ExitStack() as cleanup:
        stop = cleanup.enter_context(StopSignals())
        cleanup.callback(logger.close)
        cleanup.callback(bar.close)
        while progress["iteration"] < algo.num_iterations:
            iteration_start = time.perf_counter()
            # A refit changes the policy without a gradient step: evaluate right before and
            # right after it, so that what it keeps of the policy shows in the metrics.
            before_refit = None
            if loop.refit_pending(state["algo"]):
                before_refit = evaluator.evaluate(algo.acting_params(state["algo"]))
                state["algo"] = algo.observe_evaluation(state["algo"], before_refit["eval_return"])
            try:
                result = loop.iterate(state["algo"], state["key"])
            except FloatingPointError as e:
                raise TrainingError(
                    f"{e} at iteration {progress['iteration'] + 1}; stopped without saving, the "
                    f"last checkpoint in {run_dir} is intact"
                ) from None
            state = {"algo": result.state, "key": result.key}
            metrics = _scalars(result.metrics)
            progress["iteration"] = int(result.state["iteration"])
            progress["env_steps"] += result.counted_steps
            progress["uncounted_env_steps"] += result.env_steps - result.counted_steps
            progress["offline_updates"] += result.offline_updates
            _check_finite(metrics, progress["iteration"], progress["env_steps"], run_dir)
            done = progress["iteration"] == algo.num_iterations
            # Evaluations and checkpoints fall due on one clock: env steps and offline updates.
            clock = progress["env_steps"] + progress["offline_updates"]
            offline_done = result.offline_updates > 0 and not loop.offline_pending(result.state)
            row = {
                "iteration": progress["iteration"],
                "env_steps": progress["env_steps"],
                "train_return": result.episodes.mean_return,
                "train_length": result.episodes.mean_length,
                "episodes": result.episodes.count,
            }
            if result.refit:
                row["refit"] = 1
            if before_refit is not None:
                row["eval_return_before_refit"] = before_refit["eval_return"]
            if progress["uncounted_env_steps"]:
                row["uncounted_env_steps"] = progress["uncounted_env_steps"]
            if progress["offline_updates"]:
                row["offline_updates"] = progress["offline_updates"]
            due = run.eval_every > 0 and clock >= progress["next_eval"]
            if done or due or offline_done or before_refit is not None:
                evaluation = evaluator.evaluate(algo.acting_params(state["algo"]))
                state["algo"] = algo.observe_evaluation(state["algo"], evaluation["eval_return"])
                row |= evaluation
                last_eval = evaluation["eval_return"]
                while progress["next_eval"] <= clock:
                    progress["next_eval"] += max(run.eval_every, 1)
            elapsed = time.perf_counter()
            progress["wall_time"] = elapsed - started
            row |= {
                "wall_time": progress["wall_time"],
                "steps_per_second": result.env_steps / max(elapsed - iteration_start, 1e-9),
            }
            row |= metrics
            stop.raise_if_aborted()
            logger.log(row)
            if done or offline_done or clock >= progress["next_checkpoint"]:
                while progress["next_checkpoint"] <= clock:
                    progress["next_checkpoint"] += run.checkpoint_every
                save()
                loop.reset(boundary_seed(run.seed, progress["iteration"]))
            elif stop.received is not None:
                save()
            if stop.received is not None and not done:
                name = signal.Signals(stop.received).name
                raise TrainingInterrupted(
                    f"{name}: saved a checkpoint at {progress['env_steps']} env steps in "
                    f"{run_dir}; continue with --resume {run_dir}",
                    stop.received,
                )
            bar.update(progress["env_steps"], last_eval)
            if on_iteration is not None:
                on_iteration(progress["iteration"], row)
    plot_learning_curve(logger.rows, run_dir / CURVE_PNG, f"{algo_name} on {run.env}")
    return run_dir


def has_checkpoint(run_dir: Path) -> bool:
    try:
        read_config(run_dir)
    except CheckpointError:
        return False
    return True


class ProgressBar:
    def __init__(self, enabled: bool, total: int, description: str):
        self.progress = None
        if enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("eval {task.fields[eval]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            )
            self.task = self.progress.add_task(description, total=total, eval="-")
            self.progress.start()

    def update(self, steps: int, eval_return: float | None):
        if self.progress is not None:
            shown = "-" if eval_return is None else f"{eval_return:.3g}"
            self.progress.update(self.task, completed=steps, eval=shown)

    def close(self):
        if self.progress is not None:
            self.progress.stop()


def load_run(run_dir: Path):
    """Rebuild the algorithm of a run directory and restore its checkpoint.

    Returns (algo, algo_state, run_config). The envs are not kept open: the returned spec is
    enough to act, and `gprl eval` opens its own."""
    saved = read_config(run_dir)
    algo_name = saved.get("algo")
    if algo_name not in ALGORITHMS:
        raise CheckpointError(f"{run_dir} holds an unknown algorithm '{algo_name}'")
    config_cls = ALGORITHMS[algo_name].config
    run = from_jsonable(RunConfig, saved["run"])
    envs = open_environments(run.env, run.env_backend, 1, 1, run.seed, run.seed)
    envs.close()
    pretrained = load_initial_policy(algo_name, run.init, run.env, envs.spec, run_dir)
    algo_config = from_jsonable(config_cls, saved["algo_config"])
    algo = build_algorithm(algo_name, algo_config, envs.spec, run, pretrained)
    template = {"algo": algo.init(jax.random.PRNGKey(0)), "key": jax.random.PRNGKey(0)}
    state, _ = load_checkpoint(run_dir, template, _identity(algo_name, run.env, envs.spec))
    return algo, state["algo"], run
