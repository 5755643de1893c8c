"""Where an EXPO run's decisions lose success: its base, or its critics' choice among the base's
samples.

For each EXPO run directory of the manipulation benchmark (its final checkpoint):
1. Success over --episodes evaluation episodes (the run's own evaluation draws) of four
   deciders: EXPO's deterministic decision (the best of the base's N fixed-noise samples and
   their mean edits, by the critics), the base at zero noise, one fixed unit-noise base sample
   (a pick that ignores the critics), and the critics' pick among the N base samples alone.
2. The critics' value (mean of the ensemble) at the demonstrations' states, of the demonstrated
   chunk, the base's zero-noise chunk, 8 unit-noise base samples, those samples with N(0, 0.3)
   added, and uniform chunks: whether the critics tell the actions at a state apart.

    python benchmarks/expo_choice.py benchmarks/runs/manipulation/pick-place-v3/expo-bc-s0

Results: expo_choice.csv (a row per run and decider, or run and action set), replaced row by
row. The critics' pick doing worse than the fixed sample is what the manipulation benchmark's
README paragraph on EXPO reports.
"""

import argparse
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from common import RESULTS_DIR, gprl_commit, now, print_start, read_rows, write_csv
from imitation import ROOT as IMITATION_ROOT

from gprl.backends import make_evaluator, open_environments
from gprl.datasets import load_demonstrations
from gprl.initial_policy import chunk_options
from gprl.seeding import eval_seed
from gprl.trainer import load_run, success_options

SAMPLE_SEED = 7
"""Seed of the fixed unit-noise base sample and of the value probe's samples."""
TEXT_COLUMNS = {"run", "measure", "gprl_commit", "measured"}


class Deciders:
    """Decisions of an EXPO run's parts from standardised observations."""

    def __init__(self, algo):
        self.algo = algo

    def _seen(self, acting, obs):
        return self.algo._standardised(acting["obs_norm"], obs)

    def base_at_zero_noise(self, acting, obs):
        obs = self._seen(acting, obs)
        zero = jnp.zeros((*obs.shape[:-1], self.algo.spec.action_dim))
        return self.algo._base(acting["policy"]["flow"], obs, zero)

    def one_base_sample(self, acting, obs):
        obs = self._seen(acting, obs)
        noise = jax.random.normal(jax.random.PRNGKey(SAMPLE_SEED), (self.algo.spec.action_dim,))
        return self.algo._base(
            acting["policy"]["flow"], obs, jnp.broadcast_to(noise, (*obs.shape[:-1], noise.size))
        )

    def critics_pick_among_base_samples(self, acting, obs):
        """The evaluation's N fixed-noise base samples (the first at zero noise), no edits."""
        obs, policy, algo = self._seen(acting, obs), acting["policy"], self.algo
        noise = algo.evaluation_noise(obs.shape[:-1])
        repeated = jnp.broadcast_to(obs[..., None, :], (*noise.shape[:-1], obs.shape[-1]))
        base = algo._base(policy["flow"], repeated, noise)
        best = jnp.argmax(algo._q(policy["critic"], repeated, base), axis=-1)
        return jnp.take_along_axis(base, best[..., None, None], axis=-2)[..., 0, :]


def success_rows(run_dir: Path, algo, state, run, episodes: int) -> list[dict]:
    acting, deciders = algo.acting_params(state), Deciders(algo)
    seed = eval_seed(run.seed)
    rows = []
    for name, decide in [
        ("expo decision", algo.act_deterministic),
        ("base at zero noise", deciders.base_at_zero_noise),
        ("one unit-noise base sample", deciders.one_base_sample),
        ("critics' pick among base samples", deciders.critics_pick_among_base_samples),
    ]:
        options = success_options(run) | chunk_options(run_dir)
        envs = open_environments(run.env, run.env_backend, 1, episodes, seed, seed, **options)
        try:
            result = make_evaluator(envs, decide, seed).evaluate(acting)
        finally:
            envs.close()
        rows.append({"measure": f"success: {name}", "value": result["eval_success_rate"]})
        print(f"  {name:34s} success {result['eval_success_rate']:.2f}")
    return rows


def demonstration_chunks(demos, decision_dim: int):
    """Observations and flat chunks of demonstrated actions (decision_dim values each), one per
    executed chunk of each episode up to its first success (where --end-on-success ends it, so
    the buffer holds nothing after it)."""
    chunk_length = decision_dim // demos.actions.shape[1]
    starts = np.cumsum(np.r_[0, demos.episode_lengths[:-1]])
    obs, chunks = [], []
    for start, length in zip(starts, demos.episode_lengths, strict=True):
        successes = demos.step_successes[start : start + length]
        if successes.any():
            length = int(np.argmax(successes)) + 1
        for t in range(0, length - chunk_length + 1, chunk_length):
            obs.append(demos.obs[start + t])
            chunks.append(demos.actions[start + t : start + t + chunk_length].reshape(-1))
    return jnp.asarray(np.array(obs), jnp.float32), jnp.asarray(np.array(chunks), jnp.float32)


def value_rows(algo, state, run) -> list[dict]:
    os.environ["MINARI_DATASETS_PATH"] = str(IMITATION_ROOT / "datasets")
    obs, chunks = demonstration_chunks(load_demonstrations(run.dataset), algo.spec.action_dim)
    params, seen = state["params"], algo._standardised(state["obs_norm"], obs)
    keys = jax.random.split(jax.random.PRNGKey(SAMPLE_SEED), 8)
    samples = [algo._base(params["flow"], seen, jax.random.normal(k, chunks.shape)) for k in keys]
    noisy = [
        jnp.clip(s + 0.3 * jax.random.normal(jax.random.fold_in(k, 1), s.shape), -1.0, 1.0)
        for s, k in zip(samples, keys, strict=True)
    ]
    uniform = [jax.random.uniform(k, chunks.shape, minval=-1.0, maxval=1.0) for k in keys]
    action_sets = {
        "demonstrated chunk": [chunks],
        "base at zero noise": [algo._base(params["flow"], seen, jnp.zeros_like(chunks))],
        "unit-noise base samples": samples,
        "base samples + N(0, 0.3)": noisy,
        "uniform chunks": uniform,
    }
    rows = []
    for name, sets in action_sets.items():
        q = np.mean([algo.critic.apply(params["critic"], seen, a).mean() for a in sets])
        distance = np.mean([jnp.abs(a - chunks).mean() for a in sets])
        rows.append({"measure": f"Q at demonstrated states: {name}", "value": float(q)})
        print(f"  Q of {name:26s} {q:+.3f}  (mean |a - demonstrated| {distance:.3f})")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument(
        "--episodes", type=int, default=50, help="0: the critics' values only, no episodes"
    )
    args = parser.parse_args()
    print_start()
    path = RESULTS_DIR / "expo_choice.csv"
    rows = {(r["run"], r["measure"]): r for r in read_rows(path, TEXT_COLUMNS)}
    for run_dir in args.runs:
        algo, state, run = load_run(run_dir)
        name = f"{run_dir.parent.name}/{run_dir.name}"
        print(name)
        measures = value_rows(algo, state, run)
        if args.episodes:
            measures += success_rows(run_dir, algo, state, run, args.episodes)
        provenance = {"gprl_commit": gprl_commit(), "measured": now()}
        for row in measures:
            rows[(name, row["measure"])] = {"run": name, **row, **provenance}
        write_csv(path, list(rows.values()))


if __name__ == "__main__":
    main()
