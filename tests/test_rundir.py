"""Run directories: what --out and --overwrite may touch, which config is the truth, the run
loop's signals in every command that trains, and what loading a run needs."""

import json
import os
import signal
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import gprl.backends
import gprl.trainer
from gprl.algos import PPOConfig
from gprl.checkpoint import CheckpointError
from gprl.dataset_writer import write_dataset
from gprl.datasets import Episode
from gprl.envs import make_env
from gprl.pretrain import PretrainConfig, PretrainRun, pretrain
from gprl.rundir import RunDirError, has_checkpoint
from gprl.signals import TrainingInterrupted
from gprl.trainer import RunConfig, load_run, train

ENV = "gprl/ContextualTarget-v0"
FAST_PPO = PPOConfig(rollout_steps=32, num_minibatches=4, learning_rate=1e-3)


def quick_run(out, **overrides) -> RunConfig:
    """Two PPO iterations of 256 env steps."""
    fields = dict(env=ENV, total_steps=512, num_envs=8, out=out, progress=False, eval_episodes=2)
    return RunConfig(**(fields | overrides))


def snapshot(directory: Path) -> dict:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


def test_overwrite_never_deletes_what_is_not_a_gprl_run(tmp_path, monkeypatch, cli_error):
    folder = tmp_path / "mydata"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="holds other files"):
        train("ppo", quick_run(folder, overwrite=True), FAST_PPO)
    assert (folder / "notes.txt").read_text() == "mine"
    # `--out .` in a folder of the user's: refused, nothing deleted.
    monkeypatch.chdir(folder)
    argv = ["train", "ppo", "--env", ENV, "--total-steps", "2048", "--out", ".", "--overwrite"]
    assert "holds other files" in cli_error(argv)
    assert sorted(os.listdir(folder)) == ["notes.txt"]


def test_overwrite_keeps_the_old_run_until_its_replacement_saves(tmp_path):
    out = tmp_path / "run"
    train("ppo", quick_run(out), FAST_PPO)
    before = snapshot(out)

    def fail(iteration, row):
        raise RuntimeError("the new run dies before its first checkpoint")

    with pytest.raises(RuntimeError, match="dies"):
        train("ppo", quick_run(out, overwrite=True, seed=1), FAST_PPO, on_iteration=fail)
    assert snapshot(out) == before
    assert sorted(os.listdir(tmp_path)) == ["run"]

    train("ppo", quick_run(out, overwrite=True, seed=1), FAST_PPO)
    assert json.loads((out / "config.json").read_text())["run"]["seed"] == 1
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_a_nan_loss_in_a_replacing_run_says_the_old_run_is_back(tmp_path):
    out = tmp_path / "run"
    train("ppo", quick_run(out), FAST_PPO)
    before = snapshot(out)

    # Finite but absurd: the first update sends the weights to ~1e30, the next loss is not finite.
    bad = replace(FAST_PPO, learning_rate=1e30)
    with pytest.raises(gprl.trainer.TrainingError, match="the run it was replacing is back"):
        train("ppo", quick_run(out, overwrite=True), bad)
    assert snapshot(out) == before


@pytest.mark.parametrize("where", ["under_a_file", "unwritable"])
def test_an_impossible_out_is_one_line(tmp_path, where, cli_error):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = blocker / "run" if where == "under_a_file" else Path("/proc/gprl-run")
    argv = ["train", "ppo", "--env", ENV, "--total-steps", "2048", "--no-progress"]
    assert str(out) in cli_error([*argv, "--out", str(out)])


def test_a_config_json_edited_by_hand_is_refused_not_ignored(tmp_path):
    out = tmp_path / "run"
    train("ppo", quick_run(out, env_workers=0), FAST_PPO)
    record = json.loads((out / "config.json").read_text())
    # A run resumed without --env-workers writes that into config.json: not an edit.
    record["run"]["env_workers"] = None
    (out / "config.json").write_text(json.dumps(record))
    load_run(out)
    record["algo_config"]["learning_rate"] = 0.5
    (out / "config.json").write_text(json.dumps(record))
    for attempt in (
        lambda: load_run(out),
        lambda: train("ppo", RunConfig(resume=out, progress=False), FAST_PPO),
    ):
        with pytest.raises(CheckpointError, match="differs from the config saved"):
            attempt()


def test_loading_a_run_opens_no_env(tmp_path, monkeypatch):
    out = tmp_path / "run"
    train("ppo", quick_run(out), FAST_PPO)

    def no_env(*args, **kwargs):
        raise AssertionError("load_run opened an env")

    monkeypatch.setattr(gprl.trainer, "open_environments", no_env)
    monkeypatch.setattr(gprl.trainer, "probe_spec", no_env)
    algo, state, run = load_run(out)
    obs = np.zeros((4, algo.spec.obs_dim), np.float32)
    actions = np.asarray(algo.act_deterministic(algo.acting_params(state), obs))
    assert actions.shape == (4, algo.spec.action_dim) and run.env == ENV


def test_a_budget_too_small_for_the_envs_is_refused_before_they_are_built(tmp_path, monkeypatch):
    def no_env(*args, **kwargs):
        raise AssertionError("the training envs were built")

    monkeypatch.setattr(gprl.trainer, "open_environments", no_env)
    with pytest.raises(ValueError, match="total_steps"):
        train("ppo", quick_run(tmp_path / "run", num_envs=100_000), FAST_PPO)
    assert not (tmp_path / "run").exists()


# ----- pretraining runs in the same loop ---------------------------------------------------------


@pytest.fixture
def contextual_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    env = make_env(ENV, 1, 0, backend="gymnasium")
    rng = np.random.default_rng(0)
    episodes = []
    for _ in range(64):
        obs = rng.uniform(-1, 1, (2, 3)).astype(np.float32)
        action = rng.uniform(-1, 1, (1, 2)).astype(np.float32)
        episodes.append(Episode(obs, action, np.zeros(1), np.ones(1, bool), np.zeros(1, bool)))
    write_dataset("probe/contextual-v0", episodes, env.spec, "random actions", "random")
    env.close()
    return "probe/contextual-v0"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_pretraining_saves_and_stops_on_the_first_signal(tmp_path, contextual_dataset, signum):
    config = PretrainConfig(log_every=50, batch_size=32)
    run = PretrainRun(
        dataset=contextual_dataset, steps=200, out=tmp_path / "bc", progress=False, eval_episodes=2
    )

    def signal_once(iteration, row):
        if iteration == 1:
            os.kill(os.getpid(), signum)

    with pytest.raises(TrainingInterrupted, match="continue with --resume") as stopped:
        pretrain("flow", run, config, on_log=signal_once)
    assert stopped.value.exit_code == 128 + signum
    assert has_checkpoint(tmp_path / "bc")
    run_dir = pretrain("flow", PretrainRun(resume=tmp_path / "bc", progress=False), config)
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 4  # header and one row per 50 gradient steps


@pytest.mark.parametrize(
    "bad", [["--flow.num-steps", "0"], ["--flow.hidden"]], ids=["no_steps", "no_layers"]
)
def test_a_policy_that_cannot_be_built_is_refused_before_anything_is_written(
    tmp_path, contextual_dataset, cli_error, bad
):
    argv = ["pretrain", "flow", "--dataset", contextual_dataset, "--steps", "100"]
    argv += ["--log-every", "50", "--no-progress", "--out", str(tmp_path / "bc"), *bad]
    cli_error(argv)
    assert not (tmp_path / "bc").exists()
