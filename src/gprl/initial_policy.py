"""The policy a run starts from (`--init PRETRAIN_RUN`): loaded, checked against the task, and
kept in the run directory (RUN_DIR/initial_policy) so that resuming and evaluating the run never
need the pretrain run again.

A pretrained policy of action chunks (or of observation histories), or an algorithm that acts
in chunks of its own (Algorithm.chunk_length), also decides how the run steps its envs:
:func:`run_start` composes the chunk-executing envs (gprl.envs.chunked), the spec the algorithm
sees, its pretrained policy over the flat chunk and its config with the discount of one
decision (see gprl.algos.base)."""

import dataclasses
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import jax.numpy as jnp

from gprl.algos import ALGORITHMS
from gprl.checkpoint import CHECKPOINT, CONFIG_JSON, CheckpointError
from gprl.configs import from_jsonable
from gprl.envs.chunked import Chunking, check_fits, chunked_spec
from gprl.pretrain import load_pretrained
from gprl.pretrained import ChunkPolicy, saved_pretrain_config
from gprl.rundir import saved_configs
from gprl.types import EnvSpec

INITIAL_POLICY_DIR = "initial_policy"


def keep_initial_policy(init: Path, run_dir: Path) -> None:
    kept = run_dir / INITIAL_POLICY_DIR
    if (kept / CHECKPOINT).is_dir():
        return
    shutil.copytree(init / CHECKPOINT, kept / CHECKPOINT, dirs_exist_ok=True)
    if (init / CONFIG_JSON).is_file():
        shutil.copy2(init / CONFIG_JSON, kept / CONFIG_JSON)


def load_initial_policy(
    algo_name: str,
    use: str,
    init: Path | None,
    env_id: str,
    spec,
    run_dir=None,
    takes_chunks: bool = False,
):
    """The pretrained policy (gprl.pretrain.Pretrained) named by --init, checked against the
    task, or None; refuses --init for algorithms that cannot use it and its absence for those
    that need it (`use`: the algorithm's pretrained_policy), and policies of chunks or histories
    unless `takes_chunks`. A run directory's own copy of it comes first."""
    if init is None:
        if use == "required":
            raise ValueError(
                f"{algo_name} fine-tunes a pretrained policy: pass --init RUN_DIR, a "
                "`gprl pretrain` run on this task"
            )
        return None
    if use == "unused":
        raise ValueError(f"{algo_name} cannot start from a pretrained policy (--init {init})")
    kept = None if run_dir is None else Path(run_dir) / INITIAL_POLICY_DIR
    source = kept if kept is not None and (kept / CHECKPOINT).is_dir() else Path(init)
    try:
        pretrained = load_pretrained(source)
    except CheckpointError as e:
        raise CheckpointError(f"--init: {e}") from None
    if pretrained.config.obs_history > 1 and not takes_chunks:
        raise CheckpointError(
            f"--init {init} conditions on {pretrained.config.obs_history} observations "
            "(--obs-history); fine-tuning supports only policies of one observation for now"
        )
    if pretrained.env_id != env_id:
        raise CheckpointError(f"--init {init} was pretrained on {pretrained.env_id}, not {env_id}")
    shapes = (pretrained.obs_dim, pretrained.action_dim)
    if shapes != (spec.obs_dim, spec.action_dim):
        raise CheckpointError(
            f"--init {init} has observation and action sizes {shapes}, the env has "
            f"{(spec.obs_dim, spec.action_dim)}"
        )
    if pretrained.config.chunk_length > 1 and not takes_chunks:
        raise ValueError(
            f"{algo_name} fine-tunes policies of single actions; --init predicts chunks of "
            f"{pretrained.config.chunk_length} (pretrain with --chunk-length 1)"
        )
    return pretrained


class RunStart(NamedTuple):
    """What a run builds its algorithm from and opens its envs with, given its --init."""

    pretrained: Any
    """The policy to fine-tune (over the flat chunk for a chunked run), or None."""
    spec: EnvSpec
    """The task as the algorithm sees it (chunked for a chunked run)."""
    algo_config: Any
    """The algorithm's config, with the discount of one decision for a chunked run."""
    chunking: Chunking | None
    """How the run's envs execute chunks; None: one action per env step."""

    def decisions(self, total_steps: int) -> int:
        """The algorithm's budget in decisions: as many as fit in total_steps env steps (fewer
        env steps are taken where episodes end inside a chunk)."""
        return total_steps if self.chunking is None else total_steps // self.chunking.execute_steps

    def env_options(self) -> dict:
        """make_env options of every env the algorithm acts in."""
        return {} if self.chunking is None else {"chunking": self.chunking}


