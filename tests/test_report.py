"""gprl report: numbers checked by hand, files written, bad input in one line."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from gprl import report
from gprl.algos import PPOConfig
from gprl.checkpoint import CheckpointError
from gprl.report import read_run, read_runs, write_report
from gprl.trainer import RunConfig, train


@pytest.fixture(autouse=True)
def few_bootstrap_resamples(monkeypatch):
    """rliable's bootstrap is most of a report's time; these tests check point estimates and
    that intervals hold them, which a few resamples show as well as 2000."""
    monkeypatch.setattr(report, "BOOTSTRAP_REPS", 100)


def fake_run(
    root, algo, env, seed, returns, wall_time=2.0, name=None, algo_config=(), successes=(), **run
):
    """A run directory as gprl writes one: config.json (algo_config and run options as given)
    and metrics.csv with evaluations at 1000, 2000, ... env steps (and success rates, if
    given, as runs on envs that report success have)."""
    run_dir = root / (name or f"{algo}-{env}-{seed}")
    run_dir.mkdir(parents=True)
    config = {"algo": algo, "run": {"env": env, "seed": seed, **run}}
    (run_dir / "config.json").write_text(json.dumps(config | {"algo_config": dict(algo_config)}))
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["env_steps", "wall_time", "eval_return", "eval_success_rate"])
        writer.writeheader()
        for i, value in enumerate(returns, start=1):
            writer.writerow(
                {
                    "env_steps": 1000 * i,
                    "wall_time": wall_time * i / len(returns),
                    "eval_return": value,
                    "eval_success_rate": successes[i - 1] if successes else "",
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
    # The checkpoint's configs are the run's truth (resume and eval use them): a config.json
    # edited by hand is refused, not read.
    config = json.loads((run_dir / "config.json").read_text())
    config["run"]["seed"] = 7
    (run_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="differs from the config saved with the checkpoint"):
        read_run(run_dir)


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


def test_runs_pool_by_configuration_and_say_what_was_pooled(tmp_path, capsys):
    # Seed 0 of PPO at two learning rates is two configurations of one seed each, not n=2;
    # a run differing only in options that do not change learning (out, progress) pools.
    low = fake_run(tmp_path, "ppo", "x", 0, [1.0], name="low0", algo_config={"learning_rate": 1e-4})
    high = fake_run(tmp_path, "ppo", "x", 0, [3.0], name="hi0", algo_config={"learning_rate": 3e-4})
    low1 = fake_run(
        tmp_path, "ppo", "x", 1, [2.0], name="low1", algo_config={"learning_rate": 1e-4},
        out="elsewhere", progress=False,
    )  # fmt: skip
    sac = fake_run(tmp_path, "sac", "x", 0, [5.0])
    report = write_report([low, high, low1, sac], tmp_path / "out")
    tasks = {r["algo"]: r for r in read_csv(tmp_path / "out" / "tasks.csv")}
    assert set(tasks) == {"ppo [learning_rate=0.0001]", "ppo [learning_rate=0.0003]", "sac"}
    assert tasks["ppo [learning_rate=0.0001]"]["runs"] == "2"
    assert float(tasks["ppo [learning_rate=0.0001]"]["mean_return"]) == pytest.approx(1.5)
    assert tasks["ppo [learning_rate=0.0003]"]["runs"] == "1"
    groups = {r["run_dir"]: r["group"] for r in read_csv(tmp_path / "out" / "runs.csv")}
    assert groups[str(low1)] == groups[str(low)] != groups[str(high)]
    pooled = "ppo [learning_rate=0.0001] on x: seeds 0, 1 from low0, low1"
    printed = capsys.readouterr().out
    assert f"pooled (run directories in {tmp_path}):" in printed and pooled in printed
    assert f"Run directories are in `{tmp_path}`" in report.read_text()
    assert pooled in report.read_text()


def test_task_inputs_split_a_group_only_where_one_task_has_several(tmp_path):
    # Fine-tuning on two tasks starts from each task's own base: one configuration. Two bases
    # on one task are two configurations.
    dirs = [fake_run(tmp_path, "dppo", "x", s, [1.0], init=f"bases/x{s // 2}") for s in range(4)]
    dirs += [fake_run(tmp_path, "dppo", "y", s, [1.0], init="bases/y") for s in range(2)]
    runs, _ = read_runs(dirs[4:] + dirs[:2])
    assert {r.group for r in runs} == {"dppo"}
    runs, _ = read_runs(dirs)
    assert {r.group for r in runs if r.env == "x"} == {
        "dppo [init=bases/x0]",
        "dppo [init=bases/x1]",
    }


def test_a_base_per_seed_pools_and_two_bases_on_one_seed_split(tmp_path):
    # Each seed fine-tuning its own seed's imitation run is one configuration over 3 seeds.
    own = [fake_run(tmp_path, "dppo", "x", s, [1.0], init=f"bases/x-s{s}") for s in range(3)]
    runs, _ = read_runs(own)
    assert {r.group for r in runs} == {"dppo"}
    # Two bases tried on the same seed are two configurations, not one seed twice.
    other = fake_run(tmp_path, "dppo", "x", 0, [1.0], name="other", init="bases/other")
    runs, _ = read_runs([own[0], other])
    assert sorted(r.group for r in runs) == ["dppo [init=bases/other]", "dppo [init=bases/x-s0]"]
    # From scratch beside the per-seed starts: two configurations, each over its seeds.
    scratch = [fake_run(tmp_path, "dppo", "x", s, [0.0], name=f"scratch{s}") for s in range(3)]
    runs, _ = read_runs(own + scratch)
    groups = {r.run_dir.name: r.group for r in runs}
    assert {groups[d.name] for d in own} == {"dppo [init=given]"}
    assert {groups[d.name] for d in scratch} == {"dppo [init=null]"}


def test_a_run_saved_before_a_field_existed_pools_with_the_value_it_ran_with(tmp_path):
    # DPPO's critic_learning_rate came with None (the policy's rate) and its default became
    # 1e-3 later: a run saved before the field is a None run, not one of today's default.
    before = fake_run(tmp_path, "dppo", "x", 0, [1.0], name="before")
    same = fake_run(tmp_path, "dppo", "x", 1, [1.0], algo_config={"critic_learning_rate": None})
    today = fake_run(
        tmp_path, "dppo", "x", 0, [2.0], name="today", algo_config={"critic_learning_rate": 1e-3}
    )
    groups = {r.run_dir.name: r.group for r in read_runs([before, same, today])[0]}
    assert groups["before"] == groups[same.name] != groups["today"]


def test_one_directory_given_twice_counts_once(tmp_path, monkeypatch):
    run = fake_run(tmp_path, "a", "x", 0, [1.0])
    other = fake_run(tmp_path, "a", "x", 1, [3.0])
    monkeypatch.chdir(tmp_path)
    report = write_report([run, run.relative_to(tmp_path), other, run / "."], tmp_path / "out")
    assert [r["runs"] for r in read_csv(tmp_path / "out" / "tasks.csv")] == ["2"]
    assert len(read_csv(tmp_path / "out" / "runs.csv")) == 2
    assert f"{run} was given 3 times" in report.read_text()


def test_one_seed_twice_in_a_configuration_is_refused_naming_both(tmp_path):
    first = fake_run(tmp_path, "a", "x", 0, [1.0], name="first")
    again = fake_run(tmp_path, "a", "x", 0, [1.0], name="again")
    with pytest.raises(ValueError, match="both seed 0 of a on x") as refused:
        write_report([first, again], tmp_path / "out")
    assert str(first) in str(refused.value) and str(again) in str(refused.value)
    assert "\n" not in str(refused.value)


def test_a_pretrain_run_is_skipped_with_its_reason(tmp_path, capsys):
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(
        json.dumps({"pretrain": "flow", "run": {"env": "x", "seed": 0}, "gprl_version": "0"})
    )
    (base / "metrics.csv").write_text("updates,wall_time,eval_return\n100,1.0,5.0\n")
    run = fake_run(tmp_path, "a", "x", 0, [1.0])
    report = write_report([base, run], tmp_path / "out")
    assert len(read_csv(tmp_path / "out" / "runs.csv")) == 1
    assert f"skipped {base} is a gprl pretrain run" in report.read_text()
    assert f"skipped {base} is a gprl pretrain run" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"no training runs to report: skipped .* pretrain run"):
        write_report([base], tmp_path / "out2")


def test_optimality_gap_is_omitted_for_scores_outside_zero_one(tmp_path, capsys):
    dirs = [fake_run(tmp_path, "a", "x", s, [-1200.0, -1114.0 + s]) for s in range(3)]
    report = write_report(dirs, tmp_path / "out")
    row = read_csv(tmp_path / "out" / "aggregate.csv")[0]
    assert row["optimality_gap"] == row["optimality_gap_low"] == "" != row["iqm"]
    text = report.read_text()
    assert "optimality gap omitted: scores range over [-1.11e+03, -1.11e+03]" in text
    assert "| omitted |" in text
    assert "optimality gap omitted" in capsys.readouterr().out


def test_success_rates_are_aggregated_by_default_when_every_run_has_them(tmp_path, capsys):
    # Final success rates 0.2, 0.4, 0.6, 1.0 over 4 seeds: the IQM drops the lowest and highest
    # quarter, mean(0.4, 0.6) = 0.5; the mean is 0.55 and the optimality gap 0.45. The returns
    # (100 x the seed) are not what is scored.
    finals = [0.2, 0.4, 0.6, 1.0]
    dirs = [
        fake_run(tmp_path, "a", "reach", s, [-5.0, 100.0 * s], successes=[0.0, final])
        for s, final in enumerate(finals)
    ]
    report = write_report(dirs, tmp_path / "out")
    row = read_csv(tmp_path / "out" / "aggregate.csv")[0]
    assert float(row["iqm"]) == pytest.approx(0.5)
    assert float(row["mean"]) == pytest.approx(0.55)
    assert float(row["optimality_gap"]) == pytest.approx(0.45)
    assert row["metric"] == "success rate"
    task = read_csv(tmp_path / "out" / "tasks.csv")[0]
    assert float(task["mean_success_rate"]) == pytest.approx(0.55)
    finals_csv = [r["final_eval_success_rate"] for r in read_csv(tmp_path / "out" / "runs.csv")]
    assert sorted(map(float, finals_csv)) == finals
    text = report.read_text()
    assert "IQM over seeds [95% CI] (success rate)" in text and "| 0.500 [" in text
    assert "scores: final evaluation success rate" in capsys.readouterr().out
    # Asked for, the returns are scored instead: IQM of 100 and 200.
    write_report(dirs, tmp_path / "returns", metric="return")
    assert float(read_csv(tmp_path / "returns" / "aggregate.csv")[0]["iqm"]) == 150.0


def test_a_run_without_success_rates_makes_the_report_score_returns(tmp_path):
    with_rates = fake_run(tmp_path, "a", "reach", 0, [1.0], successes=[0.5])
    without = fake_run(tmp_path, "a", "reach", 1, [3.0])
    write_report([with_rates, without], tmp_path / "out")
    assert float(read_csv(tmp_path / "out" / "aggregate.csv")[0]["mean"]) == 2.0
    with pytest.raises(ValueError, match=f"{without} has no success rates"):
        write_report([with_rates, without], tmp_path / "out", metric="success_rate")
    with pytest.raises(ValueError, match="--score-scale divides returns"):
        write_report([with_rates], tmp_path / "out", score_scale=1000.0)
