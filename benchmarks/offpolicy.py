"""Off-policy benchmarks: whole-process throughput (SAC, FQL), and SAC learning on MuJoCo tasks.

Throughput section, per algorithm variant of THROUGHPUT_VARIANTS (`--variants`): `gprl train
ALGO --env ENV --num-envs N --total-steps S --seed 0 --no-progress` plus the variant's options
(default configs: update-to-data 1, batch 256, learning starts at 5,000 steps, an update call
every 50 env steps), timed from launch to exit (start-up, compilation, evaluations and
checkpoints included), plus the steady rate of the iterations after learning starts. Next to
it, the time of one gradient step of the same config measured alone in the same run (a compiled
scan of 200 of them on a stored batch), which bounds the whole loop at UTD 1 whatever the
collector does. A variant with `steps` 0 is timed by its gradient step only (networks too slow
for a whole run here). Rows of other variants already in the CSV are kept.

Learning section: `benchmarks/learning.py --algos sac` on HalfCheetah-v5, Hopper-v5 and
Walker2d-v5, one env per run (as CleanRL and SB3), seeds and budget from the flags; finished
runs are skipped and unfinished ones resumed, so the grid can be completed over several
invocations. Results: results/learning_sac*.

    python benchmarks/offpolicy.py --sections throughput
    python benchmarks/offpolicy.py --sections learning --seeds 0 --steps 100000
    python benchmarks/offpolicy.py --sections learning --seeds 0 1 2 --steps 100000  # the rest
"""

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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

CSV_PATH = RESULTS_DIR / "offpolicy_throughput.csv"
PNG_PATH = RESULTS_DIR / "offpolicy_throughput.png"
LEARNING_TASKS = ("HalfCheetah-v5", "Hopper-v5", "Walker2d-v5")
FLOWRL_TD3 = 220.0
"""flowrl's TD3 at UTD 1 on HalfCheetah-v5 on this kind of machine (shared/reference/anchors.md)."""
TARGET = 3 * FLOWRL_TD3
FQL_TARGET = 300.0
"""Issue 9: FQL at UTD 1, 1 env, Hopper-v5, whole process."""
THROUGHPUT_VARIANTS = {
    "sac": ("sac", [], None),
    "sac-return-floor": ("sac", ["--sac.return-floor"], None),
    "fql": ("fql", [], None),
    "fql-128x128": (
        "fql",
        [
            *("--fql.actor-hidden", "128", "128", "--fql.critic-hidden", "128", "128"),
            *("--fql.flow.hidden", "128", "128"),
        ],
        None,
    ),
    "fql-gelu": (
        "fql",
        ["--fql.activation", "gelu", "--fql.flow.activation", "gelu"],
        0,
    ),
    "fql-reference": (
        "fql",
        [
            *("--fql.activation", "gelu", "--fql.flow.activation", "gelu"),
            *("--fql.actor-hidden", "512", "512", "512", "512"),
            *("--fql.critic-hidden", "512", "512", "512", "512"),
            *("--fql.flow.hidden", "512", "512", "512", "512"),
        ],
        0,
    ),
}
"""variant -> (algorithm, `gprl train` options, whole-run env steps: None for --throughput-steps,
0 for the gradient step alone). FQL's reference networks are 4 x 512 GELU; gprl's defaults are
2 x 64 ReLU; fql-gelu is the defaults with the reference's activation; sac-return-floor is SAC
with the TD target floored at tracked episode returns, whose cost is the buffer writing every
terminated episode's returns in the compiled call. A new off-policy method (DSRL) adds its rows
here."""
COLUMNS = [
    "variant",
    "env",
    "num_envs",
    "env_steps",
    "seconds",
    "steps_per_second",
    "steady_steps_per_second",
    "gradient_step_ms",
    "update_bound_steps_per_second",
    "first_iteration_s",
    "final_eval_return",
    "load_before",
    "load_after",
]

