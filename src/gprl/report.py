"""Benchmark reports from run directories: per-task tables, learning curves with confidence
bands, and IQM / optimality gap with 95% stratified-bootstrap intervals and performance profiles
computed with `rliable` (Agarwal et al., 2021).

Scores are final deterministic evaluation returns divided by `score_scale` (1000 for the DM
Control suite), so tasks on one scale aggregate; every statistic is rliable's.
"""

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gprl.checkpoint import CONFIG_JSON

CURVE_POINTS = 25
BOOTSTRAP_REPS = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class RunSummary:
    run_dir: Path
    algo: str
    env: str
    seed: int
    env_steps: int
    final_eval_return: float
    steps_per_second: float
    curve: np.ndarray
    """(n, 2): env steps and deterministic evaluation return at each evaluation."""


def read_run(run_dir: Path) -> RunSummary:
    """Summarise one run directory; ValueError naming the directory if it is not a finished
    gprl run with at least one evaluation."""
    run_dir = Path(run_dir)
    try:
        config = json.loads((run_dir / CONFIG_JSON).read_text())
        with open(run_dir / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{run_dir} is not a gprl run directory ({type(e).__name__})") from e
    evaluated = [r for r in rows if r.get("eval_return")]
    if not evaluated:
        raise ValueError(f"{run_dir} has no evaluation in its metrics.csv")
    try:
        curve = np.array(
            [(float(r["env_steps"]), float(r["eval_return"])) for r in evaluated], np.float64
        )
        last = rows[-1]
        steps = int(float(last["env_steps"]))
        steps_per_second = steps / float(last["wall_time"]) if float(last["wall_time"]) else 0.0
    except (KeyError, ValueError) as e:
        raise ValueError(f"{run_dir}/metrics.csv is malformed ({e})") from e
    return RunSummary(
        run_dir,
        config.get("algo", "?"),
        config["run"]["env"],
        int(config["run"]["seed"]),
        steps,
        float(curve[-1, 1]),
        steps_per_second,
        curve,
    )


def score_matrices(runs: list[RunSummary], score_scale: float):
    """{algo: (num_seeds, num_tasks) normalised final scores}, the task order, and per-algo
    notes. Algorithms with unequal seed counts across tasks use the first n seeds of each task,
    n the smallest count (rliable needs a full matrix)."""
    tasks = sorted({run.env for run in runs})
    matrices, notes = {}, {}
    for algo in sorted({run.algo for run in runs}):
        per_task = {
            task: sorted(
                (r for r in runs if r.algo == algo and r.env == task), key=lambda r: r.seed
            )
            for task in tasks
        }
        counts = {task: len(found) for task, found in per_task.items()}
        seeds = min(counts.values())
        if seeds == 0:
            notes[algo] = "missing tasks: " + ", ".join(t for t, c in counts.items() if c == 0)
            continue
        if len(set(counts.values())) > 1:
            notes[algo] = f"unequal seeds per task {counts}; using the first {seeds} of each"
        matrices[algo] = np.array(
            [[per_task[t][i].final_eval_return / score_scale for t in tasks] for i in range(seeds)]
        )
    return matrices, tasks, notes


def interval_estimates(matrices: dict, seed: int = 0):
    """IQM, mean and optimality gap with stratified-bootstrap confidence intervals."""
    from rliable import library as rly
    from rliable import metrics

    def aggregates(scores):
        return np.array(
            [
                metrics.aggregate_iqm(scores),
                metrics.aggregate_mean(scores),
                metrics.aggregate_optimality_gap(scores),
            ]
        )

    np.random.seed(seed)  # rliable's bootstrap draws from numpy's global generator
    return rly.get_interval_estimates(
        matrices, aggregates, reps=BOOTSTRAP_REPS, confidence_interval_size=CONFIDENCE
    )


def task_estimates(runs: list[RunSummary], score_scale: float, seed: int = 0):
    """{(algo, task): (iqm, low, high)} of the normalised final scores of every seed of that
    pair, with the bootstrap interval over those seeds."""
    columns = {
        (algo, task): np.array(
            [[r.final_eval_return / score_scale] for r in runs if r.algo == algo and r.env == task]
        )  # (seeds, 1 task)
        for algo, task in sorted({(r.algo, r.env) for r in runs})
    }
    point, interval = interval_estimates(columns, seed)
    return {
        pair: (float(point[pair][0]), float(interval[pair][0, 0]), float(interval[pair][1, 0]))
        for pair in columns
    }


def curve_estimates(runs: list[RunSummary], score_scale: float, seed: int = 0):
    """{(algo, task): (steps, iqm, low, high)} on a shared grid of evaluation steps: each run's
    curve is interpolated onto the grid, and the IQM over seeds with its bootstrap interval is
    taken at each point."""
    from rliable import library as rly
    from rliable import metrics

    np.random.seed(seed)
    curves = {}
    for algo, task in sorted({(r.algo, r.env) for r in runs}):
        group = [r for r in runs if r.algo == algo and r.env == task]
        end = min(r.curve[-1, 0] for r in group)
        grid = np.linspace(0.0, end, CURVE_POINTS)
        scores = np.stack(
            [np.interp(grid, r.curve[:, 0], r.curve[:, 1]) / score_scale for r in group]
        )  # (seeds, points)
        point, interval = rly.get_interval_estimates(
            {"curve": scores[:, None, :]},
            lambda s: np.array([metrics.aggregate_iqm(s[:, :, i]) for i in range(s.shape[-1])]),
            reps=BOOTSTRAP_REPS // 4,
            confidence_interval_size=CONFIDENCE,
        )
        curves[(algo, task)] = (grid, point["curve"], interval["curve"][0], interval["curve"][1])
    return curves


def write_report(
    run_dirs: list[Path], out: Path, score_scale: float = 1.0, title: str = "gprl report"
) -> Path:
    """Aggregate run_dirs into out/: report.md, runs.csv, tasks.csv, aggregate.csv, curves.png,
    aggregate.png, profiles.png. Returns the markdown report's path."""
    if not score_scale > 0:
        raise ValueError(f"score_scale must be positive, got {score_scale}")
    runs = [read_run(d) for d in run_dirs]
    if not runs:
        raise ValueError("no run directories given")
    out.mkdir(parents=True, exist_ok=True)
    matrices, tasks, notes = score_matrices(runs, score_scale)
    point, interval = interval_estimates(matrices) if matrices else ({}, {})
    _write_runs_csv(runs, out / "runs.csv")
    task_rows = _task_rows(task_estimates(runs, score_scale), runs)
    _write_csv(out / "tasks.csv", task_rows)
    aggregate_rows = _aggregate_rows(matrices, point, interval, runs)
    _write_csv(out / "aggregate.csv", aggregate_rows)
    _plot_curves(curve_estimates(runs, score_scale), tasks, out / "curves.png", score_scale)
    if matrices:
        _plot_aggregates(aggregate_rows, out / "aggregate.png")
        _plot_profiles(matrices, out / "profiles.png")
    report = out / "report.md"
    report.write_text(
        _markdown(title, runs, tasks, task_rows, aggregate_rows, notes, score_scale, bool(matrices))
    )
    return report


# ----- tables ---------------------------------------------------------------------------------


def _write_csv(path: Path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)


def _write_runs_csv(runs: list[RunSummary], path: Path) -> None:
    rows = [
        {
            "algo": r.algo,
            "env": r.env,
            "seed": r.seed,
            "env_steps": r.env_steps,
            "final_eval_return": r.final_eval_return,
            "steps_per_second": round(r.steps_per_second, 1),
            "run_dir": str(r.run_dir),
        }
        for r in sorted(runs, key=lambda r: (r.algo, r.env, r.seed))
    ]
    _write_csv(path, rows)


def _task_rows(estimates: dict, runs: list[RunSummary]) -> list[dict]:
    rows = []
    for (algo, task), (iqm, low, high) in estimates.items():
        returns = [r.final_eval_return for r in runs if r.algo == algo and r.env == task]
        rows.append(
            {
                "algo": algo,
                "env": task,
                "runs": len(returns),
                "iqm": iqm,
                "iqm_low": low,
                "iqm_high": high,
                "mean_return": float(np.mean(returns)),
                "std_return": float(np.std(returns)),
            }
        )
    return rows


def _aggregate_rows(matrices, point, interval, runs) -> list[dict]:
    rows = []
    for algo, scores in matrices.items():
        speeds = [r.steps_per_second for r in runs if r.algo == algo]
        row = {"algo": algo, "runs_per_task": scores.shape[0], "tasks": scores.shape[1]}
        for i, name in enumerate(("iqm", "mean", "optimality_gap")):
            row[name] = float(point[algo][i])
            row[f"{name}_low"] = float(interval[algo][0, i])
            row[f"{name}_high"] = float(interval[algo][1, i])
        row["steps_per_second"] = float(np.mean(speeds))
        rows.append(row)
    return rows


def _per_task_table(task_rows, tasks, cell) -> list[str]:
    algos = sorted({row["algo"] for row in task_rows})
    by_pair = {(row["algo"], row["env"]): row for row in task_rows}
    lines = ["| task | " + " | ".join(algos) + " |", "|---|" + "---|" * len(algos)]
    for task in tasks:
        cells = [cell(by_pair[algo, task]) if (algo, task) in by_pair else "" for algo in algos]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return lines


def _markdown(title, runs, tasks, task_rows, aggregate_rows, notes, score_scale, aggregated):
    lines = [f"# {title}", ""]
    lines += [
        f"{len(runs)} runs, {len({r.algo for r in runs})} algorithms, {len(tasks)} tasks. Scores "
        f"are final deterministic evaluation returns / {score_scale:g}; intervals are "
        f"{CONFIDENCE:.0%} stratified-bootstrap confidence intervals ({BOOTSTRAP_REPS} "
        "resamples, rliable).",
        "",
        f"## Score per task: IQM over seeds [95% CI] (return / {score_scale:g})",
        "",
        *_per_task_table(
            task_rows,
            tasks,
            lambda row: f"{row['iqm']:.3f} [{row['iqm_low']:.3f}, {row['iqm_high']:.3f}]",
        ),
        "",
        "## Final return per task (mean ± std over seeds)",
        "",
        *_per_task_table(
            task_rows,
            tasks,
            lambda row: f"{row['mean_return']:.3g} ± {row['std_return']:.2g} (n={row['runs']})",
        ),
        "",
    ]
    if aggregated:
        lines += [
            "## Aggregate over tasks",
            "",
            "| algorithm | IQM | mean | optimality gap | runs per task | env steps/s |",
            "|---|---|---|---|---|---|",
        ]
        for row in sorted(aggregate_rows, key=lambda r: -r["iqm"]):
            lines.append(
                f"| {row['algo']} | {row['iqm']:.3f} [{row['iqm_low']:.3f}, {row['iqm_high']:.3f}]"
                f" | {row['mean']:.3f} [{row['mean_low']:.3f}, {row['mean_high']:.3f}]"
                f" | {row['optimality_gap']:.3f} [{row['optimality_gap_low']:.3f}, "
                f"{row['optimality_gap_high']:.3f}] | {row['runs_per_task']} | "
                f"{row['steps_per_second']:.0f} |"
            )
        lines += [
            "",
            "![aggregate](aggregate.png) ![performance profiles](profiles.png)",
            "",
        ]
    for algo, note in sorted(notes.items()):
        lines.append(f"- {algo}: {note}")
    lines += ["", "## Learning curves (IQM over seeds, 95% bootstrap band)", ""]
    lines += ["![curves](curves.png)"]
    lines += [
        "",
        "Per-run numbers: `runs.csv`; per task: `tasks.csv`; aggregates: `aggregate.csv`.",
        "",
    ]
    return "\n".join(lines)


# ----- figures --------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_curves(curves, tasks, path: Path, score_scale: float) -> None:
    plt = _pyplot()
    columns = min(3, len(tasks))
    rows = int(np.ceil(len(tasks) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.2 * rows), squeeze=False)
    for ax, task in zip(axes.ravel(), tasks, strict=False):
        for (algo, curve_task), (steps, iqm, low, high) in curves.items():
            if curve_task != task:
                continue
            ax.plot(steps, iqm, label=algo)
            ax.fill_between(steps, low, high, alpha=0.2)
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("env steps")
        ax.set_ylabel("eval return" + (f" / {score_scale:g}" if score_scale != 1 else ""))
    for ax in axes.ravel()[len(tasks) :]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_aggregates(rows: list[dict], path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 0.6 * len(rows) + 1.5))
    for ax, name in zip(axes, ("iqm", "mean", "optimality_gap"), strict=True):
        for i, row in enumerate(rows):
            ax.plot([row[f"{name}_low"], row[f"{name}_high"]], [i, i], lw=6, alpha=0.5)
            ax.plot([row[name]], [i], "k|", ms=14)
        ax.set_yticks(range(len(rows)), [r["algo"] for r in rows])
        ax.set_title(name.replace("_", " "))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_profiles(matrices: dict, path: Path) -> None:
    from rliable import library as rly

    plt = _pyplot()
    highest = max(float(m.max()) for m in matrices.values())
    thresholds = np.linspace(0.0, max(highest, 1.0), 81)
    profiles, intervals = rly.create_performance_profile(matrices, thresholds)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for algo, profile in profiles.items():
        ax.plot(thresholds, profile, label=algo)
        ax.fill_between(thresholds, intervals[algo][0], intervals[algo][1], alpha=0.2)
    ax.set_xlabel("normalised score tau")
    ax.set_ylabel("fraction of runs with score > tau")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
