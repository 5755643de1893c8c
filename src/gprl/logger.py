"""Metrics sinks: CSV always, TensorBoard and Weights & Biases on request, and a learning curve."""

import csv
import importlib.util
import math
import secrets
from pathlib import Path

METRICS_CSV = "metrics.csv"
CURVE_PNG = "learning_curve.png"
# The W&B run a run directory logs to, kept so that a resumed run goes on logging to it.
WANDB_RUN_ID = "wandb_run_id"
LEADING_COLUMNS = [
    "iteration",
    "env_steps",
    "wall_time",
    "steps_per_second",
    "train_return",
    "eval_return",
]
SUCCESS_COLUMN = "eval_success_rate"
"""Evaluations on envs that report success have it; the column appears with the first one."""


def check_sinks(tensorboard: bool, wandb_project: str | None) -> None:
    """Before a run starts: ValueError if an optional sink it asks for is not installed."""
    if tensorboard and importlib.util.find_spec("tensorboardX") is None:
        raise ValueError("--tensorboard needs tensorboardX: pip install 'gprl[tensorboard]'")
    if wandb_project and importlib.util.find_spec("wandb") is None:
        raise ValueError("--wandb-project needs wandb: pip install 'gprl[wandb]'")


class MetricsLogger:
    """Appends one row per iteration; on resume, rows past the checkpoint are dropped first."""

    def __init__(
        self,
        run_dir: Path,
        resume_iteration: int | None = None,
        tensorboard: bool = False,
        wandb_project: str | None = None,
        config=None,
        leading_columns: list[str] = LEADING_COLUMNS,
        step_column: str = "env_steps",
    ):
        self.path = Path(run_dir) / METRICS_CSV
        self.rows: list[dict] = []
        if resume_iteration is not None and self.path.exists():
            with open(self.path, newline="") as f:
                self.rows = [
                    {k: _parse(v) for k, v in row.items()}
                    for row in csv.DictReader(f)
                    if int(row["iteration"]) <= resume_iteration
                ]
        self.step_column = step_column
        self.columns = list(dict.fromkeys(leading_columns + [k for r in self.rows for k in r]))
        self._rewrite()
        check_sinks(tensorboard, wandb_project)
        self.tensorboard = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self.tensorboard = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        self.wandb = None
        if wandb_project:
            self.wandb = _start_wandb(
                Path(run_dir), wandb_project, config, resume_iteration is not None
            )

    def _rewrite(self):
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, self.columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.rows)
        tmp.replace(self.path)

    def log(self, row: dict) -> None:
        self.rows.append(row)
        new_columns = [k for k in row if k not in self.columns]
        if new_columns:
            self.columns += new_columns
            self._rewrite()
        else:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, self.columns, extrasaction="ignore").writerow(row)
        step = int(row[self.step_column])
        numeric = {k: v for k, v in row.items() if isinstance(v, int | float) and math.isfinite(v)}
        if self.tensorboard is not None:
            for key, value in numeric.items():
                self.tensorboard.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(numeric, step=step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()


def _start_wandb(run_dir: Path, project: str, config, resuming: bool):
    """A W&B run (offline too: WANDB_MODE=offline); a resumed gprl run continues its own."""
    import wandb

    id_path = run_dir / WANDB_RUN_ID
    if resuming and id_path.exists():
        run_id = id_path.read_text().strip()
    else:
        run_id = secrets.token_hex(6)
        id_path.write_text(run_id)
    try:
        return wandb.init(
            project=project, config=config, dir=str(run_dir), id=run_id, resume="allow"
        )
    except Exception as e:  # wandb raises its own errors (no API key, network, ...)
        first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(
            f"W&B could not start a run ({first_line}); WANDB_MODE=offline logs locally"
        ) from None


def _parse(value: str):
    if value == "":
        return value  # a metric this row does not have
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if number.is_integer() and "." not in value and "e" not in value else number


def plot_learning_curve(
    rows: list[dict],
    path: Path,
    title: str,
    x_column: str = "env_steps",
    reference: tuple[str, float] | None = None,
) -> Path:
    """Returns against x_column, and below them the evaluation success rate where the rows have
    one; reference = (label, value) adds a horizontal line to the returns."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    successes = _points(rows, x_column, SUCCESS_COLUMN)
    panels = 2 if successes else 1
    fig, axes = plt.subplots(panels, 1, figsize=(7, 4 + 2.5 * (panels - 1)), sharex=True)
    ax = axes[0] if successes else axes
    for key, label, style in (
        ("train_return", "training episodes", "-"),
        ("eval_return", "deterministic evaluation", "o-"),
    ):
        points = _points(rows, x_column, key)
        if points:
            ax.plot(*zip(*points, strict=True), style, label=label, markersize=3, alpha=0.85)
    if reference is not None:
        ax.axhline(reference[1], color="black", linestyle="--", label=reference[0])
    refits = [r[x_column] for r in rows if r.get("refit") == 1]
    for i, step in enumerate(refits):
        ax.axvline(step, color="grey", linestyle=":", label="refit" if i == 0 else None)
    ax.set_ylabel("episodic return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    if successes:
        _plot_success_rate(axes[1], successes)
    (axes[-1] if successes else ax).set_xlabel(x_column.replace("_", " "))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _points(rows: list[dict], x_column: str, key: str) -> list[tuple]:
    """(x, value) of the rows with a finite number under key."""
    return [
        (r[x_column], r[key])
        for r in rows
        if isinstance(r.get(key), int | float) and math.isfinite(r[key])
    ]


def _plot_success_rate(ax, points: list[tuple]) -> None:
    ax.plot(*zip(*points, strict=True), "o-", color="tab:green", markersize=3)
    ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel("evaluation success rate")
    ax.grid(alpha=0.3)
