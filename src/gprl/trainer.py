"""The training loop shared by every on-policy algorithm: collect, update, evaluate, log, save.

Exact resumption: checkpoints are taken at iteration boundaries, and at every such boundary the
training envs restart from seeds derived from (seed, iteration), whether or not the run is
interrupted there. A resumed run therefore replays the uninterrupted one step for step.
Episodes cut at a boundary are bootstrapped like time-limit truncations and are not logged.
"""

import dataclasses
import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import jax
import numpy as np

from gprl import __version__
from gprl.algos import ALGORITHMS
from gprl.checkpoint import CheckpointError, load_checkpoint, read_config, save_checkpoint
from gprl.configs import from_jsonable, to_jsonable
from gprl.envs import make_env
from gprl.evaluation import evaluate
from gprl.logger import CURVE_PNG, MetricsLogger, plot_learning_curve

DEFAULT_ENV = "gprl/TwoGoalPoint-v0"
DEFAULT_TOTAL_STEPS = 300_000


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
    """Training envs stepped in lock-step on the host."""
    out: Path | None = None
    """Run directory. Default: runs/ALGO-ENV-sSEED-TIMESTAMP."""
    resume: Path | None = None
    """Continue the run in this directory from its checkpoint (its saved config is used)."""
    overwrite: bool = False
    """Replace an existing run directory given by --out."""
    eval_every: int = 25_000
    """Env steps between deterministic evaluations (0 disables; one always runs at the end)."""
    eval_episodes: int = 10
    """Episodes per evaluation, run in parallel on separate envs with fixed seeds."""
    checkpoint_every: int = 100_000
    """Env steps between checkpoints (one is always written at the end)."""
    progress: bool = True
    """Show a progress bar."""
    tensorboard: bool = False
    """Also write TensorBoard event files to RUN_DIR/tensorboard."""
    wandb_project: str | None = None
    """Also log to this Weights & Biases project."""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def boundary_seed(seed: int, iteration: int) -> int:
    return int(np.random.SeedSequence([seed, iteration]).generate_state(1)[0])


def _eval_seed(seed: int) -> int:
    return boundary_seed(seed, 2**31 - 1)


def _resolve_resume(algo_name: str, run: RunConfig, algo_config):
    """Load the saved configs of --resume, rejecting a different algorithm or env."""
    saved = read_config(run.resume)
    if saved.get("algo") != algo_name:
        raise CheckpointError(f"{run.resume} holds a '{saved.get('algo')}' run, not '{algo_name}'")
    saved_run = from_jsonable(RunConfig, saved["run"])
    if run.env is not None and run.env != saved_run.env:
        raise CheckpointError(f"{run.resume} was trained on {saved_run.env}, not {run.env}")
    if run.total_steps is not None and run.total_steps != saved_run.total_steps:
        raise CheckpointError(
            f"{run.resume} has a budget of {saved_run.total_steps} env steps; the learning-rate "
            "and stage schedules depend on it, so --total-steps cannot change on resume"
        )
    _, config_cls = ALGORITHMS[algo_name]
    saved_run.resume = run.resume
    saved_run.out = run.resume
    saved_run.progress = run.progress
    saved_run.overwrite = False
    return saved_run, from_jsonable(config_cls, saved["algo_config"])


def _prepare_run_dir(algo_name: str, run: RunConfig) -> Path:
    if run.resume is not None:
        return Path(run.resume)
    if run.out is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run.out = Path("runs") / f"{algo_name}-{_slug(run.env)}-s{run.seed}-{stamp}"
    run_dir = Path(run.out)
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


