"""Which settings close a flow method's gap to Gaussian PPO from scratch on DMC?

The DMC-6 grid (benchmarks/dmc6.py) found FPO, ReinFlow and DPPO-flow below PPO, and
benchmarks/exploration.py found their stochastic actions as wide as at initialisation. Each cell
trains one method on one task with one named setting (SETTINGS: config fields changed from the
method's defaults; "noise-0.2" contracts the sampling noise to 0.2 over the run through
`final_noise_scale`), with the DMC-6 harness (16 envs, 1M env steps, evaluation every 50k
steps over 10 episodes from zero noise), and measures the final return, the mean return of the
stochastic policy's training episodes over the last 100k env steps, and the spread of the
stochastic policy (per-dimension std of clipped actions at observations the trained policy
visits, as exploration.py). Cells in the committed results/flow_spread.csv are skipped (also in
a fresh clone, whose run directories are gone) and keep their rows; a trained run in
benchmarks/runs/ is measured without training again, so an interrupted invocation continues
where it stopped. A setting changes the method's defaults of the commit its row records (the
`commit` column), and those moved since: ReinFlow's and DPPO-flow's cells from before b441ee5
("default", "noise-0.2", "epochs-10", ReinFlow's "clip-0.05"; "learned-source" sets it) ran
with x_0 ~ N(0, I), DPPO-flow's before 4b8136a with step std 0.05 and ReinFlow's before cb86ba1
with the step-noise range [0.08, 0.16] (README, "The source noise", says which ran when), and
DPPO's "default" cells ran with the defaults it had before "reference-unclipped" became them
(manipulation.py's DPPO_EARLIER_DEFAULTS).

    python benchmarks/flow_spread.py                          # cheetah-run and walker-walk
    python benchmarks/flow_spread.py --settings fpo++ --algos fpo --seeds 0 1
    python benchmarks/flow_spread.py --algos flow-sde --settings default source-0.1
    python benchmarks/flow_spread.py --report-only
"""

import argparse
import csv
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
from manipulation import DPPO_CHANGES, DPPO_EARLIER_DEFAULTS

from gprl.algos import ALGORITHMS
from gprl.checkpoint import CheckpointError, read_meta
from gprl.envs import make_env
from gprl.report_runs import read_run
from gprl.trainer import RunConfig, load_run, train

TASKS = ["dm_control/cheetah-run-v0", "dm_control/walker-walk-v0"]
DEFAULT_ALGOS = ["fpo", "reinflow", "dppo-flow"]
ALGOS = [*DEFAULT_ALGOS, "flow-sde", "dppo"]
"""Flow-SDE and DPPO (DDPM) have cells only where --algos names them."""
FPO_PAPER = {"ratio": "per_action", "loss_mode": "epsilon", "num_epochs": 4}
"""FPO's defaults before this benchmark chose new ones: the FPO paper's ratio and loss, 4 epochs."""
REFERENCE_UNCLIPPED = {
    name: value
    for name, value in (DPPO_EARLIER_DEFAULTS | DPPO_CHANGES["dppo-unclipped"]).items()
    if name != "gamma"
}
"""The manipulation benchmark's best DPPO cell (`dppo-unclipped`) but its sparse-reward gamma:
DPPO's reference step sizes and critic, updates every 32 decisions, no clip on the gradient."""
SETTINGS = {
    "default": {},
    "noise-0.2": {"final_noise_scale": 0.2},
    "clip-0.05": {"clip_eps": 0.05},
    "epochs-10": {"num_epochs": 10},
    "fpo-paper": FPO_PAPER,
    "fpo-paper-noise-0.2": FPO_PAPER | {"final_noise_scale": 0.2},
    "fpo++": FPO_PAPER | {"ratio": "per_pair", "negative_advantages": "spo"},
    "spo": FPO_PAPER | {"negative_advantages": "spo"},
    "fpo-paper-epochs-10": FPO_PAPER | {"num_epochs": 10},
    "fpo-paper-minibatches-4": FPO_PAPER | {"num_minibatches": 4},
    "per-pair": FPO_PAPER | {"ratio": "per_pair"},
    "per-pair-clip-0.2": FPO_PAPER | {"ratio": "per_pair", "clip_eps": 0.2},
    "per-pair-clip-0.02": FPO_PAPER | {"ratio": "per_pair", "clip_eps": 0.02},
    "per-pair-epochs-10": FPO_PAPER | {"ratio": "per_pair", "num_epochs": 10},
    "per-pair-velocity": FPO_PAPER | {"ratio": "per_pair", "loss_mode": "velocity"},
    "learned-source": {"learned_source_std": True, "source_std": 1.0},
    "learned-source-0.1": {"learned_source_std": True, "source_std": 0.1},
    "learned-source-0.3": {"learned_source_std": True, "source_std": 0.3},
    "source-0.1": {"source_std": 0.1},
    "grad-norm-2": {"max_grad_norm": 2.0},
    "denoising-0.1": {"denoising_std": 0.1},
    "denoising-0.2": {"denoising_std": 0.2},
    "denoising-0.2-noise-0.5": {"denoising_std": 0.2, "final_noise_scale": 0.5},
    "denoising-0.2-noise-0.25": {"denoising_std": 0.2, "final_noise_scale": 0.25},
    "step-noise-0.1-0.3": {"min_noise_std": 0.1, "max_noise_std": 0.3},
    "step-noise-0.15-0.45": {"min_noise_std": 0.15, "max_noise_std": 0.45},
    "per-pair-velocity-epochs-10": {"ratio": "per_pair", "loss_mode": "velocity", "num_epochs": 10},
    "unclipped": {"max_grad_norm": float("inf")},
    "reference-unclipped": REFERENCE_UNCLIPPED,
}
"""Named settings: config fields and their values; a setting runs for the methods that have all
its fields. FPO's default since this benchmark is
"per-pair-velocity-epochs-10" (its rows, not "default", hold those runs)."""
STEPS, EVAL_EVERY, NUM_ENVS, EVAL_EPISODES = 1_000_000, 50_000, 16, 10
SPREAD_STEPS, SPREAD_SAMPLES = 100, 64
TRAIN_RETURN_WINDOW = 100_000
CSV_NAME = "flow_spread.csv"


