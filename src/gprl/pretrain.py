"""Imitation pretraining: `gprl pretrain KIND --dataset NAME` fits a policy of gprl.policies to a
Minari dataset by behaviour cloning, evaluating it in the env as it trains.

The policy predicts a chunk of `chunk_length` (Ta) actions per observation, as one flat vector of
Ta x action_dim that its noise shares; the evaluator executes the first `execute_steps` (Te) of
each chunk through a host-side action queue, then plans again. Observations are standardised
with the dataset's mean and variance, actions rescaled from the dataset's per-dimension range to
[-1, 1]; both statistics are saved with the weights. With `obs_history` H the policy conditions
on the last H observations (windows cut from each episode, its first observation repeated before
its start), and with `ema_decay` (on by default) on an exponential moving average of the weights
that evaluation uses and the checkpoint keeps.

A pretrain run directory holds everything needed to rebuild the policy (see
:func:`load_pretrained`):

RUN_DIR/config.json          kind, run options, PretrainConfig, the policy's config, the
                             dataset (id, checksum, size, mean return) and the env (id, shapes)
RUN_DIR/metrics.csv          one row per `log_every` gradient steps: losses, evaluations
RUN_DIR/learning_curve.png   evaluation return against gradient steps, the data's return dashed
RUN_DIR/checkpoint/          state.msgpack: {"fit": {params, opt_state, best_params,
                             ema_params, ema_updates, ...},
                             "key", "obs_norm", "action_norm"}; meta.json; config.json

Runs are resumed exactly from their checkpoint (`--resume RUN_DIR`), with the rules of
`gprl train`: the dataset (checked by checksum), env and step budget cannot change.
"""

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import jax
import numpy as np

from gprl import __version__
from gprl.backends import probe_spec, resolve_backend
from gprl.checkpoint import CONFIG_JSON, CheckpointError, load_checkpoint, save_checkpoint
from gprl.collectors import split_key
from gprl.configs import Count, CountOrNone, from_jsonable, to_jsonable
from gprl.datasets import DatasetError, Demonstrations, check_fits_env, load_demonstrations
from gprl.envs import EnvError, make_env
from gprl.evaluation import ChunkedHostEvaluator, default_eval_episodes
from gprl.logger import CURVE_PNG, METRICS_CSV, MetricsLogger, plot_learning_curve
from gprl.policies import POLICIES
from gprl.pretrained import (
    ChunkPolicy,
    PretrainConfig,
    Pretrained,
    acting_params,
    action_normalizer,
    build_policy,
    check_history,
    chunk_targets,
    evaluate_run,
    history_windows,
    is_pretrain_run,
    load_pretrained,
    saved_pretrain_config,
    state_template,
)
from gprl.rl_math import running_stats_init, running_stats_update
from gprl.rundir import RunDirectory, default_run_dir, has_checkpoint, saved_configs
from gprl.runloop import Schedule, Step, configure_jax, run_job, start_progress
from gprl.seeding import eval_seed

DEFAULT_STEPS = 20_000
EVALUATIONS_PER_RUN = 10
LOG_COLUMNS = ["iteration", "grad_steps", "wall_time", "steps_per_second", "train_loss"]


__all__ = [
    "ChunkPolicy",
    "PretrainConfig",
    "PretrainRun",
    "Pretrained",
    "evaluate_run",
    "is_pretrain_run",
    "load_pretrained",
    "pretrain",
]


@dataclass
class PretrainRun:
    dataset: str | None = None
    """Minari dataset id ([namespace/]name-vN) in Minari's data path (MINARI_DATASETS_PATH).
    Required unless --resume."""
    env: str | None = None
    """Env to evaluate in. Default: the env the dataset records."""
    steps: CountOrNone = None
    """Gradient steps, a multiple of --log-every. Default: 20000, or the run's with --resume."""
    seed: int = 0
    """Seeds the parameters, the held-out split, minibatches and the policy's noise."""
    env_backend: Literal["auto", "gymnasium", "envpool"] = "auto"
    """Host backend of the evaluation envs (auto: envpool where it has the task)."""
    out: Path | None = None
    """Run directory. Default: runs/pretrain-KIND-ENV-sSEED-TIMESTAMP."""
    resume: Path | None = None
    """Continue the run in this directory from its checkpoint (its saved config is used)."""
    overwrite: bool = False
    """Replace an existing run directory given by --out."""
    eval_every: CountOrNone = None
    """Gradient steps between evaluations in the env (0: only at the end). Default: steps / 10."""
    eval_episodes: int | None = None
    """Episodes per evaluation, run in parallel with fixed seeds. Default: 50 on envs that
    report success (success rates are reported over 50), else 10."""
    checkpoint_every: Count = 5_000
    """Gradient steps between checkpoints (one is always written at the end)."""
    progress: bool = True
    """Show a progress bar."""

    def validate(self, log_every: int) -> None:
        for name in ("steps", "eval_episodes", "checkpoint_every"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}"
                )
        if self.steps % log_every:
            raise ValueError(
                f"--steps ({self.steps}) must be a multiple of --log-every ({log_every})"
            )
        if self.eval_every < 0:
            raise ValueError(
                f"--eval-every must be 0 (only at the end) or positive, got {self.eval_every}"
            )
        if not 0 <= self.seed < 2**31:
            raise ValueError(f"--seed must be in [0, 2^31), got {self.seed}")


