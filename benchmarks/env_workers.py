"""Env steps/s of the Gymnasium backend in this process against worker processes, one run.

For each task and number of envs, random actions, every variant built at once and measured in
interleaved windows (--repeats, median reported), so that a change in the machine's load hits
all variants alike:

  raw              one env stepped in a loop (num_envs 1), reset when its episode ends
  sync             gymnasium SyncVectorEnv, same-step autoreset
  async            gymnasium AsyncVectorEnv, shared memory, one process per env
  gprl_in_process  gprl's VecEnv (make_env, env_workers=0): SyncVectorEnv + flattening + infos
  gprl_workers_1   gprl's VecEnv with env_workers=1: this process steps half the envs and one
                   worker process the other half (the default for Meta-World on 2 cores)
  gprl_workers_1_blocking  the same, but each process blocks as soon as it waits for the other
                   (gprl.envs.workers.SPIN_S = 0) instead of polling for a few ms first

Besides steps/s, cpu_ms_per_step is the CPU time of this process and all its descendants
(workers, forkserver) per env step: it does not depend on the machine's load, and shows what the
pipes cost.

Meta-World is built with gprl.envs.metaworld.make_metaworld_env (MT1 placements, mujoco
adaptation) in every variant; the cheap task is Gymnasium's Hopper-v5 on the Gymnasium backend.

    python benchmarks/env_workers.py                        # ~6 min on 2 cores
    python benchmarks/env_workers.py --num-envs 8 --repeats 3
"""

import argparse
import functools
import os
import statistics
import time
import warnings
from pathlib import Path

import gymnasium as gym
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

from gprl.envs import make_env
from gprl.envs import workers as gprl_workers
from gprl.envs.metaworld import make_metaworld_env

