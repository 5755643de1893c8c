"""FPO's two-goal GridWorld (gprl/TwoGoalGrid-v0): from a start equidistant from both goals, does
the trained stochastic policy send rollouts to both?

Each cell trains one method with one seed on the GridWorld (random starts outside the goals),
then rolls its stochastic policy (`deterministic=False`) 1,000 times from each start of the FPO
paper's figure and counts the rollouts that reach the bottom goal, the top goal or neither
(gprl.envs.gridworld.goal_fractions). The issue's target: from the equidistant start (17, 12)
both goals each reached by >= 25% of rollouts.

Settings: FPO and Gaussian PPO with the FPO GridWorld's PPO settings (2048-step batches of 16
envs x 128 steps, 10 epochs, lr 3e-4, gamma 0.99, GAE 0.98, clip 0.2; FPO: a 64-64 velocity
network, 10 Euler steps, 50 (t, noise) pairs per action, the paper's per-action ratio and
epsilon loss; 8 minibatches, not the reference's 6, which do not divide the batch),
--onpolicy-steps env steps; the off-policy max-entropy methods
at their defaults, --offpolicy-steps env steps on 4 envs. Finished cells are skipped.

    python benchmarks/gridworld.py                      # every method, seeds 0 1 2
    python benchmarks/gridworld.py --methods fpo --seeds 0
    python benchmarks/gridworld.py --report-only
"""

import argparse
import csv
import json
import time
from dataclasses import replace
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
    read_rows,
    write_csv,
)

import gprl
from gprl.algos import ALGORITHMS
from gprl.envs.gridworld import GRID_EQUIDISTANT_START, GRID_FIGURE_STARTS, goal_fractions
from gprl.policies import FlowPolicyConfig
from gprl.trainer import RunConfig, train

TASK = "gprl/TwoGoalGrid-v0"
ROOT = BENCH_DIR / "runs" / "gridworld"
CSV_NAME = "gridworld.csv"
ON_POLICY = ("fpo", "ppo")
OFF_POLICY = ("dpmd", "maxentdp")
ROLLOUTS = 1000
ROW_FILE = "gridworld_row.json"
"""The cell's measured row, written once its run has finished."""


def method_config(method: str):
    config = ALGORITHMS[method].default_config()
    if method not in ON_POLICY:
        return config
    grid = dict(rollout_steps=128, num_epochs=10, num_minibatches=8, learning_rate=3e-4)
    grid |= dict(gamma=0.99, gae_lambda=0.98, clip_eps=0.2)
    if method == "fpo":
        grid |= dict(flow=FlowPolicyConfig(hidden=(64, 64), num_steps=10), num_mc_pairs=50)
        grid |= dict(ratio="per_action", loss_mode="epsilon")  # the FPO paper's
    return replace(config, **grid)


def train_cell(method: str, seed: int, run_dir: Path, args) -> float:
    on_policy = method in ON_POLICY
    steps = args.onpolicy_steps if on_policy else args.offpolicy_steps
    run = RunConfig(
        env=TASK,
        total_steps=steps,
        seed=seed,
        num_envs=16 if on_policy else 4,
        out=run_dir,
        overwrite=True,
        progress=False,
        eval_every=steps // 5,
        eval_episodes=20,
    )
    started = time.perf_counter()
    print(f"train {method} seed {seed} ({steps} env steps) -> {run_dir}", flush=True)
    train(method, run, method_config(method))
    return time.perf_counter() - started


def measure(method: str, seed: int, run_dir: Path) -> dict:
    run = gprl.load(run_dir)
    row = {"method": method, "seed": seed}
    for start in GRID_FIGURE_STARTS:
        shares = goal_fractions(lambda obs: run.act(obs, deterministic=False), start, ROLLOUTS)
        label = f"{start[0]}_{start[1]}"
        row |= {f"bottom_{label}": shares.bottom, f"top_{label}": shares.top}
        row[f"neither_{label}"] = shares.neither
    with open(run_dir / "metrics.csv", newline="") as f:
        evals = [r for r in csv.DictReader(f) if r.get("eval_return")]
    row["final_eval_return"] = round(float(evals[-1]["eval_return"]), 2)
    return row


