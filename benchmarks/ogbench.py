"""OGBench manipulation from datasets made here: FQL offline against its paper's per-task success,
then offline -> online FQL, QC-FQL and QC on cube-double (issue 20).

Three phases, each cell one `gprl` process run as a user runs it; a finished cell is skipped and
an interrupted one resumes, so the grid finishes across sessions.

1. datasets: per task (task 2 of cube-single, scene and cube-double: OGBench's default tasks),
   `gprl collect --policy oracle` makes OGBench's play dataset (--dataset-episodes episodes of
   --episode-steps steps, seed 0; OGBench's 1000 x 1001) and its validation split (a tenth as
   many episodes, seed --dataset-episodes, as README.md's example) in Minari's data path
   (MINARI_DATASETS_PATH), ids NAMESPACE/<env>-task2-v0 and NAMESPACE/<env>-task2-val-v0. A
   dataset already there is kept if it records the task's env, episode count, step count and
   seed, else refused in one line. Collection is sequential, cube-single last (a second
   `gprl collect` of a dataset under way elsewhere would refuse to replace it only at its end).
   ~70 min per dataset on one core, ~7 min per validation split.
2. offline: `gprl train fql` on cube-single and scene, --offline-steps gradient steps (1M, the
   paper's), the FQL paper's settings for cube and scene (alpha 300, batch 256, learning rate
   3e-4, 10 Euler steps), --eval-episodes deterministic episodes (50, the paper's) every
   --eval-every gradient steps (100k, the reference's), seeds 0 1 2. gprl's runs end with at
   least one online iteration: here 50 env steps and 1000 gradient steps (one call at
   update-to-data 20, which makes every offline iteration 1000 gradient steps too); the offline
   success is the evaluation at the offline phase's end, before any env step.
3. online: cube-double, --online-offline-steps gradient steps (1M, the paper's), then
   --online-steps env steps (100k; the paper runs 1M, and reports +100k, where its FQL /
   QC-FQL gap is largest) on one env, uniform batches over dataset and online data,
   evaluations every --online-eval-every steps (50k) of either phase, the Q-chunking paper's
   settings: FQL alpha 100, QC-FQL alpha 100 and chunks of 5, QC best of 32 chunks of 5, one
   gradient step per env step (update-to-data 5 per decision of a chunk, 1 for FQL). FQL and
   QC-FQL cells run before QC's.

Every cell keeps observations as OGBench gives them (--ALGO.no-normalize-observations), as the
references do.

Networks: --hidden widths for all three networks (BC flow, one-step policy, critics) with
--activation. The papers' 4 x 512 GELU took 211 ms per gradient step on this 2-core CPU
(results/offpolicy_throughput.csv): 1M steps would take 2.4 days per cell. Measured here
(2026-12-04, `gprl train fql` on a 100-step cube-single dataset, batch 256, ReLU, a few
thousand gradient steps after the first 1000, evaluations excluded; load 4-5 from a dataset
collection and another engineer's runs): 2 x 64 1.28 ms, 4 x 64 2.30 ms, 2 x 128 4.35 ms,
2 x 256 9.08 ms per gradient step; again at load 2.5: 2 x 64 1.09 ms, 4 x 64 1.99 ms. A 1M-step
cell within about 30 min needs <= 1.8 ms, so the default is 2 x 64 ReLU (gprl's FQL default,
18-21 min of gradient steps); 4 x 64 (--hidden 64 64 64 64) needs 33-38 min before
evaluations. On cube-double at load 3.5: FQL 1.25 ms, QC-FQL 1.87 ms, QC
12.7 ms per gradient step; an evaluation of 50 failing episodes ~30 s (500 steps each).
Expected minutes per cell at that load: offline cube-single ~25, scene ~30; online FQL ~35,
QC-FQL ~45, QC ~4 h (1.1M gradient steps at 12.7 ms; --online-offline-steps scales it).

References (success in percent; gprl evaluates the deterministic mu(s, 0), the papers sample):
- FQL paper (arXiv 2502.02538), offline, 1M steps, 4 x 512, 8 seeds: cube-single task2 97,
  scene task2 76. The paper's appendix table could not be read from this machine: these are
  the values tabulated for FQL on OGBench's default tasks (task 2 of cube and scene; FQL's
  README names them) in the README of github.com/Xyu-Chern/Xyu-Chern ("cube-single-play
  97 ± 2", "scene-play 76 ± 9"), labelled so in the CSV, beside the paper's 5-task means (96,
  56; ../shared/reference/anchors.md).
- Q-chunking paper (arXiv 2507.07969), cube-double task2, from its released plot data
  (github.com/ColinQiyangLi/qc, plot_data/ogbench-individual.pkl, means over its seeds): after
  1M offline FQL 43.4, QC-FQL 45.0, QC 72.0; +100k online 67.6, 98.5, 94.0; +1M online 92.0,
  100, 100.

Results (--results-dir; rewritten after every cell): ogbench.csv, a row per cell: success
(offline cells: at the offline phase's end; online cells: final), success_before (after the
offline phase), best evaluation, gradient and env steps, process wall time, gradient steps/s
of the offline phase (its metrics.csv rows after the first, which compiles; evaluations
included), load before and after, gprl commit, command, machine, the reference and the gap in
points; ogbench_curves.csv, every evaluation of every cell; ogbench_summary.csv (means over
seeds); ogbench.png; an rliable report over final success rates (`gprl report`) per phase in
ogbench_report_offline/ and ogbench_report_online/. Run directories: benchmarks/runs/ogbench/
(git-ignored; --runs-dir), where an interrupted cell resumes. A finished cell is recorded in
ogbench_runs/ (config, benchmark info, evaluation rows; committed), which marks it done also in
a fresh clone and is what the results are made from. Datasets are not committed: a fresh
machine collects them again (phase 1).

    MINARI_DATASETS_PATH=/work/minari python benchmarks/ogbench.py
    MINARI_DATASETS_PATH=/work/minari python benchmarks/ogbench.py --phases offline --seeds 0
    python benchmarks/ogbench.py --report-only
"""

