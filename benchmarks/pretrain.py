"""Behaviour cloning with every `gprl pretrain` kind on a dataset collected here.

1. Expert: `gprl train ppo` on --env (default Hopper-v5, --expert-steps 1M, seed 0, 16 envs).
2. Dataset: `gprl collect` of --episodes episodes of its deterministic policy with
   --action-noise (default 0.1) into a Minari dataset under benchmarks/runs/datasets.
3. Pretraining: each kind (gaussian, flow, diffusion, meanflow, shortcut) for --steps gradient
   steps with its `gprl pretrain` defaults, seed 0, evaluated every --steps / 10.
4. Report, per kind and sampling steps K (1 and 10; the Gaussian has no K): return of its policy
   over --eval-episodes episodes against the dataset's mean return, and acting cost, the median
   microseconds of one jitted acting call (normalise, draw noise, sample, unnormalise) at
   batch 1 and 16.

Runs go to benchmarks/runs/pretrain-ENV/ (git-ignored); finished steps are reused, so the script
can be re-run to rebuild the report.

    python benchmarks/pretrain.py                               # ~25 min on 2 CPU cores
    python benchmarks/pretrain.py --expert-steps 300000 --steps 5000   # a quick look
"""

import argparse
import csv
import json
import os
import time
from pathlib import Path

import jax
import numpy as np
from common import (
    BENCH_DIR,
    RESULTS_DIR,
    command,
    gprl_commit,
    load_average,
    machine,
    markdown_table,
    now,
    write_csv,
)

from gprl.checkpoint import CheckpointError, read_meta
from gprl.collect import CollectArgs, collect
from gprl.datasets import dataset_path, load_demonstrations
from gprl.envs import make_env
from gprl.evaluation import ChunkedHostEvaluator
from gprl.policies import POLICIES
from gprl.pretrain import PretrainConfig, PretrainRun, load_pretrained, pretrain
from gprl.trainer import RunConfig, train

EVAL_SEED = 2024
TIMING_CALLS = 300
TIMING_REPEATS = 5


def slug(text: str) -> str:
    return text.replace("/", "_").replace(":", "_")


def finished(run_dir: Path, counter: str, target: int) -> bool:
    try:
        return read_meta(run_dir)["progress"][counter] >= target
    except CheckpointError:
        return False


def acting_microseconds(pretrained, batch: int, num_steps: int | None) -> float:
    plan = jax.jit(lambda acting, obs, key: pretrained.policy.plan(acting, obs, key, num_steps))
    obs = np.zeros((batch, pretrained.obs_dim), np.float32)
    key = jax.random.PRNGKey(0)
    plan(pretrained.acting, obs, key).block_until_ready()
    times = []
    for _ in range(TIMING_REPEATS):
        start = time.perf_counter()
        for _ in range(TIMING_CALLS):
            out = plan(pretrained.acting, obs, key)
        out.block_until_ready()
        times.append((time.perf_counter() - start) / TIMING_CALLS * 1e6)
    return float(np.median(times))


def evaluate(pretrained, num_steps: int | None, episodes: int) -> dict:
    env = make_env(pretrained.env_id, episodes, EVAL_SEED, backend=pretrained.env_backend)
    try:
        evaluator = ChunkedHostEvaluator(
            env,
            lambda acting, obs, key: pretrained.policy.plan(acting, obs, key, num_steps),
            EVAL_SEED,
            pretrained.config.execute_steps,
        )
        return evaluator.evaluate(pretrained.acting)
    finally:
        env.close()


