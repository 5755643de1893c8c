"""Fine-tuning chunked policies trained from demonstrations on sparse-reward Meta-World tasks:
success rate before and after RL, for every fine-tuner, Gaussian BC -> PPO and PPO from scratch.

Per task and seed s:
1. Starts: the imitation benchmark's behaviour-cloning runs (benchmarks/imitation.py) from
   --demos scripted demonstrations, chunks of 4 executed whole, seed s: the chunked flow
   (ReinFlow, Flow-SDE, GoRL, DSRL), the chunked DDPM (DPPO) and the chunked Gaussian (PPO after
   BC). A missing start is trained with the imitation benchmark's settings.
2. Cells: one `gprl train` process each, as a user runs it, with `--sparse-reward
   --end-on-success` (reward 1 at the first success, which ends the episode),
   --eval-episodes deterministic evaluation episodes every --eval-every env steps, seed s,
   each method's defaults otherwise. On-policy methods: --onpolicy-steps env steps on 16 envs;
   DSRL (off-policy, slower per env step) --offpolicy-steps on 4 envs; PPO from scratch on the
   same sparse reward at the on-policy budget, single actions.
3. Off-policy methods on the demonstrations (issue 21's sample-efficiency comparison), at the
   off-policy budget on 4 envs, evaluated --offpolicy-evaluations times (DSRL keeps
   --evaluations, as its committed cells ran). Each gets the 5-demonstration dataset its task's
   BC starts were cloned from (--dataset, relabelled by --sparse-reward --end-on-success) and
   its paper's settings for fine-tuning from demonstrations, each method's CPU defaults (network
   widths, update-to-data 1 per decision) otherwise:
   - residual: --init the chunked flow start (frozen; corrected per decision of 4 actions); the
     reference's RLPD-style 50/50 batches from demonstrations and online data.
   - expo: no --init: its BC flow learns from the demonstrations, --offline-updates first
     (default 5000: the BC starts' imitation steps), then online with RLPD's 50/50 batches.
   - expo-bc: EXPO on the chunked flow start (--init; the paper's base is pretrained by
     imitation too), which goes on imitating the buffer's chunks; the same offline phase (the
     critics and the edit policy learn on the demonstrations) and 50/50 batches.
   - expo-bc-rlpd: expo-bc with the reference's critics: 10 of them, the TD target the minimum
     of 2 drawn at random for each gradient step (RLPD's), the edit climbing their mean, and no
     offline phase (the reference's robot scripts pre-train only the base, --pretrain_q=False;
     the base here is pretrained already).
   - qc, qc-fql, fql: offline-to-online as the references (--offline-updates where they run 1M;
     then uniform batches over demonstrations and online data); QC chunks of h = 5 (the
     reference's; 500-step episodes are 100 chunks), QC-FQL alpha 100 (the reference's), FQL
     alpha 100 (the Q-chunking paper's FQL baseline, next to QC-FQL).
   - qc-wide: QC with the BC starts' flow network and Adam step (3 x 256 SiLU, 1e-3 for every
     network) in place of its CPU defaults (2 x 64 ReLU, 3e-4). Fitted alone to pick-place's
     chunks for 5000 steps, the defaults' flow succeeded 0.04 of the time and the starts' 0.46.
   - qc-wide-floor: qc-wide with its TD target floored at the discounted return each
     transition's episode went on to receive until its success (--qc.return-floor; MCAC's
     lower bound): a success reached once lifts the values of the chunks that led to it at
     once, where bootstrapping carries it back one chunk per target update.
   - qc-wide-filtered: qc-wide whose BC flow imitates only the demonstrations and the online
     episodes that succeeded (--qc.imitate-returns-above 0): the reference's flow imitates the
     whole buffer, mostly failures online; qc-wide-floor's flow, sampled alone at its end,
     succeeded 0.00 of the time (its critics' best of 32 samples 0.24-0.32).
   - qc-wide-filtered-utd5: qc-wide-filtered at the reference's update-to-data ratio, one
     gradient step per env step (--qc.update-to-data 5, per decision of 5 env steps), where
     gprl's default takes one per decision; ~5x the wall time of qc-wide-filtered on 2 cores.
   - qc-wide-filtered-critic: qc-wide-filtered with critics of the flow's width (3 x 256 SiLU
     for QC's CPU default 2 x 64 ReLU; the reference's are 4 x 512 GELU): at its end,
     qc-wide-filtered solved 1 of the 5 placements where the start's samples sometimes succeed,
     among 32 samples per decision ranked by its critics; ~1.3x its gradient step's time.
   - qc-init: QC on the chunked flow start (--init; chunks of 4, the start's, for QC's 5),
     imitating as qc-wide-filtered does, every network at Adam 1e-3 (the start's step): QC's
     own flow, fitted 5,000 steps offline, starts at 0.24-0.34 where the start is at 0.54-0.62,
     and QC's online phase spent its env steps winning that back.
   - qc-init-critic: qc-init with qc-wide-filtered-critic's critics (3 x 256 SiLU): the two
     levers together, the start's samples ranked by the wider critics.
   - qc-init-critic-online: qc-init-critic without the offline phase. qc-init-critic's first
     evaluation (untrained critics: the best of 32 of the start's samples by chance) succeeded
     0.48, then 0.04 after 240 offline updates and 0.10 after 5,040: on five demonstrations
     that all succeed (Q ~ 1 on every transition) the critics learn to prefer chunks no
     demonstration holds; online failures taught them back (0.26 at 5.75k, 0.48 at 15.3k).
   - pa-rl: --init the chunked flow start; --offline-updates on the demonstrations (the paper's
     offline phase, Cal-QL critics there), then Cal-QL's 50/50 batches online.
   expo, qc, qc-fql and fql standardise observations with the demonstrations' statistics (their
   default since gprl 0a0f12c; their pick-place seed-0 cells from before it, on raw
   observations, started at 0.00-0.04 and were run again).
4. On-policy cells with other settings than a method's defaults (SETTINGS), from the same starts.
   Every DPPO cell, `dppo` included, sets the defaults DPPO had when it ran
   (DPPO_EARLIER_DEFAULTS) with its changes; DPPO's defaults have since become dppo-unclipped's
   but gamma (gprl's 0.99, where dppo-ref-batch and the cells built on it set the reference's
   0.999 for manipulation):
   - dppo-ref-batch: DPPO with the reference's robomimic settings where they differ from gprl's
     defaults in kind: gamma 0.999, 10 epochs of few large minibatches (4 per rollout of 2048
     decisions, where the reference takes 2 of 7500 from 15000), Adam 1e-4 (the reference's
     actor step; gprl's one step serves actor and critic).
   - dppo-wide-critic: DPPO with a value network of the reference's size (3 x 256; SiLU where the
     reference uses Mish) in place of gprl's 2 x 64 tanh, every other setting gprl's.
   - dppo-wide-clip: DPPO with clip ranges 10 times the reference's (0.01 on the first trained
     step growing to 0.1 on the last): with the reference's, 50-75% of the samples are clipped
     in every update of the default cells, so the clip, not the step size, sets how far an
     update moves the policy.
   - dppo-explore: DPPO with the sampling std floor doubled (0.2), to reach placements the
     start never solves.
   - dppo-reference: dppo-ref-batch and dppo-wide-critic together, as the reference runs them.
   - dppo-wide-critic-warmup: dppo-wide-critic whose first 5 updates (41k env steps) train the
     critic alone, the policy held at the start: the early updates otherwise follow a random
     critic's advantages, and several cells lose most of their start's success in the first
     40k-170k env steps before climbing back.
   - dppo-reference-lr: dppo-reference with the reference's two step sizes, held constant as its
     schedules hold them: Adam 1e-4 for the policy, 1e-3 for the critic (gprl's default anneals
     one step size for both to zero).
   - dppo-wide-critic-lr: dppo-wide-critic with the critic's Adam step at the reference's 1e-3,
     the policy's at gprl's default (3e-4, both annealed in proportion).
   - dppo-frequent-updates: dppo-reference-lr updating every 32 decisions per env (512 in all)
     instead of 128, in one minibatch of 512 (dppo-reference-lr's size): 4 times the updates,
     the same gradient steps per env step. Each update's movement is bounded by the clip (30-45%
     of the samples clipped in the dppo-reference-lr cells), so more updates can move the policy
     further; the reference makes 151 updates, gprl's 500k env steps 61.
   - dppo-unclipped: dppo-frequent-updates without the clip on the gradient's global norm
     (gprl's 0.5 over policy and critic together; the reference clips neither, and the
     dppo-frequent-updates cells' norms had a median of 1.2-1.8 before the clip).
   - dppo-faster-policy: dppo-unclipped with the policy's Adam step 3e-4 (3 times the
     reference's): every change that let updates move the policy further helped so far, and
     the dppo-unclipped cells were still climbing ~0.1 per 100k env steps at the end.
"Before" is a cell's evaluation at env step 0 (the BC policy executed as fine-tuning executes
it; PPO from scratch: its initial policy; a method with offline updates: after them), "after" its
final one; "env steps to 0.8 success" the env step of its first evaluation at or above 0.8
(blank if none), resolved only to its evaluation interval. Throughput is the cell's env
steps over its process's wall time, next to one Meta-World env stepped in a plain loop in this
process (the raw stepping the share is taken of, kept in the cell's record; cells recorded
before records kept it take the first speeds in manipulation_raw.json, which later runs leave
as they are; a cell recorded on another machine, its record's `ran_on` saying where, has no
share).

Run directories go to benchmarks/runs/manipulation/ (git-ignored; --runs-dir); an interrupted
cell resumes from its last checkpoint there (one at every evaluation). A finished cell is
recorded in benchmarks/results/manipulation_runs/ (config, benchmark info and its evaluation
rows; committed) and skipped from then on, also in a fresh clone, so the grid finishes across
sessions; cells reported before records existed stay as their manipulation.csv rows. Results
(--results-dir): manipulation.csv (a row per cell), manipulation_summary.csv, manipulation.png,
manipulation_intervals.csv (rliable IQM and mean of the final success rate with 95% intervals,
over every cell) and `gprl report` over the recorded cells in manipulation_report/. A report
alone (--report-only) keeps the raw stepping speeds recorded with the cells.

    python benchmarks/manipulation.py --tasks pick-place-v3 --seeds 0
    python benchmarks/manipulation.py --report-only
"""