import argparse
import csv
import json
import shlex
import sys
from pathlib import Path

import numpy as np
from common import (
    BENCH_DIR,
    DONE_FILE,
    RESULTS_DIR,
    command,
    gprl,
    markdown_table,
    now,
    print_start,
    record_cell,
    train_recorded,
    write_csv,
)

from gprl.datasets import dataset_path, datasets_root

ROOT = BENCH_DIR / "runs" / "ogbench"
ENVS = {
    "cube-single": "ogbench:cube-single-play-singletask-task2-v0",
    "scene": "ogbench:scene-play-singletask-task2-v0",
    "cube-double": "ogbench:cube-double-play-singletask-task2-v0",
}
OFFLINE_TASKS = ("cube-single", "scene")
ONLINE_TASK = "cube-double"
RECORDS = "ogbench_runs"
"""Under --results-dir: each finished cell's record (`common.record_cell`), committed."""
PHASES = ("datasets", "offline", "online")
FQL_PAPER = {"cube-single": 97.0, "scene": 76.0}
FQL_PAPER_SOURCE = "FQL paper, default task (github.com/Xyu-Chern/Xyu-Chern README)"
FQL_PAPER_MEAN = {"cube-single": 96.0, "scene": 56.0}
"""The FQL paper's 5-task means (../shared/reference/anchors.md)."""
QC_PAPER = {
    # method: success after 1M offline, +100k online, +1M online (QC plot data, cube-double task2)
    "fql": (43.4, 67.6, 92.0),
    "qc-fql": (45.0, 98.5, 100.0),
    "qc": (72.0, 94.0, 100.0),
}
ONLINE_METHODS = {
    # method: its options beside the shared ones (the Q-chunking paper's settings)
    "fql": ["--fql.alpha", "100"],
    "qc-fql": ["--qc-fql.alpha", "100", "--qc-fql.update-to-data", "5"],
    "qc": ["--qc.num-samples", "32", "--qc.update-to-data", "5"],
}
OFFLINE_ALPHA = "300"
OFFLINE_ENV_STEPS = 50
"""The shortest online phase gprl's loop allows with the settings below: one call of 50 env
steps, update-to-data 20 making it (and every offline iteration) 1000 gradient steps."""


