"""Imitation pretraining: `gprl pretrain KIND --dataset NAME` fits a policy of gprl.policies to a
Minari dataset by behaviour cloning, evaluating it in the env as it trains.

The policy predicts a chunk of `chunk_length` (Ta) actions per observation, as one flat vector of
Ta x action_dim that its noise shares; the evaluator executes the first `execute_steps` (Te) of
each chunk through a host-side action queue, then plans again. Observations are standardised
with the dataset's mean and variance, actions rescaled from the dataset's per-dimension range to
[-1, 1]; both statistics are saved with the weights.

A pretrain run directory holds everything needed to rebuild the policy (see
:func:`load_pretrained`):

RUN_DIR/config.json          kind, run options, PretrainConfig, the policy's config, the
                             dataset (id, checksum, size, mean return) and the env (id, shapes)
RUN_DIR/metrics.csv          one row per `log_every` gradient steps: losses, evaluations
RUN_DIR/learning_curve.png   evaluation return against gradient steps, the data's return dashed
RUN_DIR/checkpoint/          state.msgpack: {"fit": {params, opt_state, best_params, ...},
                             "key", "obs_norm", "action_norm"}; meta.json; config.json

Runs are resumed exactly from their checkpoint (`--resume RUN_DIR`), with the rules of
`gprl train`: the dataset (checked by checksum), env and step budget cannot change.
"""

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gprl import __version__
from gprl.backends import resolve_backend
from gprl.checkpoint import CONFIG_JSON, CheckpointError, load_checkpoint, save_checkpoint
from gprl.collectors import split_key
from gprl.configs import from_jsonable, to_jsonable
from gprl.datasets import DatasetError, Demonstrations, check_fits_env, load_demonstrations
from gprl.envs import EnvError, make_env
from gprl.evaluation import ChunkedHostEvaluator
from gprl.logger import CURVE_PNG, METRICS_CSV, MetricsLogger, plot_learning_curve
from gprl.policies import POLICIES
from gprl.policies.imitation import FitConfig, ImitationFitter
from gprl.rl_math import normalize, running_stats_init, running_stats_update
from gprl.trainer import (
    ProgressBar,
    TrainingError,
    boundary_seed,
    configure_jax,
    has_checkpoint,
    prepare_run_dir,
    saved_configs,
)

DEFAULT_STEPS = 20_000
EVALUATIONS_PER_RUN = 10
LOG_COLUMNS = ["iteration", "grad_steps", "wall_time", "steps_per_second", "train_loss"]
MIN_ACTION_HALF_RANGE = 1e-3
"""Floor of the action scale, so that a dimension constant in the data stays finite."""


@dataclass
class PretrainConfig:
    chunk_length: int = 1
    """Actions predicted per observation (Ta); 1: no chunking."""
    execute_steps: int = 1
    """Actions of each chunk executed before planning again (Te <= Ta)."""
    batch_size: int = 256
    """Minibatch size of the imitation loss."""
    learning_rate: float = 1e-3
    """Adam step size. Flow BC on Hopper-v5 (benchmarks/pretrain.py, 20k steps) returned 889 at
    3e-4 and 2302 at 1e-3 (10 episodes; the data's 2931)."""
    val_fraction: float = 0.05
    """Share of the dataset's steps held out to measure the loss on unseen data."""
    log_every: int = 500
    """Gradient steps per compiled training call; the held-out loss and a metrics row follow
    each (--steps, --eval-every and --checkpoint-every count in these units)."""
    noise_scale: float | None = None
    """Scale of the noise the policy acts from (evaluation, `gprl eval`, `gprl collect`). None:
    1 for the generative policies (they sample the learned distribution) and 0 for the Gaussian
    (its mean)."""
    keep: Literal["last", "best_val"] = "last"
    """The parameters evaluated and shipped: the latest, or those with the best held-out loss
    (the rule of decoder refits). The one-step objectives' held-out loss moves with the
    parameters, which makes it a poor selector for them."""

    def validate(self) -> None:
        for name in ("chunk_length", "execute_steps", "batch_size", "learning_rate", "log_every"):
            if not getattr(self, name) > 0:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}"
                )
        if self.execute_steps > self.chunk_length:
            raise ValueError(
                f"--execute-steps ({self.execute_steps}) cannot exceed --chunk-length "
                f"({self.chunk_length})"
            )
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"--val-fraction must be in (0, 1), got {self.val_fraction}")
        if self.noise_scale is not None and not (
            math.isfinite(self.noise_scale) and self.noise_scale >= 0
        ):
            raise ValueError(f"--noise-scale must be a non-negative number, got {self.noise_scale}")

    def fit_config(self) -> FitConfig:
        return FitConfig(
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            val_fraction=self.val_fraction,
            chunk_steps=self.log_every,
        )