CSV_PATH = RESULTS_DIR / "env_workers.csv"
PNG_PATH = RESULTS_DIR / "env_workers.png"
TASKS = ("metaworld:pick-place-v3", "Hopper-v5")
VARIANTS = ("sync", "async", "gprl_in_process", "gprl_workers_1", "gprl_workers_1_blocking")
TABLE_COLUMNS = [
    "task",
    "variant",
    "num_envs",
    "steps_per_second",
    "min",
    "max",
    "cpu_ms_per_step",
    "startup_s",
]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_tree_cpu_seconds() -> float:
    """User + system CPU seconds of this process and every live descendant (Linux /proc)."""
    parents, cpu = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        pid = int(stat.parent.name)
        parents[pid] = int(fields[1])
        cpu[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    total = 0.0
    for pid in cpu:
        ancestor = pid
        while ancestor not in (0, os.getpid()) and ancestor in parents:
            ancestor = parents[ancestor]
        total += cpu[pid] if ancestor == os.getpid() else 0.0
    return total


def single_env_maker(task: str):
    if task.startswith("metaworld:"):
        return functools.partial(make_metaworld_env, task)
    return functools.partial(gym.make, task)


class Stepper:
    """One variant of a task at num_envs: built once, stepped in timed windows."""

    def __init__(self, task: str, variant: str, num_envs: int):
        started = time.perf_counter()
        self.variant, self.num_envs = variant, num_envs
        make = single_env_maker(task)
        if variant == "raw":
            self.env = make()
            self.env.reset(seed=0)
        elif variant.startswith("gprl"):
            workers = 0 if variant == "gprl_in_process" else 1
            default_spin_s = gprl_workers.SPIN_S
            gprl_workers.SPIN_S = 0.0 if variant.endswith("blocking") else default_spin_s
            try:
                self.env = make_env(task, num_envs, 0, backend="gymnasium", env_workers=workers)
            finally:
                gprl_workers.SPIN_S = default_spin_s
        else:
            vector = gym.vector.SyncVectorEnv if variant == "sync" else gym.vector.AsyncVectorEnv
            options = {} if variant == "sync" else {"shared_memory": True, "context": "forkserver"}
            self.env = vector(
                [make] * num_envs, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP, **options
            )
            self.env.reset(seed=0)
        if variant.startswith("gprl"):
            action_dim = self.env.spec.action_dim
        else:
            action_dim = self.env.action_space.shape[-1]
        shape = (64, action_dim) if variant == "raw" else (64, num_envs, action_dim)
        self.actions = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
        self.window(0.3)  # warm-up
        self.startup_s = time.perf_counter() - started

    def window(self, seconds: float) -> tuple[float, float]:
        """(env steps per second, CPU ms per env step) over one window of about `seconds`."""
        steps, start, cpu_start = 0, time.perf_counter(), process_tree_cpu_seconds()
        while time.perf_counter() - start < seconds:
            action = self.actions[steps % 64]
            if self.variant == "raw":
                *_, terminated, truncated, _ = self.env.step(action)
                if terminated or truncated:
                    self.env.reset()
            else:
                self.env.step(action)
            steps += 1
        env_steps = steps * (1 if self.variant == "raw" else self.num_envs)
        cpu_ms = (process_tree_cpu_seconds() - cpu_start) * 1e3 / env_steps
        return env_steps / (time.perf_counter() - start), cpu_ms

    def close(self) -> None:
        self.env.close()


def measure_cell(task: str, num_envs: int, variants: list[str], args) -> list[dict]:
    """Every variant of (task, num_envs), measured in interleaved windows."""
    load_before = load_average()
    steppers = [Stepper(task, variant, num_envs) for variant in variants]
    rates: dict[str, list[float]] = {variant: [] for variant in variants}
    cpu_ms: dict[str, list[float]] = {variant: [] for variant in variants}
    try:
        for repeat in range(args.repeats):
            # Rotate the order so that no variant always follows the same one.
            shift = repeat % len(steppers)
            for stepper in steppers[shift:] + steppers[:shift]:
                rate, cpu = stepper.window(args.window)
                rates[stepper.variant].append(rate)
                cpu_ms[stepper.variant].append(cpu)
    finally:
        for stepper in steppers:
            stepper.close()
    load_after = load_average()
    return [
        {
            "task": task,
            "variant": stepper.variant,
            "num_envs": stepper.num_envs if stepper.variant != "raw" else 1,
            "steps_per_second": statistics.median(rates[stepper.variant]),
            "min": min(rates[stepper.variant]),
            "max": max(rates[stepper.variant]),
            "cpu_ms_per_step": statistics.median(cpu_ms[stepper.variant]),
            "repeats": args.repeats,
            "window_s": args.window,
            "startup_s": stepper.startup_s,
            "load_before": load_before,
            "load_after": load_after,
        }
        for stepper in steppers
    ]


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(row["task"] for row in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        raw = [row for row in rows if row["task"] == task and row["variant"] == "raw"]
        if raw:
            ax.axhline(raw[0]["steps_per_second"], color="gray", ls=":", label="raw (1 env)")
        for variant in VARIANTS:
            cells = [row for row in rows if row["task"] == task and row["variant"] == variant]
            if cells:
                x = [row["num_envs"] for row in cells]
                ax.plot(x, [row["steps_per_second"] for row in cells], "o-", label=variant)
        ax.set_xscale("log", base=2)
        sizes = sorted({row["num_envs"] for row in rows if row["variant"] != "raw"})
        ax.set_xticks(sizes, [str(size) for size in sizes])
        ax.set_xlabel("num_envs")
        ax.set_ylabel("env steps / s (median of windows)")
        ax.set_title(task, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    loads = [row["load_before"] for row in rows] + [row["load_after"] for row in rows]
    fig.suptitle(
        f"Gymnasium backend in one process vs worker processes, {os.cpu_count()} CPU cores "
        f"(1-min load {min(loads):.1f}-{max(loads):.1f})",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(PNG_PATH, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--num-envs", nargs="+", type=int, default=[2, 4, 8, 16])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--window", type=float, default=1.5, help="seconds per timed window")
    args = parser.parse_args()
    os.chdir(Path(__file__).resolve().parents[1])
    # Gymnasium's checker warns about Meta-World's observation bounds on every env made.
    warnings.filterwarnings("ignore", module="gymnasium")
    provenance = {
        "machine": machine(),
        "date": now(),
        "command": command(),
        "gprl_commit": gprl_commit(),
    }
    rows: list[dict] = []
    for task in args.tasks:
        rows += [row | provenance for row in measure_cell(task, 1, ["raw"], args)]
        for num_envs in args.num_envs:
            print(f"{task} num_envs={num_envs} ...", flush=True)
            rows += [row | provenance for row in measure_cell(task, num_envs, args.variants, args)]
            write_csv(CSV_PATH, rows)
            plot(rows)
    print(f"\n{provenance['machine']}, {provenance['date']}, {provenance['command']}\n")
    print(markdown_table(rows, [*TABLE_COLUMNS, "load_before", "load_after"]))


if __name__ == "__main__":
    main()
