"""Minari datasets: `gprl collect` from trained runs, schema checks, nothing written on failure."""

import hashlib
import shutil
import warnings

import gymnasium as gym
import jax
import numpy as np
import pytest

from gprl.algos import PPOConfig
from gprl.cli import main
from gprl.collect import CollectArgs, collect
from gprl.dataset_writer import write_dataset
from gprl.datasets import DatasetError, Episode, dataset_path, load_demonstrations, read_episodes
from gprl.trainer import RunConfig, load_run, train
from gprl.types import EnvSpec

# Every test here writes its datasets to a fresh folder (conftest.minari_root).
pytestmark = pytest.mark.usefixtures("minari_root")


@pytest.fixture(scope="module")
def pendulum_run(tmp_path_factory):
    """A (barely) trained PPO run on Pendulum-v1, whose actions span [-2, 2]."""
    out = tmp_path_factory.mktemp("pendulum") / "run"
    config = PPOConfig(rollout_steps=32, num_minibatches=2)
    run = RunConfig(env="Pendulum-v1", total_steps=64, num_envs=2, out=out, progress=False)
    return train("ppo", run, config)


def test_collect_records_the_policy_actions_in_env_units(pendulum_run):
    result = collect(CollectArgs(pendulum_run, "pendulum/expert-v0", episodes=3, num_envs=2))
    assert (result.episodes, result.steps) == (3, 600)  # Pendulum's 200-step time limit
    import minari

    dataset = minari.load_dataset("pendulum/expert-v0")
    assert dataset.env_spec.id == "Pendulum-v1" and dataset.total_episodes == 3
    algo, state, _ = load_run(pendulum_run)
    act = jax.jit(algo.act_deterministic)
    for episode in dataset.iterate_episodes():
        expected = 2.0 * np.clip(
            np.asarray(act(algo.acting_params(state), episode.observations[:-1])), -1, 1
        )
        np.testing.assert_allclose(episode.actions, expected, atol=1e-5)
    # gprl reads them back in [-1, 1], as its policies act.
    demos = load_demonstrations("pendulum/expert-v0")
    assert np.abs(demos.actions).max() <= 1.0
    assert demos.episode_returns.mean() == pytest.approx(result.mean_return)


def test_collect_adds_gaussian_action_noise_of_the_given_scale(pendulum_run):
    collect(CollectArgs(pendulum_run, "pendulum/noisy-v0", episodes=4, action_noise=0.2, seed=3))
    demos = load_demonstrations("pendulum/noisy-v0")
    algo, state, _ = load_run(pendulum_run)
    clean = np.asarray(algo.act_deterministic(algo.acting_params(state), demos.obs))
    unclipped = np.abs(demos.actions) < 0.999
    residual = (demos.actions - clean)[unclipped]
    assert 0.17 < residual.std() < 0.23 and abs(residual.mean()) < 0.03


