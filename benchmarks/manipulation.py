"""Fine-tuning chunked policies trained from demonstrations on sparse-reward Meta-World tasks:
success rate before and after RL, for every fine-tuner, Gaussian BC -> PPO and PPO from scratch.

Per task and seed s:
1. Starts: the imitation benchmark's behaviour-cloning runs (benchmarks/imitation.py) from
   --demos scripted demonstrations, chunks of 4 executed whole, seed s: the chunked flow
   (ReinFlow, Flow-SDE, GoRL, DSRL), the chunked DDPM (DPPO) and the chunked Gaussian (PPO after
   BC). A missing start is trained with the imitation benchmark's settings.
2. Cells: one `gprl train` process each, as a user runs it, with `--sparse-reward
   --end-on-success` (reward 1 at the first success, which ends the episode),
   --eval-episodes deterministic evaluation episodes every --eval-every env steps, seed s,
   each method's defaults otherwise. On-policy methods: --onpolicy-steps env steps on 16 envs;
   DSRL (off-policy, slower per env step) --offpolicy-steps on 4 envs; PPO from scratch on the
   same sparse reward at the on-policy budget, single actions.
"Before" is a cell's evaluation at env step 0 (the BC policy executed as fine-tuning executes
it; PPO from scratch: its initial policy), "after" its final one. Throughput is the cell's env
steps over its process's wall time, next to one Meta-World env stepped in a plain loop in this
process (the raw stepping the share is taken of).

Run directories go to benchmarks/runs/manipulation/ (git-ignored); finished cells are skipped and
an interrupted one resumes, so the grid finishes across sessions. Results:
benchmarks/results/manipulation.csv (a row per cell), manipulation_summary.csv,
manipulation.png and an rliable report over success rates (`gprl report`) in
benchmarks/results/manipulation_report/.

    python benchmarks/manipulation.py --tasks pick-place-v3 --seeds 0
    python benchmarks/manipulation.py --report-only
"""

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import (
    BENCH_DIR,
    RESULTS_DIR,
    command,
    gprl_commit,
    load_average,
    machine,
    markdown_table,
    now,
    write_csv,
)
from imitation import (
    DEFAULT_STEPS,
    TASKS,
    demonstrations,
    fit_and_evaluate,
    raw_steps_per_second,
    run_dir_of,
)
from imitation import (
    ROOT as IMITATION_ROOT,
)

from gprl.checkpoint import CheckpointError, read_meta

ROOT = BENCH_DIR / "runs" / "manipulation"
METHODS = {
    # cell name: (gprl algorithm, the BC start's kind, or None for no start)
    "reinflow": ("reinflow", "flow"),
    "dppo": ("dppo", "ddpm"),
    "flow-sde": ("flow-sde", "flow"),
    "gorl": ("gorl", "flow"),
    "dsrl": ("dsrl", "flow"),
    "ppo-bc": ("ppo", "gaussian"),
    "ppo-scratch": ("ppo", None),
}
OFF_POLICY = {"dsrl"}
DONE_FILE = "benchmark_info.json"


def gprl(*args: str) -> float:
    """Run one gprl command as a user would; its wall seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "gprl.cli", *args], check=True)
    return time.perf_counter() - start


def bc_start(task: str, kind: str, seed: int, args) -> Path:
    """The imitation benchmark's chunked run of this kind, trained if missing."""
    cell = dict(task=task, demos=args.demos, kind=kind, chunking="chunk", seed=seed)
    cell["grad_steps"] = DEFAULT_STEPS
    run_dir = run_dir_of(cell)
    if not (run_dir / "checkpoint").is_dir():
        os.environ["MINARI_DATASETS_PATH"] = str(IMITATION_ROOT / "datasets")
        dataset_id, _ = demonstrations(task, args.demos, args.action_noise)
        settings = argparse.Namespace(steps=DEFAULT_STEPS, eval_episodes=args.eval_episodes)
        fit_and_evaluate(cell, dataset_id, settings)
    return run_dir


