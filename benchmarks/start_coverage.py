"""Which initial conditions a BC start can succeed from: the reach of RL fine-tuning on a sparse
reward.

A fine-tuner on a sparse success reward learns only from episodes that succeed. For each of
--conditions initial conditions of a Meta-World task (one env seed each, the same in every
repetition; each draws one of the task's 50 MT1 placements, so 50 conditions hold about 32
distinct placements, as a cell's 50 evaluation episodes do), the manipulation benchmark's BC
start acts once from zero noise (as fine-tuning evaluates it) and --repeats times from unit
noise (sampled, as fine-tuning explores). A condition never solved in any try gives its
fine-tuner no success to reinforce there; one solved in some sampled tries but not from zero
noise is where RL can move the deterministic policy.

    python benchmarks/start_coverage.py --tasks pick-place-v3 --kinds ddpm --seeds 0

Results: start_coverage.csv (a row per task, kind, seed and condition: zero-noise success and
sampled successes out of --repeats), start_coverage_summary.csv (per start: the share of
conditions solved from zero noise, never solved, solved in some sampled repetitions, and the
mean sampled success). BC starts missing from benchmarks/runs/imitation are trained as the
manipulation benchmark trains them.
"""

import argparse

import jax
import numpy as np
from common import RESULTS_DIR, print_start, read_rows, write_csv
from imitation import TASKS
from manipulation import add_start_options, bc_start

from gprl.envs import make_env
from gprl.evaluation import ActionQueue, host_episode_outcomes
from gprl.pretrained import load_pretrained

CONDITION_SEED = 1_000_000
"""Env seed of the first condition (apart from the seeds the starts were evaluated with)."""
KEYS = ("task", "kind", "seed", "condition")


def successes(run_dir, env, noise_scale: float, key) -> np.ndarray:
    """Whether each env's episode from its condition succeeds, acting from noise of this scale
    (the env ends an episode at its first success, as the fine-tuning benchmark's do)."""
    # Loaded afresh for each scale: a compiled plan keeps the scale it was traced with.
    pretrained = load_pretrained(run_dir)
    pretrained.policy.noise_scale = noise_scale
    plan = jax.jit(pretrained.policy.plan)
    queue = ActionQueue(
        lambda obs, key: plan(pretrained.acting, obs, key),
        env.num_envs,
        pretrained.config.execute_steps,
        key,
        pretrained.config.obs_history,
    )
    return host_episode_outcomes(env, CONDITION_SEED, queue)[2]


def start_rows(task: str, kind: str, seed: int, args) -> list[dict]:
    run_dir = bc_start(task, kind, seed, args)
    pretrained = load_pretrained(run_dir)
    env = make_env(
        pretrained.env_id,
        args.conditions,
        CONDITION_SEED,
        backend=pretrained.env_backend,
        end_on_success=True,
    )
    try:
        zero = successes(run_dir, env, 0.0, jax.random.PRNGKey(0))
        sampled = sum(
            successes(run_dir, env, 1.0, jax.random.PRNGKey(1 + r)).astype(int)
            for r in range(args.repeats)
        )
    finally:
        env.close()
    return [
        dict(task=task, kind=kind, seed=seed, condition=c, zero_noise=int(zero[c]),
             sampled_successes=int(sampled[c]), repeats=args.repeats)
        for c in range(args.conditions)
    ]  # fmt: skip


def summarise(rows: list[dict]) -> list[dict]:
    starts = sorted({(r["task"], r["kind"], r["seed"]) for r in rows})
    summary = []
    for task, kind, seed in starts:
        cell = [r for r in rows if (r["task"], r["kind"], r["seed"]) == (task, kind, seed)]
        zero = np.array([r["zero_noise"] for r in cell], bool)
        sampled = np.array([r["sampled_successes"] / r["repeats"] for r in cell])
        summary.append(
            {
                "task": task,
                "kind": kind,
                "seed": seed,
                "conditions": len(cell),
                "zero_noise_success": zero.mean(),
                "sampled_success": sampled.mean(),
                "never_solved": ((sampled == 0) & ~zero).mean(),
                "sometimes_not_zero_noise": ((sampled > 0) & ~zero).mean(),
                "zero_noise_and_always": ((sampled == 1) & zero).mean(),
            }
        )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--kinds", nargs="+", default=["ddpm", "flow"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--conditions", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=8)
    add_start_options(parser)
    args = parser.parse_args()
    print_start()
    path = RESULTS_DIR / "start_coverage.csv"
    rows = read_rows(path, {"task", "kind"})
    done = {(r["task"], r["kind"], r["seed"]) for r in rows}
    for task in args.tasks:
        for kind in args.kinds:
            for seed in args.seeds:
                if (task, kind, seed) not in done:
                    rows += start_rows(task, kind, seed, args)
                    write_csv(path, rows)
    summary = summarise(rows)
    write_csv(RESULTS_DIR / "start_coverage_summary.csv", summary)
    for r in summary:
        print({k: round(float(v), 2) if isinstance(v, float) else v for k, v in r.items()})


if __name__ == "__main__":
    main()