import argparse
import csv
import json
import os
import shlex
from pathlib import Path

import numpy as np
from common import (
    BENCH_DIR,
    DONE_FILE,
    RESULTS_DIR,
    command,
    gprl,
    interval_rows,
    markdown_table,
    now,
    print_start,
    read_rows,
    train_recorded,
    write_csv,
)
from imitation import (
    DEFAULT_STEPS,
    TASKS,
    demonstrations,
    fit_and_evaluate,
    raw_steps_per_second,
    run_dir_of,
)
from imitation import (
    ROOT as IMITATION_ROOT,
)

from gprl.pretrain import POLICIES
from gprl.pretrained import PretrainConfig

ROOT = BENCH_DIR / "runs" / "manipulation"
RECORDS = "manipulation_runs"
"""Under --results-dir: each finished cell's record (`common.record_cell`), committed."""
METHODS = {
    # cell name: (gprl algorithm, the BC start's kind, or None for no start)
    "reinflow": ("reinflow", "flow"),
    "dppo": ("dppo", "ddpm"),
    "flow-sde": ("flow-sde", "flow"),
    "gorl": ("gorl", "flow"),
    "dsrl": ("dsrl", "flow"),
    "ppo-bc": ("ppo", "gaussian"),
    "ppo-scratch": ("ppo", None),
    "residual": ("residual", "flow"),
    "expo": ("expo", None),
    "expo-bc": ("expo", "flow"),
    "expo-bc-rlpd": ("expo", "flow"),
    "qc": ("qc", None),
    "qc-wide": ("qc", None),
    "qc-wide-floor": ("qc", None),
    "qc-wide-filtered": ("qc", None),
    "qc-wide-filtered-utd5": ("qc", None),
    "qc-wide-filtered-critic": ("qc", None),
    "qc-init": ("qc", "flow"),
    "qc-init-critic": ("qc", "flow"),
    "qc-init-critic-online": ("qc", "flow"),
    "qc-fql": ("qc-fql", None),
    "fql": ("fql", None),
    "pa-rl": ("pa-rl", "flow"),
    "dppo-ref-batch": ("dppo", "ddpm"),
    "dppo-wide-critic": ("dppo", "ddpm"),
    "dppo-wide-clip": ("dppo", "ddpm"),
    "dppo-explore": ("dppo", "ddpm"),
    "dppo-reference": ("dppo", "ddpm"),
    "dppo-wide-critic-warmup": ("dppo", "ddpm"),
    "dppo-reference-lr": ("dppo", "ddpm"),
    "dppo-wide-critic-lr": ("dppo", "ddpm"),
    "dppo-frequent-updates": ("dppo", "ddpm"),
    "dppo-unclipped": ("dppo", "ddpm"),
    "dppo-faster-policy": ("dppo", "ddpm"),
}


