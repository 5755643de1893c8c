"""GoRL's CPU-scale defaults from 3-seed evidence: encoder, critic reset and schedule variants
next to PPO, on one harness (gprl.trainer.train, same budget, seeds, envs and backend).

Each (variant, task, seed) is a run in benchmarks/runs/gorl_defaults/TASK-BUDGET/VARIANT-sSEED;
a cell with a row in the committed results/gorl_defaults.csv is skipped and keeps its row (also in
a fresh clone, whose run directories are gone), and an interrupted run resumes from its
checkpoint, so the grid can be finished across sessions. PPO's cells are the DMC-6 benchmark's
(benchmarks/dmc6.py), shared.
Results: benchmarks/results/gorl_defaults.csv (one row per run: final evaluation, the evaluation
right before and right after every decoder refit, env steps/s) and gorl_defaults_summary.csv.

    python benchmarks/gorl_defaults.py --tasks dm_control/cheetah-run-v0 --seeds 0 1 2
    python benchmarks/gorl_defaults.py --report-only
"""

import argparse
import csv
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from common import (
    BENCH_DIR,
    RESULTS_DIR,
    command,
    gprl_commit,
    load_average,
    machine,
    now,
    read_rows,
    write_csv,
)
from dmc6 import TAG as DMC6_TAG
from learning import INFO_FILE, run_one, slug

from gprl.algos import GoRLConfig, PPOConfig
from gprl.checkpoint import CheckpointError, read_meta
from gprl.configs import to_jsonable
from gprl.policies import GaussianPolicyConfig
from gprl.trainer import RunConfig, load_run, train

RUNS_DIR = BENCH_DIR / "runs" / "gorl_defaults"


def variants() -> dict[str, GoRLConfig]:
    reference_encoder = GoRLConfig(
        ppo=PPOConfig(
            action_squash="tanh",
            actor=GaussianPolicyConfig(
                hidden=(32, 32, 32, 32), activation="silu", std_type="softplus"
            ),
        ),
        reset_critic=True,
    )
    ppo_encoder = replace(
        reference_encoder, ppo=PPOConfig(action_squash="tanh"), reset_critic=False
    )
    three_stages = replace(
        ppo_encoder, num_stages=3, stage_weights=(2.0, 1.0, 1.0), collect_fraction=0.04
    )
    return {
        "gorl-reference-encoder": reference_encoder,
        "gorl-ppo-encoder-keep-critic": ppo_encoder,
        "gorl-ppo-encoder-keep-critic-3-stages": three_stages,
        "gorl-ppo-encoder-keep-critic-3-stages-clip": replace(
            three_stages, ppo=PPOConfig(action_squash="clip")
        ),
    }


def run_dir_of(task: str, variant: str, seed: int, steps: int) -> Path:
    return RUNS_DIR / f"{slug(task)}-{steps}" / f"{variant}-s{seed}"


def is_finished(run_dir: Path, config: GoRLConfig) -> bool:
    try:
        saved = json.loads((run_dir / "config.json").read_text())["algo_config"]
        meta = read_meta(run_dir)
    except (OSError, CheckpointError, KeyError, json.JSONDecodeError):
        return False
    if saved != json.loads(json.dumps(to_jsonable(config))):
        return False
    algo, _, _ = load_run(run_dir)
    return meta["progress"]["iteration"] >= algo.num_iterations


def train_variant(task: str, variant: str, config: GoRLConfig, seed: int, args) -> None:
    run_dir = run_dir_of(task, variant, seed, args.steps)
    if is_finished(run_dir, config):
        print(f"skip {variant} {task} {seed}: finished", flush=True)
        return
    print(f"train {variant} {task} seed {seed} -> {run_dir}", flush=True)
    run = RunConfig(
        env=task,
        total_steps=args.steps,
        seed=seed,
        num_envs=args.num_envs,
        out=run_dir,
        overwrite=True,
        progress=False,
        eval_every=args.eval_every,
        eval_episodes=args.eval_episodes,
        checkpoint_every=10**12,
    )
    info = {"load_before": load_average(), "started": now(), "gprl_commit": gprl_commit()}
    start = time.perf_counter()
    train("gorl", run, config)
    info |= {"load_after": load_average(), "process_seconds": time.perf_counter() - start}
    (run_dir / INFO_FILE).write_text(json.dumps(info, indent=2))


