"""Demonstration datasets in the Minari format, read and written through the `minari` package.

Datasets live in Minari's data path (``~/.minari/datasets``, or ``MINARI_DATASETS_PATH``) under
ids of the form ``[namespace/]name-vN``. gprl reads any dataset with a bounded Box action space
and Box (or Dict-of-Box) observations and turns it into flat float32 arrays, observations as gprl's
envs produce them (Dict keys in sorted order) and actions rescaled from the dataset's action
bounds to [-1, 1], the range every gprl policy acts in.

Success: where episodes record it, each step's success is the Minari episode's
``infos["success"]`` ((T + 1,) bool, entry 0 for the reset, as Minari keeps infos), read back as
``Demonstrations.episode_successes`` (an episode succeeded if any step did; Gymnasium-Robotics'
``infos["is_success"]`` counts too).

:mod:`gprl.dataset_writer` writes them.
"""

import hashlib
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
from gymnasium import spaces

from gprl.types import EnvSpec


class DatasetError(ValueError):
    """A dataset is missing, malformed, empty or does not fit the env; one line says why."""


class Episode(NamedTuple):
    """One recorded episode: observations (T + 1, obs_dim) with the final one, actions (T, d) in
    the env's units, rewards, terminations and truncations (T,)."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminations: np.ndarray
    truncations: np.ndarray
    successes: np.ndarray | None = None
    """(T,) bool: the env reported success on the step; None where the env does not report it."""

    @property
    def succeeded(self) -> bool:
        """Some step of the episode reported success."""
        return self.successes is not None and bool(np.any(self.successes))


class Demonstrations(NamedTuple):
    """A dataset as gprl trains on it: steps of all episodes concatenated in order."""

    dataset_id: str
    env_id: str | None
    """The id of the env the dataset records, if it records one."""
    obs: np.ndarray
    """(N, obs_dim) float32, flattened as gprl's envs flatten observations."""
    actions: np.ndarray
    """(N, action_dim) float32 in [-1, 1] (the dataset's action bounds mapped onto it)."""
    episode_lengths: np.ndarray
    """(E,) steps of each episode; episodes are consecutive in obs and actions."""
    episode_returns: np.ndarray
    """(E,) undiscounted return of each episode."""
    rewards: np.ndarray
    """(N,) float32 reward of each step."""
    terminations: np.ndarray
    """(N,) bool: the step ended its episode in a terminal state (no bootstrap)."""
    truncations: np.ndarray
    """(N,) bool: the step's episode was cut (time limit), its value still bootstrapped."""
    next_obs: np.ndarray
    """(N, obs_dim) float32 observation after each step."""
    action_low: np.ndarray
    action_high: np.ndarray
    sha256: str
    """Checksum of the observations and actions (a resumed run checks it is the same data)."""
    episode_successes: np.ndarray | None = None
    """(E,) bool: some step of the episode reported success; None unless every episode records
    success (``infos["success"]`` or ``infos["is_success"]``)."""
    step_successes: np.ndarray | None = None
    """(N,) bool: the step reported success; None unless every episode records success."""

    @property
    def obs_dim(self) -> int:
        return self.obs.shape[1]

    def transitions(self) -> dict:
        """The steps as the replay buffer's offline region takes them
        (:data:`gprl.replay.DATASET_FIELDS`)."""
        return {
            "obs": self.obs,
            "action": self.actions,
            "reward": self.rewards,
            "terminated": self.terminations,
            "truncated": self.truncations,
            "next_obs": self.next_obs,
        }

    @property
    def action_dim(self) -> int:
        return self.actions.shape[1]


def import_minari():
    # minari prints nothing useful for gprl's users in its warnings (missing author, ...).
    warnings.filterwarnings("ignore", module="minari")
    import minari

    return minari


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def datasets_root() -> Path:
    """Where Minari keeps datasets (MINARI_DATASETS_PATH, else ~/.minari/datasets), created if
    missing; DatasetError (one line) if it cannot be."""
    from minari.storage.datasets_root_dir import get_dataset_path

    try:
        return Path(get_dataset_path())
    except OSError as exc:
        raise DatasetError(f"cannot use the dataset folder: {os_reason(exc)}") from None