def bc_start_flow_options(algorithm: str) -> list[str]:
    """Options giving an algorithm's BC flow the flow network and Adam step of the BC starts
    (`gprl pretrain flow`'s defaults, which the imitation benchmark trains them with)."""
    flow, step = POLICIES["flow"].default_config, PretrainConfig().learning_rate
    return [
        f"--{algorithm}.flow.hidden", *map(str, flow.hidden),
        f"--{algorithm}.flow.activation", flow.activation,
        f"--{algorithm}.learning-rate", str(step),
    ]  # fmt: skip


EXPO_REFERENCE_CRITICS = [
    "--expo.num-critics", "10", "--expo.target-subset", "2", "--expo.q-aggregation", "mean",
]  # fmt: skip
"""EXPO's critics as its reference's: RLPD's 10, the TD target the minimum of 2 of them."""
QC_WIDE_CRITICS = ["--qc.critic-hidden", "256", "256", "256", "--qc.activation", "silu"]
"""QC's critics at the BC flow's width, for its CPU default 2 x 64 ReLU."""
QC_INIT = [
    *("--qc.chunk-length", "4", "--qc.learning-rate", "1e-3"),
    *("--qc.imitate-returns-above", "0"),
]
"""QC on the chunked flow start (chunks of 4, the start's, at its Adam step), filtered."""
# Off-policy methods on the demonstrations: their options beside --dataset (see the docstring).
ON_DEMONSTRATIONS = {
    "residual": ["--residual.offline-fraction", "0.5"],
    "expo": ["--expo.offline-fraction", "0.5"],
    "expo-bc": ["--expo.offline-fraction", "0.5"],
    "expo-bc-rlpd": ["--expo.offline-fraction", "0.5", *EXPO_REFERENCE_CRITICS],
    "qc": [],
    "qc-wide": bc_start_flow_options("qc"),
    "qc-wide-floor": [*bc_start_flow_options("qc"), "--qc.return-floor"],
    "qc-wide-filtered": [*bc_start_flow_options("qc"), "--qc.imitate-returns-above", "0"],
    "qc-wide-filtered-utd5": [
        *bc_start_flow_options("qc"),
        *("--qc.imitate-returns-above", "0", "--qc.update-to-data", "5"),
    ],
    "qc-wide-filtered-critic": [
        *bc_start_flow_options("qc"),
        *("--qc.imitate-returns-above", "0", *QC_WIDE_CRITICS),
    ],
    "qc-init": QC_INIT,
    "qc-init-critic": [*QC_INIT, *QC_WIDE_CRITICS],
    "qc-init-critic-online": [*QC_INIT, *QC_WIDE_CRITICS],
    "qc-fql": [],
    "fql": ["--fql.alpha", "100"],
    "pa-rl": ["--pa-rl.offline-fraction", "0.5"],
}
DPPO_EARLIER_DEFAULTS = {
    "rollout_steps": 128, "num_minibatches": 32, "num_epochs": 4, "learning_rate": 3e-4,
    "anneal_lr": True, "critic_learning_rate": None, "critic_hidden": (64, 64),
    "critic_activation": "tanh", "max_grad_norm": 0.5,
}  # fmt: skip
"""DPPO's defaults until they became dppo-unclipped's (but gamma): every DPPO cell sets them,
so that each keeps the meaning its description gives it."""
DPPO_CHANGES = {
    "dppo": {},
    "dppo-ref-batch": {
        "gamma": 0.999,
        "num_epochs": 10,
        "num_minibatches": 4,
        "learning_rate": 1e-4,
    },
    "dppo-wide-critic": {"critic_hidden": (256, 256, 256), "critic_activation": "silu"},
    "dppo-wide-clip": {"clip_eps": 0.1, "first_step_clip_eps": 0.01},
    "dppo-explore": {"min_sampling_std": 0.2},
}
"""Each DPPO cell's fields changed from DPPO_EARLIER_DEFAULTS (see the docstring)."""
DPPO_CHANGES["dppo-reference"] = DPPO_CHANGES["dppo-ref-batch"] | DPPO_CHANGES["dppo-wide-critic"]
DPPO_CHANGES["dppo-wide-critic-warmup"] = DPPO_CHANGES["dppo-wide-critic"] | {
    "critic_warmup_iterations": 5
}
DPPO_CHANGES["dppo-reference-lr"] = DPPO_CHANGES["dppo-reference"] | {
    "critic_learning_rate": 1e-3, "anneal_lr": False
}  # fmt: skip
DPPO_CHANGES["dppo-wide-critic-lr"] = DPPO_CHANGES["dppo-wide-critic"] | {
    "critic_learning_rate": 1e-3
}
DPPO_CHANGES["dppo-frequent-updates"] = DPPO_CHANGES["dppo-reference-lr"] | {
    "rollout_steps": 32, "num_minibatches": 1
}  # fmt: skip
DPPO_CHANGES["dppo-unclipped"] = DPPO_CHANGES["dppo-frequent-updates"] | {
    "max_grad_norm": float("inf")
}
DPPO_CHANGES["dppo-faster-policy"] = DPPO_CHANGES["dppo-unclipped"] | {"learning_rate": 3e-4}


