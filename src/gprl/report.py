"""Benchmark reports from run directories: per-task tables, learning curves with confidence
bands, and IQM / optimality gap with 95% stratified-bootstrap intervals and performance profiles
computed with `rliable` (Agarwal et al., 2021).

Scores are final deterministic evaluation returns divided by `score_scale` (1000 for the DM
Control suite), so tasks on one scale aggregate, or final evaluation success rates (the fraction
of evaluation episodes that succeeded; the default where every run has them, as the papers
report); every statistic is rliable's. Each table, plot and CSV says which metric it shows.

Runs are read and pooled into groups by `gprl.report_runs`, whose docstring says what pools.

rliable's optimality gap assumes normalised scores, 1 at the optimum (scores above it count as
1) and 0 at a floor. When a score lies outside [0, 1] (negative returns, or a score_scale below
the best return), a gap would be a number without a meaning: it is omitted, the reason is stated
in report.md and on stdout, and its aggregate.csv cells are left empty.
"""

import csv
from pathlib import Path
from typing import NamedTuple

import numpy as np

from gprl.report_runs import (
    METRICS,
    UNPOOLED_OPTIONS,
    RunSummary,
    SkippedRun,
    choose_metric,
    group_runs,
    pooling_lines,
    read_run,
    read_runs,
    seed_order,
)

__all__ = [
    "METRICS",
    "RunSummary",
    "SkippedRun",
    "choose_metric",
    "curve_estimates",
    "group_runs",
    "interval_estimates",
    "optimality_gap_omitted",
    "pooling_lines",
    "read_run",
    "read_runs",
    "score_matrices",
    "task_estimates",
    "write_report",
]

CURVE_POINTS = 25
BOOTSTRAP_REPS = 2000
CONFIDENCE = 0.95
METRIC_NAMES = {"return": "return", "success_rate": "success rate"}


# ----- statistics -----------------------------------------------------------------------------


def _scores(run: RunSummary, score_scale: float, metric: str) -> np.ndarray:
    """(n, 2): env steps and the run's score at each evaluation: its return / score_scale, or
    its success rate as it is."""
    curve = run.scores(metric)
    scale = score_scale if metric == "return" else 1.0
    return np.column_stack([curve[:, 0], curve[:, 1] / scale])


def _final(run: RunSummary, score_scale: float, metric: str) -> float:
    return float(_scores(run, score_scale, metric)[-1, 1])


def score_matrices(runs: list[RunSummary], score_scale: float, metric: str = "return"):
    """{group: (num_seeds, num_tasks) normalised final scores}, the task order, and per-group
    notes. Groups with unequal seed counts across tasks use the first n seeds of each task,
    n the smallest count (rliable needs a full matrix)."""
    tasks = sorted({run.env for run in runs})
    matrices, notes = {}, {}
    for group in sorted({run.group for run in runs}):
        per_task = {
            task: sorted(
                (r for r in runs if r.group == group and r.env == task), key=lambda r: r.seed
            )
            for task in tasks
        }
        counts = {task: len(found) for task, found in per_task.items()}
        seeds = min(counts.values())
        if seeds == 0:
            notes[group] = "missing tasks: " + ", ".join(t for t, c in counts.items() if c == 0)
            continue
        if len(set(counts.values())) > 1:
            notes[group] = f"unequal seeds per task {counts}; using the first {seeds} of each"
        matrices[group] = np.array(
            [[_final(per_task[t][i], score_scale, metric) for t in tasks] for i in range(seeds)]
        )
    return matrices, tasks, notes


def optimality_gap_omitted(matrices: dict) -> str | None:
    """Why the optimality gap of these scores would mean nothing, or None if it means one."""
    if not matrices:
        return None
    low = min(float(m.min()) for m in matrices.values())
    high = max(float(m.max()) for m in matrices.values())
    if low >= 0.0 and high <= 1.0:
        return None
    return (
        f"optimality gap omitted: scores range over [{low:.3g}, {high:.3g}], and the gap is "
        "meaningful only for scores normalised to [0, 1] with 1 the optimum; pass --score-scale "
        "(the optimal return) for tasks whose returns lie in [0, score_scale]"
    )


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