def check_datasets_writable() -> Path:
    """The dataset folder, once a dataset could be written there (DatasetError otherwise): a
    collection checks it before recording rather than failing after."""
    root = datasets_root()
    try:
        tempfile.TemporaryDirectory(prefix=".gprl-check-", dir=root).cleanup()
    except OSError as exc:
        raise DatasetError(f"cannot write datasets: {os_reason(exc, root)}") from None
    return root


def os_reason(exc: OSError, folder: Path | None = None) -> str:
    # Names the folder and where its path came from: the user may not know Minari's default.
    setting = "MINARI_DATASETS_PATH" if "MINARI_DATASETS_PATH" in os.environ else "Minari default"
    where = folder or exc.filename
    return f"{where}: {exc.strerror or first_line(exc)} ({setting})"


def check_dataset_id(dataset_id: str) -> str:
    """dataset_id if it is a valid Minari id with a version, else DatasetError."""
    from minari.dataset.minari_dataset import DATASET_ID_RE

    match = DATASET_ID_RE.fullmatch(dataset_id or "")
    if match is None or match.group("version") is None:
        raise DatasetError(
            f"invalid dataset id {dataset_id!r}: Minari ids look like [namespace/]name-vN, "
            "e.g. hopper/expert-v0"
        )
    return dataset_id


def dataset_path(dataset_id: str) -> Path:
    return datasets_root() / check_dataset_id(dataset_id)


def _flat_dim(space, dataset_id: str, what: str) -> int:
    if isinstance(space, spaces.Box):
        return math.prod(space.shape)
    if isinstance(space, spaces.Dict) and all(
        isinstance(sub, spaces.Box) for sub in space.spaces.values()
    ):
        return sum(math.prod(sub.shape) for sub in space.spaces.values())
    raise DatasetError(f"dataset {dataset_id} has {what} space {space}; gprl needs Box")


def _flatten(observations, length: int) -> np.ndarray:
    if isinstance(observations, dict):
        parts = [np.asarray(observations[k]).reshape(length, -1) for k in sorted(observations)]
        return np.concatenate(parts, axis=1, dtype=np.float32)
    return np.asarray(observations, np.float32).reshape(length, -1)


def _check_action_space(space, dataset_id: str) -> spaces.Box:
    if not isinstance(space, spaces.Box) or not np.issubdtype(space.dtype, np.floating):
        raise DatasetError(f"dataset {dataset_id} has action space {space}; gprl needs a float Box")
    if len(space.shape) != 1:
        raise DatasetError(f"dataset {dataset_id} has action space {space}; gprl needs a 1-D Box")
    if not (np.isfinite(space.low).all() and np.isfinite(space.high).all()):
        raise DatasetError(
            f"dataset {dataset_id} has an unbounded action space {space}; gprl needs bounds to "
            "map actions onto [-1, 1]"
        )
    if not (space.high > space.low).all():
        raise DatasetError(f"dataset {dataset_id} has an empty action range in {space}")
    return space


def load_demonstrations(dataset_id: str) -> Demonstrations:
    """Read a Minari dataset and check its schema; DatasetError (one line) if it is missing,
    unreadable, not Box, empty, non-finite or has actions outside its action space.

    Minari's HDF5 file holds each episode in its own group, read at ~1.5 ms apiece here, so the
    last dataset read stays in memory, its arrays read-only, and is returned again while its
    files are unchanged (runs after runs on one dataset, in a notebook or a test module)."""
    files = _files_identity(dataset_path(dataset_id))
    if files is not None and _LAST_READ.get("source") == (dataset_id, files):
        return _LAST_READ["demonstrations"]
    demonstrations = _read_demonstrations(dataset_id)
    _LAST_READ.clear()
    if files is not None:
        _LAST_READ.update(source=(dataset_id, files), demonstrations=demonstrations)
    return demonstrations


_LAST_READ: dict = {}
"""The last dataset load_demonstrations read ("demonstrations"), its id and its files'
identity ("source")."""


