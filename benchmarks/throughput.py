"""Training-loop throughput of PPO and GoRL next to raw env stepping, in one process.

For each env the script times, interleaved over --repeats rounds (median reported):
  raw                 VecEnv.step with uniform random actions in [-1, 1]
  ppo                 PPO.iterate (rollout + update), default PPOConfig
  gorl_stage0         GoRL.iterate in stage 0 (identity decoder), default GoRLConfig
  gorl_decoder_stage  GoRL.iterate in stage 1 (the flow decoder runs at every env step)
and once each: the decoder refit (collection + fit) and one trainer-style evaluation.
Each measurement has its own VecEnv, so episodes run on undisturbed between rounds.

Per 1k env steps: rollout (env stepping + acting), update (iterate minus rollout), acting
overhead (rollout minus the raw env time of the same round), and env_in_loop (time inside
VecEnv.step during the loop's own rollouts: policy actions cost the physics differently from
random ones, so rollout minus env_in_loop is the exact cost of the policy and collector).

    python benchmarks/throughput.py [--envs Hopper-v5] [--num-envs 16] [--iterations 3]
"""

import argparse
import statistics
import time

import jax
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

from gprl.algos import PPO, GoRL, GoRLConfig, PPOConfig
from gprl.envs import make_env
from gprl.evaluation import evaluate
from gprl.rl_math import normalizer_arrays, running_stats_init
from gprl.trainer import enable_compilation_cache

DEFAULT_ENVS = ("dm_control/hopper-stand-v0", "Hopper-v5")
TARGET_SHARE = 0.7
COLUMNS = [
    "env",
    "num_envs",
    "what",
    "steps_per_second",
    "share_of_raw",
    "rollout_s_per_1k_steps",
    "update_s_per_1k_steps",
    "acting_overhead_s_per_1k_steps",
    "env_in_loop_s_per_1k_steps",
    "seconds",
]


class TimedCollector:
    """Passes rollouts through to the real collector and adds up the time spent in them."""

    def __init__(self, collector):
        self.collector = collector
        self.seconds = 0.0

    def reset(self, seed: int) -> None:
        self.collector.reset(seed)

    def rollout(self, *args, **kwargs):
        start = time.perf_counter()
        result = self.collector.rollout(*args, **kwargs)
        # The stacked policy outputs are dispatched asynchronously; charge them to the rollout.
        jax.block_until_ready(result[0])
        self.seconds += time.perf_counter() - start
        return result


class TimedEnv:
    """A VecEnv that adds up the time spent in step, so the rollout can be split exactly."""

    def __init__(self, env):
        self.env = env
        self.seconds = 0.0

    def step(self, action):
        start = time.perf_counter()
        result = self.env.step(action)
        self.seconds += time.perf_counter() - start
        return result

    def __getattr__(self, name):
        return getattr(self.env, name)


class Loop:
    """One algorithm's training loop (the trainer's iterate calls) on its own envs."""

    def __init__(self, algo, env, seed: int):
        self.algo = algo
        self.env = TimedEnv(env)
        self.collector = TimedCollector(algo.make_collector(self.env))
        self.collector.reset(seed)
        self.state = algo.init_state(jax.random.PRNGKey(seed))

    def run(self, iterations: int) -> dict:
        """Run `iterations` iterations; returns env steps and seconds: total, rollout, env.step."""
        stage = int(self.state.get("stage", 0))
        self.collector.seconds = self.env.seconds = 0.0
        steps = 0
        start = time.perf_counter()
        for _ in range(iterations):
            self.state, _, _, count = self.algo.iterate(self.state, self.collector)
            steps += count
        seconds = time.perf_counter() - start
        if int(self.state.get("stage", 0)) != stage:
            raise RuntimeError("a GoRL stage ended inside a timed block; raise its budget")
        return {
            "steps": steps,
            "seconds": seconds,
            "rollout_s": self.collector.seconds,
            "env_s": self.env.seconds,
        }


def time_raw(env, actions: np.ndarray) -> tuple[int, float]:
    start = time.perf_counter()
    for action in actions:
        env.step(action)
    return actions.shape[0] * env.num_envs, time.perf_counter() - start


def gorl_with_short_stage0(spec, num_envs: int, stage1_iterations: int) -> GoRL:
    """Default GoRL with the smallest budget whose stage 1 lasts `stage1_iterations`.

    Stage 0 is as long as stage 1 under the default stage weights, so reaching stage 1 costs
    that many extra iterations, but the per-iteration cost is that of any default-config run.
    """
    config = GoRLConfig()
    step = config.ppo.rollout_steps * num_envs
    total = step
    while True:
        try:
            algo = GoRL(config, spec, num_envs, total)
            if algo.stage_iterations[1] >= stage1_iterations:
                return algo
        except ValueError:  # some stage still has no iteration at this budget
            pass
        total += step


