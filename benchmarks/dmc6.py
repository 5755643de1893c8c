"""The DMC-6 benchmark of the on-policy family: PPO, GoRL, FPO, DPPO and ReinFlow on the six GoRL
DM Control tasks, one harness (same budget, seeds, envs and backend per task), aggregated with
rliable.

Each (method, task, seed) is a `gprl.trainer.train` run in --runs-dir (benchmarks/runs/,
git-ignored; learning.py's run management: a finished run is skipped, an unfinished one resumed
from its checkpoint, one trained with another default config moved aside). A finished cell is
recorded in dmc6_runs/<task>/<algo>-s<seed>/ under --out (config, benchmark info and its
evaluation rows, `common.record_cell`; committed) and skipped from then on, also in a fresh
clone, so the grid finishes across sessions; a record trained with another default config than
gprl's current one is trained again and replaced when that run finishes. A finished run in
--runs-dir without a current record is recorded at the next report (its record replaces the
cell's legacy row, if any). Cells reported before records existed (legacy rows of dmc6.csv,
whose run directories are gone) are skipped and kept as they were reported: with no config to
compare, a legacy row is never found stale; delete its row from dmc6.csv to train it again.
When a method's default changed, its rows were moved out of dmc6.csv to files this script does
not read (X.csv and X_curves.csv; the records of the later ones were retrained and replaced):
- dmc6_fpo_paper: FPO with the paper's settings (legacy rows);
- dmc6_fixed_source: ReinFlow and the flow DPPO with x_0 ~ N(0, I) (legacy rows; the latter
  under "dppo", its name before issue 19), before their source std from scratch became 0.1;
- dmc6_dppo_flow_fixed_source: DPPO-flow with that fixed 0.1, before it learned the std;
- dmc6_dppo_flow_learned_source: DPPO-flow with the learned std and step std 0.05, before 0.1;
- dmc6_reinflow_reference_noise: ReinFlow with the reference's step-noise range [0.08, 0.16],
  before [0.1, 0.3] from scratch.

Results (--out, default benchmarks/results/; it holds one budget, so other --steps or
--num-envs go to another --out), from the records and the legacy rows: dmc6.csv (one row per
finished cell: `final_eval_return`, env steps/s, load at start, gprl commit, when and on which
machine it trained, and the report that wrote the row), dmc6_curves.csv (every evaluation),
dmc6_intervals.csv (rliable IQM, mean and optimality gap of the final return / 1000 with 95%
stratified-bootstrap intervals over every cell, per method with every task), and dmc6/
(`gprl.report.write_report` over the recorded cells only: report.md with per-task and aggregate
IQM tables, curves.png, aggregate.png, profiles.png; scores = return / 1000; left as it is
while no cell is recorded).

    python benchmarks/dmc6.py                                   # the whole grid: many hours
    python benchmarks/dmc6.py --algos ppo gorl --seeds 0        # a slice
    python benchmarks/dmc6.py --tasks dm_control/walker-walk-v0 --algos ppo --seeds 0
    python benchmarks/dmc6.py --report-only                     # aggregate finished cells
"""

import argparse
import csv
import json
import time
from pathlib import Path

from common import (
    RESULTS_DIR,
    command,
    completed_config_json,
    default_config_json,
    gprl_commit,
    interval_rows,
    markdown_table,
    now,
    read_rows,
    record_cell,
    write_csv,
)
from learning import INFO_FILE, RUNS_DIR, run_dir_of, run_one, run_status, slug

from gprl.report import read_run, write_report

TASKS = [
    "dm_control/cheetah-run-v0",
    "dm_control/finger-spin-v0",
    "dm_control/finger-turn_hard-v0",
    "dm_control/fish-swim-v0",
    "dm_control/hopper-stand-v0",
    "dm_control/walker-walk-v0",
]
ALGOS = ["ppo", "gorl", "fpo", "dppo-flow", "reinflow"]
ROW_ORDER = ["ppo", "gorl", "fpo", "dppo-flow", "reinflow"]
"""The methods in the order of the results files."""
SEEDS = [0, 1, 2]
TAG = "dmc6"
DMC_MAX_RETURN = 1000.0
RECORDS = "dmc6_runs"
"""Under --out: each finished cell's record (`common.record_cell`), committed."""
TEXT_COLUMNS = {"algo", "task", "gprl_commit", "trained", "machine", "reported", "command"}
"""The columns of dmc6.csv and dmc6_curves.csv that are text."""


def record_of(task: str, algo: str, seed: int, out: Path) -> Path:
    return out / RECORDS / slug(task) / f"{algo}-s{seed}"


def is_recorded(record: Path) -> bool:
    return (record / INFO_FILE).exists()


def is_current(record: Path, algo: str) -> bool:
    """Whether record holds a cell trained with gprl's current default config of algo."""
    if not is_recorded(record):
        return False
    saved = json.loads((record / "config.json").read_text())["algo_config"]
    return completed_config_json(algo, saved) == default_config_json(algo)


def cell_key(row: dict) -> tuple[int, int, int]:
    """The order of the grid: task, then method, then seed."""
    return TASKS.index(row["task"]), ROW_ORDER.index(row["algo"]), row["seed"]


def legacy_rows(out: Path) -> list[dict]:
    """Rows of the committed dmc6.csv whose cells ran before cells were recorded (their run
    directories are gone); they are kept as they were reported."""
    rows = read_rows(out / "dmc6.csv", TEXT_COLUMNS)
    return [r for r in rows if not is_recorded(record_of(r["task"], r["algo"], r["seed"], out))]


