"""Helpers shared by the benchmark scripts: provenance strings, CSV and markdown output,
default configs as JSON (to tell whether a recorded run used gprl's current default), and
`gprl train` cells that resume and record how they ran."""

import csv
import functools
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np

from gprl.algos import ALGORITHMS
from gprl.checkpoint import CheckpointError, read_meta
from gprl.configs import from_jsonable, to_jsonable
from gprl.rundir import is_run_directory

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
DONE_FILE = "benchmark_info.json"
"""Written into a cell's run directory when its `gprl train` process finishes."""
RECORDED = ("config.json", DONE_FILE)
"""What `record_cell` copies whole from a finished cell's run directory."""


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()}, Python {platform.python_version()}"


def command() -> str:
    return "python " + shlex.join(sys.argv)


def now() -> str:
    return datetime.now().isoformat(timespec="seconds")


@functools.cache
def gprl_commit() -> str:
    """The commit of the gprl checkout, '+dirty' if src/ has uncommitted changes.

    Cached: gprl is imported once, so the commit at start-up is the code that runs."""
    try:
        git = ["git", "-C", str(BENCH_DIR.parent)]
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "src"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def load_average() -> float:
    """1-minute load average: on 2 cores, anything near 1 means another process competed."""
    return round(os.getloadavg()[0], 2)


def print_start() -> None:
    """The line an incremental benchmark starts its log with: when, where, which gprl, how
    loaded, and the command."""
    print(f"{now()}  {machine()}  gprl {gprl_commit()}  load {load_average()}\n{command()}")


def write_csv(path: Path, rows: list[dict]) -> None:
    """Every row under the union of their columns, in first-seen order (a row without a column
    leaves it empty). Written beside the file and moved into place, so an interrupted write
    leaves the previous results whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(partial, path)


def read_rows(path: Path, text_columns: set[str]) -> list[dict]:
    """A CSV written by `write_csv` with its numbers as numbers (blank: None); text_columns
    stay text (a commit hash can look like a number). No file: no rows."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [
            {
                key: value if key in text_columns else (None if value == "" else json.loads(value))
                for key, value in row.items()
            }
            for row in csv.DictReader(f)
        ]


def interval_rows(scores: dict[str, list[list[float]]], key: str, gap: bool = False) -> list[dict]:
    """rliable IQM and mean (and optimality gap, with gap) of each group's final scores, with 95%
    stratified-bootstrap intervals. scores: {group: per task, its scores in seed order}; a
    group missing a task is left out, one with unequal seeds per task uses the first n of each
    (n the fewest any task has). key names the group's column."""
    from gprl.report import interval_estimates

    matrices = {
        group: np.array([task[: min(map(len, per_task))] for task in per_task]).T
        for group, per_task in scores.items()
        if min(map(len, per_task))
    }
    if not matrices:
        return []
    points, ranges = interval_estimates(matrices)
    names = ("iqm", "mean", "optimality_gap")[: 3 if gap else 2]
    return [
        {key: group, "seeds_per_task": len(matrix), "tasks": matrix.shape[1]}
        | {
            column: round(float(value), 4)
            for i, name in enumerate(names)
            for column, value in zip(
                (name, f"{name}_low", f"{name}_high"),
                (points[group][i], *ranges[group][:, i]),
                strict=True,
            )
        }
        for group, matrix in matrices.items()
    ]


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def default_config_json(algo_name: str) -> dict:
    return json.loads(json.dumps(to_jsonable(ALGORITHMS[algo_name].default_config())))


def completed_config_json(algo_name: str, saved: dict) -> dict:
    """A saved config with the fields added to the config class since it was saved, at their
    defaults (a new option that keeps the old behaviour by default does not make a run stale)."""
    config = from_jsonable(ALGORITHMS[algo_name].config, saved)
    return json.loads(json.dumps(to_jsonable(config)))


def gprl(*args: str) -> float:
    """Run one gprl command as a user would; its wall seconds. A failure ends the script in one
    line (gprl's own message is above it)."""
    start = time.perf_counter()
    code = subprocess.run([sys.executable, "-m", "gprl.cli", *args]).returncode
    if code:
        script = Path(sys.argv[0]).name
        sys.exit(f"{script}: error: gprl {args[0]} exited with {code} (its message is above)")
    return time.perf_counter() - start


def train_cell(
    run_dir: Path, train: list[str], shown_command: str, label: str = "", extra: dict | None = None
) -> None:
    """Run the `gprl train` command train (its arguments), or resume it from run_dir's
    checkpoint, then write DONE_FILE with its process time, load, commit, shown_command and
    any extra facts the benchmark measured beside it."""
    try:
        resumed = read_meta(run_dir)["progress"] is not None
    except CheckpointError:
        resumed = False
    load_before = load_average()
    if label:
        print(f"{now()}  {label}{' (resumed)' if resumed else ''}")
    # A run stopped before its first checkpoint has only its config.json: `--resume` restarts it.
    if is_run_directory(run_dir):
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
        "machine": machine(),
        "train_command": shown_command,
    } | (extra or {})
    (run_dir / DONE_FILE).write_text(json.dumps(info, indent=2))


def train_recorded(
    run_dir: Path, record_dir: Path, train_of: Callable[[], list[str]],
    shown_of: Callable[[list[str]], str], label: str = "", extra: dict | None = None,
) -> bool:  # fmt: skip
    """Train (or resume) a cell unless its run finished, and record it, unless record_dir holds
    it already; whether anything was done. train_of builds the `gprl train` arguments only when
    they are needed (building them can train a cell's starting policy); extra goes into
    DONE_FILE (see train_cell)."""
    if (record_dir / DONE_FILE).exists():
        return False
    if not (run_dir / DONE_FILE).exists():
        train = train_of()
        train_cell(run_dir, train, shown_of(train), label, extra)
    record_cell(run_dir, record_dir)
    return True


def record_cell(run_dir: Path, record_dir: Path) -> None:
    """Keep what reports read of a finished cell in record_dir, which is committed: its config,
    DONE_FILE and the metrics rows that matter (the first two, every evaluation, the last at env
    step 0 and the last). Run directories (checkpoints, replay buffers) are git-ignored and gone
    in a fresh clone; the record is what marks the cell done there and what it is reported from.
    `gprl report` reads a record as a run directory."""
    with open(run_dir / "metrics.csv", newline="") as f:
        reader = csv.DictReader(f)
        columns, rows = reader.fieldnames, list(reader)
    at_start = [i for i, row in enumerate(rows) if float(row["env_steps"]) == 0]
    kept = {0, 1, len(rows) - 1, *at_start[-1:]}
    kept |= {i for i, row in enumerate(rows) if row.get("eval_return")}
    record_dir.mkdir(parents=True, exist_ok=True)
    with open(record_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows[i] for i in sorted(kept) if i < len(rows))
    for name in RECORDED:
        (record_dir / name).write_bytes((run_dir / name).read_bytes())
