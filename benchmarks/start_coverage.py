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

With --runs, the final policies of fine-tuning runs (run directories of the manipulation
benchmark, say) act from the same conditions as their evaluations act, and each is set beside
the start of its task and seed (--kinds' first): which of the conditions its start solved, only
sometimes solved or never solved did fine-tuning solve?

    python benchmarks/start_coverage.py --kinds flow \
        --runs benchmarks/runs/manipulation/pick-place-v3/qc-wide-s0

Results: start_coverage.csv (a row per task, kind, seed and condition: zero-noise success and
sampled successes out of --repeats), start_coverage_summary.csv (per start: the share of
conditions solved from zero noise, never solved, solved in some sampled repetitions, and the
mean sampled success); with --runs, start_coverage_runs.csv (a row per run and condition) and
start_coverage_runs_summary.csv (per run: its success on each group of conditions). BC
starts missing from benchmarks/runs/imitation are trained as the manipulation benchmark trains
them.
"""

import argparse
from pathlib import Path

import jax
import numpy as np
from common import RESULTS_DIR, print_start, read_rows, write_csv
from imitation import TASKS
from manipulation import add_start_options, bc_start

from gprl.envs import make_env
from gprl.evaluation import ActionQueue, host_episode_outcomes
from gprl.initial_policy import chunk_options
from gprl.pretrained import load_pretrained
from gprl.rundir import saved_configs
from gprl.trainer import load_run, success_options

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


def run_rows(run_dir: Path, conditions: int) -> list[dict]:
    """Whether a fine-tuning run's final policy, acting as its evaluations act, succeeds from
    each condition."""
    algorithm, state, run = load_run(run_dir)
    act = jax.jit(algorithm.act_deterministic)
    acting = algorithm.acting_params(state)
    policy = lambda obs: np.asarray(act(acting, obs))  # noqa: E731
    succeeded = condition_successes(run_dir, run, policy, conditions)
    task = task_of(run_dir)
    return [
        dict(task=task, run=run_dir.name, seed=run.seed, condition=c, success=int(succeeded[c]))
        for c in range(conditions)
    ]


def condition_successes(run_dir: Path, run, policy, conditions: int) -> np.ndarray:
    """Whether a run's policy (observations -> actions), acting with the run's success options
    and chunking, succeeds from each condition."""
    options = success_options(run) | chunk_options(run_dir)
    env = make_env(run.env, conditions, CONDITION_SEED, backend=run.env_backend, **options)
    try:
        return host_episode_outcomes(env, CONDITION_SEED, policy)[2]
    finally:
        env.close()


def task_of(run_dir: Path) -> str:
    """The Meta-World task a run trained on, from its saved config."""
    return saved_configs(run_dir)["run"]["env"].removeprefix("metaworld:")


def summarise_runs(rows: list[dict], start_rows: list[dict], kind: str) -> list[dict]:
    """Each run's success on the conditions its start (same task and seed) solved from zero
    noise, solved only in some sampled tries, and never solved."""
    summary = []
    for task, name in dict.fromkeys((r["task"], r["run"]) for r in rows):
        run = [r for r in rows if (r["task"], r["run"]) == (task, name)]
        start = {
            r["condition"]: r
            for r in start_rows
            if (r["task"], r["kind"], r["seed"]) == (task, kind, run[0]["seed"])
        }
        success = np.array([r["success"] for r in run], bool)
        zero = np.array([start[r["condition"]]["zero_noise"] for r in run], bool)
        never = np.array([start[r["condition"]]["sampled_successes"] == 0 for r in run]) & ~zero
        sometimes = ~zero & ~never
        summary.append(
            {
                "task": task,
                "run": name,
                "start": f"{kind} seed {run[0]['seed']}",
                "success": success.mean(),
                "start_zero_noise_success": zero.mean(),
                "on_solved_from_zero_noise": success[zero].mean(),
                "on_sometimes_solved": success[sometimes].mean(),
                "on_never_solved": success[never].mean(),
                "sometimes_solved_conditions": int(sometimes.sum()),
                "never_solved_conditions": int(never.sum()),
            }
        )
    return summary


def cover_runs(args, start_rows: list[dict]) -> None:
    """Evaluate --runs not evaluated before and summarise every evaluated run."""
    path = RESULTS_DIR / "start_coverage_runs.csv"
    rows = read_rows(path, {"task", "run"})
    done = {(r["task"], r["run"]) for r in rows}
    for run_dir in args.runs:
        # Run directories are named per task (qc-wide-s0 in each task's folder).
        if (task_of(run_dir), run_dir.name) not in done:
            rows += run_rows(run_dir, args.conditions)
            write_csv(path, rows)
    summary = summarise_runs(rows, start_rows, args.kinds[0])
    write_csv(RESULTS_DIR / "start_coverage_runs_summary.csv", summary)
    for r in summary:
        print({k: round(float(v), 2) if isinstance(v, float) else v for k, v in r.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--kinds", nargs="+", default=["ddpm", "flow"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--conditions", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--runs", nargs="+", type=Path, default=[], help="fine-tuning runs")
    add_start_options(parser)
    args = parser.parse_args()
    print_start()
    path = RESULTS_DIR / "start_coverage.csv"
    rows = read_rows(path, {"task", "kind"})
    if args.runs:
        cover_runs(args, rows)
        return
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