@dataclass
class PretrainRun:
    dataset: str | None = None
    """Minari dataset id ([namespace/]name-vN) in Minari's data path (MINARI_DATASETS_PATH).
    Required unless --resume."""
    env: str | None = None
    """Env to evaluate in. Default: the env the dataset records."""
    steps: int | None = None
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
    eval_every: int | None = None
    """Gradient steps between evaluations in the env (0: only at the end). Default: steps / 10."""
    eval_episodes: int = 10
    """Episodes per evaluation, run in parallel with fixed seeds."""
    checkpoint_every: int = 5_000
    """Gradient steps between checkpoints (one is always written at the end)."""
    progress: bool = True
    """Show a progress bar."""

    def validate(self, log_every: int) -> None:
        for name in ("steps", "eval_episodes", "checkpoint_every"):
            if getattr(self, name) < 1:
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


# ----- the acting policy -------------------------------------------------------------------------


def action_normalizer(actions: np.ndarray) -> dict:
    """Per-dimension centre and half range of the data's actions (maps them onto [-1, 1])."""
    low, high = actions.min(axis=0), actions.max(axis=0)
    return {
        "center": jnp.asarray((high + low) / 2, jnp.float32),
        "half_range": jnp.asarray(np.maximum((high - low) / 2, MIN_ACTION_HALF_RANGE), jnp.float32),
    }


def chunk_targets(actions: np.ndarray, episode_lengths: np.ndarray, chunk_length: int):
    """(N, chunk_length, d): the actions from each step on, the episode's last action repeated
    past its end (chunks never cross into the next episode)."""
    ends = np.repeat(np.cumsum(episode_lengths), episode_lengths)
    index = np.arange(len(actions))[:, None] + np.arange(chunk_length)[None]
    return actions[np.minimum(index, ends[:, None] - 1)]


class ChunkPolicy:
    """A policy of gprl.policies wrapped to act in an env: normalise the observation, sample a
    flat chunk from the noise, map it back to [-1, 1] actions (N, chunk_length, action_dim).

    acting = {"params", "obs_norm", "action_norm"}. `plan_from_noise` is the interface for
    methods that drive the policy through its noise (latent-space fine-tuning); `plan` draws it."""

    def __init__(self, policy, chunk_length: int, action_dim: int, noise_scale: float):
        self.policy = policy
        self.chunk_length = chunk_length
        self.action_dim = action_dim
        self.noise_scale = noise_scale
        self.noise_dim = chunk_length * action_dim

    def plan_from_noise(self, acting, obs, noise, num_steps: int | None = None):
        cond = normalize(obs, acting["obs_norm"])
        flat = self.policy.sample(acting["params"], cond, noise, num_steps=num_steps)
        chunk = flat.reshape(*flat.shape[:-1], self.chunk_length, self.action_dim)
        norm = acting["action_norm"]
        return jnp.clip(norm["center"] + norm["half_range"] * chunk, -1.0, 1.0)

    def plan(self, acting, obs, key, num_steps: int | None = None):
        noise = self.noise_scale * jax.random.normal(key, (*obs.shape[:-1], self.noise_dim))
        return self.plan_from_noise(acting, obs, noise, num_steps)


def default_noise_scale(kind: str, config: PretrainConfig) -> float:
    if config.noise_scale is not None:
        return config.noise_scale
    return 0.0 if kind == "gaussian" else 1.0


class Pretrained(NamedTuple):
    """A pretrain run rebuilt from its directory: what a fine-tuner starts from."""

    kind: str
    policy: ChunkPolicy
    acting: dict
    """{"params", "obs_norm", "action_norm"} of the kept parameters."""
    config: PretrainConfig
    policy_config: Any
    env_id: str
    env_backend: str
    obs_dim: int
    action_dim: int


def _acting(state: dict, keep: str) -> dict:
    params = state["fit"]["params"] if keep == "last" else state["fit"]["best_params"]
    return {"params": params, "obs_norm": state["obs_norm"], "action_norm": state["action_norm"]}


def _build(kind: str, config: PretrainConfig, policy_config, obs_dim: int, action_dim: int):
    policy = POLICIES[kind].policy(config.chunk_length * action_dim, policy_config)
    chunk_policy = ChunkPolicy(
        policy, config.chunk_length, action_dim, default_noise_scale(kind, config)
    )
    return chunk_policy, ImitationFitter(policy, config.fit_config())