def enable_compilation_cache() -> None:
    """Reuse compiled updates across processes (first compiles take seconds on CPU).

    GPRL_COMPILATION_CACHE=0 disables it; GPRL_COMPILATION_CACHE_DIR moves it."""
    if os.environ.get("GPRL_COMPILATION_CACHE", "1") == "0":
        return
    default = Path.home() / ".cache" / "gprl" / "jax"
    jax.config.update(
        "jax_compilation_cache_dir", os.environ.get("GPRL_COMPILATION_CACHE_DIR", str(default))
    )
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def train(algo_name: str, run: RunConfig, algo_config, on_iteration=None) -> Path:
    """Train `algo_name` and return the run directory.

    on_iteration(iteration, row) is called after each logged iteration (tests use it to
    simulate an interruption by raising).
    """
    if algo_name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm '{algo_name}'; choose one of {sorted(ALGORITHMS)}")
    enable_compilation_cache()
    run = dataclasses.replace(run)
    if run.resume is not None:
        run, algo_config = _resolve_resume(algo_name, run, algo_config)
    run.env = run.env or DEFAULT_ENV
    run.total_steps = run.total_steps or DEFAULT_TOTAL_STEPS
    if run.num_envs < 1 or run.total_steps < 1 or run.eval_episodes < 1:
        raise ValueError("num_envs, total_steps and eval_episodes must be positive")

    env = make_env(run.env, run.num_envs, run.seed)
    eval_env = make_env(run.env, run.eval_episodes, run.seed)
    algo_cls, _ = ALGORITHMS[algo_name]
    algo = algo_cls(algo_config, env.spec, run.num_envs, run.total_steps)
    run_dir = _prepare_run_dir(algo_name, run)
    config_record = {
        "algo": algo_name,
        "run": to_jsonable(run),
        "algo_config": to_jsonable(algo_config),
        "gprl_version": __version__,
    }
    identity = {
        "algo": algo_name,
        "env_id": run.env,
        "obs_dim": env.spec.obs_dim,
        "action_dim": env.spec.action_dim,
    }

    state = algo.init_state(jax.random.PRNGKey(run.seed))
    progress = {
        "iteration": 0,
        "env_steps": 0,
        "wall_time": 0.0,
        "next_eval": 0,
        "next_checkpoint": run.checkpoint_every,
    }
    if run.resume is not None:
        state, meta = load_checkpoint(run_dir, state, identity)
        progress = meta["progress"]
    else:
        (run_dir / "config.json").write_text(json.dumps(config_record, indent=2))

    logger = MetricsLogger(
        run_dir,
        progress["iteration"] if run.resume is not None else None,
        run.tensorboard,
        run.wandb_project,
        config_record,
    )
    collector = algo.make_collector(env)
    collector.reset(
        seed=run.seed
        if progress["iteration"] == 0
        else boundary_seed(run.seed, progress["iteration"])
    )

    def save():
        meta = identity | {
            "progress": progress,
            "stage": int(state.get("stage", 0)),
            "gprl_version": __version__,
        }
        save_checkpoint(run_dir, state, meta, config_record)

    total_iterations = algo.total_iterations()
    bar = ProgressBar(run.progress, run.total_steps, f"{algo_name} {run.env}")
    started = time.perf_counter() - progress["wall_time"]
    last_eval = None
    try:
        while progress["iteration"] < total_iterations:
            iteration_start = time.perf_counter()
            state, metrics, episodes, steps = algo.iterate(state, collector)
            metrics = _scalars(metrics)
            progress["iteration"] = int(state["iteration"])
            progress["env_steps"] += steps
            _check_finite(metrics, progress["iteration"], progress["env_steps"], run_dir)
            done = progress["iteration"] == total_iterations
            row = {
                "iteration": progress["iteration"],
                "env_steps": progress["env_steps"],
                "train_return": float(np.mean([r for r, _ in episodes])) if episodes else math.nan,
                "train_length": float(np.mean([n for _, n in episodes])) if episodes else math.nan,
                "episodes": len(episodes),
            }
            if done or (run.eval_every > 0 and progress["env_steps"] >= progress["next_eval"]):
                result = evaluate(
                    algo.eval_action_fn(state),
                    algo.acting_params(state),
                    eval_env,
                    _eval_seed(run.seed),
                )
                state = algo.observe_evaluation(state, result["eval_return"])
                row |= result
                last_eval = result["eval_return"]
                while progress["next_eval"] <= progress["env_steps"]:
                    progress["next_eval"] += max(run.eval_every, 1)
            elapsed = time.perf_counter()
            progress["wall_time"] = elapsed - started
            row |= {
                "wall_time": progress["wall_time"],
                "steps_per_second": steps / max(elapsed - iteration_start, 1e-9),
            }
            row |= metrics
            logger.log(row)
            if done or progress["env_steps"] >= progress["next_checkpoint"]:
                while progress["next_checkpoint"] <= progress["env_steps"]:
                    progress["next_checkpoint"] += run.checkpoint_every
                save()
                collector.reset(seed=boundary_seed(run.seed, progress["iteration"]))
            bar.update(progress["env_steps"], last_eval)
            if on_iteration is not None:
                on_iteration(progress["iteration"], row)
    finally:
        bar.close()
        logger.close()
        env.close()
        eval_env.close()
    plot_learning_curve(logger.rows, run_dir / CURVE_PNG, f"{algo_name} on {run.env}")
    return run_dir


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

    Returns (algo, state, run_config)."""
    saved = read_config(run_dir)
    algo_name = saved.get("algo")
    if algo_name not in ALGORITHMS:
        raise CheckpointError(f"{run_dir} holds an unknown algorithm '{algo_name}'")
    algo_cls, config_cls = ALGORITHMS[algo_name]
    run = from_jsonable(RunConfig, saved["run"])
    with make_env(run.env, 1, run.seed) as env:
        spec = env.spec
    algo = algo_cls(
        from_jsonable(config_cls, saved["algo_config"]), spec, run.num_envs, run.total_steps
    )
    identity = {
        "algo": algo_name,
        "env_id": run.env,
        "obs_dim": spec.obs_dim,
        "action_dim": spec.action_dim,
    }
    state, _ = load_checkpoint(run_dir, algo.init_state(jax.random.PRNGKey(0)), identity)
    return algo, state, run
