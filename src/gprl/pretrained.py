"""A pretrain run's policy, rebuilt from its directory: what `gprl eval`, `gprl collect` and the
fine-tuners (`--init`) act with.

The policy predicts a chunk of `chunk_length` (Ta) actions per observation, as one flat vector of
Ta x action_dim that its noise shares; an evaluator executes the first `execute_steps` (Te) of
each chunk, then plans again. Observations are standardised with the dataset's mean and variance,
actions rescaled from the dataset's per-dimension range to [-1, 1]; both statistics are saved
with the weights. With `obs_history` H > 1 the policy conditions on the last H observations,
concatenated oldest first, the first repeated at an episode's start (the acting side keeps them:
gprl.evaluation.ActionQueue).

The acting parameters are the exponential moving average of the weights where the run kept one
(`ema_decay`, on by default), else the weights themselves; runs from before the average load as
they were.
"""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gprl.checkpoint import CheckpointError, load_checkpoint
from gprl.configs import from_jsonable
from gprl.datasets import DatasetError
from gprl.envs import make_env
from gprl.evaluation import ChunkedHostEvaluator
from gprl.policies import POLICIES
from gprl.policies.imitation import FitConfig, ImitationFitter
from gprl.rl_math import normalize, running_stats_init
from gprl.rundir import saved_configs

MIN_ACTION_HALF_RANGE = 1e-3
"""Floor of the action scale, so that a dimension constant in the data stays finite."""


def check_noise_scale(noise_scale: float) -> None:
    if not (math.isfinite(noise_scale) and noise_scale >= 0):
        raise ValueError(f"--noise-scale must be a non-negative number, got {noise_scale}")


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
    ema_decay: float | None = 0.995
    """Evaluate and ship an exponential moving average of the weights, with this decay per
    gradient step (warmed up as Diffusion Policy's); None: the weights themselves. On by default
    because every Diffusion Policy and DPPO checkpoint is evaluated and fine-tuned from its
    average (DPPO: 0.995)."""
    obs_history: int = 1
    """Observations the policy conditions on: the last H, concatenated, the first repeated at an
    episode's start (Diffusion Policy and DPPO use 2). Every episode of the dataset needs at
    least H steps."""

    def validate(self) -> None:
        for name in (
            "chunk_length",
            "execute_steps",
            "batch_size",
            "learning_rate",
            "log_every",
            "obs_history",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}"
                )
        if not math.isfinite(self.learning_rate):
            raise ValueError(f"--learning-rate must be finite, got {self.learning_rate}")
        if self.execute_steps > self.chunk_length:
            raise ValueError(
                f"--execute-steps ({self.execute_steps}) cannot exceed --chunk-length "
                f"({self.chunk_length})"
            )
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"--val-fraction must be in (0, 1), got {self.val_fraction}")
        if self.noise_scale is not None:
            check_noise_scale(self.noise_scale)
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"--ema-decay must be in (0, 1), got {self.ema_decay}")

    def fit_config(self) -> FitConfig:
        return FitConfig(
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            val_fraction=self.val_fraction,
            chunk_steps=self.log_every,
            ema_decay=self.ema_decay,
        )


def saved_pretrain_config(saved: dict) -> PretrainConfig:
    """The PretrainConfig of a run's saved configs; runs from before the moving average of the
    weights was kept had none."""
    return from_jsonable(PretrainConfig, {"ema_decay": None} | saved["pretrain_config"])


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


def history_windows(obs: np.ndarray, episode_lengths: np.ndarray, length: int) -> np.ndarray:
    """(N, length * obs_dim): the observations from `length - 1` steps back to each step,
    oldest first, the episode's first observation repeated before its start."""
    starts = np.repeat(np.cumsum(episode_lengths) - episode_lengths, episode_lengths)
    index = np.arange(len(obs))[:, None] + np.arange(1 - length, 1)[None]
    return obs[np.maximum(index, starts[:, None])].reshape(len(obs), -1)


def check_history(dataset_id: str, episode_lengths: np.ndarray, length: int) -> None:
    """DatasetError unless every episode has at least `length` steps."""
    shortest = int(np.argmin(episode_lengths))
    if episode_lengths[shortest] < length:
        raise DatasetError(
            f"--obs-history {length} needs episodes of at least {length} steps; dataset "
            f"{dataset_id} has one of {episode_lengths[shortest]} (episode {shortest})"
        )


