"""Every seed's fine-tuned policy on every seed's evaluation draws: is a cell's final success its
run's, or its evaluation episodes'?

A Meta-World task here is 50 fixed placements, and a cell's 50 evaluation episodes draw ~32 of
them, different for each seed (the evaluation envs' seed is `gprl.seeding.eval_seed(seed)`). This
script evaluates, with `gprl eval RUN --seed eval_seed(d)` as a user would, each finished
manipulation cell of --methods (its final checkpoint, deterministic) and each seed's DDPM BC
start (`--noise-scale 0`, as fine-tuning evaluates it) on the draws of every seed d in --seeds.
Run directories must be on this machine (benchmarks/runs/, git-ignored); cells without a
finished one are skipped and named.

    python benchmarks/cross_draws.py --task pick-place-v3 --methods dppo-wide-critic

Results (incremental; rows already there are not evaluated again):
manipulation_cross_draws.csv, a row per (task, policy, seed, draws of seed).
"""

import argparse
import re
import subprocess
import sys

from common import DONE_FILE, RESULTS_DIR, print_start, read_rows, write_csv
from imitation import TASKS
from manipulation import METHODS, ROOT, add_start_options, bc_start

from gprl.seeding import eval_seed

START = "bc-start"
"""The policy column of the BC starts' rows."""
RATE = re.compile(r"^success rate ([0-9.]+)", re.MULTILINE)


def success_rate(run_dir, seed: int, episodes: int, start: bool) -> float:
    options = ["--noise-scale", "0"] if start else []
    evaluate = [sys.executable, "-m", "gprl.cli", "eval", str(run_dir), "--seed", str(seed)]
    evaluate += ["--episodes", str(episodes), *options]
    result = subprocess.run(evaluate, capture_output=True, text=True)
    found = RATE.search(result.stdout)
    if result.returncode or not found:
        sys.exit(f"cross_draws.py: error: gprl eval {run_dir} failed: {result.stderr.strip()}")
    return float(found.group(1))


def policies(task: str, methods: list[str], seeds: list[int], args) -> list[tuple]:
    """(policy name, seed, run directory, whether it is a BC start) of each policy to evaluate."""
    found = [(START, seed, bc_start(task, "ddpm", seed, args), True) for seed in seeds]
    for method in methods:
        for seed in seeds:
            run_dir = ROOT / task / f"{method}-s{seed}"
            # A cell's checkpoint mid-run is not its final policy: only finished cells count.
            if (run_dir / DONE_FILE).exists():
                found.append((method, seed, run_dir, False))
            else:
                print(f"skipped {method} seed {seed}: no finished run at {run_dir}")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="pick-place-v3", choices=TASKS)
    parser.add_argument("--methods", nargs="+", default=["dppo-wide-critic"], choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--episodes", type=int, default=50)
    add_start_options(parser)
    args = parser.parse_args()
    print_start()
    path = RESULTS_DIR / "manipulation_cross_draws.csv"
    rows = read_rows(path, {"task", "policy"})
    done = {(r["task"], r["policy"], r["seed"], r["draws_of_seed"]) for r in rows}
    for policy, seed, run_dir, start in policies(args.task, args.methods, args.seeds, args):
        for draws in args.seeds:
            if (args.task, policy, seed, draws) in done:
                continue
            rate = success_rate(run_dir, eval_seed(draws), args.episodes, start)
            rows.append(
                dict(task=args.task, policy=policy, seed=seed, draws_of_seed=draws,
                     episodes=args.episodes, success_rate=rate)
            )  # fmt: skip
            write_csv(path, rows)
            print(f"{policy} seed {seed} on seed {draws}'s draws: {rate:.2f}")


if __name__ == "__main__":
    main()
