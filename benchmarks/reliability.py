"""Fault injection: SIGKILL `gprl train` processes at random moments and resume after each kill
(`gprl train ALGO --resume RUN_DIR`), then compare every finished run with an uninterrupted one.

Three cases on probe-task budgets sized so that training, not start-up, fills most of a
process's life: PPO, GoRL (two stages, so a decoder refit mid-run) and SAC (off-policy: the
replay buffer is in the checkpoint), with a checkpoint every 256 env steps. A kill moment is drawn
uniformly over the lifetime of an uninterrupted process (the latest one of the case), so
start-up, training, evaluations and checkpoint writes all get hit; when a process ends before its
kill, its run is finished and the next run of the case starts, until the case has had its share
of the kills. Counted:
  corrupt checkpoints   resumes that failed to load what a killed process left
  lost runs             runs that could not be carried to the end
  differing rows        metrics rows (timing columns aside) unlike the uninterrupted run's
Results: benchmarks/results/reliability.csv (one row per process launched),
reliability_summary.csv and reliability.png. Work is kept in benchmarks/runs/reliability/: a
re-run goes on from its event log and redoes nothing.

    python benchmarks/reliability.py                 # 50 kills in all: ~20 minutes
    python benchmarks/reliability.py --kills 20
"""

import argparse
import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from common import (
    BENCH_DIR,
    RESULTS_DIR,
    command,
    gprl_commit,
    load_average,
    machine,
    now,
    write_csv,
)

from gprl.checkpoint import CheckpointError, read_meta

WORK_DIR = BENCH_DIR / "runs" / "reliability"
TIMING_COLUMNS = ("wall_time", "steps_per_second")
COMMON = ["--num-envs", "4", "--checkpoint-every", "256", "--eval-episodes", "4", "--no-progress"]
CASES = {
    "ppo": [
        *("ppo", "--env", "gprl/TwoGoalPoint-v0", "--total-steps", "16384", "--eval-every", "2048"),
        *("--ppo.rollout-steps", "32", "--ppo.num-minibatches", "4"),
    ],
    "gorl-refit": [
        *("gorl", "--env", "gprl/TwoGoalPoint-v0", "--total-steps", "16384"),
        *("--eval-every", "2048", "--gorl.ppo.rollout-steps", "32"),
        *("--gorl.ppo.num-minibatches", "4", "--gorl.num-stages", "2"),
        *("--gorl.stage-weights", "1", "1", "--gorl.decoder-train-steps", "500"),
    ],
    "sac": [
        *("sac", "--env", "gprl/ContextualTarget-v0", "--total-steps", "4096"),
        *("--eval-every", "1024", "--sac.learning-starts", "256", "--sac.batch-size", "32"),
        *("--sac.steps-per-iteration", "128"),
        *("--sac.actor-hidden", "16", "16", "--sac.critic-hidden", "16", "16"),
    ],
}


def gprl(*args) -> list[str]:
    return [sys.executable, "-m", "gprl.cli", "train", *args]


def metric_rows(run_dir: Path) -> list[dict]:
    try:
        with open(run_dir / "metrics.csv", newline="") as f:
            return [
                {k: v for k, v in row.items() if k not in TIMING_COLUMNS}
                for row in csv.DictReader(f)
            ]
    except FileNotFoundError:
        return []


def checkpointed_steps(run_dir: Path) -> int | None:
    try:
        return read_meta(run_dir)["progress"]["env_steps"]
    except (CheckpointError, KeyError):
        return None


def reference(case: str, args: list[str]) -> tuple[Path, float]:
    """The uninterrupted run of a case and its process's wall time."""
    run_dir = WORK_DIR / case / "reference"
    timing = run_dir.with_suffix(".json")
    if timing.exists():
        return run_dir, json.loads(timing.read_text())["seconds"]
    started = time.perf_counter()
    subprocess.run(gprl(*args, *COMMON, "--out", str(run_dir), "--overwrite"), check=True)
    seconds = time.perf_counter() - started
    timing.write_text(json.dumps({"seconds": seconds, "load": load_average()}))
    return run_dir, seconds


