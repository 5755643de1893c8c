"""Stopping a training run from outside: SIGINT / SIGTERM save and exit, a second signal aborts,
a full disk keeps the previous checkpoint."""

import csv
import errno
import os
import signal
import subprocess
import sys
import time

import pytest

import gprl.checkpoint as checkpoint_module
from gprl import cli
from gprl.algos import PPOConfig
from gprl.checkpoint import CheckpointError, read_meta
from gprl.signals import StopSignals
from gprl.trainer import RunConfig, load_run, train


def start_training(out, *extra, **popen_options):
    """A PPO run far longer than the test (it is stopped by a signal)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gprl.cli",
            "train",
            "ppo",
            "--env",
            "gprl/ContextualTarget-v0",
            "--total-steps",
            "50000000",
            "--num-envs",
            "4",
            "--ppo.rollout-steps",
            "32",
            "--ppo.num-minibatches",
            "4",
            "--no-progress",
            "--out",
            str(out),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen_options,
    )


def logged_rows(out):
    try:
        with open(out / "metrics.csv", newline="") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        return []


def wait_for_rows(process, out, count, timeout=120):
    deadline = time.monotonic() + timeout
    while len(logged_rows(out)) < count:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.2)


def stop_and_check_the_checkpoint(process, out, signum, group=False) -> dict:
    """Send signum to a training process (group: to its whole process group, as Ctrl-C and
    cluster schedulers do): it must save, say so in one line and exit with 128 + signum, its
    checkpoint holding exactly what the metrics logged. Returns the saved progress."""
    if group:
        os.killpg(process.pid, signum)
    else:
        process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum
    assert stderr.count("\n") == 1, stderr
    assert f"{signal.Signals(signum).name}: saved a checkpoint" in stderr
    saved = read_meta(out)["progress"]
    assert saved["env_steps"] == int(logged_rows(out)[-1]["env_steps"])
    load_run(out)
    return saved


def test_a_signal_saves_a_checkpoint_and_exits_in_one_line(tmp_path):
    # SIGINT stops the run, SIGTERM the resumed one: each signal on its own process start.
    out = tmp_path / "run"
    process = start_training(out)
    wait_for_rows(process, out, 3)
    saved = stop_and_check_the_checkpoint(process, out, signal.SIGINT)
    # The run goes on from there.
    resumed = subprocess.Popen(
        [sys.executable, "-m", "gprl.cli", "train", "ppo", "--resume", str(out), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_rows(resumed, out, len(logged_rows(out)) + 2)
    resaved = stop_and_check_the_checkpoint(resumed, out, signal.SIGTERM)
    assert resaved["env_steps"] > saved["env_steps"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_a_signal_to_the_process_group_stops_a_run_with_env_workers_cleanly(tmp_path, signum):
    # The workers get the signal too; the run must still save and stop as above rather than
    # fail on a worker that died under it.
    out = tmp_path / "run"
    process = start_training(out, "--env-workers", "2", start_new_session=True)
    wait_for_rows(process, out, 3)
    stop_and_check_the_checkpoint(process, out, signum, group=True)


@pytest.fixture
def own_signal_handlers():
    """Signal handlers as they were before the test (the CLI ignores signals on its way out)."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_a_second_signal_aborts_and_keeps_the_last_checkpoint(
    tmp_path, monkeypatch, capsys, own_signal_handlers
):
    # In this process, so that both signals land where the test says: the first while the second
    # checkpoint is being written, the second before that save has finished. (From outside, a
    # signal's arrival against the compiled calls is a race.)
    out = tmp_path / "run"
    real_write = checkpoint_module._write_synced
    writes = []

    def signalled_during_the_second_save(path, data):
        writes.append(path.name)
        if writes.count("state.msgpack") == 2:
            os.kill(os.getpid(), signal.SIGINT)
        real_write(path, data)

    monkeypatch.setattr(checkpoint_module, "_write_synced", signalled_during_the_second_save)
    argv = ["train", "ppo", "--env", "gprl/ContextualTarget-v0", "--total-steps", "100000"]
    argv += ["--num-envs", "4", "--ppo.rollout-steps", "32", "--ppo.num-minibatches", "4"]
    argv += ["--checkpoint-every", "128", "--no-progress", "--out", str(out)]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 130
    assert stderr.count("\n") == 1 and "interrupted again; stopped without saving" in stderr
    # The signal at the first write is the first one; the abort came at the second write.
    assert writes == ["state.msgpack", "meta.json", "config.json", "state.msgpack", "meta.json"]
    assert read_meta(out)["progress"]["env_steps"] == 128
    load_run(out)


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch):
    real_write = checkpoint_module._write_synced
    saves = []

    def full_after_the_first_save(path, data):
        if path.name == "state.msgpack":
            saves.append(path)
        if len(saves) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(checkpoint_module, "_write_synced", full_after_the_first_save)
    run = RunConfig(
        env="gprl/ContextualTarget-v0",
        total_steps=4096,
        num_envs=4,
        out=tmp_path / "run",
        progress=False,
        eval_every=0,
        eval_episodes=2,
        checkpoint_every=1024,
    )
    with pytest.raises(
        CheckpointError, match=r"No space left on device.*previous checkpoint is intact"
    ):
        train("ppo", run, PPOConfig(rollout_steps=32, num_minibatches=4))
    monkeypatch.undo()
    assert read_meta(run.out)["progress"]["env_steps"] == 1024
    assert not (run.out / ".checkpoint.tmp").exists()
    load_run(run.out)


def test_a_second_signal_dropped_by_a_finaliser_still_aborts_without_a_traceback(capsys):
    class SignalsWhenCollected:
        def __del__(self):
            signal.raise_signal(signal.SIGINT)

    with StopSignals() as stop:
        signal.raise_signal(signal.SIGINT)
        assert stop.received == signal.SIGINT and not stop.aborted
        # Delivered in a finaliser, where Python drops the KeyboardInterrupt it raises; JAX's
        # garbage-collection callback is such a place in a real run.
        SignalsWhenCollected()
        assert stop.aborted
        with pytest.raises(KeyboardInterrupt):
            stop.raise_if_aborted()
    assert capsys.readouterr().err == ""