def dataset_id(task: str, args, validation: bool = False) -> str:
    name = ENVS[task].removeprefix("ogbench:").replace("-singletask-", "-")
    return f"{args.dataset_namespace}/{name.removesuffix('-v0')}{'-val' if validation else ''}-v0"


def dataset_needs(task: str, args, validation: bool) -> dict:
    """What the dataset of a task (or its validation split) must record."""
    episodes = max(args.dataset_episodes // 10, 1) if validation else args.dataset_episodes
    return {
        "env": ENVS[task],
        "episodes": episodes,
        "steps": episodes * args.episode_steps,
        "seed": args.dataset_episodes if validation else 0,
    }


def recorded(dataset: str) -> dict:
    """What a dataset in Minari's data path records, read from its metadata file."""
    meta = json.loads((dataset_path(dataset) / "data" / "metadata.json").read_text())
    return {
        "env": json.loads(meta["env_spec"])["id"],
        "episodes": meta["total_episodes"],
        "steps": meta["total_steps"],
        "seed": meta.get("gprl_collect", {}).get("seed"),
    }


def ensure_dataset(task: str, args, validation: bool = False) -> str:
    """The dataset's id, collected if missing; exits in one line if one there differs."""
    dataset = dataset_id(task, args, validation)
    needs = dataset_needs(task, args, validation)
    if (dataset_path(dataset) / "data").is_dir():
        found = recorded(dataset)
        wrong = [
            f"{key} {found[key]} (needs {needs[key]})" for key in needs if found[key] != needs[key]
        ]
        if wrong:
            sys.exit(
                f"ogbench.py: error: dataset {dataset} in {datasets_root()} records "
                f"{', '.join(wrong)}; move it away or choose another --dataset-namespace"
            )
        return dataset
    if "datasets" not in args.phases:
        sys.exit(
            f"ogbench.py: error: no dataset {dataset} in {datasets_root()}; add --phases datasets"
        )
    print(f"{now()}  collecting {dataset} ({needs['episodes']} x {args.episode_steps} steps)")
    gprl(
        "collect", "--env", ENVS[task], "--policy", "oracle", "--episodes",
        str(needs["episodes"]), "--episode-steps", str(args.episode_steps), "--seed",
        str(needs["seed"]), "--out", dataset,
    )  # fmt: skip
    return dataset


def network_options(algorithm: str, args) -> list[str]:
    hidden = [str(width) for width in args.hidden]
    options = [f"--{algorithm}.critic-hidden", *hidden, f"--{algorithm}.flow.hidden", *hidden]
    options += [f"--{algorithm}.activation", args.activation]
    options += [f"--{algorithm}.flow.activation", args.activation]
    if algorithm != "qc":
        options += [f"--{algorithm}.actor-hidden", *hidden]
    return options


def cell_command(phase: str, task: str, method: str, seed: int, run_dir: Path, args) -> list:
    """The `gprl train` arguments of one cell (see the module docstring)."""
    if phase == "offline":
        offline, env_steps, eval_every = args.offline_steps, OFFLINE_ENV_STEPS, args.eval_every
        settings = ["--fql.alpha", OFFLINE_ALPHA, "--fql.update-to-data", "20"]
        settings += ["--fql.update-every", "50", "--fql.steps-per-iteration", "50"]
    else:
        offline, env_steps = args.online_offline_steps, args.online_steps
        eval_every, settings = args.online_eval_every, ONLINE_METHODS[method]
    return [
        "train", method, "--env", ENVS[task], "--dataset", ensure_dataset(task, args),
        f"--{method}.offline-updates", str(offline), "--total-steps", str(env_steps),
        "--num-envs", "1", "--eval-every", str(eval_every),
        "--eval-episodes", str(args.eval_episodes), "--checkpoint-every",
        str(args.checkpoint_every), "--seed", str(seed), "--out", str(run_dir), "--overwrite",
        "--no-progress", *settings, *network_options(method, args),
        f"--{method}.no-normalize-observations",
    ]  # fmt: skip


def shown_command(train: list[str]) -> str:
    """The command as a user would type it, with the dataset folder it reads."""
    return f"MINARI_DATASETS_PATH={shlex.quote(str(datasets_root()))} " + shlex.join(
        ["gprl", *train]
    )


def record_of(run_dir: Path, results_dir: Path) -> Path:
    """Where a cell's record lives: its run directory's phase/task/cell under RECORDS."""
    return results_dir / RECORDS / run_dir.relative_to(run_dir.parents[2])


def run_cell(phase: str, task: str, method: str, seed: int, args) -> bool:
    """Run (or resume) one cell and record it; whether it ran."""
    run_dir = args.runs_dir / phase / task / f"{method}-s{seed}"
    return train_recorded(
        run_dir, record_of(run_dir, args.results_dir),
        lambda: cell_command(phase, task, method, seed, run_dir, args), shown_command,
        f"{phase} {task} {method} seed {seed}",
    )  # fmt: skip


def read_cell(run_dir: Path) -> tuple[list[dict], dict, dict]:
    """A finished cell's metrics rows, its benchmark info and its algorithm config."""
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    info = json.loads((run_dir / DONE_FILE).read_text())
    config = json.loads((run_dir / "config.json").read_text())
    return rows, info, config.get("algo_config", {})


def gradient_steps(row: dict, config: dict) -> int:
    """Gradient steps up to a metrics row: offline ones, then update-to-data per decision."""
    decisions = int(row["env_steps"]) / config.get("chunk_length", 1)
    return int(float(row.get("offline_updates") or 0) + config["update_to_data"] * decisions)


def offline_rate(rows: list[dict], resumed: bool) -> float | None:
    """Gradient steps/s over the offline rows after the first (which compiles), evaluations
    included; None for a resumed run (its wall clock restarted)."""
    offline = [r for r in rows if int(r["env_steps"]) == 0 and r.get("offline_updates")]
    if resumed or len(offline) < 2:
        return None
    first, last = offline[0], offline[-1]
    steps = float(last["offline_updates"]) - float(first["offline_updates"])
    return round(steps / (float(last["wall_time"]) - float(first["wall_time"])), 1)


def cell_row(run_dir: Path) -> tuple[dict, list[dict]]:
    """A finished cell's CSV row and its evaluation curve."""
    phase, task = run_dir.parent.parent.name, run_dir.parent.name
    method, seed = run_dir.name.rsplit("-s", 1)
    rows, info, config = read_cell(run_dir)
    evaluated = [r for r in rows if r["eval_success_rate"]]
    before = [r for r in evaluated if int(r["env_steps"]) == 0] or evaluated[:1]
    final = before[-1] if phase == "offline" else evaluated[-1]
    cell = {"phase": phase, "task": task, "method": method, "seed": int(seed)}
    curve = [
        cell | {"gradient_steps": gradient_steps(r, config), "env_steps": int(r["env_steps"]),
                "success": float(r["eval_success_rate"])}
        for r in evaluated
    ]  # fmt: skip
    row = cell | {
        "success": 100 * float(final["eval_success_rate"]),
        "success_before": 100 * float(before[-1]["eval_success_rate"]),
        "best_success": 100 * max(float(r["eval_success_rate"]) for r in evaluated),
        "gradient_steps": gradient_steps(rows[-1], config),
        "env_steps": int(rows[-1]["env_steps"]),
        "wall_seconds": None if info["resumed"] else info["process_seconds"],
        "offline_gradient_steps_per_second": offline_rate(rows, info["resumed"]),
        "load_before": info["load_before"],
        "load_after": info["load_after"],
    }
    row |= reference_columns(phase, task, method, row["success"])
    row |= {"gprl_commit": info["gprl_commit"], "train_command": info["train_command"]}
    row |= {"machine": info.get("machine")}
    return row, curve


def reference_columns(phase: str, task: str, method: str, success: float) -> dict:
    if phase == "offline":
        paper = FQL_PAPER[task]
        return {
            "paper_success": paper,
            "gap_points": round(success - paper, 1),
            "paper_source": FQL_PAPER_SOURCE,
            "paper_5task_mean": FQL_PAPER_MEAN[task],
        }
    after_offline, after_100k, after_1m = QC_PAPER[method]
    return {
        "paper_before": after_offline,
        "paper_after_100k": after_100k,
        "paper_after_1m": after_1m,
        "paper_source": "Q-chunking paper plot data (github.com/ColinQiyangLi/qc)",
    }


def summarise(rows: list[dict]) -> list[dict]:
    summary = []
    for key in dict.fromkeys((r["phase"], r["task"], r["method"]) for r in rows):
        cell = [r for r in rows if (r["phase"], r["task"], r["method"]) == key]
        success = [r["success"] for r in cell]
        walls = [r["wall_seconds"] for r in cell if r["wall_seconds"]]
        rates = [r["offline_gradient_steps_per_second"] for r in cell]
        rates = [rate for rate in rates if rate]
        entry = dict(zip(("phase", "task", "method"), key, strict=True)) | {
            "seeds": len(cell),
            "success_before": float(np.mean([r["success_before"] for r in cell])),
            "success": float(np.mean(success)),
            "min": min(success),
            "max": max(success),
            "gradient_steps": int(np.mean([r["gradient_steps"] for r in cell])),
            "env_steps": int(np.mean([r["env_steps"] for r in cell])),
            "wall_minutes": float(np.mean(walls)) / 60 if walls else None,
            "offline_gradient_steps_per_second": float(np.mean(rates)) if rates else None,
        }
        paper = cell[0].get("paper_success", cell[0].get("paper_after_100k"))
        entry["paper"] = paper
        if "paper_success" in cell[0]:
            entry["gap_points"] = round(entry["success"] - paper, 1)
        summary.append(entry)
    return summary


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, phase in zip(axes, ("offline", "online"), strict=True):
        cells = [r for r in summary if r["phase"] == phase]
        x = np.arange(len(cells))
        after = np.array([r["success"] for r in cells])
        spread = [after - [r["min"] for r in cells], [r["max"] for r in cells] - after]
        if phase == "online":
            ax.bar(x - 0.2, [r["success_before"] for r in cells], 0.4, label="after offline")
        ax.bar(x + (0.2 if phase == "online" else 0), after, 0.4, yerr=spread, capsize=3,
               label="final (bars: min-max)")  # fmt: skip
        paper = "paper" if phase == "offline" else "paper, 1M offline + 100k online"
        ax.scatter(x, [r["paper"] for r in cells], marker="_", s=400, c="k", label=paper)
        ax.set_xticks(x, [f"{r['task']}\n{r['method']}" for r in cells])
        ax.set_ylim(0, 102)
        ax.set_ylabel("success rate (%)")
        ax.set_title("FQL offline" if phase == "offline" else "offline -> online, cube-double")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(args, rliable: bool) -> None:
    """Everything under Results from the recorded cells (cells finished by an earlier version
    of this script in --runs-dir are recorded first)."""
    for done in args.runs_dir.glob(f"*/*/*/{DONE_FILE}"):
        record = record_of(done.parent, args.results_dir)
        if not (record / DONE_FILE).exists():
            record_cell(done.parent, record)
    finished = sorted((args.results_dir / RECORDS).glob(f"*/*/*/{DONE_FILE}"))
    if not finished:
        print("no cells yet")
        return
    cells = [cell_row(path.parent) for path in finished]
    order = {name: i for i, name in enumerate([*PHASES, *ENVS, *ONLINE_METHODS])}
    cells.sort(key=lambda c: tuple(order[c[0][k]] for k in ("phase", "task", "method")))
    rows = [row for row, _ in cells]
    reported = {"reported": now(), "command": command()}
    results = args.results_dir
    write_csv(results / "ogbench.csv", [row | reported for row in rows])
    write_csv(results / "ogbench_curves.csv", [point for _, curve in cells for point in curve])
    summary = summarise(rows)
    write_csv(results / "ogbench_summary.csv", summary)
    plot(summary, results / "ogbench.png")
    if rliable:
        for phase in PHASES[1:]:
            rliable_report(
                phase, [p.parent for p in finished if p.parent.parent.parent.name == phase], results
            )
    print(markdown_table(summary, list(summary[0])))


def rliable_report(phase: str, run_dirs: list[Path], results: Path) -> None:
    """`gprl report` over one phase's cells (its tasks and methods share settings)."""
    if run_dirs:
        title = "FQL offline" if phase == "offline" else "Offline -> online on cube-double"
        gprl(
            "report", *map(str, run_dirs), "--metric", "success_rate",
            "--out", str(results / f"ogbench_report_{phase}"),
            "--title", f"OGBench: {title}, datasets made here (benchmarks/ogbench.py)",
        )  # fmt: skip


def cells(args) -> list[tuple[str, str, str, int]]:
    """The grid in running order: offline cells, then online ones method by method (FQL and
    QC-FQL, the target's pair, before QC, whose cells take several times longer)."""
    grid = []
    if "offline" in args.phases:
        grid += [("offline", task, "fql", s) for s in args.seeds for task in args.offline_tasks]
    if "online" in args.phases:
        grid += [("online", ONLINE_TASK, method, s) for method in args.methods for s in args.seeds]
    return grid


def collect_datasets(args) -> None:
    """Phase 1: the datasets (and validation splits) the other phases asked for read."""
    tasks = [t for t in ("scene", "cube-double", "cube-single") if t in args.dataset_tasks]
    for task in tasks:
        ensure_dataset(task, args)
        ensure_dataset(task, args, validation=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--phases", nargs="+", default=list(PHASES), choices=PHASES)
    add("--seeds", nargs="+", type=int, default=[0, 1, 2])
    add("--methods", nargs="+", default=list(ONLINE_METHODS), choices=ONLINE_METHODS,
        help="methods of the online phase")  # fmt: skip
    add("--offline-tasks", nargs="+", default=list(OFFLINE_TASKS), choices=OFFLINE_TASKS,
        help="tasks of the offline phase")  # fmt: skip
    add("--dataset-tasks", nargs="+", default=list(ENVS), choices=ENVS,
        help="tasks whose datasets the datasets phase collects")  # fmt: skip
    add("--dataset-namespace", default="ogbench", help="Minari namespace of the datasets")
    add("--dataset-episodes", type=int, default=1000, help="episodes per dataset (OGBench's)")
    add("--episode-steps", type=int, default=1001, help="steps per episode (OGBench's)")
    add("--offline-steps", type=int, default=1_000_000, help="offline phase: gradient steps")
    add("--eval-every", type=int, default=100_000,
        help="offline phase: gradient steps between evaluations")  # fmt: skip
    add("--online-offline-steps", type=int, default=1_000_000,
        help="online phase: gradient steps on the dataset before the first env step")  # fmt: skip
    add("--online-steps", type=int, default=100_000,
        help="online phase: env steps after the offline ones")  # fmt: skip
    add("--online-eval-every", type=int, default=50_000,
        help="online phase: gradient steps (offline) or env steps between evaluations")  # fmt: skip
    add("--eval-episodes", type=int, default=50)
    add("--hidden", nargs="+", type=int, default=[64, 64],
        help="hidden widths of every network (the papers': 512 512 512 512)")  # fmt: skip
    add("--activation", default="relu", help="hidden activation (the papers': gelu)")
    add("--checkpoint-every", type=int, default=200_000,
        help="gradient + env steps between checkpoints (each holds the replay buffer)")  # fmt: skip
    add("--runs-dir", type=Path, default=ROOT)
    add("--results-dir", type=Path, default=RESULTS_DIR)
    add("--report-only", action="store_true")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    print_start()
    if not args.report_only:
        if "datasets" in args.phases:
            collect_datasets(args)
        for phase, task, method, seed in cells(args):
            if run_cell(phase, task, method, seed, args):
                report(args, rliable=False)
    report(args, rliable=True)


if __name__ == "__main__":
    main()
