"""Mode coverage of every algorithm's stochastic policy on the multimodal diagnostic tasks.

For each algorithm, task and seed: train with `gprl train` (default config, one process per run),
then sample the stochastic policy (`act`) at fixed reset observations (64 x 256 actions) and
measure the share of samples on each optimal mode (gprl.envs.diagnostics.OPTIMAL_MODES); on
TwoGoalPoint also the share of 1,000 stochastic episodes ending at each goal (`episodes_*`
columns, rows since 2026-12-05 17:30 UTC; gprl.envs.outcomes.EPISODE_OUTCOMES). One CSV
row per run; cells already in the CSV (same budget, envs and default config) are skipped, so an
interrupted invocation continues where it stopped, and the CSV is read again before each row is
added, so two invocations at once (other --algos) keep each other's rows. The summary has one
row per task, method and budget among the CSV's rows with today's default config (--report-only
rebuilds it from the CSV).

Which default config a row used: a row keeps its config as JSON (`algo_config_json`), completed
with the fields added to the config class since, at their defaults, before it is compared with
today's default, as benchmarks/learning.py does with its run directories; an option added later
with a default that keeps the old behaviour does not orphan the row. The first rows kept only a
short hash (`algo_config`), which cannot be completed: EQUIVALENT_HASHES lists, for those, the
hash of the config each one completes to, checked by rebuilding the default configs from the
source at the rows' gprl_commit (the recorded hashes reproduce) and completing them. A row whose
config differs in anything else (GoRL's defaults changed since its rows) stays out.

    python benchmarks/multimodality.py                       # every algorithm, 3 tasks, 3 seeds
    python benchmarks/multimodality.py --algos ppo gorl --seeds 0
    python benchmarks/multimodality.py --budget gprl/TwoGoalPoint-v0=100000
    python benchmarks/multimodality.py --report-only         # only rebuild the summary
"""

import argparse
import csv
import functools
import hashlib
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import jax
import numpy as np
from common import (
    BENCH_DIR,
    RESULTS_DIR,
    command,
    completed_config_json,
    default_config_json,
    gprl_commit,
    load_average,
    machine,
    markdown_table,
    now,
    write_csv,
)

from gprl.action_plots import (
    coverage_at,
    episode_outcomes,
    plot_actions,
    reset_observations,
    sample_actions,
)
from gprl.algos import ALGORITHMS
from gprl.configs import to_jsonable
from gprl.envs import make_env
from gprl.envs.diagnostics import OPTIMAL_MODES
from gprl.trainer import load_run

DEFAULT_BUDGETS = {
    "gprl/BimodalBandit-v0": 200_000,
    "gprl/TwoGoalPoint-v0": 200_000,
    "gprl/FourModeBandit-v0": 200_000,
}
CSV_NAME = "multimodality.csv"
SUMMARY_NAME = "multimodality_summary"
PLOTS_DIR_NAME = "multimodality"
# Seeds of the measurement, apart from the training seeds: every run is measured at the same
# observations. The plots use their own, so they show other states than the table averages.
MEASURE_SEED = 12345
PLOT_SEED = 0
# A mode counts as kept at an observation when it holds this share of the samples.
KEPT_SHARE = 0.05
CELL_KEY = ("algo", "task", "seed", "budget", "num_envs")
# (method, algo_config) of rows that kept only the hash -> (method, hash) of the config it
# completes to today; followed until no entry applies, so a later addition of fields needs one
# entry from the hash before it. Fields added since at their defaults (critic_warmup_iterations
# 0, final_noise_scale 1, w2_coef 0, GRPO's polychromic_set_size 0 = off) keep the behaviour the
# rows measured. GRPO's config also dropped the critic fields of its base (gamma, gae_lambda,
# vf_coef, ...), which critic-free GRPO never read. The dppo of 814831c was the flow variant,
# since renamed dppo-flow.
EQUIVALENT_HASHES = {
    ("fpo", "e95b96ef93"): ("fpo", "8cd824eda3"),
    ("reinflow", "fb92a85abb"): ("reinflow", "7d455c2533"),
    ("flow-sde", "d5e40dbfe7"): ("flow-sde", "c38ceca6ac"),
    ("grpo", "f5a1661cfd"): ("grpo", "37e725d4b2"),
    ("dppo", "db04e9f5ef"): ("dppo-flow", "81d44aaad9"),
    # normalize_observations (no dataset: raw observations, as before), backup_samples 0 (the
    # plain backup) and explore_hold 1 (i.i.d. warm-up draws), added since these rows.
    ("dpmd", "b125b9ffa5"): ("dpmd", "a8c929e4ca"),
    ("maxentdp", "c9efbc3154"): ("maxentdp", "3260b98a04"),
    # source_std None (Flow-SDE and GRPO keep x_0 ~ N(0, I)) and learned_source_std off.
    ("flow-sde", "c38ceca6ac"): ("flow-sde", "f5dac154ff"),
    ("grpo", "37e725d4b2"): ("grpo", "b3402a79ef"),
}