def summary_rows(rows: list[dict]) -> list[dict]:
    label = f"{GRID_EQUIDISTANT_START[0]}_{GRID_EQUIDISTANT_START[1]}"
    out = []
    for method in (*ON_POLICY, *OFF_POLICY):
        cell = [r for r in rows if r["method"] == method]
        if not cell:
            continue
        minority = [min(r[f"bottom_{label}"], r[f"top_{label}"]) for r in cell]
        out.append(
            {
                "method": method,
                "seeds": " ".join(str(r["seed"]) for r in cell),
                "bottom": " ".join(f"{r[f'bottom_{label}']:.2f}" for r in cell),
                "top": " ".join(f"{r[f'top_{label}']:.2f}" for r in cell),
                "minority_goal_share_mean": round(float(np.mean(minority)), 3),
                "seeds_with_both_goals_ge_25pct": sum(m >= 0.25 for m in minority),
                "final_eval_return_mean": round(
                    float(np.mean([r["final_eval_return"] for r in cell])), 2
                ),
            }
        )
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(GRID_FIGURE_STARTS), figsize=(4 * len(GRID_FIGURE_STARTS), 3.6))
    for ax, start in zip(axes, GRID_FIGURE_STARTS, strict=True):
        label = f"{start[0]}_{start[1]}"
        names = [f"{r['method']} s{r['seed']}" for r in rows]
        bottom = [r[f"bottom_{label}"] for r in rows]
        top = [r[f"top_{label}"] for r in rows]
        x = np.arange(len(rows))
        ax.bar(x, bottom, color="tab:blue", label="bottom goal")
        ax.bar(x, top, bottom=bottom, color="tab:orange", label="top goal")
        ax.axhline(0.25, color="grey", lw=0.8, ls="--")
        ax.axhline(0.75, color="grey", lw=0.8, ls="--")
        ax.set_xticks(x, names, rotation=70, fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_title(f"start {start}", fontsize=9)
    axes[0].set_ylabel(f"share of {ROLLOUTS} stochastic rollouts")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{TASK}: where the trained stochastic policies go", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=[*ON_POLICY, *OFF_POLICY])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--onpolicy-steps", type=int, default=500_000)
    parser.add_argument("--offpolicy-steps", type=int, default=50_000)
    parser.add_argument("--report-only", action="store_true", help="train nothing")
    args = parser.parse_args()
    # The committed CSV is the record of finished cells: a fresh clone skips them.
    text = {"method", "trained", "machine", "command", "commit", "date"}
    recorded = {(r["method"], r["seed"]): r for r in read_rows(RESULTS_DIR / CSV_NAME, text)}
    for seed in args.seeds:
        for method in args.methods:
            run_dir = ROOT / f"{method}-s{seed}"
            if (method, seed) in recorded:
                continue
            if not (run_dir / ROW_FILE).exists():
                if args.report_only:
                    continue
                seconds = train_cell(method, seed, run_dir, args)
                row = measure(method, seed, run_dir) | {"train_seconds": round(seconds)}
                (run_dir / ROW_FILE).write_text(json.dumps(row | {"trained": now()}))
                print(row, flush=True)
            provenance = {"machine": machine(), "command": command(), "commit": gprl_commit()}
            provenance |= {"load": load_average(), "date": now()}
            recorded[method, seed] = json.loads((run_dir / ROW_FILE).read_text()) | provenance
    order = [*ON_POLICY, *OFF_POLICY]
    rows = sorted(recorded.values(), key=lambda r: (r["seed"], order.index(r["method"])))
    write_csv(RESULTS_DIR / CSV_NAME, rows)
    plot(rows, RESULTS_DIR / "gridworld.png")
    summary = summary_rows(rows)
    write_csv(RESULTS_DIR / "gridworld_summary.csv", summary)
    print(markdown_table(summary, list(summary[0])))


if __name__ == "__main__":
    main()
