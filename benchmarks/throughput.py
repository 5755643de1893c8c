"""Whole-process training throughput next to raw env stepping, measured in one run.

Host section, for each env (16 envs unless --num-envs):
  raw_envpool         envpool's own stepping, 16 envs, 2 threads, random actions (as
                      ../shared/checks/envpool_raw.py measures it)
  raw_gymnasium       gprl's Gymnasium backend (SyncVectorEnv + shimmy), random actions
  raw_gprl_envpool    gprl's envpool backend (the wrapper the training loop steps), random actions
  train_ALGO          `gprl train ALGO --env ENV --num-envs 16 --total-steps N --seed 0
                      --no-progress`, timed from process start to exit: start-up, compilation,
                      evaluations and checkpoints included, as a user sees it
Profile (--profile-steps, hopper-stand): the same training in a child process with timers around
the loop's parts, to say where the time goes.
Device section on CPU: `gprl train ppo --env-backend jax` on Playground CheetahRun and a JAX
diagnostic task at --device-envs envs: whole-process steps/s, time to the first iteration
(compilation) and steady-state steps/s.

    python benchmarks/throughput.py                     # everything (~15-20 min on 2 cores)
    python benchmarks/throughput.py --sections host --envs dm_control/hopper-stand-v0
    python benchmarks/throughput.py --resume            # skip the cells already in the CSV

One invocation writes one table: without --resume the CSV is rewritten from scratch.
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import (
    RESULTS_DIR,
    command,
    gprl_commit,
    load_average,
    machine,
    markdown_table,
    now,
    write_csv,
)

CSV_PATH = RESULTS_DIR / "throughput.csv"
PNG_PATH = RESULTS_DIR / "throughput.png"
HOST_ENVS = ("dm_control/hopper-stand-v0", "dm_control/cheetah-run-v0", "Hopper-v5")
DEVICE_ENVS = ("playground:CheetahRun", "gprl/TwoGoalPoint-v0")
ALGOS = ("ppo", "gorl")
RAW_SECONDS = 8.0
COLUMNS = [
    "section",
    "env",
    "what",
    "num_envs",
    "env_steps",
    "seconds",
    "steps_per_second",
    "share_of_envpool_raw",
    "first_iteration_s",
    "steady_steps_per_second",
    "final_eval_return",
    "load_before",
    "load_after",
]


def envpool_raw(env_id: str, num_envs: int) -> float:
    """envpool stepping alone, as the speed check measures it (num_threads=2)."""
    import envpool

    from gprl.envs.envpool_backend import envpool_task_id

    env = envpool.make_gymnasium(
        envpool_task_id(env_id), num_envs=num_envs, batch_size=num_envs, num_threads=2, seed=0
    )
    env.reset()
    dim = env.action_space.shape[0]
    rng = np.random.default_rng(0)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < RAW_SECONDS:
        env.step(rng.uniform(-1, 1, (num_envs, dim)).astype(np.float32))
        steps += num_envs
    return steps / (time.perf_counter() - start)


def gprl_raw(env_id: str, num_envs: int, backend: str) -> float:
    from gprl.envs import make_env

    with make_env(env_id, num_envs, 0, backend=backend) as env:
        rng = np.random.default_rng(0)
        actions = rng.uniform(-1, 1, (64, num_envs, env.spec.action_dim)).astype(np.float32)
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < RAW_SECONDS:
            env.step(actions[(steps // num_envs) % 64])
            steps += num_envs
        return steps / (time.perf_counter() - start)


def whole_process(algo: str, env_id: str, num_envs: int, steps: int, *extra: str) -> dict:
    """Run `gprl train` in a fresh process; wall time from launch to exit."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        args = ["gprl", "train", algo, "--env", env_id, "--num-envs", str(num_envs)]
        args += ["--total-steps", str(steps), "--seed", "0", "--no-progress", "--out", str(out)]
        args += list(extra)
        start = time.time()
        result = subprocess.run(args, capture_output=True, text=True)
        seconds = time.time() - start
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed:\n{result.stderr[-2000:]}")
        with open(out / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    done_steps = int(rows[-1]["env_steps"]) + int(rows[-1].get("uncounted_env_steps") or 0)
    first = float(rows[0]["wall_time"])
    later = rows[1:]
    steady = (
        sum(float(r["steps_per_second"]) ** -1 for r in later) / len(later)
        if later
        else float("nan")
    )
    steps_per_iteration = (int(rows[-1]["env_steps"]) - int(rows[0]["env_steps"])) / max(
        len(later), 1
    )
    evals = [r for r in rows if r.get("eval_return")]
    return {
        "env_steps": done_steps,
        "seconds": seconds,
        "steps_per_second": done_steps / seconds,
        "first_iteration_s": first,
        "steady_steps_per_second": 1.0 / steady if later else float("nan"),
        "final_eval_return": float(evals[-1]["eval_return"]),
        "steps_per_iteration": steps_per_iteration,
    }


PROFILE_CHILD = r"""
import json, sys, time
started = time.perf_counter()
from collections import defaultdict
import gprl.collectors as collectors, gprl.evaluation as evaluation, gprl.loops as loops
import gprl.trainer as trainer
from gprl.algos import ALGORITHMS
from gprl.envs import make_env

algo_name, env_id, steps, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
totals = defaultdict(float)
inside_rollout = [False]

def timed(owner, name, bucket, only_in_rollout=False):
    original = getattr(owner, name)
    def wrapper(*args, **kwargs):
        if only_in_rollout and not inside_rollout[0]:
            return original(*args, **kwargs)
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[bucket] += time.perf_counter() - start
    setattr(owner, name, wrapper)

def rollout(original):
    def wrapper(*args, **kwargs):
        inside_rollout[0] = True
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            inside_rollout[0] = False
            totals["rollout"] += time.perf_counter() - start
    return wrapper

with make_env(env_id, 1, 0) as probe:
    env_class = type(probe)
timed(env_class, "step", "env_step_in_rollout", only_in_rollout=True)
collectors.HostCollector.collect = rollout(collectors.HostCollector.collect)
timed(evaluation.HostEvaluator, "evaluate", "evaluation")
timed(loops.OnPolicyLoop, "iterate", "iterations")
timed(ALGORITHMS[algo_name].algorithm, "end_stage", "refit_fit")
timed(trainer, "save_checkpoint", "checkpoint")
config = ALGORITHMS[algo_name].default_config()
run = trainer.RunConfig(env=env_id, total_steps=steps, num_envs=16, out=out, progress=False)
loop_started = time.perf_counter()
trainer.train(algo_name, run, config)
totals["process"] = time.perf_counter() - started
totals["imports"] = loop_started - started
print(json.dumps(totals))
"""


def profile(algo: str, env_id: str, steps: int) -> dict:
    """Seconds spent in each part of a whole training process."""
    with tempfile.TemporaryDirectory() as tmp:
        args = [sys.executable, "-c", PROFILE_CHILD, algo, env_id, str(steps), f"{tmp}/run"]
        result = subprocess.run(args, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"profile of {algo} failed:\n{result.stderr[-2000:]}")
    totals = json.loads(result.stdout.strip().splitlines()[-1])
    acting = totals["rollout"] - totals["env_step_in_rollout"]
    parts = {
        "env stepping (training rollouts)": totals["env_step_in_rollout"],
        "acting + collector bookkeeping": acting,
        "update": totals["iterations"] - totals["rollout"] - totals.get("refit_fit", 0.0),
        "decoder refit fits": totals.get("refit_fit", 0.0),
        "evaluations": totals["evaluation"],
        "checkpoints": totals["checkpoint"],
    }
    accounted = sum(parts.values()) + totals["imports"]
    parts["imports"] = totals["imports"]
    parts["env set-up, compilation, logging, other"] = totals["process"] - accounted
    return {"process_seconds": totals["process"], "parts": parts}


def load_rows(resume: bool) -> list[dict]:
    if not resume or not CSV_PATH.exists():
        return []
    with open(CSV_PATH, newline="") as f:
        return list(csv.DictReader(f))


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    host = [r for r in rows if r["section"] == "host"]
    envs = list(dict.fromkeys(r["env"] for r in host))
    whats = list(dict.fromkeys(r["what"] for r in host))
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / max(len(whats), 1)
    for i, what in enumerate(whats):
        values = [
            next(
                (float(r["steps_per_second"]) for r in host if r["env"] == e and r["what"] == what),
                0,
            )
            for e in envs
        ]
        ax.bar(np.arange(len(envs)) + i * width, values, width, label=what)
    ax.set_xticks(np.arange(len(envs)) + width * (len(whats) - 1) / 2, envs, fontsize=8)
    ax.set_ylabel("env steps / s (whole process for train_*)")
    ax.set_title("gprl throughput, 16 envs, 2 CPU cores")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(PNG_PATH, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", nargs="+", default=["host", "profile", "device"])
    parser.add_argument("--envs", nargs="+", default=list(HOST_ENVS))
    parser.add_argument("--algos", nargs="+", default=list(ALGOS))
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--train-steps", type=int, default=1_000_000)
    parser.add_argument("--profile-steps", type=int, default=300_000)
    parser.add_argument("--device-envs", nargs="+", type=int, default=[256, 1024])
    parser.add_argument("--device-steps", type=int, default=2_000_000)
    parser.add_argument("--resume", action="store_true", help="skip cells already in the CSV")
    args = parser.parse_args()
    os.chdir(Path(__file__).resolve().parents[1])
    rows = load_rows(args.resume)
    done = {(r["section"], r["env"], r["what"], str(r["num_envs"])) for r in rows}
    provenance = {
        "machine": machine(),
        "date": now(),
        "command": command(),
        "gprl_commit": gprl_commit(),
    }

    def cell(section: str, env_id: str, what: str, num_envs: int, measure) -> None:
        if (section, env_id, what, str(num_envs)) in done:
            print(f"skip {section} {env_id} {what} {num_envs}: in {CSV_PATH.name}", flush=True)
            return
        load_before = load_average()
        print(f"{section} {env_id} {what} {num_envs} ...", flush=True)
        result = measure()
        if not isinstance(result, dict):
            result = {"steps_per_second": result}
        row = {"section": section, "env": env_id, "what": what, "num_envs": num_envs}
        row |= result | {"load_before": load_before, "load_after": load_average()}
        rows.append(row | provenance)
        print(f"  {result}", flush=True)
        write_csv(CSV_PATH, rows)

    if "host" in args.sections:
        n = args.num_envs
        for env_id in args.envs:
            cell("host", env_id, "raw_envpool", n, lambda e=env_id: envpool_raw(e, n))
            cell("host", env_id, "raw_gymnasium", n, lambda e=env_id: gprl_raw(e, n, "gymnasium"))
            cell("host", env_id, "raw_gprl_envpool", n, lambda e=env_id: gprl_raw(e, n, "envpool"))
            for algo in args.algos:
                cell(
                    "host",
                    env_id,
                    f"train_{algo}",
                    n,
                    lambda a=algo, e=env_id: whole_process(a, e, n, args.train_steps),
                )
    if "profile" in args.sections:
        for algo in args.algos:
            env_id = args.envs[0]
            key = ("profile", env_id, algo, "16")
            if key in done:
                continue
            result = profile(algo, env_id, args.profile_steps)
            for part, seconds in result["parts"].items():
                rows.append(
                    {
                        "section": "profile",
                        "env": env_id,
                        "what": algo,
                        "num_envs": 16,
                        "part": part,
                        "seconds": seconds,
                        "share": seconds / result["process_seconds"],
                        "env_steps": args.profile_steps,
                        "load_after": load_average(),
                    }
                    | provenance
                )
            write_csv(CSV_PATH, rows)
            print(f"profile {algo}: {json.dumps(result, indent=1)}", flush=True)
    if "device" in args.sections:
        for env_id in DEVICE_ENVS:
            for num_envs in args.device_envs:
                cell(
                    "device",
                    env_id,
                    "train_ppo_jax",
                    num_envs,
                    lambda e=env_id, k=num_envs: whole_process(
                        "ppo",
                        e,
                        k,
                        args.device_steps,
                        "--env-backend",
                        "jax",
                        "--ppo.rollout-steps",
                        "64",
                        "--ppo.num-minibatches",
                        "16",
                        "--eval-every",
                        "500000",
                    ),
                )

    for row in rows:
        if row["section"] == "host" and row["what"] != "raw_envpool":
            raw = next(
                (
                    float(r["steps_per_second"])
                    for r in rows
                    if r["env"] == row["env"] and r["what"] == "raw_envpool"
                ),
                None,
            )
            if raw:
                row["share_of_envpool_raw"] = float(row["steps_per_second"]) / raw
    write_csv(CSV_PATH, rows)
    plot(rows)
    print()
    print(markdown_table([r for r in rows if r["section"] != "profile"], COLUMNS))
    print()
    print(
        markdown_table(
            [r for r in rows if r["section"] == "profile"],
            ["env", "what", "part", "seconds", "share"],
        )
    )
    print(f"\nmachine: {provenance['machine']}; date: {provenance['date']}")
    print(f"command: {provenance['command']}; commit {provenance['gprl_commit']}")
    print(f"wrote {CSV_PATH} and {PNG_PATH}")


if __name__ == "__main__":
    main()