def legacy_curves(out: Path, legacy: list[dict]) -> list[dict]:
    cells = {(r["task"], r["algo"], r["seed"]) for r in legacy}
    curves = read_rows(out / "dmc6_curves.csv", TEXT_COLUMNS)
    return [r for r in curves if (r["task"], r["algo"], r["seed"]) in cells]


def record_if_finished(task: str, algo: str, seed: int, args) -> None:
    """Record the cell's run if it finished with gprl's current default config and its record
    is missing or stale."""
    run_dir = run_dir_of(task, algo, seed, args.dmc_steps, TAG, args.runs_dir)
    record = record_of(task, algo, seed, args.out)
    # INFO_FILE is written when training ends: checking it first spares run_status, which
    # builds an env, for cells with no run here (all of them in a fresh clone).
    if is_current(record, algo) or not (run_dir / INFO_FILE).exists():
        return
    if run_status(run_dir, algo, task, args.dmc_steps, args.num_envs) == "finished":
        record_cell(run_dir, record)


def run_cell(task: str, algo: str, seed: int, args, legacy: set) -> None:
    """Train (or resume) one cell and record it, unless it is a legacy row or recorded with
    the current default config."""
    if (task, algo, seed) in legacy or is_current(record_of(task, algo, seed, args.out), algo):
        print(f"skip {algo} {task} seed {seed}: finished (its dmc6.csv row or record)", flush=True)
        return
    started = time.perf_counter()
    run_one(task, algo, seed, args, args.runs_dir)
    record_if_finished(task, algo, seed, args)
    print(f"  cell {algo} {task} {seed}: {time.perf_counter() - started:.0f} s", flush=True)


def recorded_cell(record: Path, reported: dict) -> tuple[dict, list[dict]]:
    """A recorded cell's dmc6.csv row and its dmc6_curves.csv rows."""
    summary = read_run(record)
    info = json.loads((record / INFO_FILE).read_text())
    cell = {"algo": summary.algo, "task": summary.env, "seed": summary.seed}
    row = cell | {
        "env_steps": summary.env_steps,
        "final_eval_return": summary.final_eval_return,
        "env_steps_per_second": round(summary.steps_per_second, 1),
        "load_at_start": info.get("load_before", ""),
        "gprl_commit": info.get("gprl_commit", ""),
        "trained": info.get("started", ""),
        "machine": info.get("machine", ""),
    }
    with open(record / "metrics.csv", newline="") as f:
        curve = [
            cell | {"env_steps": r["env_steps"], "eval_return": r["eval_return"]}
            for r in csv.DictReader(f)
            if r.get("eval_return")
        ]
    return row | reported, curve


def intervals(rows: list[dict]) -> list[dict]:
    """rliable intervals of the final return / 1000 over tasks and seeds, per method."""
    by_seed = sorted(rows, key=cell_key)

    def score(row: dict) -> float:
        return row["final_eval_return"] / DMC_MAX_RETURN

    scores = {
        algo: [
            [score(r) for r in by_seed if r["algo"] == algo and r["task"] == task] for task in TASKS
        ]
        for algo in ROW_ORDER
    }
    return interval_rows(scores, "algo", gap=True)


def report(args) -> None:
    """Record what finished here, then every result file from the records and legacy rows."""
    for task in TASKS:
        for algo in ALGOS:
            for seed in sorted(set(args.seeds) | set(SEEDS)):
                record_if_finished(task, algo, seed, args)
    records = sorted(path.parent for path in (args.out / RECORDS).glob(f"*/*/{INFO_FILE}"))
    legacy = legacy_rows(args.out)
    if not records and not legacy:
        raise SystemExit("no finished DMC-6 cells yet")
    reported = {"reported": now(), "command": command()}
    cells = [recorded_cell(record, reported) for record in records]
    rows = sorted([row for row, _ in cells] + legacy, key=cell_key)
    curves = [point for _, curve in cells for point in curve] + legacy_curves(args.out, legacy)
    write_csv(args.out / "dmc6.csv", rows)
    # A stable sort keeps each cell's evaluations in the order they ran.
    write_csv(args.out / "dmc6_curves.csv", sorted(curves, key=cell_key))
    estimates = intervals(rows)
    if estimates:
        write_csv(args.out / "dmc6_intervals.csv", estimates)
        print(markdown_table(estimates, list(estimates[0])))
    if records:
        report_md = write_report(
            records,
            args.out / "dmc6",
            score_scale=DMC_MAX_RETURN,
            title=f"DMC-6, recorded cells ({len(records)} of {len(rows)}), {args.dmc_steps} "
            f"env steps per run, {args.num_envs} envs",
        )
        print(report_md.read_text())
    print(f"{len(rows)} cells ({len(records)} recorded, {len(legacy)} legacy rows) in {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=TASKS, choices=TASKS)
    parser.add_argument("--algos", nargs="+", default=ALGOS, choices=ALGOS)
    parser.add_argument("--seeds", nargs="+", type=int, default=SEEDS)
    parser.add_argument("--steps", dest="dmc_steps", type=int, default=1_000_000)
    parser.add_argument("--eval-every", dest="dmc_eval_every", type=int, default=50_000)
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--env-backend", default="auto")
    parser.add_argument("--report-only", action="store_true", help="train nothing; aggregate")
    parser.add_argument("--runs-dir", type=Path, default=RUNS_DIR)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    args.tag = TAG
    gprl_commit()
    if not args.report_only:
        legacy = {(r["task"], r["algo"], r["seed"]) for r in legacy_rows(args.out)}
        # Seed-major order: a partial grid holds every method on every task at its first seeds.
        for seed in args.seeds:
            for task in args.tasks:
                for algo in args.algos:
                    run_cell(task, algo, seed, args, legacy)
    report(args)


if __name__ == "__main__":
    main()