class ChunkPolicy:
    """A policy of gprl.policies wrapped to act in an env: normalise the observations, sample a
    flat chunk from the noise, map it back to [-1, 1] actions (N, chunk_length, action_dim).

    acting = {"params", "obs_norm", "action_norm"}. `plan_from_noise` is the interface for
    methods that drive the policy through its noise (latent-space fine-tuning); `plan` draws it.
    Observations are (..., obs_dim), or with obs_history H > 1 the last H concatenated oldest
    first (..., H * obs_dim); a single observation then stands for a history that starts with it
    (repeated H times, as at an episode's start)."""

    def __init__(
        self, policy, chunk_length: int, action_dim: int, noise_scale: float, obs_history: int = 1
    ):
        self.policy = policy
        self.chunk_length = chunk_length
        self.action_dim = action_dim
        self.noise_scale = noise_scale
        self.obs_history = obs_history
        self.noise_dim = chunk_length * action_dim

    def condition(self, acting, obs):
        """The policy's input: the standardised observations, one per history step."""
        obs_dim = acting["obs_norm"]["mean"].shape[-1]
        if obs.shape[-1] not in (obs_dim, self.obs_history * obs_dim):
            raise ValueError(
                f"observations of size {obs.shape[-1]}: this policy takes {obs_dim}, or "
                f"{self.obs_history} of them ({self.obs_history * obs_dim})"
            )
        frames = normalize(obs.reshape(*obs.shape[:-1], -1, obs_dim), acting["obs_norm"])
        frames = jnp.broadcast_to(frames, (*obs.shape[:-1], self.obs_history, obs_dim))
        return frames.reshape(*obs.shape[:-1], self.obs_history * obs_dim)

    def plan_from_noise(self, acting, obs, noise, num_steps: int | None = None, step_noise=None):
        """The chunk sampled from `noise` (..., noise_dim), and for a policy that draws noise at
        each sampling step (ddpm) from `step_noise` (S, ..., noise_dim) (None: zero)."""
        cond = self.condition(acting, obs)
        extra = {} if step_noise is None else {"step_noise": step_noise}
        flat = self.policy.sample(acting["params"], cond, noise, num_steps=num_steps, **extra)
        chunk = flat.reshape(*flat.shape[:-1], self.chunk_length, self.action_dim)
        norm = acting["action_norm"]
        return jnp.clip(norm["center"] + norm["half_range"] * chunk, -1.0, 1.0)

    def plan(self, acting, obs, key, num_steps: int | None = None):
        shape = (*obs.shape[:-1], self.noise_dim)
        noise = self.noise_scale * jax.random.normal(key, shape)
        steps = getattr(self.policy, "step_noise_steps", lambda _: 0)(num_steps)
        step_noise = None
        if steps:
            # A key of its own: the noise drawn from `key` stays what it was for every kind.
            step_key = jax.random.fold_in(key, 1)
            step_noise = self.noise_scale * jax.random.normal(step_key, (steps, *shape))
        return self.plan_from_noise(acting, obs, noise, num_steps, step_noise)


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


def acting_params(state: dict, keep: str) -> dict:
    """The kept parameters: the latest (their moving average where the run keeps one) or those
    with the best held-out loss, with the normalisation statistics."""
    fit = state["fit"]
    params = ImitationFitter.evaluated_params(fit) if keep == "last" else fit["best_params"]
    return {"params": params, "obs_norm": state["obs_norm"], "action_norm": state["action_norm"]}


def build_policy(kind: str, config: PretrainConfig, policy_config, obs_dim: int, action_dim: int):
    policy = POLICIES[kind].policy(config.chunk_length * action_dim, policy_config)
    chunk_policy = ChunkPolicy(
        policy,
        config.chunk_length,
        action_dim,
        default_noise_scale(kind, config),
        config.obs_history,
    )
    return chunk_policy, ImitationFitter(policy, config.fit_config())


def state_template(chunk_policy: ChunkPolicy, fitter, obs_dim: int) -> dict:
    params = chunk_policy.policy.init(jax.random.PRNGKey(0), chunk_policy.obs_history * obs_dim)
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
    config = saved_pretrain_config(saved)
    policy_config = from_jsonable(POLICIES[kind].config, saved["policy_config"])
    env = saved["env"]
    chunk_policy, fitter = build_policy(
        kind, config, policy_config, env["obs_dim"], env["action_dim"]
    )
    template = state_template(chunk_policy, fitter, env["obs_dim"])
    state, _ = load_checkpoint(run_dir, template, {"pretrain": kind, "env_id": env["id"]})
    return Pretrained(
        kind=kind,
        policy=chunk_policy,
        acting=acting_params(state, config.keep),
        config=config,
        policy_config=policy_config,
        env_id=env["id"],
        env_backend=saved["run"]["env_backend"],
        obs_dim=env["obs_dim"],
        action_dim=env["action_dim"],
    )


def evaluate_run(
    run_dir: Path, episodes: int, seed: int, noise_scale: float | None = None
) -> tuple[str, dict]:
    """(env id, evaluation summary with the noise scale acted from) of a pretrain run's kept
    policy, `episodes` in parallel, acting from noise of `noise_scale` (None: the run's; 0: the
    zero-noise plan fine-tuners start from)."""
    pretrained = load_pretrained(run_dir)
    if noise_scale is not None:
        check_noise_scale(noise_scale)
        pretrained.policy.noise_scale = noise_scale
    env = make_env(pretrained.env_id, episodes, seed, backend=pretrained.env_backend)
    try:
        evaluator = ChunkedHostEvaluator(
            env,
            pretrained.policy.plan,
            seed,
            pretrained.config.execute_steps,
            pretrained.config.obs_history,
        )
        result = evaluator.evaluate(pretrained.acting)
        return pretrained.env_id, result | {"noise_scale": pretrained.policy.noise_scale}
    finally:
        env.close()
