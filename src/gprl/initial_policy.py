"""The policy a run starts from (`--init PRETRAIN_RUN`): loaded, checked against the task, and
kept in the run directory (RUN_DIR/initial_policy) so that resuming and evaluating the run never
need the pretrain run again."""

import shutil
from pathlib import Path

from gprl.checkpoint import CHECKPOINT, CONFIG_JSON, CheckpointError
from gprl.pretrain import load_pretrained

INITIAL_POLICY_DIR = "initial_policy"


def keep_initial_policy(init: Path, run_dir: Path) -> None:
    kept = run_dir / INITIAL_POLICY_DIR
    if (kept / CHECKPOINT).is_dir():
        return
    shutil.copytree(init / CHECKPOINT, kept / CHECKPOINT, dirs_exist_ok=True)
    if (init / CONFIG_JSON).is_file():
        shutil.copy2(init / CONFIG_JSON, kept / CONFIG_JSON)


def load_initial_policy(
    algo_name: str, use: str, init: Path | None, env_id: str, spec, run_dir=None
):
    """The pretrained policy (gprl.pretrain.Pretrained) named by --init, checked against the
    task, or None; refuses --init for algorithms that cannot use it and its absence for those
    that need it (`use`: the algorithm's pretrained_policy). A run directory's own copy of it
    comes first."""
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
    if pretrained.config.obs_history > 1:
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
    return pretrained