def summarise(run_dir: Path, task: str, variant: str, seed: int) -> dict:
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    refits = [r for r in rows if r.get("eval_return_before_refit")]
    ratios = [float(r["eval_return"]) / float(r["eval_return_before_refit"]) for r in refits]
    last = rows[-1]
    info_path = run_dir / INFO_FILE
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    return {
        "variant": variant,
        "task": task,
        "seed": seed,
        "env_steps": last["env_steps"],
        "final_eval_return": float(
            next(r["eval_return"] for r in reversed(rows) if r.get("eval_return"))
        ),
        "returns_before_refits": " ".join(
            f"{float(r['eval_return_before_refit']):.1f}" for r in refits
        ),
        "returns_after_refits": " ".join(f"{float(r['eval_return']):.1f}" for r in refits),
        "retention_after_refits": " ".join(f"{x:.3f}" for x in ratios),
        "env_steps_per_second": round(float(last["env_steps"]) / float(last["wall_time"]), 1),
        "load_at_start": info.get("load_before", ""),
        "gprl_commit": info.get("gprl_commit", ""),
    }


def committed_rows(out: Path) -> dict[tuple, dict]:
    """The committed CSV's rows by (task, variant, seed): the record of finished cells, whose run
    directories a fresh clone does not have."""
    text = {"variant", "task", "returns_before_refits", "returns_after_refits"}
    text |= {"retention_after_refits", "gprl_commit", "machine", "reported", "command"}
    rows = read_rows(out / "gorl_defaults.csv", text)
    return {(row["task"], row["variant"], row["seed"]): row for row in rows}


def report(args) -> None:
    recorded = committed_rows(args.out)
    provenance = {"machine": machine(), "reported": now(), "command": command()}
    for task in args.tasks:
        for seed in args.seeds:
            ppo_dir = BENCH_DIR / "runs" / f"{slug(task)}-{args.steps}-{DMC6_TAG}" / f"ppo-s{seed}"
            if (task, "ppo", seed) not in recorded and (ppo_dir / "metrics.csv").exists():
                recorded[task, "ppo", seed] = summarise(ppo_dir, task, "ppo", seed) | provenance
            for variant, config in variants().items():
                run_dir = run_dir_of(task, variant, seed, args.steps)
                if (task, variant, seed) not in recorded and is_finished(run_dir, config):
                    row = summarise(run_dir, task, variant, seed)
                    recorded[task, variant, seed] = row | provenance
    rows = list(recorded.values())
    write_csv(args.out / "gorl_defaults.csv", rows)
    summary = []
    for task in args.tasks:
        for variant in ["ppo", *variants()]:
            cell = [r for r in rows if r["task"] == task and r["variant"] == variant]
            if not cell:
                continue
            finals = np.array([r["final_eval_return"] for r in cell])
            ratios = [float(x) for r in cell for x in r["retention_after_refits"].split()]
            summary.append(
                {
                    "task": task,
                    "variant": variant,
                    "seeds": len(cell),
                    "final_eval_mean": round(float(finals.mean()), 1),
                    "final_eval_std": round(float(finals.std()), 1),
                    "median_retention_after_refit": round(float(np.median(ratios)), 3)
                    if ratios
                    else "",
                    "refits": len(ratios),
                }
            )
    write_csv(args.out / "gorl_defaults_summary.csv", summary)
    for row in summary:
        print(row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["dm_control/cheetah-run-v0"])
    parser.add_argument("--variants", nargs="+", default=["ppo", *variants()])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--eval-every", type=int, default=50_000)
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    gprl_commit()
    if not args.report_only:
        dmc6_args = argparse.Namespace(
            dmc_steps=args.steps,
            dmc_eval_every=args.eval_every,
            num_envs=args.num_envs,
            eval_episodes=args.eval_episodes,
            env_backend="auto",
            tag=DMC6_TAG,
        )
        recorded = committed_rows(args.out)
        for seed in args.seeds:
            for task in args.tasks:
                for variant in args.variants:
                    if (task, variant, seed) in recorded:
                        continue
                    if variant == "ppo":
                        run_one(task, "ppo", seed, dmc6_args)
                    else:
                        train_variant(task, variant, variants()[variant], seed, args)
    report(args)


if __name__ == "__main__":
    main()