def time_refit(loop: Loop) -> dict:
    """Drive a GoRL loop to the end of stage 0 and time the refit that starts stage 1."""
    algo = loop.algo
    while int(loop.state["stage_iteration"]) < algo.stage_iterations[0]:
        loop.run(1)
    # Compile the decoder fit for this dataset size first, so the timed refit is warm.
    obs_dim, action_dim = algo.spec.obs_dim, algo.spec.action_dim
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(algo.collect_steps, obs_dim)).astype(np.float32)
    targets = rng.normal(size=(algo.collect_steps, action_dim)).astype(np.float32)
    norm = normalizer_arrays(running_stats_init((obs_dim,)))
    start = time.perf_counter()
    algo.fit_decoder(loop.state["decoder"], obs, targets, norm, jax.random.PRNGKey(0))
    cold_fit = time.perf_counter() - start
    loop.collector.seconds = 0.0
    start = time.perf_counter()
    loop.state, info, _, _ = algo.iterate(loop.state, loop.collector)
    total = time.perf_counter() - start
    if int(loop.state["stage"]) != 1:
        raise RuntimeError("expected the refit to start GoRL stage 1")
    return {
        "collect_steps": algo.collect_steps,
        "collect_s": loop.collector.seconds,
        "fit_s": total - loop.collector.seconds,
        "cold_fit_s": cold_fit,
        "decoder_val_loss": info.get("decoder_val_loss"),
    }


def time_evaluation(algo, state, env_id: str, episodes: int, seed: int) -> tuple[int, float]:
    """One evaluation as the trainer runs it (deterministic policy, one episode per env)."""
    with make_env(env_id, episodes, seed) as env:
        action_fn, acting = algo.eval_action_fn(state), algo.acting_params(state)
        evaluate(action_fn, acting, env, seed)  # compiles the evaluation policy
        start = time.perf_counter()
        result = evaluate(action_fn, acting, env, seed)
        seconds = time.perf_counter() - start
    return round(result["eval_length"] * episodes), seconds


def benchmark_env(env_id: str, args) -> list[dict]:
    n, seed = args.num_envs, args.seed
    load_before = load_average()
    envs = {name: make_env(env_id, n, seed) for name in ("raw", "ppo", "gorl0", "gorl1")}
    spec = envs["raw"].spec
    timed = 1 + args.repeats * args.iterations  # one warm-up iteration, then the timed ones
    gorl0 = GoRL(GoRLConfig(), spec, n, args.gorl_total_steps)
    if gorl0.stage_iterations[0] < timed:
        raise SystemExit(f"--gorl-total-steps is too small for {timed} stage-0 iterations")
    loops = {
        "ppo": Loop(PPO(PPOConfig(), spec, n, args.gorl_total_steps), envs["ppo"], seed),
        "gorl_stage0": Loop(gorl0, envs["gorl0"], seed),
        "gorl_decoder_stage": Loop(gorl_with_short_stage0(spec, n, timed), envs["gorl1"], seed),
    }
    rng = np.random.default_rng(seed)
    raw_steps = args.raw_steps or args.iterations * PPOConfig().rollout_steps

    def random_actions(steps: int) -> np.ndarray:
        return rng.uniform(-1.0, 1.0, (steps, n, spec.action_dim)).astype(np.float32)

    print(f"[{env_id}] warming up (compilation, GoRL stage 0 -> 1 refit)", flush=True)
    time_raw(envs["raw"], random_actions(50))
    loops["ppo"].run(1)
    loops["gorl_stage0"].run(1)
    refit = time_refit(loops["gorl_decoder_stage"])
    loops["gorl_decoder_stage"].run(1)

    samples = {name: [] for name in ["raw", *loops]}
    for round_index in range(args.repeats):
        samples["raw"].append(time_raw(envs["raw"], random_actions(raw_steps)))
        for name, loop in loops.items():
            samples[name].append(loop.run(args.iterations))
        print(f"[{env_id}] round {round_index + 1}/{args.repeats} done", flush=True)

    eval_steps, eval_s = time_evaluation(
        loops["ppo"].algo, loops["ppo"].state, env_id, args.eval_episodes, seed
    )
    for env in envs.values():
        env.close()
    load_after = load_average()

    raw_sps = [steps / seconds for steps, seconds in samples["raw"]]
    rows = [
        {
            "what": "raw",
            "steps_per_second": statistics.median(raw_sps),
            "share_of_raw": 1.0,
            "env_in_loop_s_per_1k_steps": statistics.median(1000 / s for s in raw_sps),
            "notes": "VecEnv.step with random actions only",
        }
    ]
    for name in loops:
        per_1k = {key: [] for key in ["sps", "share", "rollout", "update", "overhead", "env"]}
        # Pair every loop block with the raw block of the same round, so drift cancels.
        for block, raw in zip(samples[name], raw_sps, strict=True):
            scale = 1000 / block["steps"]
            per_1k["sps"].append(block["steps"] / block["seconds"])
            per_1k["share"].append(block["steps"] / block["seconds"] / raw)
            per_1k["rollout"].append(scale * block["rollout_s"])
            per_1k["update"].append(scale * (block["seconds"] - block["rollout_s"]))
            per_1k["overhead"].append(scale * block["rollout_s"] - 1000 / raw)
            per_1k["env"].append(scale * block["env_s"])
        median = {key: statistics.median(values) for key, values in per_1k.items()}
        steps_per_iteration = samples[name][0]["steps"] // args.iterations
        rows.append(
            {
                "what": name,
                "steps_per_second": median["sps"],
                "share_of_raw": median["share"],
                "rollout_s_per_1k_steps": median["rollout"],
                "update_s_per_1k_steps": median["update"],
                "acting_overhead_s_per_1k_steps": median["overhead"],
                "env_in_loop_s_per_1k_steps": median["env"],
                "notes": f"{args.iterations} iterations x {steps_per_iteration} steps per round",
            }
        )
    collect_steps, collect_s, fit_s = refit["collect_steps"], refit["collect_s"], refit["fit_s"]
    rows.append(
        {
            "what": "gorl_decoder_refit",
            "seconds": collect_s + fit_s,
            "rollout_s_per_1k_steps": 1000 * collect_s / collect_steps,
            "notes": f"once: {collect_steps} steps collected in {collect_s:.2f} s "
            f"+ decoder fit {fit_s:.2f} s (first fit with compilation "
            f"{refit['cold_fit_s']:.2f} s); budget of this GoRL "
            f"{loops['gorl_decoder_stage'].algo.stage_iterations[0]} stage-0 iterations",
        }
    )
    rows.append(
        {
            "what": f"eval_{args.eval_episodes}_episodes",
            "steps_per_second": eval_steps / eval_s,
            "seconds": eval_s,
            "notes": f"once: one trainer evaluation = {eval_steps} env steps in {eval_s:.2f} s "
            "(PPO at init; trainer default: every 25k steps)",
        }
    )
    for row in rows:
        row |= {"env": env_id, "num_envs": n, "load_before": load_before, "load_after": load_after}
    return rows