def plot(rows: list[dict], data_return: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    labels = [f"{r['kind']}\nK={r['sampling_steps']}" for r in rows]
    x = np.arange(len(rows))
    left.bar(x, [r["eval_return"] for r in rows], yerr=[r["eval_return_std"] for r in rows])
    left.axhline(data_return, color="black", linestyle="--", label="dataset mean return")
    left.set_xticks(x, labels, fontsize=8)
    left.set_ylabel("return")
    left.set_title(title)
    left.legend()
    width = 0.4
    right.bar(x - width / 2, [r["us_per_action_batch1"] for r in rows], width, label="batch 1")
    right.bar(x + width / 2, [r["us_per_action_batch16"] for r in rows], width, label="batch 16")
    right.set_xticks(x, labels, fontsize=8)
    right.set_ylabel("µs per acting call")
    right.set_title("acting cost (one jitted call, CPU)")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="Hopper-v5")
    parser.add_argument("--expert-steps", type=int, default=1_000_000)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--action-noise", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--kinds", nargs="+", default=list(POLICIES))
    args = parser.parse_args()

    root = BENCH_DIR / "runs" / f"pretrain-{slug(args.env)}"
    os.environ["MINARI_DATASETS_PATH"] = str(root / "datasets")
    started = time.perf_counter()
    info = {
        "machine": machine(),
        "date": now(),
        "command": command(),
        "gprl_commit": gprl_commit(),
        "load_at_start": load_average(),
    }

    expert_dir = root / f"expert-ppo-{args.expert_steps}"
    if not finished(expert_dir, "env_steps", args.expert_steps):
        run = RunConfig(
            env=args.env,
            total_steps=args.expert_steps,
            seed=0,
            num_envs=16,
            out=expert_dir,
            overwrite=True,
            progress=False,
        )
        from gprl.algos import PPOConfig

        train("ppo", run, PPOConfig())
    with open(expert_dir / "metrics.csv", newline="") as f:
        expert_eval = [r for r in csv.DictReader(f) if r["eval_return"]][-1]["eval_return"]
    info["expert_eval_return"] = float(expert_eval)

    dataset_id = (
        f"{slug(args.env).lower()}/ppo{args.expert_steps}-{args.episodes}ep-"
        f"noise{round(100 * args.action_noise)}pct-v0"
    )
    if not dataset_path(dataset_id).exists():
        collect(
            CollectArgs(
                expert_dir,
                dataset_id,
                episodes=args.episodes,
                action_noise=args.action_noise,
                seed=1,
            )
        )
    demos = load_demonstrations(dataset_id)
    data_return = float(demos.episode_returns.mean())
    info |= {
        "dataset": dataset_id,
        "dataset_episodes": len(demos.episode_lengths),
        "dataset_steps": len(demos.obs),
        "dataset_mean_return": data_return,
    }
    print(f"expert eval {float(expert_eval):.1f}; dataset {dataset_id}: {info}", flush=True)

    rows = []
    for kind in args.kinds:
        run_dir = root / f"{kind}-{args.steps}-{dataset_id.replace('/', '_')}"
        train_seconds = None
        if not finished(run_dir, "grad_steps", args.steps):
            begin = time.perf_counter()
            options = PretrainRun(
                dataset=dataset_id,
                steps=args.steps,
                out=run_dir,
                overwrite=True,
                progress=False,
                eval_episodes=args.eval_episodes,
                checkpoint_every=args.steps,
            )
            pretrain(kind, options, PretrainConfig())
            train_seconds = time.perf_counter() - begin
        pretrained = load_pretrained(run_dir)
        config = json.loads((run_dir / "config.json").read_text())
        step_counts = [None] if kind == "gaussian" else [1, 10]
        for num_steps in step_counts:
            result = evaluate(pretrained, num_steps, args.eval_episodes)
            default_steps = getattr(pretrained.policy_config, "num_steps", None)
            row = {
                "kind": kind,
                "sampling_steps": num_steps or 1,
                "default_steps": default_steps or 1,
                "eval_return": result["eval_return"],
                "eval_return_std": result["eval_return_std"],
                "return_over_data": result["eval_return"] / data_return,
                "us_per_action_batch1": acting_microseconds(pretrained, 1, num_steps),
                "us_per_action_batch16": acting_microseconds(pretrained, 16, num_steps),
                "train_seconds": train_seconds,
                "grad_steps": args.steps,
                "hidden": "x".join(map(str, config["policy_config"]["hidden"])),
                "load": load_average(),
            }
            rows.append(row)
            print(row, flush=True)

    info["wall_seconds"] = round(time.perf_counter() - started, 1)
    info["load_at_end"] = load_average()
    name = f"pretrain_{slug(args.env)}"
    write_csv(RESULTS_DIR / f"{name}.csv", rows)
    (RESULTS_DIR / f"{name}_info.json").write_text(json.dumps(info, indent=2))
    plot(rows, data_return, RESULTS_DIR / f"{name}.png", f"BC on {dataset_id}")
    columns = ["kind", "sampling_steps", "default_steps", "eval_return", "eval_return_std"]
    columns += ["return_over_data", "us_per_action_batch1", "us_per_action_batch16"]
    columns += ["train_seconds"]
    print(json.dumps(info, indent=2))
    print(markdown_table(rows, columns))


if __name__ == "__main__":
    main()
