"""Which options make the maximum-entropy methods keep both goals of gprl/TwoGoalPoint-v0.

Every cell (method, backup samples, seed) runs, as a user would,

    gprl train METHOD --env gprl/TwoGoalPoint-v0 --total-steps 40000 --num-envs 16 --seed S \
        --METHOD.gamma 0.9 --METHOD.alpha-learning-rate 1e-4 --METHOD.backup-samples K

and is then measured as benchmarks/multimodality.py measures: the share of 256 stochastic first
actions at each of 64 reset observations heading for the +x and the -x goal. One row per cell in
results/two_goal_options.csv; a cell already there is skipped, and a run that was stopped
resumes from its checkpoint, so the grid finishes across invocations. The README's "Keeping
modes" reads the table.

    python benchmarks/two_goal_options.py
    python benchmarks/two_goal_options.py --methods dpmd --backups 32 --seeds 2
"""

import argparse
import csv
import json
from pathlib import Path

from common import (
    BENCH_DIR,
    DONE_FILE,
    RESULTS_DIR,
    command,
    markdown_table,
    now,
    read_rows,
    train_cell,
    write_csv,
)
from multimodality import measure

TASK = "gprl/TwoGoalPoint-v0"
OPTIONS = {"gamma": "0.9", "alpha-learning-rate": "1e-4"}
CSV_NAME = "two_goal_options.csv"
CELL_KEY = ("method", "backup_samples", "seed", "total_steps")
TEXT_COLUMNS = {"method", "mode_shares", "gprl_commit", "machine", "date", "train_command"}


def train_arguments(method: str, backup: int, seed: int, args, run_dir: Path) -> list[str]:
    train = ["train", method, "--env", TASK, "--total-steps", str(args.total_steps)]
    train += ["--num-envs", "16", "--seed", str(seed), "--out", str(run_dir), "--no-progress"]
    for name, value in {**OPTIONS, "backup-samples": str(backup)}.items():
        train += [f"--{method}.{name}", value]
    return train


def run_cell(method: str, backup: int, seed: int, args) -> dict:
    run_dir = args.runs_dir / f"{method}-backup{backup}-s{seed}-{args.total_steps}"
    if not (run_dir / DONE_FILE).exists():
        train = train_arguments(method, backup, seed, args, run_dir)
        train_cell(run_dir, train, "gprl " + " ".join(train), f"{method} backup {backup} s{seed}")
    info = json.loads((run_dir / DONE_FILE).read_text())
    with open(run_dir / "metrics.csv", newline="") as f:
        metrics = list(csv.DictReader(f))
    last, last_eval = metrics[-1], [row for row in metrics if row["eval_return"]][-1]
    coverage = measure(run_dir, TASK, args, None)
    return {
        "method": method,
        "backup_samples": backup,
        "seed": seed,
        "total_steps": args.total_steps,
        "mode_shares": coverage["mode_shares"],
        "on_no_mode": coverage["on_no_mode"],
        "train_return": round(float(last["train_return"]), 4),
        "eval_return": round(float(last_eval["eval_return"]), 4),
        "wall_time_s": info["process_seconds"],
        "load_before": info["load_before"],
        "load_after": info["load_after"],
        "gprl_commit": info["gprl_commit"],
        "machine": info["machine"],
        "date": info["finished"],
        "train_command": info["train_command"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["maxentdp", "dpmd"])
    parser.add_argument("--backups", nargs="+", type=int, default=[0, 32])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--total-steps", type=int, default=40_000)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    parser.add_argument("--runs-dir", type=Path, default=BENCH_DIR / "runs" / "two_goal_options")
    args = parser.parse_args()
    args.observations, args.samples = 64, 256  # multimodality.measure's sample sizes
    path = args.out / CSV_NAME
    rows = read_rows(path, TEXT_COLUMNS)
    done = {tuple(row[k] for k in CELL_KEY) for row in rows}
    print(f"{now()}  {command()}")
    for method in args.methods:
        for backup in args.backups:
            for seed in args.seeds:
                if (method, backup, seed, args.total_steps) in done:
                    continue
                rows.append(run_cell(method, backup, seed, args))
                write_csv(path, rows)
    columns = ["method", "backup_samples", "seed", "mode_shares", "on_no_mode", "eval_return"]
    print(markdown_table(rows, columns))


if __name__ == "__main__":
    main()
