"""Whole-process throughput of `gprl train dsrl` at update-to-data 1 with one env.

1. Dataset: --episodes episodes of uniformly random actions on --env (default Hopper-v5),
   written as a Minari dataset under benchmarks/runs/dsrl/datasets. Only the speed is measured
   here, so the policy cloned from it need not be good.
2. Base policy: `gprl pretrain flow` with the flow's RL-sized defaults (4 x 64 SiLU, 10 Euler
   steps), --pretrain-steps gradient steps.
3. Per variant: `gprl train dsrl --env ENV --init BASE --num-envs 1 --total-steps N
   --dsrl.variant V --seed 0 --no-progress` with the default DSRLConfig (UTD 1, batch 256,
   learning starts at 8,000 steps, an update call every 50 env steps), timed
   from launch to exit (start-up, compilation, evaluations and checkpoints included); the steady
   rate of the iterations after learning starts; and one DSRL gradient step measured alone (a
   compiled scan of 200 on a random batch), which bounds the loop at UTD 1.

Results: results/dsrl_throughput.csv and .png; runs in benchmarks/runs/dsrl (git-ignored).

    python benchmarks/dsrl.py                     # ~10 min on 2 cores
    python benchmarks/dsrl.py --variants plain --total-steps 20000
"""

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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

CSV_PATH = RESULTS_DIR / "dsrl_throughput.csv"
PNG_PATH = RESULTS_DIR / "dsrl_throughput.png"
RUNS_DIR = BENCH_DIR / "runs" / "dsrl"
TARGET = 300.0
"""env steps/s at update-to-data 1 (issue 9)."""
SAC_MEASURED = 152.2
"""gprl SAC, 256 x 256, UTD 1, one env, HalfCheetah-v5 (results/offpolicy_throughput.csv)."""
COLUMNS = [
    "env",
    "variant",
    "env_steps",
    "seconds",
    "steps_per_second",
    "steady_steps_per_second",
    "gradient_step_ms",
    "update_bound_steps_per_second",
    "load_before",
    "load_after",
]

GRADIENT_STEP_CHILD = r"""
import sys, time
from pathlib import Path
import jax, numpy as np
from gprl.algos import DSRL, DSRLConfig
from gprl.envs import make_env
from gprl.pretrain import load_pretrained
from gprl.trainer import configure_jax
from gprl.types import Transition

configure_jax()
env_id, base, variant, steps = sys.argv[1], Path(sys.argv[2]), sys.argv[3], 200
with make_env(env_id, 1, 0, backend="gymnasium") as env:
    spec = env.spec
config = DSRLConfig(variant=variant)
dsrl = DSRL(config, spec, 1, 1_000_000, pretrained=load_pretrained(base))
rng = np.random.default_rng(0)
b, d = config.batch_size, spec.action_dim
batch = Transition(
    obs=rng.normal(size=(b, spec.obs_dim)).astype(np.float32),
    action=rng.uniform(-1, 1, (b, d)).astype(np.float32),
    reward=rng.normal(size=b).astype(np.float32),
    terminated=np.zeros(b, bool),
    truncated=np.zeros(b, bool),
    next_obs=rng.normal(size=(b, spec.obs_dim)).astype(np.float32),
    extras={"noise": rng.uniform(-1.5, 1.5, (b, d)).astype(np.float32)},
)

@jax.jit
def run(state, key):
    return jax.lax.scan(lambda s, k: dsrl.update(s, batch, k), state, jax.random.split(key, steps))

state = dsrl.init(jax.random.PRNGKey(0))
jax.block_until_ready(run(state, jax.random.PRNGKey(1)))
best = float("inf")
for repeat in range(3):
    start = time.perf_counter()
    jax.block_until_ready(run(state, jax.random.PRNGKey(repeat)))
    best = min(best, (time.perf_counter() - start) / steps)
print(best * 1e3)
"""


def base_policy(env_id: str, episodes: int, pretrain_steps: int) -> Path:
    """A flow policy cloned from random actions on env_id (reused when already there)."""
    os.environ["MINARI_DATASETS_PATH"] = str(RUNS_DIR / "datasets")
    from gprl.dataset_writer import write_dataset
    from gprl.datasets import Episode, dataset_path
    from gprl.envs import make_env
    from gprl.policies import FlowPolicyConfig
    from gprl.pretrain import PretrainConfig, PretrainRun, pretrain
    from gprl.trainer import has_checkpoint

    dataset_id = f"bench/{env_id.lower().replace('-', '_')}-random-v0"
    if not dataset_path(dataset_id).exists():
        rng = np.random.default_rng(0)
        with make_env(env_id, 1, 0, backend="gymnasium") as env:
            recorded, obs = [], env.reset(0)
            for _ in range(episodes):
                observations, actions, rewards, terminated, truncated = [obs[0]], [], [], [], []
                while True:
                    action = rng.uniform(-1, 1, env.spec.action_dim).astype(np.float32)
                    step = env.step(action[None])
                    actions.append(action)
                    rewards.append(step.reward[0])
                    terminated.append(step.terminated[0])
                    truncated.append(step.truncated[0])
                    if step.terminated[0] or step.truncated[0]:
                        observations.append(step.final_obs[0])
                        break
                    observations.append(step.obs[0])
                obs = step.obs
                columns = (observations, actions, rewards, terminated, truncated)
                recorded.append(Episode(*map(np.asarray, columns)))
            write_dataset(dataset_id, recorded, env.spec, "uniformly random actions", "random")
    out = RUNS_DIR / f"pretrain-flow-{env_id}"
    if not has_checkpoint(out):
        options = PretrainRun(
            dataset=dataset_id,
            steps=pretrain_steps,
            out=out,
            overwrite=True,
            progress=False,
            eval_every=0,
            eval_episodes=2,
        )
        config = PretrainConfig(log_every=min(500, pretrain_steps))
        pretrain("flow", options, config, FlowPolicyConfig())
    return out