def cell_command(method: str, task: str, seed: int, run_dir: Path, args) -> list[str]:
    algorithm, start = METHODS[method]
    off_policy = method in OFF_POLICY
    budget = args.offpolicy_steps if off_policy else args.onpolicy_steps
    options = [
        "train", algorithm, "--env", f"metaworld:{task}", "--sparse-reward", "--end-on-success",
        "--total-steps", str(budget), "--num-envs", "4" if off_policy else "16",
        "--eval-every", str(budget // args.evaluations), "--eval-episodes",
        str(args.eval_episodes), "--seed", str(seed), "--out", str(run_dir), "--overwrite",
        "--no-progress",
    ]  # fmt: skip
    if start is not None:
        options += ["--init", str(bc_start(task, start, seed, args))]
    return options


def run_cell(method: str, task: str, seed: int, args) -> None:
    run_dir = ROOT / task / f"{method}-s{seed}"
    if (run_dir / DONE_FILE).exists():
        return
    train = cell_command(method, task, seed, run_dir, args)
    try:
        resumed = read_meta(run_dir)["progress"] is not None
    except CheckpointError:
        resumed = False
    load_before = load_average()
    if resumed:
        seconds = gprl("train", train[1], "--resume", str(run_dir), "--no-progress")
    else:
        seconds = gprl(*train)
    info = {
        "process_seconds": round(seconds, 1),
        "resumed": resumed,
        "load_before": load_before,
        "load_after": load_average(),
        "finished": now(),
        "gprl_commit": gprl_commit(),
        "train_command": shlex.join(["gprl", *train]),
    }
    (run_dir / DONE_FILE).write_text(json.dumps(info, indent=2))


def cell_row(run_dir: Path, raw: dict[str, float]) -> dict:
    task = run_dir.parent.name
    method, seed = run_dir.name.rsplit("-s", 1)
    with open(run_dir / "metrics.csv", newline="") as f:
        evaluated = [r for r in csv.DictReader(f) if r["eval_success_rate"]]
    info = json.loads((run_dir / DONE_FILE).read_text())
    env_steps = int(evaluated[-1]["env_steps"])
    speed = None if info["resumed"] else env_steps / info["process_seconds"]
    return {
        "task": task,
        "method": method,
        "seed": int(seed),
        "env_steps": env_steps,
        "success_before": float(evaluated[0]["eval_success_rate"]),
        "success_after": float(evaluated[-1]["eval_success_rate"]),
        "best_success": max(float(r["eval_success_rate"]) for r in evaluated),
        "env_steps_per_second": None if speed is None else round(speed, 1),
        "raw_steps_per_second": raw.get(task),
        "share_of_raw": None if speed is None or task not in raw else round(speed / raw[task], 3),
        "load_before": info["load_before"],
        "gprl_commit": info["gprl_commit"],
        "train_command": info["train_command"],
    }


def summarise(rows: list[dict]) -> list[dict]:
    summary = []
    for task in TASKS:
        for method in METHODS:
            cell = [r for r in rows if r["task"] == task and r["method"] == method]
            if not cell:
                continue
            speeds = [r["env_steps_per_second"] for r in cell if r["env_steps_per_second"]]
            shares = [r["share_of_raw"] for r in cell if r["share_of_raw"]]
            summary.append(
                {
                    "task": task,
                    "method": method,
                    "seeds": len(cell),
                    "env_steps": int(np.mean([r["env_steps"] for r in cell])),
                    "success_before": float(np.mean([r["success_before"] for r in cell])),
                    "success_after": float(np.mean([r["success_after"] for r in cell])),
                    "min_after": min(r["success_after"] for r in cell),
                    "max_after": max(r["success_after"] for r in cell),
                    "env_steps_per_second": float(np.mean(speeds)) if speeds else None,
                    "share_of_raw": float(np.mean(shares)) if shares else None,
                }
            )
    return summary


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in TASKS if any(r["task"] == t for r in summary)]
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        cells = [r for r in summary if r["task"] == task]
        x = np.arange(len(cells))
        ax.bar(x - 0.2, [r["success_before"] for r in cells], 0.4, label="before (BC)")
        after = np.array([r["success_after"] for r in cells])
        spread = [after - [r["min_after"] for r in cells], [r["max_after"] for r in cells] - after]
        ax.bar(x + 0.2, after, 0.4, yerr=spread, capsize=3, label="after RL (bars: min-max)")
        ax.set_xticks(x, [r["method"] for r in cells], rotation=20)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("success rate (deterministic evaluation)")
        ax.set_title(f"Meta-World {task}, sparse reward")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(raw: dict[str, float]) -> None:
    finished = sorted(ROOT.glob(f"*/*/{DONE_FILE}"))
    if not finished:
        print("no cells yet")
        return
    raw_path = RESULTS_DIR / "manipulation_raw.json"
    known = json.loads(raw_path.read_text()) if raw_path.exists() else {}
    raw_path.write_text(json.dumps(known | raw, indent=2))
    rows = [cell_row(path.parent, known | raw) for path in finished]
    rows.sort(key=lambda r: (r["task"], list(METHODS).index(r["method"]), r["seed"]))
    provenance = {"machine": machine(), "reported": now(), "command": command()}
    write_csv(RESULTS_DIR / "manipulation.csv", [row | provenance for row in rows])
    summary = summarise(rows)
    write_csv(RESULTS_DIR / "manipulation_summary.csv", summary)
    plot(summary, RESULTS_DIR / "manipulation.png")
    gprl(
        "report", *(str(path.parent) for path in finished), "--metric", "success_rate",
        "--out", str(RESULTS_DIR / "manipulation_report"),
        "--title", "Fine-tuning on sparse-reward Meta-World (benchmarks/manipulation.py)",
    )  # fmt: skip
    print(markdown_table(summary, list(summary[0])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--demos", type=int, default=5)
    parser.add_argument("--action-noise", type=float, default=0.3)
    parser.add_argument("--onpolicy-steps", type=int, default=500_000)
    parser.add_argument("--offpolicy-steps", type=int, default=100_000)
    parser.add_argument("--evaluations", type=int, default=5)
    parser.add_argument("--eval-episodes", type=int, default=50)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    print(f"{now()}  {machine()}  gprl {gprl_commit()}  load {load_average()}\n{command()}")
    # Raw stepping of every task asked for, measured in this run beside its cells.
    raw = {task: round(raw_steps_per_second(task), 1) for task in args.tasks}
    if not args.report_only:
        for seed in args.seeds:
            for task in args.tasks:
                for method in args.methods:
                    run_cell(method, task, seed, args)
    report(raw)


if __name__ == "__main__":
    main()