def cell_of(row: dict) -> tuple:
    return row["task"], row["algo"], row["setting"], int(row["seed"])


def run_dir_at(task: str, algo: str, setting: str, seed: int) -> Path:
    return RUNS_DIR / "flow_spread" / slug(task) / f"{algo}-{setting}-s{seed}"


def config_at(algo: str, setting: str):
    return replace(ALGORITHMS[algo].default_config(), **SETTINGS[setting])


def finished(run_dir: Path, algo: str, task: str, setting: str) -> bool:
    try:
        iteration = read_meta(run_dir)["progress"]["iteration"]
    except CheckpointError:
        return False
    with make_env(task, 1, backend="gymnasium") as env:
        config = config_at(algo, setting)
        algorithm = ALGORITHMS[algo].algorithm(config, env.spec, NUM_ENVS, STEPS)
    return iteration >= algorithm.num_iterations


def train_cell(task: str, algo: str, setting: str, seed: int, run_dir: Path) -> None:
    config = config_at(algo, setting)
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
    print(f"train {algo} {task} {setting} seed {seed} -> {run_dir}", flush=True)
    train(algo, run, config)
    print(f"  done in {time.perf_counter() - started:.0f} s", flush=True)


def late_train_return(run_dir: Path) -> float:
    """Mean training-episode return (the stochastic policy) over the last TRAIN_RETURN_WINDOW
    env steps."""
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = [(int(r["env_steps"]), r["train_return"]) for r in csv.DictReader(f)]
    last = rows[-1][0]
    late = [float(v) for steps, v in rows if steps > last - TRAIN_RETURN_WINDOW and v]
    return float(np.nanmean(late))


def measure(task: str, algo_name: str, setting: str, seed: int, run_dir: Path) -> dict:
    algo, state, _ = load_run(run_dir)
    summary = read_run(run_dir)
    observations = visited_observations(algo, state, task, SPREAD_STEPS, seed)
    spread = action_spread(algo, state, observations, SPREAD_SAMPLES, seed)
    return {
        "task": task,
        "algo": algo_name,
        "setting": setting,
        "seed": seed,
        "final_eval_return": round(summary.final_eval_return, 1),
        "late_train_return": round(late_train_return(run_dir), 1),
        "final_action_spread": round(spread, 3),
        "env_steps_per_second": round(summary.steps_per_second, 1),
    }