def resume_or_restart(algo: str, run_dir: Path, args: list[str]) -> list[str]:
    """A killed run resumes from its directory; one killed before writing its config (during
    start-up) has nothing to resume and starts again."""
    if (run_dir / "config.json").exists() or (run_dir / "checkpoint").exists():
        return gprl(algo, "--resume", str(run_dir), "--no-progress")
    return gprl(*args, *COMMON, "--out", str(run_dir), "--overwrite")


def run_case(case: str, args: list[str], kills: int, seed: int) -> list[dict]:
    """Kill, resume, repeat; returns the event log (one event per process launched)."""
    log_path = WORK_DIR / case / "events.jsonl"
    events = []
    if log_path.exists():
        events = [json.loads(line) for line in log_path.read_text().splitlines()]
    _, reference_seconds = reference(case, args)
    while True:
        # The machine is shared and its load changes: the lifetime kills are drawn over is that
        # of the latest uninterrupted process of the case.
        whole = [e["seconds"] for e in events if not (e["resumed"] or e["killed"] or e["error"])]
        lifetime = whole[-1] if whole else reference_seconds
        done_kills = sum(e["killed"] for e in events)
        run_index = max((e["run"] for e in events), default=0)
        if any(e["run"] == run_index and e["returncode"] == 0 for e in events):
            if done_kills >= kills:
                return events
            run_index += 1
        if sum(bool(e["error"]) for e in events) > 5:
            raise SystemExit(f"{case}: more than 5 processes failed on their own; see {log_path}")
        run_dir = WORK_DIR / case / f"run{run_index}"
        cmd = resume_or_restart(args[0], run_dir, args)
        kill_after = None
        if done_kills < kills:
            kill_after = random.Random(f"{seed}-{case}-{len(events)}").uniform(0, lifetime)
        process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        started = time.perf_counter()
        try:
            process.wait(timeout=kill_after)
            killed = False
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            killed = True
        stderr = process.stderr.read().decode(errors="replace")
        event = {
            "case": case,
            "run": run_index,
            "resumed": "--resume" in cmd,
            "killed": killed,
            "seconds": round(time.perf_counter() - started, 3),
            "returncode": process.returncode,
            "rows_logged": len(metric_rows(run_dir)),
            "checkpoint_env_steps": checkpointed_steps(run_dir),
            "error": "" if killed or process.returncode == 0 else stderr.strip()[-300:],
        }
        events.append(event)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a") as f:
            f.write(json.dumps(event) + "\n")
        if event["error"]:
            # Failed on its own: its state is abandoned (a lost run) and the run starts afresh.
            print(f"{case} run{run_index}: {event['error'].splitlines()[-1]}", flush=True)
            run_dir.rename(run_dir.with_name(f"{run_dir.name}.failed-{len(events)}"))
        print(
            f"{case} run{run_index}: {'killed' if killed else 'ended'} after "
            f"{event['seconds']:.1f} s ({event['rows_logged']} rows, checkpoint at "
            f"{event['checkpoint_env_steps']} env steps)",
            flush=True,
        )


def logged_steps(reference_rows: list[dict], rows_logged: int) -> int:
    return int(reference_rows[rows_logged - 1]["env_steps"]) if rows_logged else 0