def slug(text: str) -> str:
    return text.replace("/", "_")


@functools.cache
def config_id(algo_name: str) -> str:
    """A short fingerprint of an algorithm's default config: rows measured with another one
    are stale."""
    config = json.dumps(to_jsonable(ALGORITHMS[algo_name].default_config()), sort_keys=True)
    return hashlib.sha256(config.encode()).hexdigest()[:10]


def parse_budgets(values: list[str]) -> dict[str, int]:
    """--budget N (every task) or TASK=N, applied in order."""
    budgets = dict(DEFAULT_BUDGETS)
    for value in values:
        task, _, steps = value.rpartition("=")
        if task and task not in budgets:
            raise SystemExit(f"--budget: unknown task {task!r}; choose from {', '.join(budgets)}")
        if not steps.isdigit() or int(steps) < 1:
            raise SystemExit(f"--budget: {value!r} is not N or TASK=N with N >= 1")
        for name in [task] if task else list(budgets):
            budgets[name] = int(steps)
    return budgets


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def cell_of(row: dict) -> tuple:
    return tuple(str(row[key]) for key in CELL_KEY)


@functools.cache
def is_default_config(algo_name: str, saved_json: str) -> bool:
    """Whether a recorded config, completed with the fields added since, is today's default."""
    try:
        return completed_config_json(algo_name, json.loads(saved_json)) == default_config_json(
            algo_name
        )
    except ValueError:  # a field removed since, or a record its config class refuses
        return False


def current_method(row: dict) -> str | None:
    """The method a row measured under today's name, if it used today's default config; None
    for a row measured with another config."""
    if row.get("algo_config_json"):
        return row["algo"] if is_default_config(row["algo"], row["algo_config_json"]) else None
    method, config = row["algo"], row["algo_config"]
    while (method, config) in EQUIVALENT_HASHES:
        method, config = EQUIVALENT_HASHES[method, config]
    return method if method in ALGORITHMS and config == config_id(method) else None