def run_start(algo_name: str, algorithm, algo_config, run, spec: EnvSpec, run_dir=None):
    """The RunStart of a run (a gprl.trainer.RunConfig) of `algorithm` (its class) on a task of
    this spec: its --init loaded and checked, and where the algorithm or the pretrained policy
    acts in chunks or conditions on a history, the chunk-executing envs it needs (EnvError in
    one line where the task does not fit them)."""
    pretrained = load_initial_policy(
        algo_name,
        algorithm.pretrained_policy,
        run.init,
        run.env,
        spec,
        run_dir,
        algorithm.fine_tunes_chunks,
    )
    pretrain_config = None if pretrained is None else pretrained.config
    chunking = run_chunking(algorithm, algo_config, pretrain_config)
    if chunking is None:
        return RunStart(pretrained, spec, algo_config, None)
    check_fits(spec, chunking)
    per_decision = algorithm.per_decision_config(algo_config, chunking.execute_steps)
    policy = None if pretrained is None else flat_chunk_policy(pretrained)
    return RunStart(policy, chunked_spec(spec, chunking), per_decision, chunking)


def run_chunking(algorithm, algo_config, pretrain_config=None) -> Chunking | None:
    """How a run of `algorithm` (its class) executes chunks: whole chunks of its own length
    (Algorithm.chunk_length), else as its --init's policy predicts them (pretrain_config, a
    PretrainConfig, or None); None: one action per env step. ValueError in one line where the
    algorithm has a length and the --init policy's chunks differ from it."""
    discount = algorithm.step_discount(algo_config)
    from_init = None if pretrain_config is None else chunking_of(pretrain_config, discount)
    own = algorithm.chunk_length(algo_config)
    if own is None:
        return from_init
    chunking = None if own == 1 else Chunking(own, own, 1, discount)
    if pretrain_config is not None and from_init != chunking:
        raise ValueError(
            f"--init predicts chunks of {pretrain_config.chunk_length} actions executing "
            f"{pretrain_config.execute_steps} (from {pretrain_config.obs_history} observations); "
            f"this method acts in whole chunks of {own} from one observation"
        )
    return chunking


def chunking_of(config, discount: float = 1.0) -> Chunking | None:
    """How envs execute the chunks of a pretrain run of this config (a PretrainConfig), summing
    rewards with `discount`; None for a policy of single actions and single observations."""
    if config.chunk_length == 1 and config.obs_history == 1:
        return None
    return Chunking(config.chunk_length, config.execute_steps, config.obs_history, discount)


def chunk_options(run_dir) -> dict:
    """make_env options that open envs as a `gprl train` run's algorithm saw them (to evaluate
    it): its chunk execution where its algorithm acts in chunks of its own or its kept initial
    policy predicts chunks or conditions on a history, else none."""
    saved = saved_configs(run_dir)
    entry = ALGORITHMS[saved["algo"]]
    kept = Path(run_dir) / INITIAL_POLICY_DIR
    pretrain_config = None
    if (kept / CHECKPOINT).is_dir():
        pretrain_config = saved_pretrain_config(saved_configs(kept))
    algo_config = from_jsonable(entry.config, saved["algo_config"])
    chunking = run_chunking(entry.algorithm, algo_config, pretrain_config)
    return {} if chunking is None else {"chunking": chunking}


def flat_chunk_policy(pretrained):
    """The pretrained policy seen as one of single actions and single observations: an action
    is its flat chunk of Ta x action_dim, an observation its history of H x obs_dim, with the
    normalisation statistics tiled to match (the same standardisation, per action and per
    observation, as the policy was trained with)."""
    config = pretrained.config
    chunk, history = config.chunk_length, config.obs_history
    obs_norm, action_norm = pretrained.acting["obs_norm"], pretrained.acting["action_norm"]
    acting = pretrained.acting | {
        "obs_norm": obs_norm | {key: jnp.tile(obs_norm[key], history) for key in ("mean", "var")},
        "action_norm": {key: jnp.tile(value, chunk) for key, value in action_norm.items()},
    }
    policy = pretrained.policy
    flat = ChunkPolicy(policy.policy, 1, policy.noise_dim, policy.noise_scale)
    single = dataclasses.replace(config, chunk_length=1, execute_steps=1, obs_history=1)
    return pretrained._replace(
        policy=flat,
        acting=acting,
        config=single,
        obs_dim=history * pretrained.obs_dim,
        action_dim=policy.noise_dim,
    )