def dppo_options(changes: dict) -> list[str]:
    """`gprl train dppo` options setting every field of DPPO_EARLIER_DEFAULTS and of changes,
    changes winning."""
    options = []
    for name, value in (DPPO_EARLIER_DEFAULTS | changes).items():
        flag = "--dppo." + name.replace("_", "-")
        if isinstance(value, bool):
            options.append(flag if value else flag.replace("--dppo.", "--dppo.no-"))
        elif isinstance(value, tuple):
            options += [flag, *map(str, value)]
        else:
            options += [flag, str(value)]
    return options


# On-policy cells' options beside the method's defaults (see the docstring).
SETTINGS = {method: dppo_options(changes) for method, changes in DPPO_CHANGES.items()}
OFFLINE_FIRST = {
    "expo", "expo-bc", "qc", "qc-wide", "qc-wide-floor", "qc-wide-filtered",
    "qc-wide-filtered-utd5", "qc-wide-filtered-critic", "qc-init", "qc-init-critic", "qc-fql",
    "fql", "pa-rl",
}  # fmt: skip
"""Methods that learn --offline-updates gradient steps on the demonstrations before acting."""
OFF_POLICY = {"dsrl", *ON_DEMONSTRATIONS}
SUCCESS_THRESHOLD = 0.8
THRESHOLD_COLUMN = "env_steps_to_0.8_success"