def _state_template(chunk_policy: ChunkPolicy, fitter, obs_dim: int) -> dict:
    params = chunk_policy.policy.init(jax.random.PRNGKey(0), obs_dim)
    return {
        "fit": fitter.init(params, None),
        "key": jax.random.PRNGKey(0),
        "obs_norm": running_stats_init((obs_dim,)),
        "action_norm": {
            "center": jnp.zeros(chunk_policy.action_dim),
            "half_range": jnp.ones(chunk_policy.action_dim),
        },
    }


def is_pretrain_run(run_dir: Path) -> bool:
    try:
        return "pretrain" in saved_configs(run_dir)
    except CheckpointError:
        return False


def load_pretrained(run_dir: Path) -> Pretrained:
    """Rebuild the policy of a pretrain run from its checkpoint (config, weights, statistics)."""
    saved = saved_configs(run_dir)
    kind = saved.get("pretrain")
    if kind not in POLICIES:
        raise CheckpointError(f"{run_dir} is not a pretrain run")
    config = from_jsonable(PretrainConfig, saved["pretrain_config"])
    policy_config = from_jsonable(POLICIES[kind].config, saved["policy_config"])
    env = saved["env"]
    chunk_policy, fitter = _build(kind, config, policy_config, env["obs_dim"], env["action_dim"])
    template = _state_template(chunk_policy, fitter, env["obs_dim"])
    state, _ = load_checkpoint(run_dir, template, {"pretrain": kind, "env_id": env["id"]})
    return Pretrained(
        kind=kind,
        policy=chunk_policy,
        acting=_acting(state, config.keep),
        config=config,
        policy_config=policy_config,
        env_id=env["id"],
        env_backend=saved["run"]["env_backend"],
        obs_dim=env["obs_dim"],
        action_dim=env["action_dim"],
    )


def evaluate_run(run_dir: Path, episodes: int, seed: int) -> tuple[str, dict]:
    """(env id, evaluation summary) of a pretrain run's kept policy, `episodes` in parallel."""
    pretrained = load_pretrained(run_dir)
    env = make_env(pretrained.env_id, episodes, seed, backend=pretrained.env_backend)
    try:
        evaluator = ChunkedHostEvaluator(
            env, pretrained.policy.plan, seed, pretrained.config.execute_steps
        )
        return pretrained.env_id, evaluator.evaluate(pretrained.acting)
    finally:
        env.close()


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
    config = from_jsonable(PretrainConfig, saved["pretrain_config"])
    return saved_run, config, from_jsonable(POLICIES[kind].config, saved["policy_config"])


def pretrain(
    kind: str, run: PretrainRun, config: PretrainConfig, policy_config=None, on_log=None
) -> Path:
    """Fit a `kind` policy to run.dataset by behaviour cloning; returns the run directory.

    Everything that can be wrong with the input (dataset, env, numbers) is checked before the
    run directory is touched. on_log(iteration, row) is called after each metrics row (tests
    interrupt a run by raising from it)."""
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
    eval_seed = boundary_seed(run.seed, 2**31 - 1)
    env = make_env(env_id, run.eval_episodes, eval_seed, backend=run.env_backend)
    try:
        check_fits_env(demos, env.spec)
        return _pretrain(kind, run, config, policy_config, demos, env, eval_seed, on_log)
    finally:
        env.close()


