"""PPO vs GoRL at CPU-feasible budgets: same harness (gprl.trainer.train), budget and seeds.

Runs go to benchmarks/runs/TASK-BUDGET/ALGO-sSEED. A run whose checkpoint marks it finished is
skipped, an unfinished one is resumed from its checkpoint, so the script can be re-run to add
seeds or tasks; a run saved with another default config than gprl's current one is moved aside
and trained again. GoRL's decoder data-collection steps count toward the budget (its default).

    python benchmarks/learning.py --tasks diagnostic            # the two multimodal tasks
    python benchmarks/learning.py --tasks dmc --dmc-steps 500000  # hours on 2 CPU cores
    python benchmarks/learning.py --report-only                 # aggregate finished runs only
"""

import argparse
import csv
import json
import math
import os
import re
import time
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

from gprl.algos import ALGORITHMS
from gprl.backends import BACKENDS
from gprl.checkpoint import CheckpointError, read_config, read_meta
from gprl.envs import make_env
from gprl.envs.diagnostics import bimodal_modes
from gprl.trainer import RunConfig, load_run, train

DIAGNOSTIC_TASKS = ["gprl/TwoGoalPoint-v0", "gprl/BimodalBandit-v0"]
DMC_TASKS = ["dm_control/cheetah-run-v0", "dm_control/walker-walk-v0"]
TASK_GROUPS = {"diagnostic": DIAGNOSTIC_TASKS, "dmc": DMC_TASKS}
RUNS_DIR = BENCH_DIR / "runs"
INFO_FILE = "benchmark_info.json"
MODES_FILE = "mode_coverage.json"
MODE_EPISODES = 500
MODE_SEED = 12345


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def budget_of(task: str, args) -> tuple[int, int]:
    """(total env steps, env steps between evaluations) for a task."""
    if task in DIAGNOSTIC_TASKS:
        return args.diag_steps, args.diag_eval_every
    return args.dmc_steps, args.dmc_eval_every


def run_dir_of(
    task: str, algo: str, seed: int, steps: int, tag: str = "", runs_dir: Path = RUNS_DIR
) -> Path:
    return runs_dir / (f"{slug(task)}-{steps}" + (f"-{tag}" if tag else "")) / f"{algo}-s{seed}"


def run_status(run_dir: Path, algo_name: str, task: str, steps: int, num_envs: int) -> str:
    """'finished', 'partial' (a checkpoint to resume from), 'missing', or 'stale' (trained with
    another default config than gprl's current one, so not comparable any more)."""
    try:
        meta = read_meta(run_dir)
        saved = read_config(run_dir)["algo_config"]
    except CheckpointError:
        return "missing"
    if completed_config_json(algo_name, saved) != default_config_json(algo_name):
        return "stale"
    entry = ALGORITHMS[algo_name]
    with make_env(task, 1, backend="gymnasium") as env:
        algo = entry.algorithm(entry.default_config(), env.spec, num_envs, steps)
    return "finished" if meta["progress"]["iteration"] >= algo.num_iterations else "partial"


def claim(lock: Path) -> bool:
    """Take the lock of a run, unless a live process holds it (two invocations on one machine
    would otherwise restart each other's unfinished runs from scratch)."""
    try:
        pid = int(lock.read_text())
        os.kill(pid, 0)
        if pid != os.getpid():
            return False
    except (OSError, ValueError):
        pass  # no lock, or its process is gone
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(str(os.getpid()))
    return True


def run_one(task: str, algo_name: str, seed: int, args, runs_dir: Path = RUNS_DIR) -> None:
    run_dir = run_dir_of(task, algo_name, seed, budget_of(task, args)[0], args.tag, runs_dir)
    lock = run_dir.with_name(run_dir.name + ".lock")
    if not claim(lock):
        print(f"skip {run_dir}: another process is training it", flush=True)
        return
    try:
        train_or_resume(task, algo_name, seed, run_dir, args)
    finally:
        lock.unlink(missing_ok=True)


