"""gprl report: numbers checked by hand, files written, bad input in one line."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from gprl.algos import PPOConfig
from gprl.report import read_run, write_report
from gprl.trainer import RunConfig, train


def fake_run(root, algo, env, seed, returns, wall_time=2.0):
    """A run directory as gprl writes one: config.json and metrics.csv with evaluations at
    1000, 2000, ... env steps."""
    run_dir = root / f"{algo}-{env}-{seed}"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(
        json.dumps({"algo": algo, "run": {"env": env, "seed": seed}})
    )
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["env_steps", "wall_time", "eval_return"])
        writer.writeheader()
        for i, value in enumerate(returns, start=1):
            writer.writerow(
                {
                    "env_steps": 1000 * i,
                    "wall_time": wall_time * i / len(returns),
                    "eval_return": value,
                }
            )
    return run_dir


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_report_numbers_match_a_hand_computation(tmp_path):
    # One task, 4 seeds: final scores 100, 200, 300, 900 (/ 1000). The IQM drops the lowest and
    # highest quarter: mean(0.2, 0.3) = 0.25. The mean is 0.375, the optimality gap
    # mean(1 - score) = 0.625. A second algorithm at 1000 everywhere: IQM 1, gap 0.
    finals = [100.0, 200.0, 300.0, 900.0]
    dirs = [fake_run(tmp_path, "slow", "task", s, [0.0, final]) for s, final in enumerate(finals)]
    dirs += [fake_run(tmp_path, "perfect", "task", s, [500.0, 1000.0]) for s in range(4)]
    report = write_report(dirs, tmp_path / "out", score_scale=1000.0)
    rows = {r["algo"]: r for r in read_csv(tmp_path / "out" / "aggregate.csv")}
    assert float(rows["slow"]["iqm"]) == pytest.approx(0.25)
    assert float(rows["slow"]["mean"]) == pytest.approx(0.375)
    assert float(rows["slow"]["optimality_gap"]) == pytest.approx(0.625)
    assert float(rows["slow"]["iqm_low"]) <= 0.25 <= float(rows["slow"]["iqm_high"])
    assert float(rows["perfect"]["iqm"]) == pytest.approx(1.0)
    assert float(rows["perfect"]["optimality_gap"]) == pytest.approx(0.0)
    assert float(rows["slow"]["steps_per_second"]) == pytest.approx(1000.0)  # 2000 steps in 2 s
    # On one task the per-task IQM is the aggregate one, with the same stratified bootstrap.
    tasks = {r["algo"]: r for r in read_csv(tmp_path / "out" / "tasks.csv")}
    for name in ("iqm", "iqm_low", "iqm_high"):
        assert float(tasks["slow"][name]) == pytest.approx(float(rows["slow"][name]))
    assert float(tasks["slow"]["mean_return"]) == pytest.approx(np.mean(finals))
    assert tasks["perfect"]["runs"] == "4"
    text = report.read_text()
    assert "| 0.250 [" in text
    assert f"{np.mean(finals):.3g} ± {np.std(finals):.2g} (n=4)" in text
    for name in ("curves.png", "aggregate.png", "profiles.png", "runs.csv"):
        assert (tmp_path / "out" / name).stat().st_size > 0


def test_unequal_seed_counts_use_a_full_matrix_and_say_so(tmp_path):
    dirs = [fake_run(tmp_path, "a", "x", s, [1.0]) for s in range(3)]
    dirs += [fake_run(tmp_path, "a", "y", s, [2.0]) for s in range(2)]
    report = write_report(dirs, tmp_path / "out")
    assert read_csv(tmp_path / "out" / "aggregate.csv")[0]["runs_per_task"] == "2"
    assert "unequal seeds per task" in report.read_text()


def test_report_reads_a_real_run_directory(tmp_path):
    run = RunConfig(
        env="gprl/ContextualTarget-v0",
        total_steps=2048,
        num_envs=4,
        out=tmp_path / "run",
        progress=False,
        eval_every=1024,
        eval_episodes=4,
    )
    run_dir = train("ppo", run, PPOConfig(rollout_steps=32, num_minibatches=4))
    summary = read_run(run_dir)
    evaluations = [r for r in read_csv(run_dir / "metrics.csv") if r["eval_return"]]
    assert summary.final_eval_return == pytest.approx(float(evaluations[-1]["eval_return"]))
    assert (summary.algo, summary.env, summary.seed) == ("ppo", "gprl/ContextualTarget-v0", 0)


def test_report_cli_rejects_a_directory_that_is_not_a_run(tmp_path):
    (tmp_path / "empty").mkdir()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gprl.cli",
            "report",
            str(tmp_path / "empty"),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "is not a gprl run directory" in done.stderr
