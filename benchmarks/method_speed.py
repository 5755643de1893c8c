"""Whole-process training speed of every on-policy method on one task, beside PPO's, in one run.

Each cell runs the project's own check, ../shared/checks/whole-process-throughput.sh: envpool's
raw stepping (16 envs, random actions) measured right before a whole `gprl train ALGO` process
(16 envs, start-up and evaluations included) on the same machine. PPO runs first and last, so
drift of the machine's load over the run shows as a difference between its two figures.

    python benchmarks/method_speed.py                      # hopper-stand, 1M steps per method
    python benchmarks/method_speed.py --algos ppo fpo --steps 300000
"""

import argparse
import os
import re
import subprocess
from pathlib import Path

from common import (
    RESULTS_DIR,
    command,
    gprl_commit,
    load_average,
    machine,
    markdown_table,
    now,
    write_csv,
)

CHECK = Path(__file__).resolve().parents[2] / "shared" / "checks" / "whole-process-throughput.sh"
METHODS = ("ppo", "fpo", "dppo-flow", "reinflow", "flow-sde", "grpo", "gorl", "ppo")
RESULT_LINE = re.compile(
    r"whole process (?P<sps>\d+) env steps/s; envpool raw (?P<raw>\d+); ratio (?P<ratio>[\d.]+)"
)


def measure(algo: str, env_id: str, task: str, steps: int) -> dict:
    load = load_average()
    done = subprocess.run(
        ["bash", str(CHECK), algo, env_id, task, str(steps)], capture_output=True, text=True
    )
    found = RESULT_LINE.search(done.stdout)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"{algo}: the check failed: {done.stdout}{done.stderr}")
    return {
        "algo": algo,
        "env": env_id,
        "steps": steps,
        "steps_per_s": int(found["sps"]),
        "envpool_raw_steps_per_s": int(found["raw"]),
        "share_of_raw": float(found["ratio"]),
        "load_before": load,
    }


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # PPO runs twice (first and last): number its bars so both show.
    labels = [r["algo"] + (f" ({i})" if r["algo"] == "ppo" else "") for i, r in enumerate(rows)]
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.bar(labels, [r["steps_per_s"] for r in rows], color="tab:blue")
    for i, row in enumerate(rows):
        ax.text(i, row["steps_per_s"], f"{row['of_ppo']:.0%}", ha="center", va="bottom")
    ax.set_ylabel("env steps / s, whole gprl train process")
    ax.set_title(f"{rows[0]['env']}, 16 envs, {rows[0]['steps']} steps (label: share of PPO's)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algos", nargs="+", default=list(METHODS))
    parser.add_argument("--env", default="dm_control/hopper-stand-v0")
    parser.add_argument("--envpool-task", default="HopperStand-v1")
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    rows = []
    for algo in args.algos:
        rows.append(measure(algo, args.env, args.envpool_task, args.steps))
        print(rows[-1], flush=True)
    ppo = [r["steps_per_s"] for r in rows if r["algo"] == "ppo"]
    reference = sum(ppo) / len(ppo) if ppo else float("nan")
    provenance = {"machine": machine(), "cores": os.cpu_count(), "commit": gprl_commit()}
    provenance |= {"command": command(), "date": now()}
    for row in rows:
        row["of_ppo"] = round(row["steps_per_s"] / reference, 3)
        row |= provenance
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "method_speed.csv", rows)
    plot(rows, args.out / "method_speed.png")
    columns = ["algo", "steps_per_s", "of_ppo", "share_of_raw", "load_before"]
    print(markdown_table(rows, columns))


if __name__ == "__main__":
    main()