GRADIENT_STEP_CHILD = r"""
import sys, time
import jax, numpy as np
import tyro
from gprl.algos import ALGORITHMS
from gprl.envs import make_env
from gprl.trainer import configure_jax
from gprl.types import Transition

configure_jax()
algo_name, env_id, steps = sys.argv[1], sys.argv[2], 200
with make_env(env_id, 1, 0, backend="gymnasium") as env:
    spec = env.spec
entry = ALGORITHMS[algo_name]
prefix = "--" + algo_name.replace("-", "_") + "."
options = [a.replace(prefix, "--", 1) if a.startswith(prefix) else a for a in sys.argv[3:]]
config = tyro.cli(entry.config, args=options)
algo = entry.algorithm(config, spec, 1, 1_000_000)
rng = np.random.default_rng(0)
b = config.batch_size
batch = Transition(
    obs=rng.normal(size=(b, spec.obs_dim)).astype(np.float32),
    action=rng.uniform(-1, 1, (b, spec.action_dim)).astype(np.float32),
    reward=rng.normal(size=b).astype(np.float32),
    terminated=np.zeros(b, bool),
    truncated=np.zeros(b, bool),
    next_obs=rng.normal(size=(b, spec.obs_dim)).astype(np.float32),
    extras={},
)

@jax.jit
def run(state, key):
    return jax.lax.scan(lambda s, k: algo.update(s, batch, k), state, jax.random.split(key, steps))

state = algo.init(jax.random.PRNGKey(0))
jax.block_until_ready(run(state, jax.random.PRNGKey(1)))
best = float("inf")
for repeat in range(3):
    start = time.perf_counter()
    jax.block_until_ready(run(state, jax.random.PRNGKey(repeat)))
    best = min(best, (time.perf_counter() - start) / steps)
print(best * 1e3)
"""