def add_start_options(parser) -> None:
    """The options bc_start reads: which demonstrations the starts are cloned from, and the
    evaluation episodes of their runs (and of this benchmark's cells)."""
    parser.add_argument("--demos", type=int, default=5)
    parser.add_argument("--action-noise", type=float, default=0.3)
    parser.add_argument("--eval-episodes", type=int, default=50)


def bc_start(task: str, kind: str, seed: int, args) -> Path:
    """The imitation benchmark's chunked run of this kind, trained if missing."""
    cell = dict(task=task, demos=args.demos, kind=kind, chunking="chunk", seed=seed)
    cell["grad_steps"] = DEFAULT_STEPS
    run_dir = run_dir_of(cell)
    if not (run_dir / "checkpoint").is_dir():
        os.environ["MINARI_DATASETS_PATH"] = str(IMITATION_ROOT / "datasets")
        dataset_id, _ = demonstrations(task, args.demos, args.action_noise)
        settings = argparse.Namespace(steps=DEFAULT_STEPS, eval_episodes=args.eval_episodes)
        fit_and_evaluate(cell, dataset_id, settings)
    return run_dir


def demonstration_dataset(task: str, args) -> str:
    """The id of the dataset the task's BC starts were cloned from (collected if missing); the
    gprl processes this one starts find it through MINARI_DATASETS_PATH."""
    os.environ["MINARI_DATASETS_PATH"] = str(IMITATION_ROOT / "datasets")
    return demonstrations(task, args.demos, args.action_noise)[0]


