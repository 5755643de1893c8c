"""Run directories, checkpoints, exact resumption and bad input."""

import csv
import json
import shutil
import subprocess
import sys
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gprl.algos.ppo as ppo_module
import gprl.checkpoint as checkpoint_module
from gprl import cli
from gprl.algos import ALGORITHMS, GoRLConfig, PPOConfig
from gprl.checkpoint import CheckpointError, load_checkpoint, read_meta, save_checkpoint
from gprl.envs import EnvError
from gprl.trainer import RunConfig, TrainingError, load_run, train

FAST_PPO = PPOConfig(rollout_steps=32, num_minibatches=4)
FAST_GORL = replace(
    GoRLConfig(ppo=replace(GoRLConfig().ppo, rollout_steps=32, num_minibatches=4)),
    num_stages=2,
    stage_weights=(1.0, 1.0),
    decoder_train_steps=500,
    decoder_min_samples=128,  # a refit's collection stays a small share of these budgets
)


def small_run(tmp_path, name="run", **overrides) -> RunConfig:
    fields = dict(
        env="gprl/TwoGoalPoint-v0",
        total_steps=4096,
        num_envs=4,
        out=tmp_path / name,
        progress=False,
        eval_every=1024,
        eval_episodes=4,
        checkpoint_every=1024,
    )
    return RunConfig(**(fields | overrides))


@pytest.mark.parametrize(
    ("algo", "config", "stop_at"),
    [
        # The critic's own step size adds a part to the optimiser state, which must resume too.
        ("ppo", replace(FAST_PPO, critic_learning_rate=3e-3), 13),
        # Stopped inside the first stage, with -m slow: stage 1 (after a refit) is the harder case.
        pytest.param("gorl", FAST_GORL, 12, marks=pytest.mark.slow),
        ("gorl", FAST_GORL, 20),
    ],
    ids=["ppo", "gorl-stage0", "gorl-stage1"],
)
def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(
    tmp_path, resume_check, algo, config, stop_at
):
    def checkpointed_before_the_stop(run_dir):
        assert 0 < read_meta(run_dir)["progress"]["iteration"] < stop_at

    run = small_run(tmp_path, "interrupted")
    resume_check.train(algo, run, config, stop_at, checkpointed_before_the_stop)


def test_interrupted_envpool_run_resumes_exactly(tmp_path, resume_check):
    # Hopper-v5 falls often under an untrained policy, so the pool resets envs on its own many
    # times between checkpoints: resuming must put every env back at the same episode.
    run = small_run(tmp_path, "interrupted", env="Hopper-v5", env_backend="envpool")

    def envs_reset_many_times(run_dir):
        meta = read_meta(run_dir)
        assert meta["backend"] == "envpool"
        assert sum(meta["env_state"]["train"]["episodes"]) > 2 * run.num_envs

    resume_check.train("ppo", run, FAST_PPO, 13, envs_reset_many_times)


@pytest.fixture(scope="module")
def finished_ppo_run(tmp_path_factory):
    """A finished 1024-step PPO run, trained once for the tests that only read or damage it."""
    return train("ppo", small_run(tmp_path_factory.mktemp("finished"), total_steps=1024), FAST_PPO)


@pytest.fixture
def run_dir(finished_ppo_run, tmp_path):
    """A copy of the finished run for one test to read or damage."""
    return shutil.copytree(finished_ppo_run, tmp_path / "run")