def gradient_step_ms(algo: str, env_id: str, options: list[str]) -> float:
    """Best of 3: milliseconds per gradient step of the config that `options` give,
    compiled scan of 200."""
    result = subprocess.run(
        [sys.executable, "-c", GRADIENT_STEP_CHILD, algo, env_id, *options],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SystemExit(f"gradient-step timing failed:\n{result.stderr[-2000:]}")
    return float(result.stdout.strip().splitlines()[-1])


def whole_process(algo: str, options: list[str], env_id: str, num_envs: int, steps: int) -> dict:
    """`gprl train ALGO` in a fresh process; wall time from launch to exit."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        args = ["gprl", "train", algo, "--env", env_id, "--num-envs", str(num_envs), *options]
        args += ["--total-steps", str(steps), "--seed", "0", "--no-progress", "--out", str(out)]
        start = time.time()
        result = subprocess.run(args, capture_output=True, text=True)
        seconds = time.time() - start
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed:\n{result.stderr[-2000:]}")
        with open(out / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    learning = [r for r in rows if r.get("critic/loss")][1:]  # after the first update's compile
    steady = len(learning) / sum(1.0 / float(r["steps_per_second"]) for r in learning)
    evals = [r for r in rows if r.get("eval_return")]
    done = int(rows[-1]["env_steps"])
    return {
        "env_steps": done,
        "seconds": seconds,
        "steps_per_second": done / seconds,
        "steady_steps_per_second": steady,
        "first_iteration_s": float(rows[0]["wall_time"]),
        "final_eval_return": float(evals[-1]["eval_return"]),
    }


def previous_rows() -> list[dict]:
    """The CSV's rows (those written before variants existed are SAC's)."""
    if not CSV_PATH.exists():
        return []
    with open(CSV_PATH, newline="") as f:
        return [{"variant": "sac"} | row for row in csv.DictReader(f)]


def throughput(args, provenance: dict) -> None:
    rows = previous_rows()
    for variant in args.variants:
        algo, options, variant_steps = THROUGHPUT_VARIANTS[variant]
        steps = args.throughput_steps if variant_steps is None else variant_steps
        for env_id in args.envs:
            for num_envs in args.num_envs:
                load_before = load_average()
                print(f"throughput {variant} {env_id} {num_envs} envs ...", flush=True)
                row = {"variant": variant, "env": env_id, "num_envs": num_envs}
                if steps:
                    row |= whole_process(algo, options, env_id, num_envs, steps)
                step_ms = gradient_step_ms(algo, env_id, options)
                row |= {"gradient_step_ms": step_ms, "update_bound_steps_per_second": 1e3 / step_ms}
                row |= {"load_before": load_before, "load_after": load_average()}
                print(f"  {row}", flush=True)
                same = (variant, env_id, str(num_envs))
                rows = [r for r in rows if (r["variant"], r["env"], str(r["num_envs"])) != same]
                rows.append(row | provenance)
                write_csv(CSV_PATH, rows)
    plot_throughput(rows)
    print()
    print(markdown_table(rows, COLUMNS))
    print(f"\nflowrl TD3 (anchors.md): ~{FLOWRL_TD3:.0f} steps/s; target 3x = {TARGET:.0f}")


def plot_throughput(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = [
        f"{r['variant']}\n{r['env']}, {r['num_envs']} env(s)\n"
        f"load {r['load_before']}-{r['load_after']}"
        for r in rows
    ]
    series = {
        "whole process": "steps_per_second",
        "steady (after learning starts)": "steady_steps_per_second",
        "bound: 1 / gradient step": "update_bound_steps_per_second",
    }
    fig, ax = plt.subplots(figsize=(max(7, 1.8 * len(rows)), 4.8))
    width = 0.8 / len(series)
    for i, (name, column) in enumerate(series.items()):
        values = [float(r[column]) if r.get(column) else 0.0 for r in rows]
        ax.bar(np.arange(len(rows)) + i * width, values, width, label=name)
    ax.axhline(FLOWRL_TD3, color="gray", linestyle=":", label="flowrl TD3 (anchors.md)")
    ax.axhline(TARGET, color="red", linestyle="--", label="SAC target: 3x flowrl TD3")
    ax.axhline(FQL_TARGET, color="purple", linestyle="-.", label="FQL target (Hopper-v5)")
    ax.set_xticks(np.arange(len(rows)) + width * (len(series) - 1) / 2, labels, fontsize=8)
    ax.set_ylabel("env steps / s")
    ax.set_title("gprl off-policy methods, UTD 1, batch 256, 2 CPU cores")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(PNG_PATH, dpi=110)
    plt.close(fig)


def learning(args) -> None:
    """The learning grid through benchmarks/learning.py (incremental, resumable)."""
    cmd = [sys.executable, str(BENCH_DIR / "learning.py"), "--algos", "sac"]
    cmd += ["--tasks", *args.tasks, "--seeds", *map(str, args.seeds)]
    cmd += ["--num-envs", "1", "--dmc-steps", str(args.steps)]
    cmd += ["--dmc-eval-every", str(args.eval_every), "--tag", "sac"]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", nargs="+", default=["throughput", "learning"])
    parser.add_argument("--variants", nargs="+", default=["sac"], choices=THROUGHPUT_VARIANTS)
    parser.add_argument("--envs", nargs="+", default=["HalfCheetah-v5"])
    parser.add_argument("--num-envs", nargs="+", type=int, default=[1])
    parser.add_argument("--throughput-steps", type=int, default=50_000)
    parser.add_argument("--tasks", nargs="+", default=list(LEARNING_TASKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=100_000, help="learning budget per run")
    parser.add_argument("--eval-every", type=int, default=10_000)
    parser.add_argument(
        "--report-only", action="store_true", help="redraw the throughput PNG from its CSV"
    )
    args = parser.parse_args()
    if args.report_only:
        with open(CSV_PATH, newline="") as f:
            plot_throughput(list(csv.DictReader(f)))
        return
    os.chdir(Path(__file__).resolve().parents[1])
    provenance = {
        "machine": machine(),
        "date": now(),
        "command": command(),
        "gprl_commit": gprl_commit(),
    }
    if "throughput" in args.sections:
        throughput(args, provenance)
        print(f"machine: {provenance['machine']}; date: {provenance['date']}")
        print(f"command: {provenance['command']}; commit {provenance['gprl_commit']}")
        print(f"wrote {CSV_PATH} and {PNG_PATH}")
    if "learning" in args.sections:
        learning(args)


if __name__ == "__main__":
    main()
