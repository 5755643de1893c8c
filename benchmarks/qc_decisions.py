"""Where a QC run's decisions come from: its critics' choice against its BC flow alone.

QC acts on the chunk its critics value most among N samples of its BC flow. Each --runs run's
current checkpoint acts from start_coverage's conditions (the same env seeds) four ways, with
its evaluations' success options and chunking:

- best_of_n: QC's own deterministic decision, the best by Q of the N fixed evaluation noises;
- best_of_n_zero_first: the same with the first of those noises replaced by zero, so that the
  flow's zero-noise chunk is always a candidate;
- flow_zero_noise: the flow's chunk for zero noise, no critic;
- flow_first_noise: the flow's chunk for the first evaluation noise, no critic.

When the flow alone beats the critics' choice, the critics rank its samples worse than chance
would; when they match, the flow has taken up what the critics taught it.

    python benchmarks/qc_decisions.py \
        --runs benchmarks/runs/manipulation/pick-place-v3/qc-wide-filtered-critic-s0

Results: qc_decisions.csv, a row per run, checkpoint (env steps) and way. A checkpoint already
measured is skipped; a run that has since moved on gets new rows.
"""

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from common import RESULTS_DIR, gprl_commit, print_start, read_rows, write_csv
from start_coverage import condition_successes, task_of

from gprl.checkpoint import read_meta
from gprl.trainer import load_run

PATH = RESULTS_DIR / "qc_decisions.csv"


def candidate_noises(algo) -> dict[str, jnp.ndarray]:
    """Each way's noises, (N, action_dim): the candidates its decision chooses among."""
    evaluation = algo.evaluation_noise(())
    return {
        "best_of_n": evaluation,
        "best_of_n_zero_first": evaluation.at[0].set(0.0),
        "flow_zero_noise": jnp.zeros_like(evaluation[:1]),
        "flow_first_noise": evaluation[:1],
    }


def decision_rows(run_dir: Path, env_steps: int, conditions: int) -> list[dict]:
    algo, state, run = load_run(run_dir)
    if not hasattr(algo, "act_from_noise"):
        raise SystemExit(f"{run_dir} is not a QC run: its algorithm decides from no noises")
    acting = algo.acting_params(state)
    act_from_noise = jax.jit(algo.act_from_noise)
    cell = dict(task=task_of(run_dir), run=run_dir.name, seed=run.seed, env_steps=env_steps)
    rows = []
    for way, noise in candidate_noises(algo).items():
        candidates = jnp.broadcast_to(noise, (conditions, *noise.shape))
        policy = lambda obs: np.asarray(act_from_noise(acting, obs, candidates))  # noqa: B023, E731
        succeeded = condition_successes(run_dir, run, policy, conditions)
        rows.append(
            cell | dict(way=way, candidates=len(noise), conditions=conditions,
                        success=float(succeeded.mean()), commit=gprl_commit())
        )  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", type=Path, required=True, help="QC run directories")
    parser.add_argument("--conditions", type=int, default=50)
    args = parser.parse_args()
    print_start()
    rows = read_rows(PATH, {"task", "run", "way", "commit"})
    done = {(r["task"], r["run"], r["env_steps"]) for r in rows}
    for run_dir in args.runs:
        env_steps = read_meta(run_dir)["progress"]["env_steps"]
        if (task_of(run_dir), run_dir.name, env_steps) not in done:
            rows += decision_rows(run_dir, env_steps, args.conditions)
            write_csv(PATH, rows)


if __name__ == "__main__":
    main()