def train_run(algo_name: str, task: str, seed: int, budget: int, run_dir: Path, args) -> float:
    """Train one run in its own process; returns its wall time in seconds."""
    train_command = [
        sys.executable,
        "-m",
        "gprl.cli",
        "train",
        algo_name,
        "--env",
        task,
        "--total-steps",
        str(budget),
        "--seed",
        str(seed),
        "--num-envs",
        str(args.num_envs),
        "--eval-every",
        "0",
        "--eval-episodes",
        str(args.eval_episodes),
        "--checkpoint-every",
        str(budget),
        "--out",
        str(run_dir),
        "--overwrite",
        "--no-progress",
    ]
    start = time.perf_counter()
    result = subprocess.run(train_command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError((result.stderr.strip() or result.stdout.strip()).splitlines()[-1])
    return time.perf_counter() - start


def final_metrics(run_dir: Path) -> dict:
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    last_eval = [row for row in rows if row.get("eval_return")][-1]
    return {
        "env_steps": int(rows[-1]["env_steps"]),
        "uncounted_env_steps": int(rows[-1].get("uncounted_env_steps") or 0),
        "final_eval_return": float(last_eval["eval_return"]),
    }


def measure(run_dir: Path, task: str, args, plot_path: Path | None) -> dict:
    """Mode coverage of the run's stochastic policy, averaged over the fixed observations; and
    its action plot when plot_path is given."""
    algo, state, _ = load_run(run_dir)
    acting = algo.acting_params(state)
    with make_env(task, 1, backend="gymnasium") as env:
        observations = reset_observations(env, args.observations, MEASURE_SEED)
        if plot_path is not None:
            plot_actions(algo, acting, env, plot_path, seed=PLOT_SEED)
    actions = sample_actions(
        algo.act, acting, observations, args.samples, jax.random.PRNGKey(MEASURE_SEED)
    )
    coverage = coverage_at(task, observations, actions)
    # Where the task has episode outcomes (TwoGoalPoint's goals): first actions can split
    # between the modes while every episode ends at one.
    episodes = episode_outcomes(task, algo.act, acting, MEASURE_SEED) or {}
    return {
        "mode_shares": " ".join(f"{share:.4f}" for share in coverage.mode_shares.mean(0)),
        "on_no_mode": round(float(coverage.none_share.mean()), 4),
        "minority_mode_share": round(float(coverage.minority_share.mean()), 4),
        "minority_mode_share_max": round(float(coverage.minority_share.max()), 4),
        "modes_kept": round(float(coverage.modes_kept(KEPT_SHARE).mean()), 3),
        "observations": args.observations,
        "samples_per_observation": args.samples,
        "radius": round(OPTIMAL_MODES[task].radius, 4),
    } | {f"episodes_{outcome}": share for outcome, share in episodes.items()}


def run_cell(algo_name: str, task: str, seed: int, budget: int, args) -> dict:
    run_dir = args.runs_dir / f"{slug(task)}-{budget}" / f"{algo_name}-s{seed}"
    print(f"train {algo_name} {task} seed {seed} ({budget} steps) -> {run_dir}", flush=True)
    load_before = load_average()
    wall_time = train_run(algo_name, task, seed, budget, run_dir, args)
    plot_path = args.plots_dir / f"{algo_name}_{slug(task)}.png" if seed == 0 else None
    row = {
        "algo": algo_name,
        "task": task,
        "seed": seed,
        "budget": budget,
        "num_envs": args.num_envs,
        "algo_config": config_id(algo_name),
        "algo_config_json": json.dumps(default_config_json(algo_name), sort_keys=True),
        **final_metrics(run_dir),
        **measure(run_dir, task, args, plot_path),
        "wall_time_s": round(wall_time, 1),
        "load_before": load_before,
        "load_after": load_average(),
        "gprl_commit": gprl_commit(),
        "machine": machine(),
        "date": now(),
        "command": command(),
    }
    print(
        f"  {wall_time:.0f} s; eval return {row['final_eval_return']:.3f}; mode shares "
        f"{row['mode_shares']}, on no mode {row['on_no_mode']}, minority "
        f"{row['minority_mode_share']}",
        flush=True,
    )
    return row


def method_budgets(rows: list[dict], algos: list[str]) -> list[tuple[str, int]]:
    """The (method, budget) pairs present in rows, in the order of algos, largest budget first."""
    return [
        (algo_name, budget)
        for algo_name in algos
        for budget in sorted({int(r["budget"]) for r in rows if r["algo"] == algo_name})[::-1]
    ]


def summary_row(runs: list[dict]) -> dict:
    """Means over the seeds of one task, method and budget, and the per-seed minority shares."""
    minority = np.array([float(row["minority_mode_share"]) for row in runs])
    returns = np.array([float(row["final_eval_return"]) for row in runs])
    shares = np.array([[float(x) for x in row["mode_shares"].split()] for row in runs])
    return {
        "task": runs[0]["task"],
        "algo": runs[0]["algo"],
        "budget": runs[0]["budget"],
        "seeds": " ".join(row["seed"] for row in runs),
        "minority_mode_share": f"{minority.mean():.3f} ± {minority.std():.3f}",
        "minority_per_seed": " ".join(f"{x:.3f}" for x in minority),
        "mode_shares": " ".join(f"{x:.2f}" for x in shares.mean(0)),
        "on_no_mode": round(np.mean([float(r["on_no_mode"]) for r in runs]), 3),
        "modes_kept": round(np.mean([float(r["modes_kept"]) for r in runs]), 2),
        "final_eval_return": f"{returns.mean():.3f} ± {returns.std():.3f}",
        "wall_time_s_mean": round(np.mean([float(r["wall_time_s"]) for r in runs]), 1),
    }


def runs_of(rows: list[dict], task: str, algo_name: str, budget: int) -> list[dict]:
    return sorted(
        (
            row
            for row in rows
            if row["task"] == task and row["algo"] == algo_name and int(row["budget"]) == budget
        ),
        key=lambda row: int(row["seed"]),
    )


def summarize(rows: list[dict], args) -> list[dict]:
    """One row per task, method and budget present in rows."""
    return [
        summary_row(runs)
        for task in args.tasks
        for algo_name, budget in method_budgets(rows, args.algos)
        if (runs := runs_of(rows, task, algo_name, budget))
    ]


def plot_summary(rows: list[dict], args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = method_budgets(rows, args.algos)
    width = 0.8 / len(args.tasks)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(groups) + 2.0), 4.2))
    for task_index, task in enumerate(args.tasks):
        color = f"C{task_index}"
        labelled = False
        for group_index, (algo_name, budget) in enumerate(groups):
            runs = runs_of(rows, task, algo_name, budget)
            values = [float(row["minority_mode_share"]) for row in runs]
            if not values:
                continue
            x = group_index + (task_index - (len(args.tasks) - 1) / 2) * width
            label = None if labelled else task
            labelled = True
            ax.bar(x, np.mean(values), width, color=color, alpha=0.6, label=label)
            ax.plot([x] * len(values), values, "o", color="black", markersize=3)
    # The most a policy can hold off its dominant mode: (K - 1) / K, an even split over K modes.
    for num_modes in sorted({len(row["mode_shares"].split()) for row in rows}):
        ceiling = 1.0 - 1.0 / num_modes
        ax.axhline(ceiling, color="grey", linestyle=":", linewidth=1)
        ax.annotate(
            f"even split over {num_modes} modes",
            (1.0, ceiling),
            xycoords=("axes fraction", "data"),
            ha="right",
            va="bottom",
            fontsize=7,
            color="grey",
        )
    ax.set_xticks(range(len(groups)), [f"{name}\n{budget // 1000}k" for name, budget in groups])
    ax.set_ylabel("minority-mode share (mean over observations)")
    ax.set_title(
        "Stochastic actions on optimal modes other than the dominant one\n"
        "bars: mean over seeds; dots: seeds; below each method: env steps per run",
        fontsize=9,
    )
    ax.set_ylim(0.0, 1.0)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def train_missing(csv_path: Path, budgets: dict[str, int], args) -> list[str]:
    """Train and measure every cell without a row of today's default config; returns the
    failures."""
    rows = read_rows(csv_path)
    done = {cell_of(row | {"algo": method}) for row in rows if (method := current_method(row))}
    failures = []
    for task in args.tasks:
        for seed in args.seeds:
            for algo_name in args.algos:
                key = tuple(map(str, (algo_name, task, seed, budgets[task], args.num_envs)))
                if key in done:
                    print(f"skip {algo_name} {task} seed {seed}: in {csv_path}", flush=True)
                    continue
                try:
                    row = run_cell(algo_name, task, seed, budgets[task], args)
                except Exception as error:
                    # One algorithm's failure should not cost the others their runs.
                    message = f"{type(error).__name__}: {error}"
                    print(f"  FAILED: {message}", flush=True)
                    failures.append(f"{algo_name} {task} seed {seed}: {message}")
                    continue
                # The new row replaces the cell's row of another default config; a row that
                # counts for a method under its new name stays. Read again: another invocation
                # may have added rows meanwhile.
                rows = read_rows(csv_path)
                rows = [r for r in rows if cell_of(r) != key or current_method(r)] + [row]
                write_csv(csv_path, rows)
    return failures