def task_estimates(runs: list[RunSummary], score_scale: float, seed: int = 0, metric="return"):
    """{(group, task): (iqm, low, high)} of the normalised final scores of every seed of that
    pair, with the bootstrap interval over those seeds."""
    columns = {
        (group, task): np.array(
            [[_final(r, score_scale, metric)] for r in runs if r.group == group and r.env == task]
        )  # (seeds, 1 task)
        for group, task in sorted({(r.group, r.env) for r in runs})
    }
    point, interval = interval_estimates(columns, seed)
    return {
        pair: (float(point[pair][0]), float(interval[pair][0, 0]), float(interval[pair][1, 0]))
        for pair in columns
    }


def curve_estimates(runs: list[RunSummary], score_scale: float, seed: int = 0, metric="return"):
    """{(group, task): (steps, iqm, low, high)} on a shared grid of evaluation steps: each run's
    curve is interpolated onto the grid, and the IQM over seeds with its bootstrap interval is
    taken at each point."""
    from rliable import library as rly
    from rliable import metrics

    np.random.seed(seed)
    curves = {}
    for group, task in sorted({(r.group, r.env) for r in runs}):
        members = [
            _scores(r, score_scale, metric) for r in runs if r.group == group and r.env == task
        ]
        end = min(curve[-1, 0] for curve in members)
        grid = np.linspace(0.0, end, CURVE_POINTS)
        scores = np.stack(
            [np.interp(grid, curve[:, 0], curve[:, 1]) for curve in members]
        )  # (seeds, points)
        point, interval = rly.get_interval_estimates(
            {"curve": scores[:, None, :]},
            lambda s: np.array([metrics.aggregate_iqm(s[:, :, i]) for i in range(s.shape[-1])]),
            reps=BOOTSTRAP_REPS // 4,
            confidence_interval_size=CONFIDENCE,
        )
        curves[(group, task)] = (grid, point["curve"], interval["curve"][0], interval["curve"][1])
    return curves


class Scoring(NamedTuple):
    """What a report scores runs by: a metric of METRICS, and the scale returns are divided by."""

    metric: str
    scale: float

    @property
    def label(self) -> str:
        """The score's name in headings and axes."""
        if self.metric != "return":
            return "success rate"
        return "return" if self.scale == 1 else f"return / {self.scale:g}"


def write_report(
    run_dirs: list[Path],
    out: Path,
    score_scale: float = 1.0,
    title: str = "gprl report",
    metric: str = "auto",
) -> Path:
    """Aggregate run_dirs into out/: report.md, runs.csv, tasks.csv, aggregate.csv, curves.png,
    aggregate.png, profiles.png; print what was pooled and the metric scored (one of METRICS,
    or "auto": the success rate where every run has one). Returns the markdown report's path."""
    if not score_scale > 0:
        raise ValueError(f"score_scale must be positive, got {score_scale}")
    runs, notes = read_runs(run_dirs)
    scoring = Scoring(choose_metric(runs, metric), score_scale)
    if scoring.metric != "return" and score_scale != 1:
        raise ValueError(
            "--score-scale divides returns, and success rates lie in [0, 1] already; "
            "pass --metric return to aggregate returns"
        )
    out.mkdir(parents=True, exist_ok=True)
    matrices, tasks, group_notes = score_matrices(runs, score_scale, scoring.metric)
    gap_omitted = optimality_gap_omitted(matrices)
    notes = [f"{group}: {note}" for group, note in sorted(group_notes.items())] + notes
    notes += [gap_omitted] if gap_omitted else []
    point, interval = interval_estimates(matrices) if matrices else ({}, {})
    _write_runs_csv(runs, out / "runs.csv")
    estimates = task_estimates(runs, score_scale, metric=scoring.metric)
    task_rows = _task_rows(estimates, runs, scoring.metric)
    _write_csv(out / "tasks.csv", task_rows)
    aggregate_rows = _aggregate_rows(
        matrices, (point, interval), runs, scoring, gap_omitted is None
    )
    _write_csv(out / "aggregate.csv", aggregate_rows)
    curves = curve_estimates(runs, score_scale, metric=scoring.metric)
    _plot_curves(curves, tasks, out / "curves.png", scoring)
    if matrices:
        _plot_aggregates(aggregate_rows, out / "aggregate.png", gap_omitted is None)
        _plot_profiles(matrices, out / "profiles.png", scoring)
    parent, pooled = pooling_lines(runs)
    print(f"scores: final evaluation {scoring.label} (--metric {scoring.metric})")
    print(f"pooled (run directories in {parent}):")
    for line in pooled:
        print(f"  {line}")
    for note in notes:
        print(f"note: {note}")
    report = out / "report.md"
    tables = _tables(tasks, task_rows, aggregate_rows, scoring, bool(matrices))
    report.write_text(_markdown(title, runs, tasks, tables, (parent, pooled), notes, scoring))
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
            "final_eval_success_rate": "" if r.success_curve is None else r.success_curve[-1, 1],
            "steps_per_second": round(r.steps_per_second, 1),
            "run_dir": str(r.run_dir),
            "group": r.group,
        }
        for r in sorted(runs, key=seed_order)
    ]
    _write_csv(path, rows)


