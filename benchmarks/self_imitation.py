"""Success-filtered self-imitation from the manipulation benchmark's BC starts: the baseline
an RL fine-tuner on demonstrations should beat, in env steps, on the same tasks and starts.

Per task and seed s, from the chunked flow start of benchmarks/manipulation.py (5 scripted
demonstrations, chunks of 4 executed whole, seed s):
- round r collects --episodes episodes with the current policy as it acts in training (its
  noise sampled, `gprl collect RUN --policy stochastic`), keeps the successful ones, and fits a
  new chunked flow from scratch, with the start's settings and seed s, to the demonstrations
  and every episode kept so far (--steps gradient steps);
- each policy, the start included, is evaluated as the manipulation cells are: --eval-episodes
  episodes from zero noise on seed s's evaluation draws (gprl.seeding.eval_seed), so round 0
  is those cells' "before".
Env steps count every step of every collected episode. Collection runs each episode to the
task's 500-step limit, where the RL cells end an episode at its first success, so the count is
above what the RL cells would spend on the same episodes.

Incremental: collected and kept datasets (under the imitation benchmark's dataset folder,
namespace `self-imitation`) and fitted runs (benchmarks/runs/self_imitation/) are reused, a
recorded round is not evaluated again, and a chain whose rounds are all recorded is skipped.
Results: self_imitation.csv (a row per round), self_imitation.png (success against env steps,
each seed a line, beside the recorded evaluations of the manipulation benchmark's qc-wide and
dppo-unclipped cells of the same seed).

    python benchmarks/self_imitation.py --tasks pick-place-v3 --seeds 0
    python benchmarks/self_imitation.py --report-only
"""

import argparse
import shutil
import time
from pathlib import Path

from common import (
    BENCH_DIR,
    RESULTS_DIR,
    command,
    gprl_commit,
    load_average,
    machine,
    now,
    print_start,
    read_rows,
    write_csv,
)
from imitation import TASKS
from manipulation import RECORDS, add_start_options, bc_start, demonstration_dataset, evaluations

from gprl.checkpoint import CheckpointError, read_meta
from gprl.collect import CollectArgs, collect
from gprl.dataset_writer import write_dataset
from gprl.datasets import dataset_path, load_demonstrations, read_episodes
from gprl.envs import make_env
from gprl.pretrain import PretrainConfig, PretrainRun, pretrain
from gprl.pretrained import evaluate_run, load_pretrained
from gprl.rundir import is_run_directory
from gprl.seeding import eval_seed

ROOT = BENCH_DIR / "runs" / "self_imitation"
CSV_PATH = RESULTS_DIR / "self_imitation.csv"
TEXT_COLUMNS = {"task", "gprl_commit", "machine", "recorded", "command"}
REFERENCE_METHODS = ("qc-wide", "dppo-unclipped")
"""Manipulation cells drawn beside each seed's chain: the best off- and on-policy ones."""


DEFAULT_EPISODES, DEFAULT_STEPS = 32, 10_000


def chain_name(task: str, seed: int, args) -> str:
    """TASK-sSEED, with -eEPISODES and -STEPSk where a round's collection or fit is not the
    default's (each setting's chain keeps its own datasets, runs and rows)."""
    name = f"{task}-s{seed}"
    if args.episodes != DEFAULT_EPISODES:
        name += f"-e{args.episodes}"
    if args.steps != DEFAULT_STEPS:
        name += f"-{args.steps // 1000}k"
    return name


def dataset_id(chain: str, what: str, round_: int) -> str:
    return f"self-imitation/{chain}-{what}{round_}-v0"


def policy_of(task: str, seed: int, round_: int, args) -> Path:
    """Round 0: the BC start; round r: the flow fitted after r collections."""
    if round_ == 0:
        return bc_start(task, "flow", seed, args)
    return ROOT / chain_name(task, seed, args) / f"round{round_}"


def collected(policy: Path, task: str, seed: int, round_: int, args) -> list:
    """The episodes the policy acts in round round_ (collected once, then read back)."""
    name = dataset_id(chain_name(task, seed, args), "collected", round_)
    if dataset_path(name).exists():
        episodes = read_episodes(name)
        if len(episodes) == args.episodes:
            return episodes
        shutil.rmtree(dataset_path(name))  # an interrupted collection writes what it has
    collect(
        CollectArgs(
            run_dir=policy,
            out=name,
            episodes=args.episodes,
            policy="stochastic",
            seed=1000 * (seed + 1) + round_,
        )
    )
    return read_episodes(name)


def fit(kept: list, task: str, seed: int, round_: int, args) -> float:
    """Fit round round_'s flow to the kept episodes unless it is fitted; its seconds (0 if it
    was)."""
    name = dataset_id(chain_name(task, seed, args), "kept", round_)
    run_dir = policy_of(task, seed, round_, args)
    demos = load_demonstrations(name) if dataset_path(name).exists() else None
    if demos is not None and len(demos.episode_lengths) != len(kept):
        shutil.rmtree(dataset_path(name))  # kept from a collection since replaced
        demos = None
    if demos is None:
        env = make_env(f"metaworld:{task}")
        try:
            description = "demonstrations and the successful episodes of self-imitation"
            write_dataset(name, kept, env.spec, description, "self-imitation")
        finally:
            env.close()
        demos = load_demonstrations(name)
    if fitted(run_dir, args.steps, demos.sha256):
        return 0.0
    start = load_pretrained(policy_of(task, seed, 0, args)).config
    started = time.perf_counter()
    pretrain(
        "flow",
        PretrainRun(
            dataset=name, steps=args.steps, seed=seed, out=run_dir, overwrite=True,
            progress=False, eval_every=0, eval_episodes=1, checkpoint_every=args.steps,
        ),
        PretrainConfig(
            chunk_length=start.chunk_length, execute_steps=start.execute_steps, log_every=500
        ),
    )  # fmt: skip
    return time.perf_counter() - started


