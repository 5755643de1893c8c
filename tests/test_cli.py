"""The command line itself: a fast top-level usage, step counts in float notation, one line for
errors of the file system, signals during `gprl collect`, action plots of pretrain runs."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import tyro

import gprl.collect
from gprl.algos import PPOConfig
from gprl.cli import main
from gprl.configs import from_jsonable, parse_count, to_jsonable
from gprl.datasets import dataset_path, load_demonstrations
from gprl.pretrain import PretrainRun
from gprl.trainer import RunConfig, train

BANDIT = "gprl/BimodalBandit-v0"


# Every test here writes its datasets to a fresh folder (conftest.minari_root).
pytestmark = pytest.mark.usefixtures("minari_root")


@pytest.fixture(scope="module")
def bandit_run(tmp_path_factory):
    """A (barely) trained PPO run on the one-step bimodal bandit: its episodes are one step."""
    out = tmp_path_factory.mktemp("bandit") / "run"
    run = RunConfig(env=BANDIT, total_steps=64, num_envs=2, out=out, progress=False)
    return train("ppo", run, PPOConfig(rollout_steps=32, num_minibatches=2))


def test_the_top_level_usage_imports_no_jax():
    script = textwrap.dedent(
        """
        import sys
        from gprl.cli import main
        for argv, code in (["--help"], 0), ([], 2):
            try:
                main(argv)
            except SystemExit as exit_request:
                assert exit_request.code == code, (argv, exit_request.code)
            assert "jax" not in sys.modules, [m for m in sys.modules if m.startswith("gprl")]
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    # The registries still list every algorithm and policy kind with its summary.
    assert "gprl train ppo" in result.stdout and "Gaussian PPO" in result.stdout
    assert "gprl pretrain shortcut" in result.stdout and "one step" in result.stdout


@pytest.mark.parametrize(
    ("text", "value"), [("100000", 100000), ("1e5", 100000), ("100_000", 100000), ("2.5e5", 250000)]
)
def test_a_count_takes_whole_numbers_in_float_notation(text, value):
    assert parse_count(text) == value


@pytest.mark.parametrize("text", ["1.5", "abc", "inf", "nan", "1e400", ""])
def test_a_count_refuses_what_is_not_a_whole_number(text):
    with pytest.raises(ValueError, match="expected a whole number"):
        parse_count(text)


def test_step_counts_parse_float_notation_show_as_ints_and_round_trip(capsys):
    args = ["--env", BANDIT, "--total-steps", "1e5", "--eval-every", "2.5e4"]
    run = tyro.cli(RunConfig, args=[*args, "--checkpoint-every", "5e4"])
    assert (run.total_steps, run.eval_every, run.checkpoint_every) == (100_000, 25_000, 50_000)
    assert from_jsonable(RunConfig, to_jsonable(run)) == run
    pretrain_run = tyro.cli(PretrainRun, args=["--steps", "2e3", "--checkpoint-every", "1e3"])
    assert (pretrain_run.steps, pretrain_run.checkpoint_every) == (2000, 1000)
    assert from_jsonable(PretrainRun, to_jsonable(pretrain_run)) == pretrain_run
    with pytest.raises(SystemExit):
        main(["train", "ppo", "--help"])
    text = capsys.readouterr().out
    assert "--total-steps {None}|INT" in text and "--checkpoint-every INT" in text


def test_a_step_count_that_is_not_whole_is_refused_in_one_line(cli_error):
    message = cli_error(["train", "ppo", "--env", BANDIT, "--total-steps", "1.5"])
    assert "--total-steps" in message and "expected a whole number" in message


def test_unusable_output_paths_are_one_line_errors(tmp_path, bandit_run, cli_error):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("kept")
    for out in ("/proc/gprl-test", str(a_file / "sub")):
        train_argv = ["train", "ppo", "--env", BANDIT, "--total-steps", "64", "--num-envs", "2"]
        assert out in cli_error([*train_argv, "--ppo.rollout-steps", "32", "--out", out])
        assert out in cli_error(["report", str(bandit_run), "--out", out])
    assert a_file.read_text() == "kept"


