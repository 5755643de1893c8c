"""Imitation from scripted demonstrations on Meta-World: success rate of each `gprl pretrain`
kind, chunked and single-step, against the number of demonstrations.

1. Demonstrations: `gprl collect --env metaworld:TASK --policy metaworld.policies:EXPERT
   --action-noise NOISE --only-successful --episodes N --seed 0` for each N in --demos. Kept
   episodes come in a fixed order, so the 5-episode dataset is the first 5 of the 10-episode one.
2. Behaviour cloning: each kind (--kinds) with chunk length = executed steps = 1 ("single") and
   4 ("chunk", Diffusion Policy's Ta = Te = 4), --steps gradient steps, seeds --seeds, its
   `gprl pretrain` defaults otherwise (weight average 0.995 included).
3. Evaluation: --eval-episodes episodes of the kept (averaged) policy, evaluation seed 2024;
   success = any step of the episode reports success (Meta-World's protocol). Twice: acting from
   zero noise (the Gaussian's mean; the generative kinds' zero-noise plan, where fine-tuning
   starts) and from unit noise (sampled). `success_rate` is each kind's `gprl pretrain` default
   (the Gaussian's mean, the generative kinds sampled).

Every cell (task, demos, kind, chunking, seed) is one row of benchmarks/results/imitation.csv;
cells already there with both evaluations are skipped, so the grid finishes across sessions (a
row recorded before the second evaluation existed is trained again and replaced). Run
directories and datasets go to benchmarks/runs/imitation/ (git-ignored). The report
(imitation_summary.csv, imitation.png, a markdown table) is rebuilt from the CSV on every
invocation.

    python benchmarks/imitation.py                                     # the whole grid (hours)
    python benchmarks/imitation.py --tasks pick-place-v3 --demos 10 25 --seeds 0
    python benchmarks/imitation.py --report-only
"""

import argparse
import csv
import fcntl
import json
import os
import time
from pathlib import Path

import numpy as np
from common import (
    BENCH_DIR,
    RESULTS_DIR,
    gprl_commit,
    load_average,
    markdown_table,
    now,
    print_start,
    write_csv,
)

TASKS = ("pick-place-v3", "peg-insert-side-v3", "assembly-v3")
EXPERTS = {
    "pick-place-v3": "SawyerPickPlaceV3Policy",
    "peg-insert-side-v3": "SawyerPegInsertionSideV3Policy",
    "assembly-v3": "SawyerAssemblyV3Policy",
}
CHUNKINGS = {"single": 1, "chunk": 4}
EVAL_SEED = 2024
ROOT = BENCH_DIR / "runs" / "imitation"
CSV_PATH = RESULTS_DIR / "imitation.csv"
CELL_KEYS = ("task", "demos", "kind", "chunking", "seed", "grad_steps")
DEFAULT_STEPS = 5000
NOISE_SCALES = {"success_rate_noise0": 0.0, "success_rate_noise1": 1.0}


def cell_key(row: dict) -> tuple:
    return tuple(str(row[k]) for k in CELL_KEYS)


def recorded_rows() -> list[dict]:
    if not CSV_PATH.exists():
        return []
    with open(CSV_PATH, newline="") as f:
        return list(csv.DictReader(f))


def done_cells() -> dict[tuple, dict]:
    return {cell_key(row): row for row in recorded_rows()}


def evaluated_both_ways(row: dict) -> bool:
    return all(row.get(column) for column in NOISE_SCALES)