# ----- training ----------------------------------------------------------------------------------


def _resolve_resume(kind: str, run: PretrainRun):
    saved = saved_configs(run.resume)
    if saved.get("pretrain") != kind:
        held = f"a '{saved['pretrain']}' pretrain run" if "pretrain" in saved else "no pretrain run"
        raise CheckpointError(f"{run.resume} holds {held}, not '{kind}'")
    saved_run = from_jsonable(PretrainRun, saved["run"])
    for name in ("dataset", "env", "steps"):
        given, kept = getattr(run, name), getattr(saved_run, name)
        if given is not None and given != kept:
            raise CheckpointError(f"{run.resume} was run with --{name} {kept}, not {given}")
    saved_run = dataclasses.replace(
        saved_run, resume=run.resume, out=run.resume, progress=run.progress, overwrite=False
    )
    config = saved_pretrain_config(saved)
    return saved_run, config, from_jsonable(POLICIES[kind].config, saved["policy_config"])


def pretrain(
    kind: str, run: PretrainRun, config: PretrainConfig, policy_config=None, on_log=None
) -> Path:
    """Fit a `kind` policy to run.dataset by behaviour cloning; returns the run directory.

    Everything that can be wrong with the input (dataset, env, numbers, the policy's config) is
    checked before the run directory is touched. on_log(iteration, row) is called after each
    metrics row (tests interrupt a run by raising from it)."""
    if kind not in POLICIES:
        raise ValueError(f"unknown policy kind '{kind}'; choose one of {sorted(POLICIES)}")
    configure_jax()
    run = dataclasses.replace(run)
    policy_config = POLICIES[kind].default_config if policy_config is None else policy_config
    if run.resume is not None:
        run, config, policy_config = _resolve_resume(kind, run)
    run.steps = DEFAULT_STEPS if run.steps is None else run.steps
    if run.eval_every is None:
        run.eval_every = max(run.steps // EVALUATIONS_PER_RUN, 1)
    config.validate()
    run.validate(config.log_every)
    if run.dataset is None:
        raise ValueError("--dataset is required (a Minari dataset id, e.g. hopper/expert-v0)")
    demos = load_demonstrations(run.dataset)
    env_id = run.env or demos.env_id
    if env_id is None:
        raise DatasetError(f"dataset {run.dataset} records no environment; pass --env ID")
    if resolve_backend(env_id, run.env_backend) == "jax":
        raise EnvError(f"{env_id} is a JAX environment; pretraining evaluates on host envs")
    run.env = env_id
    if run.eval_episodes is None:
        run.eval_episodes = default_eval_episodes(probe_spec(env_id, run.env_backend))
    job = PretrainJob(kind, run, config, policy_config, demos)
    try:
        return job.run(on_log)
    finally:
        job.env.close()


class PretrainJob:
    """Behaviour cloning as a job of the run loop: an iteration is `log_every` gradient steps
    (one compiled call), the clock counts gradient steps."""

    clock_name = "grad_steps"

    def __init__(self, kind, run: PretrainRun, config, policy_config, demos: Demonstrations):
        self.kind, self.run_config, self.config, self.demos = kind, run, config, demos
        obs_dim = demos.obs_dim
        check_history(demos.dataset_id, demos.episode_lengths, config.obs_history)
        # Builds (and so validates) the policy before anything is written.
        self.chunk_policy, self.fitter = build_policy(
            kind, config, policy_config, obs_dim, demos.action_dim
        )
        self.eval_seed = eval_seed(run.seed)
        self.env = make_env(run.env, run.eval_episodes, self.eval_seed, backend=run.env_backend)
        check_fits_env(demos, self.env.spec)
        self.record = {
            "pretrain": kind,
            "run": to_jsonable(run),
            "pretrain_config": to_jsonable(config),
            "policy_config": to_jsonable(policy_config),
            "dataset": {
                "id": demos.dataset_id,
                "sha256": demos.sha256,
                "episodes": len(demos.episode_lengths),
                "steps": len(demos.obs),
                "mean_return": float(demos.episode_returns.mean()),
            },
            "env": {"id": run.env, "obs_dim": obs_dim, "action_dim": demos.action_dim},
            "env_spec": self.env.spec.to_record(),
            "gprl_version": __version__,
        }
        self.identity = {
            "pretrain": kind,
            "env_id": run.env,
            "obs_dim": obs_dim,
            "action_dim": demos.action_dim,
            "dataset_sha256": demos.sha256,
        }
        self.evaluator = ChunkedHostEvaluator(
            self.env,
            self.chunk_policy.plan,
            self.eval_seed,
            config.execute_steps,
            config.obs_history,
        )
        self.total_iterations = run.steps // config.log_every

    # ----- the run loop's interface -----------------------------------------------------------

    def clock(self, progress: dict) -> int:
        return progress["grad_steps"]

    def finished(self, progress: dict) -> bool:
        return progress["iteration"] >= self.total_iterations

    def iterate(self, progress: dict) -> Step:
        key, chunk_key = split_key(self.state["key"])
        fit, info = self.fitter.step(self.state["fit"], self.split, chunk_key)
        self.state = self.state | {"fit": fit, "key": key}
        progress["iteration"] += 1
        progress["grad_steps"] += self.config.log_every
        row = {"iteration": progress["iteration"], "grad_steps": progress["grad_steps"]}
        row |= {k: float(v) for k, v in info.items()}
        if progress["iteration"] == 1:
            row["val_loss_at_init"] = float(self.state["fit"]["val_loss_at_init"])
        return Step(row, {}, self.config.log_every)

    def evaluate(self) -> dict:
        return self.evaluator.evaluate(acting_params(self.state, self.config.keep))

    def save(self, progress: dict) -> None:
        meta = self.identity | {"progress": progress, "gprl_version": __version__}
        save_checkpoint(self.run_dir.path, self.state, meta, self.record)

    def after_checkpoint(self, progress: dict) -> None:
        pass

    # ----- setting up and running ---------------------------------------------------------------

    def run(self, on_log) -> Path:
        run = self.run_config
        resuming = run.resume is not None and has_checkpoint(run.resume)
        if run.resume is not None:
            self.run_dir = RunDirectory(Path(run.resume))
        else:
            out = run.out or default_run_dir(f"pretrain-{self.kind}", run.env, run.seed)
            self.run_dir = RunDirectory.create(out, run.overwrite)
        with self.run_dir:
            progress = self._restore() if resuming else self._start()
            logger = MetricsLogger(
                self.run_dir.path,
                progress["iteration"] if resuming else None,
                leading_columns=LOG_COLUMNS,
                step_column="grad_steps",
            )
            description = f"pretrain {self.kind} {run.dataset}"
            schedule = Schedule(
                run.steps, run.eval_every, run.checkpoint_every, description, run.progress
            )
            run_job(self, schedule, progress, self.run_dir, logger, on_log)
        plot_learning_curve(
            logger.rows,
            self.run_dir.path / CURVE_PNG,
            f"pretrain {self.kind} on {self.demos.dataset_id}",
            x_column="grad_steps",
            reference=("dataset mean return", self.record["dataset"]["mean_return"]),
        )
        return self.run_dir.path

    def _targets(self):
        """(standardised observations, normalised flat chunks, obs statistics, action scale)."""
        demos, config = self.demos, self.config
        obs_norm = running_stats_update(running_stats_init((demos.obs_dim,)), demos.obs)
        action_norm = action_normalizer(demos.actions)
        # Host-side preprocessing: eager jax ops would each compile for the dataset's shape.
        obs_std = np.sqrt(np.asarray(obs_norm["var"]) + 1e-8)
        cond = np.clip((demos.obs - np.asarray(obs_norm["mean"])) / obs_std, -10.0, 10.0)
        cond = history_windows(cond, demos.episode_lengths, config.obs_history)
        chunks = chunk_targets(demos.actions, demos.episode_lengths, config.chunk_length)
        center, half_range = (
            np.asarray(action_norm["center"]),
            np.asarray(action_norm["half_range"]),
        )
        targets = ((chunks - center) / half_range).reshape(len(chunks), -1).astype(np.float32)
        return cond, targets, obs_norm, action_norm

    def _start(self) -> dict:
        cond, targets, obs_norm, action_norm = self._targets()
        init_key, data_key, key = jax.random.split(jax.random.PRNGKey(self.run_config.seed), 3)
        self.split, key = self.fitter.split(cond, targets, data_key)
        params = self.chunk_policy.policy.init(init_key, cond.shape[1])
        self.state = {
            "fit": self.fitter.init(params, self.split),
            "key": key,
            "obs_norm": obs_norm,
            "action_norm": action_norm,
        }
        run_dir = self.run_dir.path
        for stale in (CURVE_PNG, METRICS_CSV):
            (run_dir / stale).unlink(missing_ok=True)
        (run_dir / CONFIG_JSON).write_text(json.dumps(self.record, indent=2))
        run = self.run_config
        first_eval = run.eval_every if run.eval_every > 0 else run.steps
        return start_progress({"grad_steps": 0}, first_eval, run.checkpoint_every)

    def _restore(self) -> dict:
        cond, targets, _, _ = self._targets()
        _, data_key, _ = jax.random.split(jax.random.PRNGKey(self.run_config.seed), 3)
        self.split, _ = self.fitter.split(cond, targets, data_key)
        template = state_template(self.chunk_policy, self.fitter, self.demos.obs_dim)
        try:
            self.state, meta = load_checkpoint(self.run_dir.path, template, self.identity)
        except CheckpointError as e:
            if "dataset_sha256" in str(e):
                raise DatasetError(
                    f"dataset {self.demos.dataset_id} changed since {self.run_dir.path} started"
                ) from None
            raise
        return meta["progress"]