def fitted(run_dir: Path, steps: int, dataset_sha256: str) -> bool:
    """Whether run_dir holds a fit of this dataset that ran all its steps (one stopped early
    keeps a checkpoint too, and is fitted again)."""
    if not is_run_directory(run_dir):
        return False
    try:
        meta = read_meta(run_dir)
    except CheckpointError:
        return False
    progress = meta["progress"]
    done = progress is not None and progress["grad_steps"] >= steps
    return done and meta["dataset_sha256"] == dataset_sha256


def evaluate(policy: Path, seed: int, episodes: int) -> float:
    """Success from zero noise on seed's evaluation draws, as the manipulation cells."""
    return evaluate_run(policy, episodes, eval_seed(seed), noise_scale=0.0)[1]["eval_success_rate"]


def run_chain(task: str, seed: int, args, rows: list[dict]) -> None:
    """Every round of one task and seed not yet recorded, recording each as it finishes."""
    setting = {"task": task, "seed": seed, "episodes_per_round": args.episodes}
    setting["fit_steps"] = args.steps
    done = {r["round"] for r in rows if all(r[k] == v for k, v in setting.items())}
    if all(round_ in done for round_ in range(args.rounds + 1)):
        return
    kept, env_steps = read_episodes(demonstration_dataset(task, args)), 0
    for round_ in range(args.rounds + 1):
        policy = policy_of(task, seed, round_, args)
        if round_ > 0:
            previous = policy_of(task, seed, round_ - 1, args)
            episodes = collected(previous, task, seed, round_ - 1, args)
            env_steps += sum(len(e.actions) for e in episodes)
            successful = [e for e in episodes if e.successes.any()]
            kept = kept + successful
            fit_seconds = fit(kept, task, seed, round_, args)
        else:
            fit_seconds = 0.0
        if round_ in done:
            continue
        row = setting | {
            "round": round_, "env_steps": env_steps,
            "success_rate": evaluate(policy, seed, args.eval_episodes),
            "collected_success": None if round_ == 0 else len(successful) / len(episodes),
            "kept_episodes": len(kept), "fit_seconds": round(fit_seconds, 1),
            "gprl_commit": gprl_commit(), "machine": machine(), "load": load_average(),
            "recorded": now(), "command": command(),
        }  # fmt: skip
        print({k: row[k] for k in ("task", "seed", "round", "env_steps", "success_rate")})
        rows[:] = [r for r in rows if key(r) != key(row)]
        rows.append(row)
        rows.sort(key=lambda r: (TASKS.index(r["task"]), *key(r)[1:]))
        write_csv(CSV_PATH, rows)


def key(row: dict) -> tuple:
    return tuple(row[k] for k in ("task", "seed", "episodes_per_round", "fit_steps", "round"))


def reference_curve(task: str, method: str, seed: int) -> tuple[list, list]:
    """(env steps, success) of a recorded manipulation cell's evaluations, or empty lists."""
    record = RESULTS_DIR / RECORDS / task / f"{method}-s{seed}"
    if not (record / "metrics.csv").exists():
        return [], []
    evaluated = evaluations(record)
    steps = [int(r["env_steps"]) for r in evaluated]
    return steps, [float(r["eval_success_rate"]) for r in evaluated]


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in TASKS if any(r["task"] == t for r in rows)]
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
    styles = dict(zip(REFERENCE_METHODS, (":", "--"), strict=True))
    for ax, task in zip(axes[0], tasks, strict=True):
        chains = sorted({key(r)[1:-1] for r in rows if r["task"] == task})
        palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        seeds = sorted({seed for seed, *_ in chains})
        colours = {seed: palette[i % len(palette)] for i, seed in enumerate(seeds)}
        for seed, episodes, steps in chains:
            chain = [r for r in rows if key(r)[:-1] == (task, seed, episodes, steps)]
            x, y = [r["env_steps"] for r in chain], [r["success_rate"] for r in chain]
            label = f"self-imitation, seed {seed}, {episodes} episodes / {steps // 1000}k steps"
            ax.plot(x, y, "o-", color=colours[seed], label=label)
        for seed, colour in colours.items():
            for method, style in styles.items():
                steps, success = reference_curve(task, method, seed)
                label = f"{method}, seed {seed}"
                ax.plot(steps, success, style, color=colour, alpha=0.6, label=label)
        ax.set_xlim(0, max(r["env_steps"] for r in rows) * 1.05)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("env steps")
        ax.set_ylabel("success rate (zero noise, 50 episodes)")
        ax.set_title(f"Meta-World {task}, from 5 demonstrations")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    add_start_options(parser)
    parser.add_argument("--rounds", type=int, default=6)
    add = parser.add_argument
    add("--episodes", type=int, default=DEFAULT_EPISODES, help="episodes collected per round")
    add("--steps", type=int, default=DEFAULT_STEPS, help="gradient steps per fit")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    print_start()
    rows = read_rows(CSV_PATH, TEXT_COLUMNS)
    if not args.report_only:
        for seed in args.seeds:
            for task in args.tasks:
                run_chain(task, seed, args, rows)
    if rows:
        plot(rows, RESULTS_DIR / "self_imitation.png")


if __name__ == "__main__":
    main()