def plot(rows: list[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = ["raw", "ppo", "gorl_stage0", "gorl_decoder_stage"]
    envs = list(dict.fromkeys(row["env"] for row in rows))
    width = 0.8 / len(kinds)
    fig, ax = plt.subplots(figsize=(3.5 + 2.5 * len(envs), 4.5))
    for k, kind in enumerate(kinds):
        values = [next(r for r in rows if r["env"] == e and r["what"] == kind) for e in envs]
        xs = np.arange(len(envs)) + (k - (len(kinds) - 1) / 2) * width
        bars = ax.bar(xs, [v["steps_per_second"] for v in values], width, label=kind)
        for bar, value in zip(bars, values, strict=True):
            ax.annotate(
                f"{value['share_of_raw']:.0%}",
                (bar.get_x() + width / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_xticks(np.arange(len(envs)), envs)
    ax.set_ylabel("env steps per second")
    ax.set_title(f"Training-loop throughput, {rows[0]['num_envs']} envs (label: share of raw)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", nargs="+", default=list(DEFAULT_ENVS))
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument(
        "--iterations", type=int, default=3, help="training iterations per timed block"
    )
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument(
        "--raw-steps",
        type=int,
        default=0,
        help="vector steps per raw block (default: as many as a loop block)",
    )
    parser.add_argument(
        "--gorl-total-steps",
        type=int,
        default=1_000_000,
        help="budget given to PPO and the stage-0 GoRL (sets LR annealing only)",
    )
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    enable_compilation_cache()
    started = now()
    gprl_commit()  # the code imported now is the code measured
    rows = []
    for env_id in args.envs:
        rows += benchmark_env(env_id, args)
    provenance = {
        "machine": machine(),
        "date": started,
        "command": command(),
        "gprl_commit": gprl_commit(),
    }
    rows = [row | provenance for row in rows]
    order = [
        *COLUMNS,
        "notes",
        "load_before",
        "load_after",
        "machine",
        "date",
        "command",
        "gprl_commit",
    ]
    rows = [{key: row.get(key) for key in order} for row in rows]

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    write_csv(RESULTS_DIR / "throughput.csv", rows)
    plot([r for r in rows if r["share_of_raw"] is not None], RESULTS_DIR / "throughput.png")
    print()
    print(markdown_table(rows, [*COLUMNS, "load_before", "load_after"]))
    print()
    for row in rows:
        print(f"- {row['env']} {row['what']}: {row['notes']}")
    print(f"\nmachine: {provenance['machine']}; date: {started}; command: {provenance['command']}")
    for row in rows:
        if row["what"] in ("ppo", "gorl_stage0", "gorl_decoder_stage"):
            verdict = "reached" if row["share_of_raw"] >= TARGET_SHARE else "NOT reached"
            print(
                f"target >= {TARGET_SHARE:.0%} of raw: {verdict} for {row['what']} on "
                f"{row['env']} ({row['share_of_raw']:.1%})"
            )
    print(f"wrote {RESULTS_DIR / 'throughput.csv'} and {RESULTS_DIR / 'throughput.png'}")


if __name__ == "__main__":
    main()