def _task_rows(estimates: dict, runs: list[RunSummary], metric: str) -> list[dict]:
    """tasks.csv: the IQM of the scores, and the mean and std of the metric's final values
    (returns unscaled) in columns named after it."""
    rows = []
    for (group, task), (iqm, low, high) in estimates.items():
        finals = [_final(r, 1.0, metric) for r in runs if r.group == group and r.env == task]
        rows.append(
            {
                "algo": group,
                "env": task,
                "metric": metric,
                "runs": len(finals),
                "iqm": iqm,
                "iqm_low": low,
                "iqm_high": high,
                f"mean_{metric}": float(np.mean(finals)),
                f"std_{metric}": float(np.std(finals)),
            }
        )
    return rows


def _aggregate_rows(matrices, estimates, runs, scoring: Scoring, with_gap: bool) -> list[dict]:
    """aggregate.csv; estimates are what `interval_estimates` returns for the matrices."""
    point, interval = estimates
    rows = []
    for group, scores in matrices.items():
        speeds = [r.steps_per_second for r in runs if r.group == group]
        row = {"algo": group, "metric": scoring.label, "runs_per_task": scores.shape[0]}
        row["tasks"] = scores.shape[1]
        for i, name in enumerate(("iqm", "mean", "optimality_gap")):
            shown = with_gap or name != "optimality_gap"
            row[name] = float(point[group][i]) if shown else ""
            row[f"{name}_low"] = float(interval[group][0, i]) if shown else ""
            row[f"{name}_high"] = float(interval[group][1, i]) if shown else ""
        row["steps_per_second"] = float(np.mean(speeds))
        rows.append(row)
    return rows