def cell_command(method: str, task: str, seed: int, run_dir: Path, args) -> list[str]:
    algorithm, start = METHODS[method]
    off_policy = method in OFF_POLICY
    budget = args.offpolicy_steps if off_policy else args.onpolicy_steps
    evaluations = args.offpolicy_evaluations if method in ON_DEMONSTRATIONS else args.evaluations
    options = [
        "train", algorithm, "--env", f"metaworld:{task}", "--sparse-reward", "--end-on-success",
        "--total-steps", str(budget), "--num-envs", "4" if off_policy else "16",
        "--eval-every", str(budget // evaluations), "--eval-episodes",
        str(args.eval_episodes), "--checkpoint-every", str(budget // evaluations), "--seed",
        str(seed), "--out", str(run_dir), "--overwrite", "--no-progress",
    ]  # fmt: skip
    if start is not None:
        options += ["--init", str(bc_start(task, start, seed, args))]
    if method in ON_DEMONSTRATIONS:
        options += ["--dataset", demonstration_dataset(task, args), *ON_DEMONSTRATIONS[method]]
    options += SETTINGS.get(method, [])
    if method in OFFLINE_FIRST:
        options += [f"--{algorithm}.offline-updates", str(args.offline_updates)]
    return options


def shown_command(train: list[str]) -> str:
    """The command as a user would type it, with the dataset folder where it reads one."""
    shown = shlex.join(["gprl", *train])
    if "--dataset" in train:
        shown = f"MINARI_DATASETS_PATH={shlex.quote(os.environ['MINARI_DATASETS_PATH'])} {shown}"
    return shown


def record_of(task: str, method: str, seed: int, results_dir: Path) -> Path:
    return results_dir / RECORDS / task / f"{method}-s{seed}"


def run_cell(method: str, task: str, seed: int, args, legacy: set, raw_speed: float) -> None:
    """Train (or resume) one cell and record it, with the raw stepping measured beside it,
    unless it is recorded already."""
    if (task, method, seed) in legacy:
        return
    run_dir = args.runs_dir / task / f"{method}-s{seed}"
    train_recorded(
        run_dir, record_of(task, method, seed, args.results_dir),
        lambda: cell_command(method, task, seed, run_dir, args), shown_command,
        extra={"raw_steps_per_second": raw_speed},
    )  # fmt: skip


def legacy_rows(results_dir: Path) -> list[dict]:
    """Rows of the committed CSV whose cells ran before cells were recorded (their run
    directories are gone); they are kept as they were reported."""
    text = {"task", "method", "gprl_commit", "train_command", "machine", "reported", "command"}
    rows = read_rows(results_dir / "manipulation.csv", text)
    return [
        r for r in rows
        if not (record_of(r["task"], r["method"], r["seed"], results_dir) / DONE_FILE).exists()
    ]  # fmt: skip


def evaluations(run_dir: Path) -> list[dict]:
    """The metrics.csv rows of a cell's (run directory's or record's) evaluations."""
    with open(run_dir / "metrics.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r["eval_success_rate"]]


def cell_row(run_dir: Path, raw: dict[str, float]) -> dict:
    task = run_dir.parent.name
    method, seed = run_dir.name.rsplit("-s", 1)
    evaluated = evaluations(run_dir)
    info = json.loads((run_dir / DONE_FILE).read_text())
    env_steps = int(evaluated[-1]["env_steps"])
    speed = None if info["resumed"] else env_steps / info["process_seconds"]
    # A cell run elsewhere ("ran_on") has no raw stepping of its machine to be compared with.
    raw_speed = None if "ran_on" in info else info.get("raw_steps_per_second", raw.get(task))
    reached = [r for r in evaluated if float(r["eval_success_rate"]) >= SUCCESS_THRESHOLD]
    # An offline phase evaluates at env step 0 more than once: "before" is after all of it.
    before = [r for r in evaluated if int(r["env_steps"]) == 0] or evaluated[:1]
    return {
        "task": task,
        "method": method,
        "seed": int(seed),
        "env_steps": env_steps,
        "success_before": float(before[-1]["eval_success_rate"]),
        "success_after": float(evaluated[-1]["eval_success_rate"]),
        "best_success": max(float(r["eval_success_rate"]) for r in evaluated),
        THRESHOLD_COLUMN: int(reached[0]["env_steps"]) if reached else None,
        "wall_seconds": None if info["resumed"] else info["process_seconds"],
        "env_steps_per_second": None if speed is None else round(speed, 1),
        "raw_steps_per_second": raw_speed,
        "share_of_raw": None if speed is None or not raw_speed else round(speed / raw_speed, 3),
        "load_before": info["load_before"],
        "gprl_commit": info["gprl_commit"],
        "train_command": info["train_command"],
        "machine": info.get("machine"),
    }


def summarise(rows: list[dict]) -> list[dict]:
    summary = []
    for task in TASKS:
        for method in METHODS:
            cell = [r for r in rows if r["task"] == task and r["method"] == method]
            if not cell:
                continue
            speeds = [r["env_steps_per_second"] for r in cell if r["env_steps_per_second"]]
            shares = [r["share_of_raw"] for r in cell if r["share_of_raw"]]
            walls = [r["wall_seconds"] for r in cell if r["wall_seconds"]]
            to_threshold = [r[THRESHOLD_COLUMN] for r in cell if r[THRESHOLD_COLUMN] is not None]
            summary.append(
                {
                    "task": task,
                    "method": method,
                    "seeds": len(cell),
                    "env_steps": int(np.mean([r["env_steps"] for r in cell])),
                    "success_before": float(np.mean([r["success_before"] for r in cell])),
                    "success_after": float(np.mean([r["success_after"] for r in cell])),
                    "min_after": min(r["success_after"] for r in cell),
                    "max_after": max(r["success_after"] for r in cell),
                    # Median over the seeds that reached it; how many did, beside it.
                    THRESHOLD_COLUMN: float(np.median(to_threshold)) if to_threshold else None,
                    "seeds_reaching_0.8": len(to_threshold),
                    "wall_seconds": float(np.mean(walls)) if walls else None,
                    "env_steps_per_second": float(np.mean(speeds)) if speeds else None,
                    "share_of_raw": float(np.mean(shares)) if shares else None,
                }
            )
    return summary


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in TASKS if any(r["task"] == t for r in summary)]
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        cells = [r for r in summary if r["task"] == task]
        x = np.arange(len(cells))
        ax.bar(x - 0.2, [r["success_before"] for r in cells], 0.4, label="before (BC)")
        after = np.array([r["success_after"] for r in cells])
        spread = [after - [r["min_after"] for r in cells], [r["max_after"] for r in cells] - after]
        ax.bar(x + 0.2, after, 0.4, yerr=spread, capsize=3, label="after RL (bars: min-max)")
        ax.set_xticks(x, [r["method"] for r in cells], rotation=20)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("success rate (deterministic evaluation)")
        ax.set_title(f"Meta-World {task}, sparse reward")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(raw: dict[str, float], results_dir: Path) -> None:
    """Rows from the recorded cells and the legacy ones; the summary, plot, rliable intervals
    over every row's final success, and `gprl report` over the recorded cells."""
    records = sorted((results_dir / RECORDS).glob(f"*/*/{DONE_FILE}"))
    legacy = legacy_rows(results_dir)
    if not records and not legacy:
        print("no cells yet")
        return
    # The raw stepping of cells recorded without their own: a later run's, on whatever machine
    # and load, must not replace it.
    raw_path = results_dir / "manipulation_raw.json"
    known = json.loads(raw_path.read_text()) if raw_path.exists() else {}
    known = raw | known
    raw_path.write_text(json.dumps(known, indent=2, sort_keys=True))
    reported = {"reported": now(), "command": command()}
    rows = [cell_row(path.parent, known) | reported for path in records] + legacy
    rows.sort(key=lambda r: (r["task"], list(METHODS).index(r["method"]), r["seed"]))
    write_csv(results_dir / "manipulation.csv", rows)
    summary = summarise(rows)
    write_csv(results_dir / "manipulation_summary.csv", summary)
    write_csv(results_dir / "manipulation_intervals.csv", intervals(rows))
    plot(summary, results_dir / "manipulation.png")
    if records:
        gprl(
            "report", *(str(path.parent) for path in records), "--metric", "success_rate",
            "--out", str(results_dir / "manipulation_report"),
            "--title", "Fine-tuning on sparse-reward Meta-World, recorded cells "
            "(benchmarks/manipulation.py)",
        )  # fmt: skip
    print(markdown_table(summary, list(summary[0])))


def intervals(rows: list[dict]) -> list[dict]:
    """rliable intervals of the final success rate over tasks and seeds, per method."""
    by_seed = sorted(rows, key=lambda r: r["seed"])
    scores = {
        method: [
            [r["success_after"] for r in by_seed if r["method"] == method and r["task"] == task]
            for task in TASKS
        ]
        for method in METHODS
    }
    return interval_rows(scores, "method")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    add_start_options(parser)
    parser.add_argument("--onpolicy-steps", type=int, default=500_000)
    parser.add_argument("--offpolicy-steps", type=int, default=100_000)
    parser.add_argument("--evaluations", type=int, default=5)
    parser.add_argument(
        "--offpolicy-evaluations",
        type=int,
        default=10,
        help="evaluations of the off-policy cells on the demonstrations (not DSRL's): env steps "
        "to 0.8 success resolve to budget / this; each costs up to eval-episodes x 500 env steps",
    )
    parser.add_argument(
        "--offline-updates",
        type=int,
        default=DEFAULT_STEPS,
        help="gradient steps on the demonstrations before the first env step, of the methods "
        "that learn offline first (default: the BC starts' imitation steps)",
    )
    parser.add_argument("--runs-dir", type=Path, default=ROOT)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    print_start()
    raw = {}
    if not args.report_only:
        # Raw stepping of every task asked for, measured in this run beside its cells; a
        # report alone keeps the speeds recorded beside the cells it reports.
        raw = {task: round(raw_steps_per_second(task), 1) for task in args.tasks}
        legacy = {(r["task"], r["method"], r["seed"]) for r in legacy_rows(args.results_dir)}
        for seed in args.seeds:
            for task in args.tasks:
                for method in args.methods:
                    run_cell(method, task, seed, args, legacy, raw[task])
    report(raw, args.results_dir)


if __name__ == "__main__":
    main()