def train_or_resume(task: str, algo_name: str, seed: int, run_dir: Path, args) -> None:
    steps, eval_every = budget_of(task, args)
    status = run_status(run_dir, algo_name, task, steps, args.num_envs)
    label = f"{algo_name} {task} seed {seed} ({steps} steps)"
    if status == "finished":
        print(f"skip {label}: finished run in {run_dir}", flush=True)
        return
    if status == "stale":
        # Keep the old run for reference; the run directory is needed for the new one.
        aside = run_dir.with_name(f"{run_dir.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
        run_dir.rename(aside)
        print(f"{run_dir} used another default config; moved to {aside.name}", flush=True)
        status = "missing"
    if status == "partial":
        print(f"resume {label} from {run_dir}", flush=True)
        run = RunConfig(resume=run_dir, progress=False)
    else:
        print(f"train {label} -> {run_dir}", flush=True)
        run = RunConfig(
            env=task,
            env_backend=args.env_backend,
            total_steps=steps,
            seed=seed,
            num_envs=args.num_envs,
            out=run_dir,
            overwrite=True,
            progress=False,
            eval_every=eval_every,
            eval_episodes=args.eval_episodes,
            checkpoint_every=10**12,
        )
    info = {
        "load_before": load_average(),
        "started": now(),
        "machine": machine(),
        "command": command(),
        "gprl_commit": gprl_commit(),
        "resumed": status == "partial",
    }
    start = time.perf_counter()
    train(algo_name, run, ALGORITHMS[algo_name].default_config())
    info |= {"load_after": load_average(), "process_seconds": time.perf_counter() - start}
    (run_dir / INFO_FILE).write_text(json.dumps(info, indent=2))
    print(
        f"  done in {info['process_seconds']:.0f} s (load {info['load_before']} -> "
        f"{info['load_after']})",
        flush=True,
    )


def eval_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row.get("eval_return")]
    return [
        {
            "env_steps": int(row["env_steps"]),
            "eval_return": float(row["eval_return"]),
            "wall_time": float(row["wall_time"]),
        }
        for row in rows
    ]


def mode_coverage(run_dir: Path, task: str) -> dict:
    """Which of the two optima the stochastic (training) policy reaches from the same state.

    The deterministic evaluation picks one optimum by construction, so its return cannot show
    multimodality; this can. minority_share: share of successes that reach the less visited
    optimum, per state (0: one optimum only, 0.5: both equally). BimodalBandit: 100 actions for
    each of 20 contexts (across contexts even a Gaussian can alternate, by reading the context).
    TwoGoalPoint: 500 episodes, all starting at the origin (+-0.01). Cached in the run directory.
    """
    cache = run_dir / MODES_FILE
    if cache.exists():
        return json.loads(cache.read_text())
    algo, state, _ = load_run(run_dir)
    act, acting = jax.jit(algo.act), algo.acting_params(state)
    key = jax.random.PRNGKey(MODE_SEED)
    if task == "gprl/BimodalBandit-v0":
        contexts, samples = 20, 100
        rng = np.random.default_rng(MODE_SEED)
        obs = np.repeat(rng.uniform(-1.0, 1.0, (contexts, 2)), samples, axis=0).astype(np.float32)
        action, _ = act(acting, obs, key)
        action = np.clip(np.asarray(action)[:, 0], -1.0, 1.0)
        distance = np.abs(bimodal_modes(obs) - action[:, None])
        # Reward > 0.5 within 0.1177 of a mode (Gaussian bump of width 0.1).
        success = (distance.min(1) < 0.1177).reshape(contexts, samples)
        upper = (distance.argmin(1) == 1).reshape(contexts, samples)
    else:
        with make_env(task, MODE_EPISODES, MODE_SEED) as env:
            obs = env.reset(seed=MODE_SEED)
            success = np.zeros(env.num_envs, bool)
            upper = np.zeros(env.num_envs, bool)
            running = np.ones(env.num_envs, bool)
            for _ in range(env.spec.max_episode_steps):
                key, act_key = jax.random.split(key)
                action, _ = act(acting, obs, act_key)
                step = env.step(np.asarray(action))
                ended = running & (step.terminated | step.truncated)
                success |= ended & step.terminated
                upper |= ended & step.terminated & (step.final_obs[:, 0] > 0)
                running &= ~ended
                obs = step.obs
                if not running.any():
                    break
        success, upper = success[None], upper[None]
    hits = success.sum(1)
    upper_hits = (success & upper).sum(1)
    shares = np.minimum(upper_hits, hits - upper_hits) / np.maximum(hits, 1)
    result = {"success_rate": float(success.mean()), "minority_share": float(shares.mean())}
    cache.write_text(json.dumps(result))
    return result