def _per_task_table(task_rows, tasks, cell) -> list[str]:
    groups = sorted({row["algo"] for row in task_rows})
    by_pair = {(row["algo"], row["env"]): row for row in task_rows}
    lines = ["| task | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
    for task in tasks:
        cells = [cell(by_pair[group, task]) if (group, task) in by_pair else "" for group in groups]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return lines


def _interval(row: dict, name: str) -> str:
    if row[name] == "":
        return "omitted"
    return f"{row[name]:.3f} [{row[f'{name}_low']:.3f}, {row[f'{name}_high']:.3f}]"


def _tables(tasks, task_rows, aggregate_rows, scoring: Scoring, aggregated) -> list[str]:
    metric, name = scoring.metric, METRIC_NAMES[scoring.metric]

    def spread(row: dict) -> str:
        return f"{row[f'mean_{metric}']:.3g} ± {row[f'std_{metric}']:.2g} (n={row['runs']})"

    lines = [
        f"## Score per task: IQM over seeds [95% CI] ({scoring.label})",
        "",
        *_per_task_table(task_rows, tasks, lambda row: _interval(row, "iqm")),
        "",
        f"## Final {name} per task (mean ± std over seeds)",
        "",
        *_per_task_table(task_rows, tasks, spread),
        "",
    ]
    if not aggregated:
        return lines
    lines += [
        f"## Aggregate over tasks ({scoring.label})",
        "",
        "| algorithm | IQM | mean | optimality gap | runs per task | env steps/s |",
        "|---|---|---|---|---|---|",
    ]
    for row in sorted(aggregate_rows, key=lambda r: -r["iqm"]):
        lines.append(
            f"| {row['algo']} | {_interval(row, 'iqm')} | {_interval(row, 'mean')}"
            f" | {_interval(row, 'optimality_gap')} | {row['runs_per_task']} | "
            f"{row['steps_per_second']:.0f} |"
        )
    return [*lines, "", "![aggregate](aggregate.png) ![performance profiles](profiles.png)", ""]


def _markdown(title, runs, tasks, tables, pooled, notes, scoring: Scoring) -> str:
    """report.md; `pooled` is what `pooling_lines` returns."""
    parent, pooled_lines = pooled
    lines = [
        f"# {title}",
        "",
        f"{len(runs)} runs, {len({r.algo for r in runs})} algorithms, "
        f"{len({r.group for r in runs})} groups (see What was pooled), {len(tasks)} tasks. "
        f"Scores are final evaluation {_described(scoring)}; intervals are "
        f"{CONFIDENCE:.0%} stratified-bootstrap confidence intervals ({BOOTSTRAP_REPS} "
        "resamples, rliable).",
        "",
        *tables,
        *[f"- {note}" for note in notes],
        "",
        f"## Learning curves: evaluation {scoring.label} (IQM over seeds, 95% bootstrap band)",
        "",
        "![curves](curves.png)",
        "",
        "## What was pooled",
        "",
        "A group is one algorithm with one algorithm config and one set of run options (all but "
        f"{', '.join(sorted(UNPOOLED_OPTIONS - {'env'}))}); its runs are seeds of that "
        f"configuration. Run directories are in `{parent}`.",
        "",
        *[f"- {line}" for line in pooled_lines],
        "",
        "Per-run numbers: `runs.csv`; per task: `tasks.csv`; aggregates: `aggregate.csv`.",
        "",
    ]
    return "\n".join(lines)


def _described(scoring: Scoring) -> str:
    if scoring.metric == "return":
        return f"returns of the deterministic policy / {scoring.scale:g}"
    return "success rates (the fraction of evaluation episodes with a successful step)"


# ----- figures --------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_curves(curves, tasks, path: Path, scoring: Scoring) -> None:
    plt = _pyplot()
    columns = min(3, len(tasks))
    rows = int(np.ceil(len(tasks) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.2 * rows), squeeze=False)
    for ax, task in zip(axes.ravel(), tasks, strict=False):
        for (group, curve_task), (steps, iqm, low, high) in curves.items():
            if curve_task != task:
                continue
            ax.plot(steps, iqm, label=group)
            ax.fill_between(steps, low, high, alpha=0.2)
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("env steps")
        ax.set_ylabel(f"eval {scoring.label}")
    for ax in axes.ravel()[len(tasks) :]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_aggregates(rows: list[dict], path: Path, with_gap: bool) -> None:
    plt = _pyplot()
    names = ("iqm", "mean", "optimality_gap") if with_gap else ("iqm", "mean")
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 0.6 * len(rows) + 1.5))
    for ax, name in zip(axes, names, strict=True):
        for i, row in enumerate(rows):
            ax.plot([row[f"{name}_low"], row[f"{name}_high"]], [i, i], lw=6, alpha=0.5)
            ax.plot([row[name]], [i], "k|", ms=14)
        ax.set_yticks(range(len(rows)), [r["algo"] for r in rows])
        ax.set_title(name.replace("_", " "))
        ax.set_xlabel(rows[0]["metric"])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_profiles(matrices: dict, path: Path, scoring: Scoring) -> None:
    from rliable import library as rly

    plt = _pyplot()
    lowest = min(float(m.min()) for m in matrices.values())
    highest = max(float(m.max()) for m in matrices.values())
    thresholds = np.linspace(min(lowest, 0.0), max(highest, 1.0), 81)
    profiles, intervals = rly.create_performance_profile(matrices, thresholds, reps=BOOTSTRAP_REPS)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for group, profile in profiles.items():
        ax.plot(thresholds, profile, label=group)
        ax.fill_between(thresholds, intervals[group][0], intervals[group][1], alpha=0.2)
    ax.set_xlabel(f"{scoring.label} tau")
    ax.set_ylabel("fraction of runs with score > tau")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
