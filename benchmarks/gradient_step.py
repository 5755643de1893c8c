"""Milliseconds per gradient step of FQL, QC-FQL and QC at the CPU default networks and at the
papers' (4 x 512 GELU), on whatever device JAX runs on: how long the OGBench benchmark's 1M-step
cells take with the papers' networks, here and on an accelerator.

A gradient step is the algorithm's `update` on a stored batch of 256 with OGBench's shapes
(cube-single: 28 observations; cube-double: 37; 5 actions; QC and QC-FQL on chunks of 5), timed
as a compiled `lax.scan` of --steps of them, best of 3 after a compiling call. It needs no env,
dataset or MuJoCo (only jax, flax, optax and gprl's source), so it runs on a bare accelerator
machine with `PYTHONPATH=src`. Rows are appended to --csv (default
results/gradient_step.csv) with the device, jax version, machine and load (on a shared CPU,
other processes slow the CPU rows); earlier rows are kept.

    python benchmarks/gradient_step.py                       # this machine's CPU
    PYTHONPATH=src python3 benchmarks/gradient_step.py       # a GPU machine without the venv
"""

import argparse
import csv
import dataclasses
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import jax
import numpy as np

from gprl.algos import ALGORITHMS
from gprl.types import EnvSpec, Transition

RESULTS = Path(__file__).resolve().parent / "results"
BATCH = 256
SHAPES = {"fql": ("cube-single", 28, 1), "qc-fql": ("cube-double", 37, 5),
          "qc": ("cube-double", 37, 5)}  # fmt: skip
"""algorithm: (OGBench task whose shapes it is timed at, observation dim, chunk length)."""
ACTION_DIM = 5
NETWORKS = {"2x64-relu": ((64, 64), "relu"), "4x512-gelu": ((512,) * 4, "gelu")}


def config_of(algo: str, hidden: tuple[int, ...], activation: str):
    config = ALGORITHMS[algo].default_config()
    flow = dataclasses.replace(config.flow, hidden=hidden, activation=activation)
    fields = {"critic_hidden": hidden, "activation": activation, "flow": flow}
    if hasattr(config, "actor_hidden"):
        fields["actor_hidden"] = hidden
    return dataclasses.replace(config, batch_size=BATCH, **fields)


def milliseconds_per_step(algo: str, network: str, steps: int) -> float:
    task, obs_dim, chunk = SHAPES[algo]
    action_dim = ACTION_DIM * chunk
    spec = EnvSpec(f"ogbench:{task}", obs_dim, action_dim, -np.ones(action_dim, np.float32),
                   np.ones(action_dim, np.float32), 500)  # fmt: skip
    algorithm = ALGORITHMS[algo].algorithm(config_of(algo, *NETWORKS[network]), spec, 1, 10**6)
    rng = np.random.default_rng(0)
    batch = Transition(
        obs=rng.normal(size=(BATCH, obs_dim)).astype(np.float32),
        action=rng.uniform(-1, 1, (BATCH, action_dim)).astype(np.float32),
        reward=rng.normal(size=BATCH).astype(np.float32),
        terminated=np.zeros(BATCH, bool),
        truncated=np.zeros(BATCH, bool),
        next_obs=rng.normal(size=(BATCH, obs_dim)).astype(np.float32),
        extras={},
    )

    @jax.jit
    def run(state, key):
        step = lambda s, k: algorithm.update(s, batch, k)  # noqa: E731
        return jax.lax.scan(step, state, jax.random.split(key, steps))

    state = algorithm.init(jax.random.PRNGKey(0))
    jax.block_until_ready(run(state, jax.random.PRNGKey(1)))
    best = float("inf")
    for repeat in range(3):
        start = time.perf_counter()
        jax.block_until_ready(run(state, jax.random.PRNGKey(2 + repeat)))
        best = min(best, (time.perf_counter() - start) / steps)
    return best * 1e3


def device_name() -> str:
    device = jax.devices()[0]
    return getattr(device, "device_kind", device.platform)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algos", nargs="+", default=list(SHAPES), choices=SHAPES)
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=NETWORKS)
    parser.add_argument("--steps", type=int, default=200, help="gradient steps per timed scan")
    parser.add_argument("--csv", type=Path, default=RESULTS / "gradient_step.csv")
    args = parser.parse_args()
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    rows = []
    for algo in args.algos:
        for network in args.networks:
            ms = milliseconds_per_step(algo, network, args.steps)
            rows.append({
                "algo": algo, "network": network, "task_shapes": SHAPES[algo][0],
                "batch": BATCH, "ms_per_gradient_step": round(ms, 3),
                "hours_per_1m_steps": round(ms * 1e6 / 3.6e6, 2), "device": device_name(),
                "jax": jax.__version__, "machine": machine, "scan_steps": args.steps,
                "load_1min": round(os.getloadavg()[0], 2),
                "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M"),
            })  # fmt: skip
            print(rows[-1], flush=True)
    write(args.csv, rows)


def write(path: Path, rows: list[dict]) -> None:
    """Append rows, keeping the earlier ones (of other devices or dates)."""
    kept = []
    if path.exists():
        with open(path, newline="") as f:
            kept = list(csv.DictReader(f))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows([*kept, *rows])


if __name__ == "__main__":
    main()