def collect(tasks: list[str], args) -> tuple[list[dict], list[dict], dict]:
    """Per-eval rows, one summary row per (task, algo) and curves, from finished runs."""
    per_eval, summary, curves = [], [], {}
    for task in tasks:
        steps, _ = budget_of(task, args)
        for algo_name in args.algos:
            finals, aucs, walls, loads, seeds, per_seed = [], [], [], [], [], {}
            modes, eval_every, trained_by, commits = [], set(), set(), set()
            for seed in args.seeds:
                run_dir = run_dir_of(task, algo_name, seed, steps, args.tag)
                status = run_status(run_dir, algo_name, task, steps, args.num_envs)
                if status == "stale":
                    print(f"left out {run_dir}: trained with another default config")
                if status != "finished":
                    continue
                rows = eval_rows(run_dir)
                for index, row in enumerate(rows):
                    per_eval.append(
                        {
                            "task": task,
                            "algo": algo_name,
                            "seed": seed,
                            **row,
                            "final": index == len(rows) - 1,
                            "budget": steps,
                        }
                    )
                per_seed[seed] = rows
                seeds.append(seed)
                finals.append(rows[-1]["eval_return"])
                steps_at = np.array([r["env_steps"] for r in rows], np.float64)
                returns = np.array([r["eval_return"] for r in rows])
                span = max(steps_at[-1] - steps_at[0], 1.0)
                aucs.append(float(np.trapezoid(returns, steps_at) / span))
                if task in DIAGNOSTIC_TASKS:
                    modes.append(mode_coverage(run_dir, task))
                walls.append(rows[-1]["wall_time"])
                eval_every.add(
                    json.loads((run_dir / "config.json").read_text())["run"]["eval_every"]
                )
                info_path = run_dir / INFO_FILE
                if info_path.exists():
                    info = json.loads(info_path.read_text())
                    loads.append(info["load_before"])
                    trained_by.add(info["command"])
                    commits.add(info.get("gprl_commit", "unknown"))
            if not seeds:
                continue
            curves[(task, algo_name)] = per_seed
            note = ""
            if algo_name == "gorl":
                counted = ALGORITHMS["gorl"].default_config().count_collection_steps
                note = (
                    "decoder data-collection steps count toward the budget"
                    if counted
                    else "decoder data-collection steps NOT counted in the budget"
                )
            summary.append(
                {
                    "task": task,
                    "algo": algo_name,
                    "budget": steps,
                    "seeds": " ".join(map(str, seeds)),
                    "final_eval_return": f"{np.mean(finals):.3f} ± {np.std(finals):.3f}",
                    "final_eval_return_mean": float(np.mean(finals)),
                    "final_eval_return_std": float(np.std(finals)),
                    "per_seed": " ".join(f"{x:.3f}" for x in finals),
                    "mean_eval_return_over_training": f"{np.mean(aucs):.3f} ± {np.std(aucs):.3f}",
                    "sampled_success_rate": (
                        f"{np.mean([m['success_rate'] for m in modes]):.2f}" if modes else ""
                    ),
                    "minority_mode_share": (
                        " ".join(f"{m['minority_share']:.2f}" for m in modes) if modes else ""
                    ),
                    "wall_time_s_mean": float(np.mean(walls)),
                    "load_at_start_mean": round(float(np.mean(loads)), 2) if loads else math.nan,
                    "eval_every": " ".join(map(str, sorted(eval_every))),
                    "trained_by": " | ".join(sorted(trained_by)),
                    "gprl_commit": " ".join(sorted(commits)),
                    "notes": note,
                }
            )
    return per_eval, summary, curves