def test_checkpoint_round_trip_restores_every_leaf(tmp_path, run_dir):
    algo, _, run = load_run(run_dir)
    assert run.env == "gprl/TwoGoalPoint-v0"
    template = {"algo": algo.init(jax.random.PRNGKey(42)), "key": jax.random.PRNGKey(42)}
    state, meta = load_checkpoint(run_dir, template, {"algo": "ppo"})
    assert int(state["algo"]["iteration"]) == meta["progress"]["iteration"] == 8
    save_checkpoint(tmp_path / "copy", state, meta, {"algo": "ppo"})
    restored, _ = load_checkpoint(tmp_path / "copy", template, {"algo": "ppo"})
    leaves = jax.tree.leaves(state)
    assert len(leaves) > 10
    for a, b in zip(leaves, jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_corrupt_truncated_and_mismatched_checkpoints_are_rejected(run_dir):
    state_file = run_dir / "checkpoint" / "state.msgpack"
    original = state_file.read_bytes()

    state_file.write_bytes(original[:100] + bytes([original[100] ^ 0xFF]) + original[101:])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_run(run_dir)
    state_file.write_bytes(original[: len(original) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_run(run_dir)
    state_file.write_bytes(original)

    meta_file = run_dir / "checkpoint" / "meta.json"
    meta_text = meta_file.read_text()
    meta_file.write_text(meta_text[:20])
    with pytest.raises(CheckpointError, match="unreadable checkpoint file"):
        load_run(run_dir)
    meta_file.write_text(meta_text)

    # A config that differs from the weights' shapes, in both copies (the run's config.json and
    # the checkpoint's), so that the weights themselves are what does not match.
    config = json.loads((run_dir / "config.json").read_text())
    config["algo_config"]["critic_hidden"] = [32, 32]
    for config_file in (run_dir / "config.json", run_dir / "checkpoint" / "config.json"):
        config_file.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="does not match"):
        load_run(run_dir)


def test_interrupted_save_keeps_the_previous_checkpoint(run_dir, monkeypatch):
    _, state, _ = load_run(run_dir)
    state = {"algo": state, "key": jax.random.PRNGKey(0)}
    before = (run_dir / "checkpoint" / "state.msgpack").read_bytes()

    def failing_write(path, data):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module, "_write_synced", failing_write)
    with pytest.raises(CheckpointError, match="the previous checkpoint is intact"):
        save_checkpoint(run_dir, state, read_meta(run_dir), {"algo": "ppo"})
    assert (run_dir / "checkpoint" / "state.msgpack").read_bytes() == before
    load_run(run_dir)


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    real_update = ppo_module.PPO.update

    def poisoned_after_checkpoint(self, state, batch, key):
        state, info = real_update(self, state, batch, key)
        info["policy_loss"] = jnp.where(state["iteration"] >= 10, jnp.nan, info["policy_loss"])
        return state, info

    monkeypatch.setattr(ppo_module.PPO, "update", poisoned_after_checkpoint)
    run = small_run(tmp_path)
    with pytest.raises(TrainingError, match="policy_loss is nan at iteration 10"):
        train("ppo", run, FAST_PPO)
    assert read_meta(run.out)["progress"]["iteration"] == 8  # the checkpoint at 1024 env steps
    load_run(run.out)


def test_existing_run_directory_is_refused_and_left_intact(tmp_path):
    run = small_run(tmp_path, total_steps=1024)
    train("ppo", run, FAST_PPO)
    before = (run.out / "metrics.csv").read_text()
    with pytest.raises(FileExistsError, match="--resume"):
        train("ppo", run, FAST_PPO)
    assert (run.out / "metrics.csv").read_text() == before
    train("ppo", replace(run, overwrite=True, seed=1), FAST_PPO)
    assert json.loads((run.out / "config.json").read_text())["run"]["seed"] == 1


def test_resume_rejects_another_algorithm_or_env(tmp_path):
    run = small_run(tmp_path, total_steps=1024)
    train("ppo", run, FAST_PPO)
    with pytest.raises(CheckpointError, match="'ppo' run, not 'gorl'"):
        train("gorl", RunConfig(resume=run.out, progress=False), FAST_GORL)
    with pytest.raises(CheckpointError, match="not gprl/BimodalBandit-v0"):
        train("ppo", RunConfig(resume=run.out, env="gprl/BimodalBandit-v0"), FAST_PPO)
    with pytest.raises(CheckpointError, match="cannot change on resume"):
        train("ppo", RunConfig(resume=run.out, total_steps=2048), FAST_PPO)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train("ppo", RunConfig(resume=tmp_path / "missing"), FAST_PPO)


def test_bad_env_ids_fail_before_touching_the_run_directory(tmp_path):
    with pytest.raises(EnvError, match="unknown"):
        train("ppo", small_run(tmp_path, env="NoSuchEnv-v9"), FAST_PPO)
    with pytest.raises(EnvError, match="continuous"):
        train("ppo", small_run(tmp_path, env="CartPole-v1"), FAST_PPO)
    assert not (tmp_path / "run").exists()


def run_cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "gprl.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


# The video writer starts ffmpeg by fork and exec, which runs no Python (nor JAX) in the child.
@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")
def test_cli_train_eval_and_video(tmp_path, capsys):
    out = tmp_path / "cli-run"
    cli.main(
        [
            *("train", "ppo", "--env", "gprl/BimodalBandit-v0", "--total-steps", "2048"),
            *("--num-envs", "4", "--ppo.rollout-steps", "32", "--out", str(out), "--no-progress"),
        ]
    )
    assert "final deterministic eval return" in capsys.readouterr().out
    for name in ("config.json", "metrics.csv", "learning_curve.png", "checkpoint/meta.json"):
        assert (out / name).exists(), name
    cli.main(["eval", str(out), "--episodes", "3", "--video"])
    assert "over 3 episodes" in capsys.readouterr().out
    assert (out / "videos" / "eval.mp4").stat().st_size > 0


def test_cli_reports_bad_input_in_one_line(tmp_path, cli_error):
    for args, message in [
        (["train", "ppo", "--env", "Hoper-v5"], "unknown"),
        (["train", "gorl", "--env", "CartPole-v1"], "continuous"),
        (["eval", str(tmp_path / "nothing")], "no checkpoint"),
    ]:
        assert message in cli_error(args), args


def test_cli_help_documents_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "gorl", "--help"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    for option in (
        "--total-steps",
        "--num-envs",
        "--resume",
        "--gorl.decoder",
        "--gorl.count-collection-steps",
        "--gorl.prior-regularizer",
    ):
        assert option in printed


def read_tensorboard_scalars(folder) -> dict:
    """Parse TFRecord event files: (length u64, crc u32, Event proto, crc u32) records."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    scalars = {}
    for path in folder.glob("events.out.tfevents.*"):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_tensorboard_sink_receives_the_csv_metrics(tmp_path):
    run_dir = train("ppo", small_run(tmp_path, total_steps=1024, tensorboard=True), FAST_PPO)
    scalars = read_tensorboard_scalars(run_dir / "tensorboard")
    assert {"policy_loss", "eval_return", "train_return"} <= set(scalars)
    assert [step for step, _ in scalars["policy_loss"]] == [128 * i for i in range(1, 9)]


def test_cli_rejects_nonsense_numbers_and_paths_in_one_line(tmp_path, cli_error):
    a_file = tmp_path / "a-file"
    a_file.write_text("keep me")
    base = ["train", "ppo", "--env", "gprl/BimodalBandit-v0", "--no-progress"]
    for args, message in [
        (["--checkpoint-every", "0"], "--checkpoint-every must be at least 1"),
        (["--total-steps", "0"], "--total-steps must be at least 1"),
        (["--eval-every", "-5"], "--eval-every must be 0"),
        (["--seed", "-1"], "--seed must be in [0, "),
        (["--env-backend", "gpu"], "invalid choice 'gpu' for argument '--env-backend'"),
        (["--no-such-flag", "3"], "Unrecognized options: --no-such-flag"),
        (["--ppo.learning-rate", "-0.001"], "learning_rate must be a finite positive number"),
        (["--ppo.gamma", "1.5"], "gamma must be in [0, 1]"),
        (["--out", str(a_file)], "is an existing file"),
        (["--env-backend", "envpool"], "gprl/BimodalBandit-v0"),
    ]:
        assert message in cli_error([*base, *args]), args
    assert a_file.read_text() == "keep me"
    # What a shell sees: the exit code and a single line on stderr, from a real process.
    result = run_cli(*base, "--no-such-flag", "3", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "gprl: error: Unrecognized options: --no-such-flag, 3"
    ]


def test_cli_eval_rejects_a_negative_episode_count(finished_ppo_run, cli_error):
    refused = cli_error(["eval", str(finished_ppo_run), "--episodes", "-1"])
    assert refused == "gprl: error: --episodes must be at least 1, got -1"


def test_cli_eval_refuses_a_noise_scale_for_a_train_run(finished_ppo_run, cli_error):
    refused = cli_error(["eval", str(finished_ppo_run), "--noise-scale", "0"])
    assert refused == (
        "gprl: error: --noise-scale applies to pretrain runs; a train run acts deterministically"
    )


def test_a_run_stopped_before_its_first_checkpoint_resumes_from_its_saved_config(
    tmp_path, resume_check
):
    def no_checkpoint(run_dir):
        assert not (run_dir / "checkpoint").exists()

    run = small_run(tmp_path, checkpoint_every=100_000, seed=3)
    resumed = resume_check.train("ppo", run, FAST_PPO, 2, no_checkpoint).resumed
    assert json.loads((resumed / "config.json").read_text())["run"]["seed"] == 3


@pytest.mark.slow  # suite time; gorl-reference is built and acts in test_algorithms by default
def test_a_named_preset_trains_with_its_own_defaults_and_resumes(tmp_path, cli_error):
    out = tmp_path / "preset"
    common = ["--env", "gprl/BimodalBandit-v0", "--num-envs", "4", "--no-progress"]
    short = ["--gorl-reference.ppo.rollout-steps", "32", "--gorl-reference.num-stages", "2"]
    short += ["--gorl-reference.stage-weights", "1", "1", "--gorl-reference.decoder-train-steps"]
    cli.main(
        ["train", "gorl-reference", "--total-steps", "256", *common, *short, "50",
         "--gorl-reference.decoder-eval-every", "25", "--out", str(out)]
    )  # fmt: skip
    saved = json.loads((out / "config.json").read_text())
    assert saved["algo"] == "gorl-reference"
    assert saved["algo_config"]["ppo"]["critic_hidden"] == [256] * 5
    assert saved["algo_config"]["decoder_coupling"] == "independent"
    assert saved["algo_config"]["decoder_train_steps"] == 50
    with open(out / "metrics.csv", newline="") as f:
        refits = [row for row in csv.DictReader(f) if row["refit"]]
    assert len(refits) == 1
    # The plain method keeps its own defaults, and a preset's run resumes under its own name.
    assert ALGORITHMS["gorl"].default_config().decoder_coupling == "paired"
    assert "not 'gorl'" in cli_error(["train", "gorl", "--resume", str(out)])
