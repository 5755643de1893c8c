"""How widely each DMC-6 method explores: the spread of its stochastic actions at the start of
training and at the end, measured on the runs benchmarks/dmc6.py trained.

For every finished DMC-6 run of the chosen tasks, the trained policy acts deterministically for
`--steps` vector steps in 8 envs; at each visited observation both the freshly initialised policy
(the run's own config and seed) and the trained one draw `--samples` stochastic actions. The
spread is the per-dimension standard deviation of those actions (clipped to [-1, 1]: what the
env receives), averaged over dimensions and observations.
Results: benchmarks/results/exploration.csv; rows of cells not measured in this call (their runs
absent, as in a fresh clone) are kept as committed.

    python benchmarks/exploration.py                       # seed 0 of the six tasks
    python benchmarks/exploration.py --seeds 0 1 2 --tasks dm_control/walker-walk-v0
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from common import (
    RESULTS_DIR,
    command,
    gprl_commit,
    load_average,
    machine,
    now,
    read_rows,
    write_csv,
)
from dmc6 import ALGOS, TAG, TASKS
from learning import run_dir_of, run_status

from gprl.envs import make_env
from gprl.trainer import load_run

NUM_ENVS = 8


def visited_observations(algo, state, env_id: str, steps: int, seed: int) -> np.ndarray:
    acting = algo.acting_params(state)
    act = jax.jit(algo.act_deterministic)
    observations = []
    with make_env(env_id, NUM_ENVS, seed) as env:
        obs = env.reset(seed)
        for _ in range(steps):
            observations.append(obs)
            obs = env.step(np.asarray(act(acting, jnp.asarray(obs)))).obs
    return np.concatenate(observations)


def action_spread(algo, state, observations: np.ndarray, samples: int, seed: int) -> float:
    acting = algo.acting_params(state)
    sample = jax.jit(jax.vmap(lambda key: algo.act(acting, jnp.asarray(observations), key)[0]))
    actions = np.asarray(sample(jax.random.split(jax.random.PRNGKey(seed), samples)))
    # (samples, observations, dims); clipped as the envs clip a Gaussian policy's draws
    return float(np.clip(actions, -1.0, 1.0).std(axis=0).mean())


def cell_of(row: dict) -> tuple:
    return row["task"], row["algo"], int(row["seed"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--algos", nargs="+", default=ALGOS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--dmc-steps", type=int, default=1_000_000)
    parser.add_argument("--num-envs", type=int, default=16)
    args = parser.parse_args()
    rows = []
    for task in args.tasks:
        for algo_name in args.algos:
            for seed in args.seeds:
                run_dir = run_dir_of(task, algo_name, seed, args.dmc_steps, TAG)
                status = run_status(run_dir, algo_name, task, args.dmc_steps, args.num_envs)
                if status != "finished":
                    continue
                algo, trained, _ = load_run(run_dir)
                initial = algo.init(jax.random.PRNGKey(seed))
                observations = visited_observations(algo, trained, task, args.steps, seed)
                row = {
                    "task": task,
                    "algo": algo_name,
                    "seed": seed,
                    "observations": len(observations),
                    "samples_per_observation": args.samples,
                    "initial_action_spread": action_spread(
                        algo, initial, observations, args.samples, seed
                    ),
                    "final_action_spread": action_spread(
                        algo, trained, observations, args.samples, seed
                    ),
                }
                print(row, flush=True)
                rows.append(row)
    provenance = {
        "machine": machine(),
        "command": command(),
        "commit": gprl_commit(),
        "load": load_average(),
        "date": now(),
    }
    rows = [row | provenance for row in rows]
    # Committed rows of cells not measured now stay (their DMC-6 runs may be gone).
    measured = {cell_of(row) for row in rows}
    text = {"task", "algo", "machine", "command", "commit", "date"}
    committed = read_rows(RESULTS_DIR / "exploration.csv", text)
    kept = [row for row in committed if cell_of(row) not in measured]
    write_csv(RESULTS_DIR / "exploration.csv", kept + rows)
    for task in args.tasks:
        for algo_name in args.algos:
            found = [r for r in rows if r["task"] == task and r["algo"] == algo_name]
            if found:
                initial = np.mean([r["initial_action_spread"] for r in found])
                final = np.mean([r["final_action_spread"] for r in found])
                print(f"{task} {algo_name}: spread {initial:.3f} at start, {final:.3f} at end")


if __name__ == "__main__":
    main()