def plot_task(task: str, curves: dict, path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for algo_name in args.algos:
        per_seed = curves.get((task, algo_name))
        if not per_seed:
            continue
        # Evaluations fall on the same env steps for every seed of an algorithm; interpolate
        # anyway so that a schedule change cannot misalign the average.
        grid = np.array([row["env_steps"] for row in next(iter(per_seed.values()))])
        values = np.array(
            [
                np.interp(grid, [r["env_steps"] for r in rows], [r["eval_return"] for r in rows])
                for rows in per_seed.values()
            ]
        )
        mean, std = values.mean(0), values.std(0)
        ax.plot(grid, mean, label=f"{algo_name} ({len(per_seed)} seeds)")
        ax.fill_between(grid, mean - std, mean + std, alpha=0.25)
    ax.set_xlabel("env steps (GoRL: decoder data collection included)")
    ax.set_ylabel("deterministic eval return")
    ax.set_title(task)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tasks",
        nargs="+",
        default=["diagnostic", "dmc"],
        help="env ids, or the groups 'diagnostic' and 'dmc'",
    )
    parser.add_argument("--algos", nargs="+", default=["ppo", "gorl"], choices=sorted(ALGORITHMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--diag-steps", type=int, default=200_000)
    parser.add_argument("--diag-eval-every", type=int, default=10_000)
    parser.add_argument("--dmc-steps", type=int, default=500_000)
    parser.add_argument("--dmc-eval-every", type=int, default=25_000)
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--env-backend", default="auto", choices=BACKENDS)
    parser.add_argument(
        "--tag",
        default="",
        help="suffix of the run folders and result files, to keep results of another backend "
        "or code version beside the earlier ones",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing; aggregate the finished runs that match the flags",
    )
    args = parser.parse_args()
    tasks = list(dict.fromkeys(t for name in args.tasks for t in TASK_GROUPS.get(name, [name])))
    # Report every task with finished runs at these budgets, not only the ones trained now, so
    # that an incremental run does not drop earlier results from the CSVs.
    reported = list(dict.fromkeys(DIAGNOSTIC_TASKS + DMC_TASKS + tasks))
    gprl_commit()

    if not args.report_only:
        for task in tasks:
            for seed in args.seeds:
                for algo_name in args.algos:
                    run_one(task, algo_name, seed, args)

    per_eval, summary, curves = collect(reported, args)
    if not summary:
        raise SystemExit("no finished runs match these flags")
    provenance = {"machine": machine(), "date": now(), "command": command()}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stem = "learning" + (f"_{args.tag}" if args.tag else "")
    provenance["env_backend"] = args.env_backend
    write_csv(RESULTS_DIR / f"{stem}.csv", per_eval)
    write_csv(RESULTS_DIR / f"{stem}_summary.csv", [row | provenance for row in summary])
    for task in dict.fromkeys(row["task"] for row in summary):
        plot_task(task, curves, RESULTS_DIR / f"{stem}_{slug(task)}.png", args)

    print()
    print(
        markdown_table(
            summary,
            [
                "task",
                "algo",
                "budget",
                "seeds",
                "final_eval_return",
                "per_seed",
                "mean_eval_return_over_training",
                "sampled_success_rate",
                "minority_mode_share",
                "wall_time_s_mean",
                "load_at_start_mean",
            ],
        )
    )
    print(
        "\nfinal_eval_return: mean ± std over seeds of the last deterministic evaluation "
        f"({args.eval_episodes} episodes); per_seed: its value for each seed; "
        "mean_eval_return_over_training: area under the eval curve / env steps (sample "
        f"efficiency); diagnostic tasks only: sampled_success_rate (mean over seeds) and "
        "minority_mode_share (per seed) of the stochastic training policy from a fixed state "
        "(0: one optimum only, 0.5: both equally; see mode_coverage); wall_time_s_mean: "
        "seconds per run incl. evaluations."
    )
    if "gorl" in args.algos:
        counted = ALGORITHMS["gorl"].default_config().count_collection_steps
        print(
            "GoRL's decoder data-collection steps "
            + (
                "count toward the budget (default count_collection_steps=True), so both "
                "algorithms use the same env steps."
                if counted
                else "are NOT counted: GoRL uses more env steps than PPO."
            )
        )
    print(
        f"machine: {provenance['machine']}; date: {provenance['date']}; "
        f"command: {provenance['command']}"
    )
    print(f"wrote {RESULTS_DIR}/{stem}.csv, {stem}_summary.csv and {stem}_*.png")


if __name__ == "__main__":
    main()