def files_digest(folder):
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_collect_never_replaces_or_half_writes_a_dataset(
    pendulum_run, minari_root, monkeypatch, capsys
):
    collect(CollectArgs(pendulum_run, "pendulum/kept-v0", episodes=1))
    before = files_digest(dataset_path("pendulum/kept-v0"))
    with pytest.raises(SystemExit) as exit_info:
        main(["collect", str(pendulum_run), "--episodes", "1", "--out", "pendulum/kept-v0"])
    assert exit_info.value.code == 2
    assert "already exists" in capsys.readouterr().err
    assert files_digest(dataset_path("pendulum/kept-v0")) == before

    import minari

    real_create = minari.create_dataset_from_buffers

    def fail_half_way(*args, **kwargs):
        real_create(*args, **kwargs)  # the files are written, then the disk "fills up"
        raise OSError("No space left on device")

    monkeypatch.setattr(minari, "create_dataset_from_buffers", fail_half_way)
    with pytest.raises(DatasetError, match="No space left"):
        collect(CollectArgs(pendulum_run, "pendulum/failed-v0", episodes=1))
    assert not dataset_path("pendulum/failed-v0").exists()
    leftovers = [p.name for p in minari_root.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def write_raw(
    dataset_id, observations, actions, action_space=None, obs_space=None, env=None, infos=None
):
    """A Minari dataset written straight through minari (one episode), any content."""
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    steps = len(actions)
    buffers = (
        []
        if steps == 0
        else [
            EpisodeBuffer(
                id=0,
                observations=np.asarray(observations),
                actions=np.asarray(actions),
                rewards=np.zeros(steps),
                terminations=np.r_[np.zeros(steps - 1, bool), True],
                truncations=np.zeros(steps, bool),
                infos=infos,
            )
        ]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        minari.create_dataset_from_buffers(
            dataset_id,
            buffers,
            env=env,
            observation_space=obs_space
            or gym.spaces.Box(-1, 1, np.shape(observations)[1:], np.float32),
            action_space=action_space or gym.spaces.Box(-1, 1, np.shape(actions)[1:], np.float32),
        )
    return dataset_id


def good_contextual(dataset_id):
    obs = np.zeros((4, 3), np.float32)
    return write_raw(dataset_id, obs, np.zeros((3, 2), np.float32), env="gprl/ContextualTarget-v0")


def corrupt(dataset_id):
    good_contextual(dataset_id)
    (dataset_path(dataset_id) / "data" / "main_data.hdf5").write_bytes(b"not an hdf5 file")
    return dataset_id


BAD_DATASETS = {
    "missing": (lambda name: name, "no Minari dataset"),
    "malformed": (corrupt, "cannot read dataset"),
    "empty": (
        lambda name: write_raw(name, np.zeros((0, 3), np.float32), np.zeros((0, 2), np.float32)),
        "is empty",
    ),
    "obs-shape": (
        lambda name: write_raw(name, np.zeros((4, 5), np.float32), np.zeros((3, 2), np.float32)),
        "observations of size 5; gprl/ContextualTarget-v0 has 3",
    ),
    "action-shape": (
        lambda name: write_raw(name, np.zeros((4, 3), np.float32), np.zeros((3, 4), np.float32)),
        "actions of size 4; gprl/ContextualTarget-v0 has 2",
    ),
    "nan": (
        lambda name: write_raw(
            name, np.full((4, 3), np.nan, np.float32), np.zeros((3, 2), np.float32)
        ),
        "non-finite observations",
    ),
    "discrete": (
        lambda name: write_raw(
            name,
            np.zeros((4, 3), np.float32),
            np.zeros(3, np.int64),
            action_space=gym.spaces.Discrete(3),
        ),
        "gprl needs a float Box",
    ),
    "out-of-bounds": (
        lambda name: write_raw(
            name, np.zeros((4, 3), np.float32), np.full((3, 2), 5.0, np.float32)
        ),
        "outside its action space",
    ),
    "bad-id": (lambda name: "no version", "invalid dataset id"),
}


@pytest.mark.parametrize("case", list(BAD_DATASETS))
def test_bad_datasets_are_rejected_in_one_line_with_nothing_written(tmp_path, cli_error, case):
    make, message = BAD_DATASETS[case]
    name = make(f"bad/{case}-v0")
    out = tmp_path / "run"
    argv = ["pretrain", "flow", "--dataset", name, "--env", "gprl/ContextualTarget-v0"]
    assert message in cli_error([*argv, "--steps", "500", "--out", str(out), "--no-progress"])
    assert not out.exists()


def test_success_recorded_by_other_minari_writers_is_read():
    obs, actions = np.zeros((4, 3), np.float32), np.zeros((3, 2), np.float32)
    write_raw("other/unknown-v0", obs, actions)
    assert load_demonstrations("other/unknown-v0").episode_successes is None
    # Gymnasium-Robotics' key, one info per observation (the reset's first) as Minari keeps them.
    write_raw("other/robotics-v0", obs, actions, infos={"is_success": np.r_[0.0, 0.0, 1.0, 0.0]})
    assert load_demonstrations("other/robotics-v0").episode_successes.tolist() == [True]
    write_raw("other/failed-v0", obs, actions, infos={"success": np.r_[True, False, False, False]})
    assert load_demonstrations("other/failed-v0").episode_successes.tolist() == [False]


def test_a_dataset_without_an_env_needs_env(tmp_path, capsys):
    write_raw("bare/no-env-v0", np.zeros((4, 3), np.float32), np.zeros((3, 2), np.float32))
    with pytest.raises(SystemExit):
        main(["pretrain", "gaussian", "--dataset", "bare/no-env-v0", "--out", str(tmp_path / "r")])
    assert "records no environment; pass --env" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_pretrain_rejects_nonsense_numbers_in_one_line(tmp_path, cli_error):
    good_contextual("ok/contextual-v0")
    base = ["pretrain", "flow", "--dataset", "ok/contextual-v0", "--out", str(tmp_path / "r")]
    for args, message in [
        (["--steps", "0"], "--steps must be at least 1"),
        (["--steps", "700"], "must be a multiple of --log-every"),
        (["--execute-steps", "2"], "--execute-steps (2) cannot exceed --chunk-length (1)"),
        (["--learning-rate", "-1"], "--learning-rate must be positive"),
        (["--learning-rate", "inf"], "--learning-rate must be finite"),
        (["--val-fraction", "1"], "--val-fraction must be in (0, 1)"),
        (["--noise-scale", "-1"], "--noise-scale must be a non-negative number"),
    ]:
        assert message in cli_error(base + args), args
    for args, message in [
        (["--out", "x/y-v0", "--episodes", "0"], "--episodes must be at least 1"),
        (["--out", "x/y-v0", "--action-noise", "nan"], "--action-noise must be a non-negative"),
        (["--out", "no-version"], "invalid dataset id"),
    ]:
        assert message in cli_error(["collect", str(tmp_path), *args]), args
    assert not (tmp_path / "r").exists()


def test_pretrain_and_collect_help_document_their_options(capsys):
    for argv, options in [
        (
            ["pretrain", "meanflow", "--help"],
            ["--dataset", "--chunk-length", "--execute-steps", "--meanflow.num-steps", "--resume"],
        ),
        (
            ["collect", "--help"],
            [
                *("--episodes", "--out", "--action-noise", "--policy", "--seed", "--env"),
                *("--only-successful", "--max-attempts", "SawyerPickPlaceV3Policy"),
            ],
        ),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        text = capsys.readouterr().out
        assert exit_info.value.code == 0
        for option in options:
            assert option in text, (argv, option)


def test_episodes_read_back_can_be_filtered_into_a_new_dataset():
    bound = np.ones(1, np.float32)
    spec = EnvSpec("gprl/ContextualTarget-v0", 2, 1, -bound, bound, 2)
    episodes = [
        Episode(
            observations=np.full((3, 2), number, np.float32),
            actions=np.full((2, 1), 0.1 * number, np.float32),
            rewards=np.array([0.0, float(number)]),
            terminations=np.array([False, True]),
            truncations=np.array([False, False]),
            successes=np.array([False, number % 2 == 1]),
        )
        for number in range(4)
    ]
    write_dataset("mixed/all-v0", episodes, spec, "four episodes", "test")
    read = read_episodes("mixed/all-v0")
    assert [e.actions[0, 0] for e in read] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    write_dataset("mixed/successful-v0", [e for e in read if e.successes.any()], spec, "", "test")
    kept = load_demonstrations("mixed/successful-v0")
    assert kept.episode_successes.tolist() == [True, True]
    assert kept.episode_returns.tolist() == [1.0, 3.0]
    np.testing.assert_array_equal(kept.obs[:, 0], [1, 1, 3, 3])


def test_a_dataset_read_again_is_the_same_until_its_files_change():
    bound = np.ones(1, np.float32)
    spec = EnvSpec("gprl/ContextualTarget-v0", 2, 1, -bound, bound, 2)

    def episodes(action):
        return [
            Episode(
                observations=np.zeros((3, 2), np.float32),
                actions=np.full((2, 1), action, np.float32),
                rewards=np.zeros(2),
                terminations=np.array([False, True]),
                truncations=np.array([False, False]),
            )
        ]

    write_dataset("again/data-v0", episodes(0.5), spec, "", "test")
    first = load_demonstrations("again/data-v0")
    assert load_demonstrations("again/data-v0") is first
    with pytest.raises(ValueError, match="read-only"):
        first.actions[0, 0] = 0.0  # one caller's edit would reach every later reader
    # Collected again under the same id: read anew.
    shutil.rmtree(dataset_path("again/data-v0"))
    write_dataset("again/data-v0", episodes(-0.5), spec, "", "test")
    assert load_demonstrations("again/data-v0").actions[0, 0] == -0.5