def _files_identity(path: Path) -> tuple | None:
    """Path, inode, modification time and size of each file of the dataset; None if absent."""
    try:
        files = sorted(p for p in path.rglob("*") if p.is_file())
        stats = [(str(p.resolve()), p.stat()) for p in files]
    except OSError:
        return None
    if not stats:
        return None
    return tuple((name, s.st_ino, s.st_mtime_ns, s.st_size) for name, s in stats)


def _read_demonstrations(dataset_id: str) -> Demonstrations:
    dataset, env_id, obs_dim, action_space = _open_dataset(dataset_id)
    episodes = _read_episodes(dataset, dataset_id, obs_dim, action_space.shape[0])
    obs = np.concatenate([episode.observations[:-1] for episode in episodes])
    unit_actions = _unit_actions(
        np.concatenate([episode.actions for episode in episodes]), action_space, dataset_id
    )
    digest = hashlib.sha256(obs.tobytes() + unit_actions.tobytes()).hexdigest()
    demonstrations = Demonstrations(
        dataset_id=dataset_id,
        env_id=env_id,
        obs=obs,
        actions=unit_actions,
        episode_lengths=np.asarray([len(e.rewards) for e in episodes], np.int64),
        episode_returns=np.asarray([e.rewards.sum() for e in episodes], np.float64),
        rewards=np.concatenate([e.rewards.astype(np.float32) for e in episodes]),
        terminations=np.concatenate([e.terminations for e in episodes]),
        truncations=np.concatenate([e.truncations for e in episodes]),
        next_obs=np.concatenate([e.observations[1:] for e in episodes]),
        action_low=action_space.low.astype(np.float32),
        action_high=action_space.high.astype(np.float32),
        sha256=digest,
        episode_successes=_episode_successes(episodes),
        step_successes=_step_successes_of(episodes),
    )
    for field in demonstrations:
        if isinstance(field, np.ndarray):
            field.flags.writeable = False
    return demonstrations


def read_episodes(dataset_id: str) -> list[Episode]:
    """The dataset's episodes as recorded (observations flat, actions in the env's units), to
    filter or combine into a new dataset with `write_dataset`; DatasetError (one line) as
    `load_demonstrations`."""
    dataset, _, obs_dim, action_space = _open_dataset(dataset_id)
    return _read_episodes(dataset, dataset_id, obs_dim, action_space.shape[0])


def _step_successes_of(episodes: list[Episode]) -> np.ndarray | None:
    if any(episode.successes is None for episode in episodes):
        return None
    return np.concatenate([np.asarray(episode.successes, bool) for episode in episodes])


def _episode_successes(episodes: list[Episode]) -> np.ndarray | None:
    if any(episode.successes is None for episode in episodes):
        return None
    return np.asarray([episode.succeeded for episode in episodes])


def _open_dataset(dataset_id: str):
    """The Minari dataset, the id of the env it records (or None), its flat observation size
    and its checked action space; DatasetError if it is missing or unreadable."""
    path = dataset_path(dataset_id)
    if not (path / "data").is_dir():
        raise DatasetError(
            f"no Minari dataset {dataset_id!r} in {datasets_root()} (MINARI_DATASETS_PATH "
            "chooses the folder; `gprl collect` records one)"
        )
    minari = import_minari()
    try:
        dataset = minari.load_dataset(dataset_id)
        obs_space, action_space = dataset.observation_space, dataset.action_space
        env_spec = dataset.env_spec
    except Exception as exc:  # h5py, json and minari raise many types on corrupt files
        raise DatasetError(f"cannot read dataset {dataset_id}: {first_line(exc)}") from None
    obs_dim = _flat_dim(obs_space, dataset_id, "observation")
    action_space = _check_action_space(action_space, dataset_id)
    return dataset, None if env_spec is None else env_spec.id, obs_dim, action_space


def _read_episodes(dataset, dataset_id: str, obs_dim: int, action_dim: int) -> list[Episode]:
    """The dataset's non-empty episodes, flat and checked; DatasetError if there are none or
    one cannot be read."""
    try:
        episodes = [
            _read_episode(episode, number, dataset_id, obs_dim, action_dim)
            for number, episode in enumerate(dataset.iterate_episodes())
            if len(episode.rewards) > 0
        ]
    except DatasetError:
        raise
    except Exception as exc:
        raise DatasetError(f"cannot read dataset {dataset_id}: {first_line(exc)}") from None
    if not episodes:
        raise DatasetError(f"dataset {dataset_id} is empty (no steps)")
    return episodes