def test_an_unusable_dataset_folder_is_a_one_line_error(
    tmp_path, bandit_run, cli_error, monkeypatch
):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("kept")
    for root in ("/proc/gprl-test", str(a_file / "datasets"), "/proc"):
        monkeypatch.setenv("MINARI_DATASETS_PATH", root)
        message = cli_error(["collect", str(bandit_run), "--out", "probe/out-v0"])
        assert "dataset" in message and "MINARI_DATASETS_PATH" in message, message
    assert a_file.read_text() == "kept"


def signal_self_during_collection(monkeypatch, *signals_at_call: tuple[int, int]):
    """Send each (signum, at) to this process when the collecting policy is called the
    at-th time: a real signal, delivered while env steps are being recorded."""
    real_call = gprl.collect._RunActor.__call__
    calls = []

    def call_and_signal(actor, obs):
        calls.append(None)
        for signum, at in signals_at_call:
            if len(calls) == at:
                os.kill(os.getpid(), signum)
        return real_call(actor, obs)

    monkeypatch.setattr(gprl.collect._RunActor, "__call__", call_and_signal)


@pytest.fixture
def sigterm_fails_the_test():
    """Without gprl's handler SIGTERM would end the test process; make it fail the test."""

    def unexpected(signum, frame):
        raise AssertionError("SIGTERM reached the default handler")

    previous = signal.signal(signal.SIGTERM, unexpected)
    yield
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.usefixtures("sigterm_fails_the_test")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_first_signal_writes_the_finished_episodes_and_exits(
    bandit_run, monkeypatch, capsys, signum
):
    signal_self_during_collection(monkeypatch, (signum, 3))
    argv = ["collect", str(bandit_run), "--out", "sig/first-v0", "--episodes", "1000"]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--num-envs", "2"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 128 + signum
    assert err.count("\n") == 1 and "again" not in err, err
    assert f"gprl: {signal.Signals(signum).name}: stopped after 6 of 1000 episodes" in err
    assert len(load_demonstrations("sig/first-v0").episode_lengths) == 6


@pytest.mark.usefixtures("sigterm_fails_the_test")
def test_a_second_signal_aborts_the_collection_and_writes_nothing(
    bandit_run, monkeypatch, capsys, minari_root
):
    signal_self_during_collection(monkeypatch, (signal.SIGINT, 3), (signal.SIGTERM, 3))
    argv = ["collect", str(bandit_run), "--out", "sig/second-v0", "--episodes", "1000"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 130
    assert err == "gprl: interrupted again; stopped without writing a dataset\n"
    assert not dataset_path("sig/second-v0").exists()
    assert [p.name for p in minari_root.iterdir() if p.name.startswith(".")] == []


def test_an_interrupt_no_command_caught_is_not_called_a_second_one(bandit_run, monkeypatch, capsys):
    # SIGINT before collect installs its handlers: Python's own raises KeyboardInterrupt (set
    # here, since a library an earlier test ran in this process, Ray Tune, may have replaced it).
    monkeypatch.setattr(
        gprl.collect, "check_datasets_writable", lambda: os.kill(os.getpid(), signal.SIGINT)
    )
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(["collect", str(bandit_run), "--out", "sig/early-v0"])
    finally:
        signal.signal(signal.SIGINT, previous)
    err = capsys.readouterr().err
    assert exit_info.value.code == 130
    assert err == "gprl: interrupted; stopped without writing a dataset\n"


def test_eval_draws_the_actions_of_a_pretrain_run(tmp_path, bandit_run, capsys):
    main(["collect", str(bandit_run), "--out", "bandit/ppo-v0", "--episodes", "64"])
    out = tmp_path / "pretrained"
    pretrain_argv = ["pretrain", "gaussian", "--dataset", "bandit/ppo-v0", "--steps", "20"]
    pretrain_options = ["--log-every", "10", "--gaussian.hidden", "16", "--no-progress"]
    main([*pretrain_argv, *pretrain_options, "--out", str(out)])
    capsys.readouterr()
    main(["eval", str(out), "--episodes", "2", "--plot-actions"])
    printed = capsys.readouterr().out
    png = out / "plots" / "actions.png"
    assert png.read_bytes().startswith(b"\x89PNG") and f"action plot: {png}" in printed
    coverage = [line for line in printed.splitlines() if line.startswith("observation")]
    assert len(coverage) == 4 and all("mode shares" in line for line in coverage)
