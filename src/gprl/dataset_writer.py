"""Writing demonstration datasets in the Minari format (:mod:`gprl.datasets` reads them).

Observations are stored flat, actions in the env's units; a write goes to a hidden folder beside
the datasets and is renamed into place when complete, so a failed or interrupted collection
leaves no dataset behind and never replaces one.
"""

import contextlib
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from gymnasium import spaces

from gprl.datasets import (
    DatasetError,
    Episode,
    dataset_path,
    datasets_root,
    first_line,
    import_minari,
    os_reason,
)
from gprl.types import EnvSpec


@contextlib.contextmanager
def _minari_root(path: Path):
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(path)
    try:
        yield
    finally:
        if previous is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous


def write_dataset(
    dataset_id: str,
    episodes: list[Episode],
    spec: EnvSpec,
    description: str,
    algorithm_name: str,
    metadata: dict | None = None,
) -> Path:
    """Write episodes as a Minari dataset for the env of `spec`; returns its folder.

    Observations are stored flat (Box of size obs_dim), actions in the env's units, each
    episode's successes (if recorded) as its ``infos["success"]``; `metadata` (JSON types) is
    added to the dataset's metadata (``minari.load_dataset(id).storage.metadata``). The dataset
    is built in a hidden folder and renamed into place, so nothing is left on failure and an
    existing dataset is never replaced (DatasetError)."""
    final = dataset_path(dataset_id)
    if final.exists():
        raise DatasetError(f"dataset {dataset_id} already exists in {datasets_root()}")
    if not episodes:
        raise DatasetError(f"no episodes to write to {dataset_id}")
    from minari.dataset.minari_dataset import parse_dataset_id
    from minari.namespace import create_namespace, list_local_namespaces

    try:
        root = datasets_root()
        staging = Path(tempfile.mkdtemp(prefix=".gprl-writing-", dir=root))
    except OSError as exc:
        raise DatasetError(f"cannot write dataset {dataset_id}: {os_reason(exc, root)}") from None
    try:
        with _minari_root(staging):
            _create(dataset_id, episodes, spec, description, algorithm_name, metadata or {})
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            (staging / dataset_id).rename(final)
        except OSError as exc:
            raise DatasetError(f"cannot move dataset {dataset_id} into place: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    namespace = parse_dataset_id(dataset_id)[0]
    if namespace is not None and namespace not in list_local_namespaces():
        create_namespace(namespace)
    return final


def _create(dataset_id, episodes, spec: EnvSpec, description, algorithm_name, metadata) -> None:
    """minari.create_dataset_from_buffers, its errors in one line."""
    buffers = [_buffer(number, episode) for number, episode in enumerate(episodes)]
    try:
        dataset = import_minari().create_dataset_from_buffers(
            dataset_id,
            buffers,
            env=_minari_env(spec.env_id),
            observation_space=spaces.Box(-np.inf, np.inf, (spec.obs_dim,), np.float32),
            action_space=spaces.Box(
                spec.action_low, spec.action_high, (spec.action_dim,), np.float32
            ),
            algorithm_name=algorithm_name,
            description=description,
        )
        dataset.storage.update_metadata(metadata)
    except Exception as exc:  # minari, gymnasium and h5py raise many types
        raise DatasetError(f"cannot write dataset {dataset_id}: {first_line(exc)}") from None


def _buffer(number: int, episode: Episode):
    from minari.data_collector.episode_buffer import EpisodeBuffer

    # Minari keeps one info per observation, the reset's first: nothing has succeeded there.
    infos = None if episode.successes is None else {"success": np.r_[False, episode.successes]}
    return EpisodeBuffer(
        id=number,
        observations=np.asarray(episode.observations, np.float32),
        actions=np.asarray(episode.actions, np.float32),
        rewards=np.asarray(episode.rewards, np.float64),
        terminations=np.asarray(episode.terminations, bool),
        truncations=np.asarray(episode.truncations, bool),
        infos=infos,
    )


def _minari_env(env_id: str | None):
    """The env as Minari records it: its id, which Gymnasium makes (None: a dataset that records
    no env); a Meta-World or OGBench id, which Gymnasium does not know, as a spec with gprl's
    builder, so that `dataset.env_spec.id` still names it and Minari's `recover_environment()`
    builds it; an env registered with a class or function (which Gymnasium cannot serialise) as
    a spec naming it by import path."""
    import gymnasium
    from gymnasium.envs.registration import EnvSpec as GymnasiumSpec

    from gprl.envs.metaworld import is_metaworld_id
    from gprl.envs.ogbench import is_ogbench_id

    if env_id is None:
        return None
    if is_metaworld_id(env_id) or is_ogbench_id(env_id):
        module = "metaworld" if is_metaworld_id(env_id) else "ogbench"
        builder = f"gprl.envs.{module}:make_{module}_env"
        return GymnasiumSpec(id=env_id, entry_point=builder, kwargs={"env_id": env_id})
    registered = gymnasium.registry.get(env_id)
    if registered is None or not callable(registered.entry_point):
        return env_id
    maker = registered.entry_point
    return replace(registered, entry_point=f"{maker.__module__}:{maker.__qualname__}")