def _read_episode(episode, number: int, dataset_id: str, obs_dim: int, action_dim: int) -> Episode:
    """One Minari episode as an Episode of flat arrays (float64 rewards); DatasetError if its
    sizes are not its spaces' or a value is not finite."""
    length = len(episode.rewards)
    observations = _flatten(episode.observations, length + 1)
    actions = np.asarray(episode.actions, np.float32).reshape(length, -1)
    rewards = np.asarray(episode.rewards, np.float64)
    if observations.shape[1] != obs_dim or actions.shape[1] != action_dim:
        raise DatasetError(
            f"dataset {dataset_id} episode {number} has observations of size "
            f"{observations.shape[1]} and actions of size {actions.shape[1]}; its spaces "
            f"say {obs_dim} and {action_dim}"
        )
    for name, values in (
        ("observations", observations),
        ("actions", actions),
        ("rewards", rewards),
    ):
        if not np.isfinite(values).all():
            raise DatasetError(f"dataset {dataset_id} has non-finite {name} (episode {number})")
    return Episode(
        observations,
        actions,
        rewards,
        np.asarray(episode.terminations, bool).reshape(length),
        np.asarray(episode.truncations, bool).reshape(length),
        _step_successes(episode.infos, length),
    )


def _step_successes(infos: dict, length: int) -> np.ndarray | None:
    """(length,) bool success of each step from a Minari episode's infos, or None if they do
    not record it per step."""
    for key in ("success", "is_success"):
        values = np.asarray((infos or {}).get(key, ()))
        if values.ndim == 1 and len(values) in (length, length + 1):
            # Minari keeps the reset's info first; without it the values are the steps' own.
            return values[-length:].astype(bool)
    return None


def _unit_actions(actions: np.ndarray, action_space: spaces.Box, dataset_id: str) -> np.ndarray:
    """actions mapped from the action space's bounds onto [-1, 1] (float32); DatasetError if
    one lies outside the bounds by more than a rounding error."""
    low, high = action_space.low.astype(np.float32), action_space.high.astype(np.float32)
    # Stored actions may sit a rounding error outside their bounds; more than that is an error.
    tolerance = 1e-4 * (high - low)
    if (actions < low - tolerance).any() or (actions > high + tolerance).any():
        raise DatasetError(
            f"dataset {dataset_id} has actions outside its action space {action_space}"
        )
    unit = np.clip(2.0 * (actions - low) / (high - low) - 1.0, -1.0, 1.0)
    return unit.astype(np.float32)


def check_fits_env(demos: Demonstrations, spec: EnvSpec) -> None:
    """DatasetError unless the dataset's observations and actions have the env's shapes and its
    action bounds are the env's (actions are rescaled through them)."""
    if demos.obs_dim != spec.obs_dim:
        raise DatasetError(
            f"dataset {demos.dataset_id} has observations of size {demos.obs_dim}; "
            f"{spec.env_id} has {spec.obs_dim}"
        )
    if demos.action_dim != spec.action_dim:
        raise DatasetError(
            f"dataset {demos.dataset_id} has actions of size {demos.action_dim}; "
            f"{spec.env_id} has {spec.action_dim}"
        )
    if not (
        np.allclose(demos.action_low, spec.action_low)
        and np.allclose(demos.action_high, spec.action_high)
    ):
        raise DatasetError(
            f"dataset {demos.dataset_id} has action bounds [{demos.action_low}, "
            f"{demos.action_high}]; {spec.env_id} has [{spec.action_low}, {spec.action_high}]"
        )


def check_records_env(demos: Demonstrations, env_id: str) -> None:
    """DatasetError if the dataset records an env other than env_id: its rewards and
    transitions would teach a critic the wrong task."""
    if demos.env_id is not None and demos.env_id != env_id:
        raise DatasetError(f"dataset {demos.dataset_id} records {demos.env_id}, not {env_id}")