def mean_of(rows: list[dict], metric: str) -> float | None:
    values = [r.get(metric) for r in rows]
    return round(float(np.mean(values)), 3) if None not in values else None


def summary_rows(rows: list[dict]) -> list[dict]:
    out = []
    for task in TASKS:
        for algo in ALGOS:
            for setting in SETTINGS:
                key = (task, algo, setting)
                cell = [r for r in rows if (r["task"], r["algo"], r["setting"]) == key]
                if cell:
                    out.append(
                        {
                            "task": task,
                            "algo": algo,
                            "setting": setting,
                            "seeds": " ".join(str(r["seed"]) for r in cell),
                            **{
                                metric: mean_of(cell, metric)
                                for metric in (
                                    "final_eval_return",
                                    "late_train_return",
                                    "final_action_spread",
                                )
                            },
                        }
                    )
    return out


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = [s for s in SETTINGS if any(r["setting"] == s for r in summary)]
    # One distinct colour per setting (there are more settings than the default cycle's ten).
    colours = [*plt.get_cmap("tab20").colors, *plt.get_cmap("tab20b").colors]
    fig, axes = plt.subplots(2, len(TASKS), figsize=(6 * len(TASKS) + 3, 7), squeeze=False)
    width = 0.8 / len(settings)
    for column, task in enumerate(TASKS):
        for row, (metric, label) in enumerate(
            (("final_eval_return", "final eval return"), ("final_action_spread", "action spread"))
        ):
            ax = axes[row, column]
            for offset, setting in enumerate(settings):
                values = [
                    next((r[metric] for r in summary if (r["task"], r["algo"], r["setting"])
                          == (task, algo, setting)), np.nan)
                    for algo in ALGOS
                ]  # fmt: skip
                x = np.arange(len(ALGOS)) + offset * width
                ax.bar(x, values, width, label=setting, color=colours[offset])
            ax.set_xticks(np.arange(len(ALGOS)) + 0.4 - width / 2, ALGOS)
            ax.set_ylabel(label)
            ax.set_title(task, fontsize=9)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8, title="setting")
    fig.suptitle(f"Flow methods from scratch, {STEPS} env steps: return and spread", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.83, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=TASKS, choices=TASKS)
    parser.add_argument("--algos", nargs="+", default=DEFAULT_ALGOS, choices=ALGOS)
    parser.add_argument("--settings", nargs="+", default=["default", "noise-0.2"], choices=SETTINGS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--report-only", action="store_true", help="train nothing")
    args = parser.parse_args()
    # The committed CSV is the record of finished cells: a fresh clone skips them.
    text = {"task", "algo", "setting", "machine", "command", "commit", "date"}
    for seed in args.seeds:
        for task in args.tasks:
            for setting in args.settings:
                for algo in args.algos:
                    record_cell(task, algo, setting, seed, args.report_only, text)
    rows = read_rows(RESULTS_DIR / CSV_NAME, text)
    summary = summary_rows(rows)
    plot(summary, RESULTS_DIR / "flow_spread.png")
    columns = ["task", "algo", "setting", "seeds", "final_eval_return", "late_train_return"]
    print(markdown_table(summary, [*columns, "final_action_spread"]))


def record_cell(task: str, algo: str, setting: str, seed: int, report_only: bool, text) -> None:
    """Train (unless report_only) and measure one cell, and add its row to the CSV, read again
    first so that invocations running at once keep each other's rows."""
    if not SETTINGS[setting].keys() <= vars(ALGORITHMS[algo].default_config()).keys():
        return
    recorded = {cell_of(row) for row in read_rows(RESULTS_DIR / CSV_NAME, text)}
    if (task, algo, setting, seed) in recorded:
        return
    run_dir = run_dir_at(task, algo, setting, seed)
    if not finished(run_dir, algo, task, setting):
        if report_only:
            return
        train_cell(task, algo, setting, seed, run_dir)
    row = measure(task, algo, setting, seed, run_dir)
    print(row, flush=True)
    provenance = {"machine": machine(), "command": command()}
    provenance |= {"commit": gprl_commit(), "load": load_average(), "date": now()}
    rows = [*read_rows(RESULTS_DIR / CSV_NAME, text), row | provenance]
    write_csv(RESULTS_DIR / CSV_NAME, rows)


if __name__ == "__main__":
    main()