def current_rows(rows: list[dict], args) -> list[dict]:
    """The rows these flags select that used today's default config, under today's method
    names, at every budget present; says which rows were left out for another config."""
    chosen, stale = [], []
    for row in rows:
        method = current_method(row)
        if row["task"] not in args.tasks or int(row["seed"]) not in args.seeds:
            continue
        if int(row["num_envs"]) != args.num_envs or (method or row["algo"]) not in args.algos:
            continue
        if method:
            chosen.append(row | {"algo": method})
        else:
            stale.append(row["algo"])
    if stale:
        counts = ", ".join(f"{name} {count}" for name, count in Counter(stale).items())
        print(f"left out {len(stale)} rows of another default config ({counts})")
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    methods = [name for name, entry in ALGORITHMS.items() if entry.preset is None]
    parser.add_argument("--algos", nargs="+", default=methods, choices=list(ALGORITHMS))
    parser.add_argument(
        "--tasks", nargs="+", default=list(DEFAULT_BUDGETS), choices=list(DEFAULT_BUDGETS)
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--budget",
        action="append",
        default=[],
        metavar="[TASK=]STEPS",
        help="env steps per run, for every task or one (repeatable); default "
        + ", ".join(f"{task}={steps}" for task, steps in DEFAULT_BUDGETS.items()),
    )
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--observations", type=int, default=64, help="reset observations")
    parser.add_argument("--samples", type=int, default=256, help="actions per observation")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    parser.add_argument("--runs-dir", type=Path, default=BENCH_DIR / "runs" / "multimodality")
    parser.add_argument("--report-only", action="store_true", help="train nothing")
    args = parser.parse_args()
    budgets = parse_budgets(args.budget)
    args.plots_dir = args.out / PLOTS_DIR_NAME
    csv_path = args.out / CSV_NAME
    gprl_commit()

    failures = [] if args.report_only else train_missing(csv_path, budgets, args)
    # The committed summary covers every method, task and seed, whichever cells this call trained.
    for option in ("algos", "tasks", "seeds"):
        setattr(args, option, parser.get_default(option))
    current = current_rows(read_rows(csv_path), args)
    if not current:
        raise SystemExit(f"no rows in {csv_path} match these flags")
    summary = summarize(current, args)
    write_csv(args.out / f"{SUMMARY_NAME}.csv", summary)
    plot_summary(current, args, args.out / f"{SUMMARY_NAME}.png")
    print()
    print(markdown_table(summary, list(summary[0])))
    print(
        f"\nminority_mode_share: per observation, the share of stochastic actions on optimal "
        f"modes other than the most visited one (0: one mode; 0.5: both of two equally; 0.75: "
        f"all four equally), mean over {args.observations} reset observations x {args.samples} "
        f"actions, then mean ± std over seeds; modes_kept: modes holding >= {KEPT_SHARE} of the "
        f"samples; final_eval_return: deterministic, {args.eval_episodes} episodes."
    )
    print(f"machine: {machine()}; date: {now()}; command: {command()}")
    if args.report_only:
        print(f"wrote {SUMMARY_NAME}.csv and {SUMMARY_NAME}.png in {args.out}")
    else:
        print(f"wrote {csv_path}, {SUMMARY_NAME}.csv, {SUMMARY_NAME}.png and {args.plots_dir}/")
    if failures:
        print("failed runs:\n  " + "\n  ".join(failures), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