def summarise(case: str, events: list[dict]) -> dict:
    reference_rows = metric_rows(WORK_DIR / case / "reference")
    finished_runs = sorted({e["run"] for e in events if e["returncode"] == 0})
    differing = 0
    for run in finished_runs:
        rows = metric_rows(WORK_DIR / case / f"run{run}")
        differing += sum(a != b for a, b in zip(rows, reference_rows, strict=False))
        differing += abs(len(rows) - len(reference_rows))
    killed = [e for e in events if e["killed"]]
    refits = [int(r["env_steps"]) for r in reference_rows if r.get("refit") == "1"]
    failed_resumes = [e for e in events if e["resumed"] and e["error"]]
    return {
        "case": case,
        "kills": len(killed),
        "processes": len(events),
        "resumes": sum(e["resumed"] for e in events),
        "failed_resumes": len(failed_resumes),
        "corrupt_checkpoints": sum("checkpoint" in e["error"].lower() for e in failed_resumes),
        "runs": len({e["run"] for e in events}),
        "lost_runs": sum(bool(e["error"]) for e in events)
        + len({e["run"] for e in events} - set(finished_runs)),
        "rows_compared": len(reference_rows) * len(finished_runs),
        "differing_rows": differing,
        "process_seconds": round(sum(e["seconds"] for e in events), 1),
        "reference_load": json.loads((WORK_DIR / case / "reference.json").read_text())["load"],
        "kills_before_first_checkpoint": sum(e["checkpoint_env_steps"] is None for e in killed),
        "kills_after_final_checkpoint": sum(
            e["checkpoint_env_steps"] == int(reference_rows[-1]["env_steps"]) for e in killed
        ),
        "kills_past_last_checkpoint": sum(
            logged_steps(reference_rows, e["rows_logged"]) > (e["checkpoint_env_steps"] or 0)
            for e in killed
        ),
        # Resumed from before the decoder refit: the resumed run had to redo it exactly.
        "kills_resumed_across_refit": sum(
            bool(refits) and (e["checkpoint_env_steps"] or 0) < refits[0] for e in killed
        ),
    }


def plot(events_by_case: dict, summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for case, events in events_by_case.items():
        killed = [e for e in events if e["killed"]]
        reference_rows = metric_rows(WORK_DIR / case / "reference")
        logged = [logged_steps(reference_rows, e["rows_logged"]) for e in killed]
        saved = [e["checkpoint_env_steps"] or 0 for e in killed]
        axes[0].scatter(logged, saved, label=case, alpha=0.7)
    top = max(axes[0].get_xlim()[1], axes[0].get_ylim()[1])
    axes[0].plot([0, top], [0, top], color="grey", linestyle=":", label="checkpoint = logged")
    axes[0].set_xlabel("env steps logged when killed")
    axes[0].set_ylabel("env steps in the checkpoint resumed from")
    axes[0].set_title("where the SIGKILLs landed")
    axes[0].legend()
    labels = ["kills", "corrupt_checkpoints", "lost_runs", "differing_rows"]
    width = 0.8 / len(summary)
    for i, row in enumerate(summary):
        xs = [j + i * width for j in range(len(labels))]
        bars = axes[1].bar(xs, [row[k] for k in labels], width, label=row["case"])
        axes[1].bar_label(bars)
    axes[1].set_xticks([j + 0.4 - width / 2 for j in range(len(labels))], labels)
    axes[1].set_title("outcome per case (every resumed run vs an uninterrupted one)")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=50, help="SIGKILLs in all, split by case")
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    commit = gprl_commit()
    load_before = load_average()
    started = time.perf_counter()
    shares = [args.kills // len(CASES) + (i < args.kills % len(CASES)) for i in range(len(CASES))]
    events_by_case = {
        case: run_case(case, case_args, share, args.seed)
        for (case, case_args), share in zip(CASES.items(), shares, strict=True)
    }
    provenance = {
        "gprl_commit": commit,
        "machine": machine(),
        # Kills ran at the load of their time (reference_load: when the case's uninterrupted
        # run was measured); these are the loads around this invocation.
        "load_before_invocation": load_before,
        "load_after_invocation": load_average(),
        "seconds_this_invocation": round(time.perf_counter() - started, 1),
        "measured": now(),
        "command": command(),
    }
    summary = [summarise(case, events) for case, events in events_by_case.items()]
    total = {"case": "all"} | {
        key: sum(row[key] for row in summary)
        for key in summary[0]
        if key not in ("case", "reference_load")
    }
    write_csv(args.out / "reliability_summary.csv", [r | provenance for r in [*summary, total]])
    write_csv(
        args.out / "reliability.csv",
        [e for events in events_by_case.values() for e in events],
    )
    plot(events_by_case, summary, args.out / "reliability.png")
    for row in [*summary, total]:
        print(
            f"{row['case']}: {row['kills']} kills, {row['resumes']} resumes, "
            f"{row['corrupt_checkpoints']} corrupt checkpoints, {row['lost_runs']} lost runs, "
            f"{row['differing_rows']} differing rows of {row['rows_compared']}"
        )


if __name__ == "__main__":
    main()
