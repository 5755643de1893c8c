"""Does contracting a flow policy's sampling noise close its gap to Gaussian PPO from scratch?

The DMC-6 grid (benchmarks/dmc6.py) found FPO, ReinFlow and DPPO-flow below PPO, and
benchmarks/exploration.py found why: their stochastic actions stay as wide as at
initialisation. `final_noise_scale` (gprl.algos.flow_onpolicy) shrinks the source noise and
every Euler step's noise linearly to s over the run. Each cell trains one method on one task at
one s, with the DMC-6 harness (16 envs, 1M env steps, evaluation every 50k steps over 10
episodes), and measures the final return and the spread of the stochastic policy (per-dimension
std of clipped actions at observations the trained policy visits, as exploration.py); s = 1 is
the noise as it was. Cells in the committed results/flow_spread.csv are skipped (also in a fresh
clone, whose run directories are gone) and keep their rows; a trained run in benchmarks/runs/ is
measured without training again, so an interrupted invocation continues where it stopped.

    python benchmarks/flow_spread.py                          # cheetah-run and walker-walk
    python benchmarks/flow_spread.py --scales 0.3 --algos fpo --seeds 0 1
    python benchmarks/flow_spread.py --report-only
"""

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from common import (
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
from exploration import action_spread, visited_observations
from learning import RUNS_DIR, slug

from gprl.algos import ALGORITHMS
from gprl.checkpoint import CheckpointError, read_meta
from gprl.envs import make_env
from gprl.report_runs import read_run
from gprl.trainer import RunConfig, load_run, train

TASKS = ["dm_control/cheetah-run-v0", "dm_control/walker-walk-v0"]
ALGOS = ["fpo", "reinflow", "dppo-flow"]
SCALES = [1.0, 0.2]
STEPS, EVAL_EVERY, NUM_ENVS, EVAL_EPISODES = 1_000_000, 50_000, 16, 10
SPREAD_STEPS, SPREAD_SAMPLES = 100, 64
CSV_NAME = "flow_spread.csv"


def cell_of(row: dict) -> tuple:
    return row["task"], row["algo"], float(row["final_noise_scale"]), int(row["seed"])


def run_dir_at(task: str, algo: str, scale: float, seed: int) -> Path:
    return RUNS_DIR / "flow_spread" / slug(task) / f"{algo}-scale{scale:g}-s{seed}"


def config_at(algo: str, scale: float):
    return replace(ALGORITHMS[algo].default_config(), final_noise_scale=scale)


def finished(run_dir: Path, algo: str, task: str, scale: float) -> bool:
    try:
        iteration = read_meta(run_dir)["progress"]["iteration"]
    except CheckpointError:
        return False
    with make_env(task, 1, backend="gymnasium") as env:
        algorithm = ALGORITHMS[algo].algorithm(config_at(algo, scale), env.spec, NUM_ENVS, STEPS)
    return iteration >= algorithm.num_iterations


def train_cell(task: str, algo: str, scale: float, seed: int, run_dir: Path) -> None:
    config = config_at(algo, scale)
    partial = (run_dir / "checkpoint").exists()
    run = (
        RunConfig(resume=run_dir, progress=False)
        if partial
        else RunConfig(
            env=task,
            total_steps=STEPS,
            seed=seed,
            num_envs=NUM_ENVS,
            out=run_dir,
            overwrite=True,
            progress=False,
            eval_every=EVAL_EVERY,
            eval_episodes=EVAL_EPISODES,
            checkpoint_every=200_000,
        )
    )
    started = time.perf_counter()
    print(f"train {algo} {task} s={scale} seed {seed} -> {run_dir}", flush=True)
    train(algo, run, config)
    print(f"  done in {time.perf_counter() - started:.0f} s", flush=True)


def measure(task: str, algo_name: str, scale: float, seed: int, run_dir: Path) -> dict:
    algo, state, _ = load_run(run_dir)
    summary = read_run(run_dir)
    observations = visited_observations(algo, state, task, SPREAD_STEPS, seed)
    return {
        "task": task,
        "algo": algo_name,
        "final_noise_scale": scale,
        "seed": seed,
        "final_eval_return": round(summary.final_eval_return, 1),
        "final_action_spread": round(
            action_spread(algo, state, observations, SPREAD_SAMPLES, seed), 3
        ),
        "env_steps_per_second": round(summary.steps_per_second, 1),
    }


def summary_rows(rows: list[dict]) -> list[dict]:
    out = []
    for task in TASKS:
        for algo in ALGOS:
            for scale in SCALES:
                cell = [
                    r
                    for r in rows
                    if (r["task"], r["algo"], r["final_noise_scale"]) == (task, algo, scale)
                ]
                if cell:
                    out.append(
                        {
                            "task": task,
                            "algo": algo,
                            "final_noise_scale": scale,
                            "seeds": " ".join(str(r["seed"]) for r in cell),
                            "final_eval_return": round(
                                float(np.mean([r["final_eval_return"] for r in cell])), 1
                            ),
                            "final_action_spread": round(
                                float(np.mean([r["final_action_spread"] for r in cell])), 3
                            ),
                        }
                    )
    return out


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = sorted({r["final_noise_scale"] for r in summary}, reverse=True)
    fig, axes = plt.subplots(2, len(TASKS), figsize=(5 * len(TASKS), 6), squeeze=False)
    for column, task in enumerate(TASKS):
        for row, (metric, label) in enumerate(
            (("final_eval_return", "final eval return"), ("final_action_spread", "action spread"))
        ):
            ax = axes[row, column]
            for offset, scale in enumerate(scales):
                values = [
                    next((r[metric] for r in summary if (r["task"], r["algo"]) == (task, algo)
                          and r["final_noise_scale"] == scale), np.nan)
                    for algo in ALGOS
                ]  # fmt: skip
                width = 0.8 / len(scales)
                x = np.arange(len(ALGOS)) + offset * width
                ax.bar(x, values, width, label=f"final_noise_scale {scale:g}")
            ax.set_xticks(np.arange(len(ALGOS)) + 0.4 - 0.4 / len(scales), ALGOS)
            ax.set_ylabel(label)
            ax.set_title(task, fontsize=9)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"Flow methods from scratch, {STEPS} env steps: return and spread", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=TASKS, choices=TASKS)
    parser.add_argument("--algos", nargs="+", default=ALGOS, choices=ALGOS)
    parser.add_argument("--scales", nargs="+", type=float, default=SCALES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--report-only", action="store_true", help="train nothing")
    args = parser.parse_args()
    # The committed CSV is the record of finished cells: a fresh clone skips them.
    text = {"task", "algo", "machine", "command", "commit", "date"}
    recorded = {cell_of(row): row for row in read_rows(RESULTS_DIR / CSV_NAME, text)}
    for seed in args.seeds:
        for task in args.tasks:
            for scale in args.scales:
                for algo in args.algos:
                    run_dir = run_dir_at(task, algo, scale, seed)
                    if (task, algo, scale, seed) in recorded:
                        continue
                    if not finished(run_dir, algo, task, scale):
                        if args.report_only:
                            continue
                        train_cell(task, algo, scale, seed, run_dir)
                    row = measure(task, algo, scale, seed, run_dir)
                    print(row, flush=True)
                    provenance = {"machine": machine(), "command": command()}
                    provenance |= {"commit": gprl_commit(), "load": load_average(), "date": now()}
                    recorded[cell_of(row)] = row | provenance
    rows = list(recorded.values())
    write_csv(RESULTS_DIR / CSV_NAME, rows)
    summary = summary_rows(rows)
    plot(summary, RESULTS_DIR / "flow_spread.png")
    columns = ["task", "algo", "final_noise_scale", "seeds", "final_eval_return"]
    print(markdown_table(summary, [*columns, "final_action_spread"]))


if __name__ == "__main__":
    main()