def write_row(row: dict) -> None:
    """Record a cell: it replaces the cell's earlier row, or is appended (a new column goes at
    the end, empty in older rows). A lock on the results folder keeps two benchmark processes
    from losing each other's rows."""
    CSV_PATH.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(CSV_PATH.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        kept = [r for r in recorded_rows() if cell_key(r) != cell_key(row)]
        write_csv(CSV_PATH, [*kept, row])
    finally:
        os.close(folder)


def raw_steps_per_second(task: str, windows: int = 3, seconds: float = 1.0) -> float:
    """One Meta-World env stepped in a plain loop with random actions: the fastest stepping
    this process can do, to compare collection and evaluation with. The best of `windows`
    timed windows after a warm-up: a single window at a process's start once read 242
    steps/s on pick-place, where warm windows read ~1,500 under more load."""
    from gprl.envs import make_env

    with make_env(f"metaworld:{task}", 1, 0, backend="gymnasium") as env:
        env.reset(0)
        rng = np.random.default_rng(0)
        action_dim = env.spec.action_dim

        def steps_in(duration: float) -> float:
            steps, start = 0, time.perf_counter()
            while time.perf_counter() - start < duration:
                env.step(rng.uniform(-1, 1, (1, action_dim)).astype(np.float32))
                steps += 1
            return steps / (time.perf_counter() - start)

        steps_in(seconds)
        return max(steps_in(seconds) for _ in range(windows))


def demonstrations(task: str, episodes: int, noise: float) -> tuple[str, dict]:
    """The dataset id of `episodes` successful expert episodes, collected on first use."""
    from gprl.collect import CollectArgs, collect
    from gprl.datasets import dataset_path

    dataset_id = f"mw-{task}/expert-noise{round(100 * noise)}-{episodes}ep-v0"
    info_path = ROOT / "datasets" / f"{dataset_id.replace('/', '_')}.json"
    if dataset_path(dataset_id).exists() and info_path.exists():
        return dataset_id, json.loads(info_path.read_text())
    start = time.perf_counter()
    collected = collect(
        CollectArgs(
            out=dataset_id,
            env=f"metaworld:{task}",
            policy=f"metaworld.policies:{EXPERTS[task]}",
            episodes=episodes,
            action_noise=noise,
            only_successful=True,
            seed=0,
        )
    )
    seconds = time.perf_counter() - start
    info = {
        "attempted": collected.attempted,
        "expert_success_rate": collected.success_rate,
        "steps": collected.steps,
        "collect_steps_per_second": collected.steps / seconds,
    }
    info_path.parent.mkdir(parents=True, exist_ok=True)
    info_path.write_text(json.dumps(info))
    return dataset_id, info


def run_dir_of(cell: dict) -> Path:
    """TASK-DEMOS-KIND-CHUNKING-SEED, with -<steps/1000>k where the gradient steps are not the
    default's."""
    name = "-".join(str(cell[k]) for k in CELL_KEYS[:-1])
    if cell["grad_steps"] != DEFAULT_STEPS:
        name += f"-{cell['grad_steps'] // 1000}k"
    return ROOT / "runs" / name


def fit_and_evaluate(cell: dict, dataset_id: str, args) -> dict:
    from gprl.pretrain import PretrainConfig, PretrainRun, pretrain
    from gprl.pretrained import default_noise_scale, evaluate_run

    chunk = CHUNKINGS[cell["chunking"]]
    run_dir = run_dir_of(cell)
    options = PretrainRun(
        dataset=dataset_id,
        steps=args.steps,
        seed=cell["seed"],
        out=run_dir,
        overwrite=True,
        progress=False,
        eval_every=0,
        # Its own end-of-run evaluation, kept short: the timed one below is the result.
        eval_episodes=1,
        checkpoint_every=args.steps,
    )
    start = time.perf_counter()
    config = PretrainConfig(chunk_length=chunk, execute_steps=chunk, log_every=min(500, args.steps))
    pretrain(cell["kind"], options, config)
    train_seconds = time.perf_counter() - start
    rates, default = {}, default_noise_scale(cell["kind"], config)
    for column, noise_scale in NOISE_SCALES.items():
        start = time.perf_counter()
        _, evaluated = evaluate_run(run_dir, args.eval_episodes, EVAL_SEED, noise_scale)
        rates[column] = evaluated["eval_success_rate"]
        if noise_scale == default:
            result, eval_seconds = evaluated, time.perf_counter() - start
    eval_steps = result["eval_length"] * args.eval_episodes
    return {
        "success_rate": result["eval_success_rate"],
        "eval_return": result["eval_return"],
        "eval_length": result["eval_length"],
        "train_seconds": round(train_seconds, 1),
        "eval_steps_per_second": round(eval_steps / eval_seconds, 1),
        **rates,
    }


def run_grid(args) -> None:
    os.environ["MINARI_DATASETS_PATH"] = str(ROOT / "datasets")
    done = done_cells()
    for task in args.tasks:
        raw = None
        for demos in args.demos:
            dataset_id, data = None, None
            for kind in args.kinds:
                for chunking in args.chunkings:
                    for seed in args.seeds:
                        cell = dict(
                            task=task,
                            demos=demos,
                            kind=kind,
                            chunking=chunking,
                            seed=seed,
                            grad_steps=args.steps,
                        )
                        if evaluated_both_ways(done.get(cell_key(cell), {})):
                            continue
                        raw = raw or raw_steps_per_second(task)
                        if dataset_id is None:
                            dataset_id, data = demonstrations(task, demos, args.action_noise)
                        row = cell | fit_and_evaluate(cell, dataset_id, args)
                        row |= {
                            "raw_steps_per_second": round(raw, 1),
                            "collect_steps_per_second": round(data["collect_steps_per_second"], 1),
                            "expert_success_rate": data["expert_success_rate"],
                            "action_noise": args.action_noise,
                            "eval_episodes": args.eval_episodes,
                            "load": load_average(),
                            "gprl_commit": gprl_commit(),
                            "date": now(),
                        }
                        write_row(row)
                        print(row, flush=True)


def summarise() -> list[dict]:
    """Per (task, demos, kind, chunking, gradient steps): mean success rate over seeds and its
    range, and the mean of each evaluation (zero / unit noise) over the seeds that have both."""
    groups: dict[tuple, list[dict]] = {}
    for row in done_cells().values():
        key = (row["task"], int(row["demos"]), row["kind"], row["chunking"], int(row["grad_steps"]))
        groups.setdefault(key, []).append(row)
    summary = []
    for (task, demos, kind, chunking, grad_steps), rows in sorted(groups.items()):
        rates = np.array([float(r["success_rate"]) for r in rows])
        both = [r for r in rows if evaluated_both_ways(r)]
        noise_means = {
            column: float(np.mean([float(r[column]) for r in both])) if both else ""
            for column in NOISE_SCALES
        }
        summary.append(
            {
                "task": task,
                "demos": demos,
                "kind": kind,
                "chunking": chunking,
                "grad_steps": grad_steps,
                "seeds": len(rates),
                "success_rate": float(rates.mean()),
                "min": float(rates.min()),
                "max": float(rates.max()),
                "seeds_both": len(both),
                **noise_means,
                "eval_steps_per_second": float(
                    np.median([float(r["eval_steps_per_second"]) for r in rows])
                ),
                "share_of_raw": float(
                    np.median(
                        [
                            float(r["eval_steps_per_second"]) / float(r["raw_steps_per_second"])
                            for r in rows
                        ]
                    )
                ),
            }
        )
    return summary


def panels_by_task(tasks: list[str], draw, path: Path, title: str, ylabel: str) -> None:
    """One panel per task, success rate against the number of demonstrations (log scale);
    draw(ax, task) draws a panel's lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        draw(ax, task)
        ax.set_xscale("log")
        demos = sorted({float(x) for line in ax.get_lines() for x in line.get_xdata()})
        ax.set_xticks(demos, [f"{d:g}" for d in demos], minor=False)
        ax.set_xticks([], minor=True)
        ax.set_xlabel("demonstrations (episodes)")
        ax.set_ylabel(ylabel)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{title} {task}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot(summary: list[dict], path: Path) -> None:
    """Each kind and chunking at its default evaluation, with the range over seeds."""

    def draw(ax, task):
        lines = sorted({(r["kind"], r["chunking"]) for r in summary if r["task"] == task})
        for kind, chunking in lines:
            rows = [
                r
                for r in summary
                if (r["task"], r["kind"], r["chunking"]) == (task, kind, chunking)
            ]
            ax.errorbar(
                [r["demos"] for r in rows],
                [r["success_rate"] for r in rows],
                yerr=[
                    [r["success_rate"] - r["min"] for r in rows],
                    [r["max"] - r["success_rate"] for r in rows],
                ],
                marker="o",
                linestyle="-" if chunking == "chunk" else "--",
                capsize=3,
                label=f"{kind} ({chunking})",
            )

    tasks = sorted({row["task"] for row in summary})
    panels_by_task(
        tasks, draw, path, "BC on Meta-World", "success rate (mean over seeds; bars: min-max)"
    )


def plot_both_ways(summary: list[dict], path: Path) -> None:
    """Chunked kinds evaluated both ways: zero noise (solid) and sampled (dashed), per task,
    beside the chunked Gaussian at the default budget (its mean, dotted)."""
    rows = [r for r in summary if r["seeds_both"] and r["chunking"] == "chunk"]
    lines = sorted({(r["kind"], r["grad_steps"]) for r in rows})
    baseline = ("gaussian", "chunk", DEFAULT_STEPS)

    def draw(ax, task):
        short = [r for r in summary if (r["kind"], r["chunking"], r["grad_steps"]) == baseline]
        short = [r for r in short if r["task"] == task]
        ax.plot(
            [r["demos"] for r in short],
            [r["success_rate"] for r in short],
            ":",
            marker="s",
            color="grey",
            label=f"gaussian {DEFAULT_STEPS // 1000}k, mean",
        )
        for index, (kind, steps) in enumerate(lines):
            line = [
                r for r in rows if (r["task"], r["kind"], r["grad_steps"]) == (task, kind, steps)
            ]
            for column, style in (("success_rate_noise0", "-"), ("success_rate_noise1", "--")):
                ax.plot(
                    [r["demos"] for r in line],
                    [r[column] for r in line],
                    style,
                    marker="o",
                    color=f"C{index}",
                    label=f"{kind} {steps // 1000}k, {'zero noise' if style == '-' else 'sampled'}",
                )

    tasks = sorted({r["task"] for r in rows})
    panels_by_task(tasks, draw, path, "chunked BC on", "success rate (mean over seeds)")


def report() -> None:
    summary = summarise()
    if not summary:
        print("no cells yet")
        return
    with open(RESULTS_DIR / "imitation_summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)
    plot([r for r in summary if r["grad_steps"] == DEFAULT_STEPS], RESULTS_DIR / "imitation.png")
    if any(r["seeds_both"] for r in summary):
        plot_both_ways(summary, RESULTS_DIR / "imitation_noise.png")
    columns = ["task", "demos", "kind", "chunking", "grad_steps", "seeds", "success_rate"]
    columns += ["min", "max", "seeds_both", *NOISE_SCALES]
    print(markdown_table(summary, [*columns, "eval_steps_per_second", "share_of_raw"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--demos", nargs="+", type=int, default=[5, 10, 25, 50])
    parser.add_argument("--kinds", nargs="+", default=["gaussian", "flow", "ddpm", "meanflow"])
    parser.add_argument("--chunkings", nargs="+", default=list(CHUNKINGS), choices=CHUNKINGS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--action-noise", type=float, default=0.3)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--eval-episodes", type=int, default=50)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    print_start()
    if not args.report_only:
        run_grid(args)
    report()


if __name__ == "__main__":
    main()