def _pretrain(kind, run, config, policy_config, demos: Demonstrations, env, eval_seed, on_log):
    obs_dim, action_dim = demos.obs_dim, demos.action_dim
    chunk_policy, fitter = _build(kind, config, policy_config, obs_dim, action_dim)
    obs_norm = running_stats_update(running_stats_init((obs_dim,)), demos.obs)
    action_norm = action_normalizer(demos.actions)
    # Host-side preprocessing: eager jax ops would each compile for the dataset's shape.
    obs_std = np.sqrt(np.asarray(obs_norm["var"]) + 1e-8)
    cond = np.clip((demos.obs - np.asarray(obs_norm["mean"])) / obs_std, -10.0, 10.0)
    chunks = chunk_targets(demos.actions, demos.episode_lengths, config.chunk_length)
    targets = (chunks - np.asarray(action_norm["center"])) / np.asarray(action_norm["half_range"])
    targets = targets.reshape(len(targets), -1).astype(np.float32)

    run_dir = prepare_run_dir(f"pretrain-{kind}", run)
    data_return = float(demos.episode_returns.mean())
    record = {
        "pretrain": kind,
        "run": to_jsonable(run),
        "pretrain_config": to_jsonable(config),
        "policy_config": to_jsonable(policy_config),
        "dataset": {
            "id": demos.dataset_id,
            "sha256": demos.sha256,
            "episodes": len(demos.episode_lengths),
            "steps": len(demos.obs),
            "mean_return": data_return,
        },
        "env": {"id": env.spec.env_id, "obs_dim": obs_dim, "action_dim": action_dim},
        "gprl_version": __version__,
    }
    identity = {
        "pretrain": kind,
        "env_id": env.spec.env_id,
        "obs_dim": obs_dim,
        "action_dim": action_dim,
        "dataset_sha256": demos.sha256,
    }
    init_key, data_key, key = jax.random.split(jax.random.PRNGKey(run.seed), 3)
    split, key = fitter.split(cond, targets, data_key)
    progress = {
        "iteration": 0,
        "grad_steps": 0,
        "wall_time": 0.0,
        "next_eval": run.eval_every if run.eval_every > 0 else run.steps,
        "next_checkpoint": run.checkpoint_every,
    }
    resuming = run.resume is not None and has_checkpoint(run_dir)
    if resuming:
        template = _state_template(chunk_policy, fitter, obs_dim)
        try:
            state, meta = load_checkpoint(run_dir, template, identity)
        except CheckpointError as e:
            if "dataset_sha256" in str(e):
                raise DatasetError(
                    f"dataset {demos.dataset_id} changed since {run_dir} started"
                ) from None
            raise
        progress = meta["progress"]
    else:
        params = chunk_policy.policy.init(init_key, obs_dim)
        state = {
            "fit": fitter.init(params, split),
            "key": key,
            "obs_norm": obs_norm,
            "action_norm": action_norm,
        }
        for stale in (CURVE_PNG, METRICS_CSV):
            (run_dir / stale).unlink(missing_ok=True)
        (run_dir / CONFIG_JSON).write_text(json.dumps(record, indent=2))

    logger = MetricsLogger(
        run_dir,
        progress["iteration"] if resuming else None,
        leading_columns=LOG_COLUMNS,
        step_column="grad_steps",
    )
    evaluator = ChunkedHostEvaluator(env, chunk_policy.plan, eval_seed, config.execute_steps)
    total_iterations = run.steps // config.log_every

    def save():
        meta = identity | {"progress": progress, "gprl_version": __version__}
        save_checkpoint(run_dir, state, meta, record)

    bar = ProgressBar(run.progress, run.steps, f"pretrain {kind} {run.dataset}")
    started = time.perf_counter() - progress["wall_time"]
    last_eval = None
    try:
        while progress["iteration"] < total_iterations:
            iteration_start = time.perf_counter()
            key, chunk_key = split_key(state["key"])
            try:
                fit, info = fitter.step(state["fit"], split, chunk_key)
                if not math.isfinite(info["train_loss"]):
                    raise FloatingPointError("NaN in the imitation loss")
            except FloatingPointError as e:
                raise TrainingError(
                    f"{e} at gradient step {progress['grad_steps'] + config.log_every}; stopped "
                    f"without saving, the last checkpoint in {run_dir} is intact"
                ) from None
            state = state | {"fit": fit, "key": key}
            progress["iteration"] += 1
            progress["grad_steps"] += config.log_every
            done = progress["iteration"] == total_iterations
            row = {"iteration": progress["iteration"], "grad_steps": progress["grad_steps"]}
            row |= info
            if progress["iteration"] == 1:
                row["val_loss_at_init"] = float(state["fit"]["val_loss_at_init"])
            if done or (run.eval_every > 0 and progress["grad_steps"] >= progress["next_eval"]):
                evaluation = evaluator.evaluate(_acting(state, config.keep))
                row |= evaluation
                last_eval = evaluation["eval_return"]
                while progress["next_eval"] <= progress["grad_steps"]:
                    progress["next_eval"] += max(run.eval_every, 1)
            elapsed = time.perf_counter()
            progress["wall_time"] = elapsed - started
            row |= {
                "wall_time": progress["wall_time"],
                "steps_per_second": config.log_every / max(elapsed - iteration_start, 1e-9),
            }
            logger.log(row)
            if done or progress["grad_steps"] >= progress["next_checkpoint"]:
                while progress["next_checkpoint"] <= progress["grad_steps"]:
                    progress["next_checkpoint"] += run.checkpoint_every
                save()
            bar.update(progress["grad_steps"], last_eval)
            if on_log is not None:
                on_log(progress["iteration"], row)
    finally:
        bar.close()
        logger.close()
    plot_learning_curve(
        logger.rows,
        run_dir / CURVE_PNG,
        f"pretrain {kind} on {demos.dataset_id}",
        x_column="grad_steps",
        reference=("dataset mean return", data_return),
    )
    return run_dir
