"""The DMC-6 benchmark of the on-policy family: PPO, GoRL, FPO, DPPO and ReinFlow on the six GoRL
DM Control tasks, one harness (same budget, seeds, envs and backend per task), aggregated with
rliable through `gprl report`.

Each (method, task, seed) is a `gprl.trainer.train` run in benchmarks/runs/ (learning.py's run
management: a finished run is skipped, an unfinished one resumed from its checkpoint, one trained
with another default config moved aside), so the grid finishes across sessions. Results:
benchmarks/results/dmc6.csv (one row per finished cell, `final_eval_return`, env steps/s),
dmc6_curves.csv (every evaluation), and benchmarks/results/dmc6/ (report.md with per-task and
aggregate IQM tables, curves.png, aggregate.png, profiles.png; scores = return / 1000).

    python benchmarks/dmc6.py                                   # the whole grid: many hours
    python benchmarks/dmc6.py --algos ppo gorl --seeds 0        # a slice
    python benchmarks/dmc6.py --report-only                     # aggregate finished cells
"""

import argparse
import csv
import json
import time
from pathlib import Path

from common import RESULTS_DIR, command, gprl_commit, machine, now, write_csv
from learning import INFO_FILE, run_dir_of, run_one, run_status

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
SEEDS = [0, 1, 2]
TAG = "dmc6"
DMC_MAX_RETURN = 1000.0


def finished_cells(args) -> list[tuple[str, str, int, Path]]:
    """Every finished cell of the grid, not only those this invocation trained: the results
    files always describe the whole grid so far."""
    cells = []
    for task in TASKS:
        for algo in ALGOS:
            for seed in sorted(set(args.seeds) | set(SEEDS)):
                run_dir = run_dir_of(task, algo, seed, args.dmc_steps, TAG)
                if run_status(run_dir, algo, task, args.dmc_steps, args.num_envs) == "finished":
                    cells.append((task, algo, seed, run_dir))
    return cells


def write_results(cells, out: Path) -> None:
    rows, curves = [], []
    for task, algo, seed, run_dir in cells:
        summary = read_run(run_dir)
        info_path = run_dir / INFO_FILE
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        rows.append(
            {
                "algo": algo,
                "task": task,
                "seed": seed,
                "env_steps": summary.env_steps,
                "final_eval_return": summary.final_eval_return,
                "env_steps_per_second": round(summary.steps_per_second, 1),
                "load_at_start": info.get("load_before", ""),
                "gprl_commit": info.get("gprl_commit", ""),
                "trained": info.get("started", ""),
            }
        )
        with open(run_dir / "metrics.csv", newline="") as f:
            for row in csv.DictReader(f):
                if row.get("eval_return"):
                    curves.append(
                        {
                            "algo": algo,
                            "task": task,
                            "seed": seed,
                            "env_steps": row["env_steps"],
                            "eval_return": row["eval_return"],
                        }
                    )
    provenance = {"machine": machine(), "reported": now(), "command": command()}
    write_csv(out / "dmc6.csv", [row | provenance for row in rows])
    write_csv(out / "dmc6_curves.csv", curves)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algos", nargs="+", default=ALGOS)
    parser.add_argument("--seeds", nargs="+", type=int, default=SEEDS)
    parser.add_argument("--steps", dest="dmc_steps", type=int, default=1_000_000)
    parser.add_argument("--eval-every", dest="dmc_eval_every", type=int, default=50_000)
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--env-backend", default="auto")
    parser.add_argument("--report-only", action="store_true", help="train nothing; aggregate")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    args.tag = TAG
    gprl_commit()
    if not args.report_only:
        # Seed-major order: a partial grid holds every method on every task at its first seeds.
        for seed in args.seeds:
            for task in TASKS:
                for algo in args.algos:
                    started = time.perf_counter()
                    run_one(task, algo, seed, args)
                    print(f"  cell {algo} {task} {seed}: {time.perf_counter() - started:.0f} s")
    cells = finished_cells(args)
    if not cells:
        raise SystemExit("no finished DMC-6 cells yet")
    write_results(cells, args.out)
    report = write_report(
        [run_dir for *_, run_dir in cells],
        args.out / "dmc6",
        score_scale=DMC_MAX_RETURN,
        title=f"DMC-6, {args.dmc_steps} env steps per run, {args.num_envs} envs",
    )
    print(report.read_text())


if __name__ == "__main__":
    main()