def whole_process(env_id: str, base: Path, variant: str, steps: int) -> dict:
    """`gprl train dsrl` in a fresh process; wall time from launch to exit."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        args = ["gprl", "train", "dsrl", "--env", env_id, "--init", str(base)]
        args += ["--num-envs", "1", "--total-steps", str(steps), "--dsrl.variant", variant]
        args += ["--seed", "0", "--no-progress", "--out", str(out)]
        start = time.time()
        result = subprocess.run(args, capture_output=True, text=True)
        seconds = time.time() - start
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed:\n{result.stderr[-2000:]}")
        with open(out / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    learning = [r for r in rows if r.get("critic/loss")][1:]  # after the first update's compile
    steady = len(learning) / sum(1.0 / float(r["steps_per_second"]) for r in learning)
    done = int(rows[-1]["env_steps"])
    return {
        "env_steps": done,
        "seconds": seconds,
        "steps_per_second": done / seconds,
        "steady_steps_per_second": steady,
    }


def gradient_step_ms(env_id: str, base: Path, variant: str) -> float:
    """Best of 3: milliseconds per DSRL gradient step (default config), compiled scan of 200."""
    result = subprocess.run(
        [sys.executable, "-c", GRADIENT_STEP_CHILD, env_id, str(base), variant],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SystemExit(f"gradient-step timing failed:\n{result.stderr[-2000:]}")
    return float(result.stdout.strip().splitlines()[-1])


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['variant']}\nload {r['load_before']}-{r['load_after']}" for r in rows]
    series = {
        "whole process": "steps_per_second",
        "steady (after learning starts)": "steady_steps_per_second",
        "bound: 1 / gradient step": "update_bound_steps_per_second",
    }
    fig, ax = plt.subplots(figsize=(7, 4.5))
    width = 0.8 / len(series)
    for i, (name, column) in enumerate(series.items()):
        values = [float(r[column]) for r in rows]
        ax.bar(np.arange(len(rows)) + i * width, values, width, label=name)
    ax.axhline(SAC_MEASURED, color="gray", linestyle=":", label="gprl SAC 256x256 (HalfCheetah)")
    ax.axhline(TARGET, color="red", linestyle="--", label="target")
    ax.set_xticks(np.arange(len(rows)) + width * (len(series) - 1) / 2, labels, fontsize=8)
    ax.set_ylabel("env steps / s")
    ax.set_title(f"gprl DSRL on {rows[0]['env']}, UTD 1, batch 256, 1 env, 2 CPU cores")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(PNG_PATH, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="Hopper-v5")
    parser.add_argument("--variants", nargs="+", default=["noise_aliased", "plain"])
    parser.add_argument("--total-steps", type=int, default=50_000)
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--pretrain-steps", type=int, default=1000)
    args = parser.parse_args()
    provenance = {
        "machine": machine(),
        "date": now(),
        "command": command(),
        "gprl_commit": gprl_commit(),
    }
    base = base_policy(args.env, args.episodes, args.pretrain_steps)
    rows = []
    for variant in args.variants:
        load_before = load_average()
        print(f"dsrl {variant} on {args.env} ...", flush=True)
        row = {"env": args.env, "variant": variant}
        row |= whole_process(args.env, base, variant, args.total_steps)
        step_ms = gradient_step_ms(args.env, base, variant)
        row |= {"gradient_step_ms": step_ms, "update_bound_steps_per_second": 1e3 / step_ms}
        row |= {"load_before": load_before, "load_after": load_average()}
        print(f"  {row}", flush=True)
        rows.append(row | provenance)
        write_csv(CSV_PATH, rows)
    plot(rows)
    print()
    print(markdown_table(rows, COLUMNS))
    print(f"\ntarget {TARGET:.0f} env steps/s; gprl SAC 256x256 measured {SAC_MEASURED:.0f}")


if __name__ == "__main__":
    main()
