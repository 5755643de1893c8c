"""Checkpoints: one folder holding the whole training state, written atomically.

RUN_DIR/checkpoint/
  state.msgpack  params, optimiser state, RNG key, normalisation stats (flax msgpack)
  meta.json      algorithm, env, shapes, progress counters and the SHA-256 of state.msgpack
  config.json    the full run configuration
A save writes a sibling temporary folder and swaps it in with renames, so an interrupted save
leaves the previous checkpoint readable.
"""

import hashlib
import json
import os
import shutil
from pathlib import Path

import jax
import numpy as np
from flax import serialization

CHECKPOINT = "checkpoint"
CONFIG_JSON = "config.json"
_TMP = ".checkpoint.tmp"
_OLD = ".checkpoint.old"
FORMAT_VERSION = 2


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or does not match the requested run."""


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(run_dir: Path, state, meta: dict, config: dict) -> Path:
    """Write the checkpoint; CheckpointError (the previous checkpoint untouched) if the disk is
    full or the run directory unwritable."""
    run_dir = Path(run_dir)
    tmp, old, final = run_dir / _TMP, run_dir / _OLD, run_dir / CHECKPOINT
    payload = serialization.msgpack_serialize(serialization.to_state_dict(jax.device_get(state)))
    meta = meta | {"format": FORMAT_VERSION, "sha256": hashlib.sha256(payload).hexdigest()}
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        _write_synced(tmp / "state.msgpack", payload)
        _write_synced(tmp / "meta.json", json.dumps(meta, indent=2).encode())
        _write_synced(tmp / CONFIG_JSON, json.dumps(config, indent=2).encode())
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        previous = "the previous checkpoint is intact" if final.exists() else "no checkpoint yet"
        raise CheckpointError(
            f"could not write a checkpoint in {run_dir} ({e.strerror or e}); {previous}"
        ) from None
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)
    return final


def checkpoint_dir(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    for name in (CHECKPOINT, _OLD):  # .old survives a crash between the two renames of a save
        if (run_dir / name / "meta.json").exists():
            return run_dir / name
    raise CheckpointError(f"no checkpoint in {run_dir}")


def _read_json(run_dir: Path, name: str) -> dict:
    path = checkpoint_dir(run_dir) / name
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"unreadable checkpoint file {path}: {e}") from None


def read_meta(run_dir: Path) -> dict:
    return _read_json(run_dir, "meta.json")


def read_config(run_dir: Path) -> dict:
    return _read_json(run_dir, CONFIG_JSON)


def load_checkpoint(run_dir: Path, template, expect: dict):
    """Restore a state with the structure of `template`; `expect` lists meta fields that must
    match (e.g. algo, env_id, obs_dim). Returns (state, meta)."""
    folder = checkpoint_dir(run_dir)
    meta = read_meta(run_dir)
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {folder} has format {meta.get('format')}; this gprl reads format "
            f"{FORMAT_VERSION} (written by gprl {meta.get('gprl_version', '?')})"
        )
    for field, wanted in expect.items():
        if meta.get(field) != wanted:
            raise CheckpointError(
                f"checkpoint in {folder} has {field}={meta.get(field)!r}, expected {wanted!r}"
            )
    try:
        payload = (folder / "state.msgpack").read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read {folder / 'state.msgpack'}: {e}") from None
    if hashlib.sha256(payload).hexdigest() != meta.get("sha256"):
        raise CheckpointError(f"checkpoint {folder} is corrupt (checksum mismatch)")
    try:
        restored = serialization.from_state_dict(template, serialization.msgpack_restore(payload))
    except Exception as e:  # flax raises ValueError/KeyError/TypeError on structure mismatch
        raise CheckpointError(
            f"checkpoint {folder} does not match this configuration: {e}".splitlines()[0]
        ) from None
    template_leaves = jax.tree_util.tree_leaves_with_path(template)
    restored_leaves = jax.tree.leaves(restored)
    for (path, expected), actual in zip(template_leaves, restored_leaves, strict=True):
        if np.shape(expected) != np.shape(actual):
            raise CheckpointError(
                f"checkpoint {folder} does not match this configuration: "
                f"{jax.tree_util.keystr(path)} has shape {np.shape(actual)}, "
                f"expected {np.shape(expected)}"
            )
    return restored, meta
