"""Metrics sinks: CSV always, TensorBoard and Weights & Biases on request, and a learning curve."""

import csv
import math
from pathlib import Path

METRICS_CSV = "metrics.csv"
CURVE_PNG = "learning_curve.png"
LEADING_COLUMNS = [
    "iteration",
    "env_steps",
    "wall_time",
    "steps_per_second",
    "train_return",
    "eval_return",
]


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
        self.tensorboard = None
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                raise RuntimeError(
                    "--tensorboard needs tensorboardX: pip install 'gprl[tensorboard]'"
                ) from None
            self.tensorboard = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        self.wandb = None
        if wandb_project:
            try:
                import wandb
            except ImportError:
                raise RuntimeError("--wandb needs wandb: pip install 'gprl[wandb]'") from None
            self.wandb = wandb.init(
                project=wandb_project, config=config, dir=str(run_dir), resume="allow"
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
    """Returns against x_column; reference = (label, value) adds a horizontal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label, style in (
        ("train_return", "training episodes", "-"),
        ("eval_return", "deterministic evaluation", "o-"),
    ):
        points = [
            (r[x_column], r[key])
            for r in rows
            if isinstance(r.get(key), int | float) and math.isfinite(r[key])
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, style, label=label, markersize=3, alpha=0.85)
    if reference is not None:
        ax.axhline(reference[1], color="black", linestyle="--", label=reference[0])
    refits = [r[x_column] for r in rows if r.get("refit") == 1]
    for i, step in enumerate(refits):
        ax.axvline(step, color="grey", linestyle=":", label="refit" if i == 0 else None)
    ax.set_xlabel(x_column.replace("_", " "))
    ax.set_ylabel("episodic return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
