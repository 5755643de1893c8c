"""Run directories: creating one, replacing an old run safely, and reading a run's configs.

A run directory is gprl's own: `config.json` at its top and, once saved, `checkpoint/`. Only such
a directory is ever replaced (`--overwrite`), and only once its replacement exists: the old run is
moved aside to a hidden sibling, deleted when the new run saves its first checkpoint, and moved
back if the new run fails before that.

The configs saved with the checkpoint are the truth about a run (resume, eval, load and report
read them); `config.json` is their copy for people, and a copy edited by hand is refused rather
than silently ignored.
"""

import json
import os
import re
import shutil
from datetime import datetime
from pathlib import Path

from gprl.checkpoint import CHECKPOINT, CONFIG_JSON, CheckpointError, read_config
from gprl.types import EnvSpec


class RunDirError(ValueError):
    """A run directory cannot be created or replaced."""


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def default_run_dir(prefix: str, env_name: str, seed: int) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{prefix}-{slug(env_name)}-s{seed}-{stamp}"


def is_run_directory(path: Path) -> bool:
    """Whether gprl wrote this directory: its config.json, or its checkpoint, says so."""
    path = Path(path)
    if (path / CHECKPOINT / CONFIG_JSON).is_file():
        return True
    try:
        return "gprl_version" in json.loads((path / CONFIG_JSON).read_text())
    except (OSError, ValueError, TypeError):
        return False


def has_checkpoint(run_dir: Path) -> bool:
    try:
        read_config(run_dir)
    except CheckpointError:
        return False
    return True


def saved_configs(run_dir: Path) -> dict:
    """The configs of a run: those saved with its checkpoint, or its config.json when it stopped
    before the first checkpoint. A config.json that disagrees with the checkpoint's is refused."""
    path = Path(run_dir) / CONFIG_JSON
    try:
        saved = read_config(run_dir)
    except CheckpointError:
        if not path.is_file():
            raise
        return _read_config_json(path)
    if path.is_file() and _comparable(_read_config_json(path)) != _comparable(saved):
        raise CheckpointError(
            f"{path} differs from the config saved with the checkpoint (edited by hand?); the "
            "checkpoint's is the one gprl uses: restore config.json or start a new run"
        )
    return saved


# Run options that a resumed run sets anew: its checkpoint records them, config.json does not.
# Env worker processes leave results unchanged, so a run may resume with other ones.
RESUME_OPTIONS = ("resume", "out", "progress", "overwrite", "env_workers")


def _comparable(record: dict) -> dict:
    run = record.get("run")
    if not isinstance(run, dict):
        return record
    return record | {"run": {k: v for k, v in run.items() if k not in RESUME_OPTIONS}}


def _read_config_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"unreadable run config {path}: {e}") from None


class RunDirectory:
    """A run's directory while it trains. Used as a context manager around training: leaving it
    with an exception before `keep` puts a replaced run back."""

    def __init__(self, path: Path, replaced: Path | None = None):
        self.path = Path(path)
        self._replaced = replaced

    @classmethod
    def create(cls, path: Path, overwrite: bool) -> "RunDirectory":
        """A fresh directory at `path`; an existing gprl run there is moved aside if `overwrite`.
        Anything else found there is never touched."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise RunDirError(f"--out {path} is an existing file, not a run directory")
        replaced = None
        if path.is_dir() and any(path.iterdir()):
            replaced = cls._move_aside(path, overwrite)
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / ".gprl-write-test"
            probe.touch()
            probe.unlink()
        except OSError as e:
            if replaced is not None:
                replaced.rename(path)
            raise RunDirError(f"cannot write the run directory {path}: {e.strerror}") from None
        return cls(path, replaced)

    @staticmethod
    def _move_aside(path: Path, overwrite: bool) -> Path:
        if not overwrite:
            raise FileExistsError(
                f"run directory {path} already exists; pass --resume {path} to continue it or "
                "--overwrite to replace it"
            )
        if not is_run_directory(path):
            found = ", ".join(sorted(p.name for p in path.iterdir())[:3])
            raise RunDirError(
                f"--overwrite replaces only gprl run directories, and {path} holds other files "
                f"({found}, ...); choose another --out"
            )
        if Path.cwd().resolve().is_relative_to(path.resolve()):
            raise RunDirError(f"--overwrite cannot replace {path}: it holds the current directory")
        aside = path.with_name(f".{path.name}.replaced-{os.getpid()}")
        try:
            path.rename(aside)
        except OSError as e:
            raise RunDirError(f"cannot move the old run {path} aside: {e.strerror}") from None
        return aside

    @property
    def replaces_a_run(self) -> bool:
        return self._replaced is not None

    def keep(self) -> None:
        """The new run has saved a checkpoint: the run it replaces goes."""
        if self._replaced is not None:
            shutil.rmtree(self._replaced, ignore_errors=True)
            self._replaced = None

    def restore_replaced(self) -> None:
        """The new run failed before saving anything: put the old run back where it was."""
        if self._replaced is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self._replaced.rename(self.path)
            self._replaced = None

    def __enter__(self) -> "RunDirectory":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.keep()
        else:
            self.restore_replaced()


def identity(algo_name: str, env_id: str, spec: EnvSpec, demos=None) -> dict:
    """Checkpoint fields that must match the run that loads it."""
    fields = {
        "algo": algo_name,
        "env_id": env_id,
        "obs_dim": spec.obs_dim,
        "action_dim": spec.action_dim,
    }
    if demos is not None:
        fields["dataset_sha256"] = demos.sha256
    return fields
