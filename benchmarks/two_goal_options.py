"""Which options make the maximum-entropy methods keep both goals of gprl/TwoGoalPoint-v0.

Every cell (method, critic width, backup samples, warm-up length and hold, alpha floor, seed)
runs, as a user would,

    gprl train METHOD --env gprl/TwoGoalPoint-v0 --total-steps 40000 --num-envs 16 --seed S \
        --METHOD.gamma 0.9 --METHOD.alpha-learning-rate 1e-4 --METHOD.backup-samples K \
        [--METHOD.critic-hidden W W, where W is not the methods' own 64]
        [--METHOD.explore-hold H, where H is above 1] [--maxentdp.alpha-range FLOOR 10]
        [--METHOD.learning-starts N, where N is not the methods' own 5000]

and is then measured as benchmarks/multimodality.py measures: the share of 256 stochastic first
actions at each of 64 reset observations heading for the +x and the -x goal, and (rows since
2026-12-05) the share of 1,000 stochastic episodes ending at each. One row per cell in
results/two_goal_options.csv; a cell already there is skipped, and a run that was stopped
resumes from its checkpoint, so the grid finishes across invocations. The README's "Keeping
modes" reads the table.

    python benchmarks/two_goal_options.py
    python benchmarks/two_goal_options.py --methods dpmd --backups 32 --holds 8 --seeds 2
    python benchmarks/two_goal_options.py --critic-hidden 256 256 --backups 32 --holds 1
    python benchmarks/two_goal_options.py --backups 32 --holds 8 --learning-starts 15000 \
        --total-steps 50000
"""

import argparse
import csv
import itertools
import json
from pathlib import Path

from common import (
    BENCH_DIR,
    DONE_FILE,
    RESULTS_DIR,
    command,
    markdown_table,
    now,
    read_rows,
    train_cell,
    write_csv,
)
from multimodality import MEASURE_SEED, measure

TASK = "gprl/TwoGoalPoint-v0"
OPTIONS = {"gamma": "0.9", "alpha-learning-rate": "1e-4"}
CSV_NAME = "two_goal_options.csv"
CELL_KEY = (
    "method",
    "critic_hidden",
    "backup_samples",
    "explore_hold",
    "learning_starts",
    "alpha_floor",
    "seed",
    "total_steps",
)
ALPHA_CEILING = "10"  # maxentdp's default upper bound of alpha
OWN_CRITIC_HIDDEN = "64 64"  # both methods' default critic layers, the rows before the column
OWN_LEARNING_STARTS = 5000  # both methods' default warm-up, the rows before the column
TEXT_COLUMNS = {
    "method",
    "critic_hidden",
    "mode_shares",
    "gprl_commit",
    "machine",
    "date",
    "train_command",
}


def train_arguments(method: str, cell: dict, args, run_dir: Path) -> list[str]:
    train = ["train", method, "--env", TASK, "--total-steps", str(args.total_steps)]
    train += ["--num-envs", "16", "--seed", str(cell["seed"])]
    train += ["--out", str(run_dir), "--no-progress"]
    options = OPTIONS | {"backup-samples": str(cell["backup"])}
    if cell["critic"] != OWN_CRITIC_HIDDEN:
        options["critic-hidden"] = cell["critic"]
    if cell["hold"] > 1:
        options["explore-hold"] = str(cell["hold"])
    if cell["starts"] != OWN_LEARNING_STARTS:
        options["learning-starts"] = str(cell["starts"])
    for name, value in options.items():
        train += [f"--{method}.{name}", *value.split()]
    if cell["floor"] is not None:
        train += [f"--{method}.alpha-range", str(cell["floor"]), ALPHA_CEILING]
    return train


def run_name(
    method: str,
    critic: str,
    backup: int,
    hold: int,
    starts: int,
    floor: float | None,
    seed: int,
    steps: int,
):
    wide = "" if critic == OWN_CRITIC_HIDDEN else "-critic" + "x".join(critic.split())
    held = f"-hold{hold}" if hold > 1 else ""
    started = "" if starts == OWN_LEARNING_STARTS else f"-starts{starts}"
    floored = "" if floor is None else f"-floor{floor:g}"
    return f"{method}{wide}-backup{backup}{held}{started}{floored}-s{seed}-{steps}"


def run_cell(method: str, cell: dict, args) -> dict:
    """cell: critic, backup, hold, starts (the warm-up's env steps), floor and seed of one run,
    in run_name's order."""
    name = run_name(method, *cell.values(), args.total_steps)
    run_dir = args.runs_dir / name
    if not (run_dir / DONE_FILE).exists():
        train = train_arguments(method, cell, args, run_dir)
        train_cell(run_dir, train, "gprl " + " ".join(train), name)
    info = json.loads((run_dir / DONE_FILE).read_text())
    with open(run_dir / "metrics.csv", newline="") as f:
        metrics = list(csv.DictReader(f))
    last, last_eval = metrics[-1], [row for row in metrics if row["eval_return"]][-1]
    coverage = measure(run_dir, TASK, args, None)
    return {
        "method": method,
        "critic_hidden": cell["critic"],
        "backup_samples": cell["backup"],
        "explore_hold": cell["hold"],
        "learning_starts": cell["starts"],
        "alpha_floor": cell["floor"],
        "seed": cell["seed"],
        "total_steps": args.total_steps,
        "mode_shares": coverage["mode_shares"],
        "on_no_mode": coverage["on_no_mode"],
        "episodes_plus_x": coverage["episodes_plus_x"],
        "episodes_minus_x": coverage["episodes_minus_x"],
        "train_return": round(float(last["train_return"]), 4),
        "eval_return": round(float(last_eval["eval_return"]), 4),
        "wall_time_s": info["process_seconds"],
        "load_before": info["load_before"],
        "load_after": info["load_after"],
        "gprl_commit": info["gprl_commit"],
        "machine": info["machine"],
        "date": info["finished"],
        "train_command": info["train_command"],
    }


def with_defaults(row: dict) -> dict:
    """row with the columns from before they were options: critic_hidden and learning_starts
    the methods' own, explore_hold 1 (a fresh draw at every step) and alpha_floor None (the
    method's own)."""
    critic = {"critic_hidden": row.get("critic_hidden") or OWN_CRITIC_HIDDEN}
    backup = {"backup_samples": row["backup_samples"]}
    added = {
        "explore_hold": row.get("explore_hold") or 1,
        "learning_starts": row.get("learning_starts") or OWN_LEARNING_STARTS,
        "alpha_floor": row.get("alpha_floor"),
    }
    return {"method": row["method"]} | critic | backup | added | row


def plot_first_actions(rows: list[dict], runs_dir: Path, path: Path) -> None:
    """One row of panels per option set, one column per seed: 512 stochastic first actions of
    each recorded run at its first measured start state, titled with the run's goal shares."""
    import jax
    import matplotlib.pyplot as plt

    from gprl.action_plots import reset_observations, sample_actions
    from gprl.envs import make_env
    from gprl.trainer import load_run

    variants = list(dict.fromkeys(cell_key(row)[:6] for row in rows))
    seeds = sorted({row["seed"] for row in rows})
    figure, axes = plt.subplots(
        len(variants), len(seeds), figsize=(2.6 * len(seeds), 2.6 * len(variants)), squeeze=False
    )
    with make_env(TASK, 1, backend="gymnasium") as env:
        observation = reset_observations(env, 1, MEASURE_SEED)
    for ax in axes.flat:
        ax.set_axis_off()  # drawn again where a run fills it
    for row in rows:
        ax = axes[variants.index(cell_key(row)[:6]), seeds.index(row["seed"])]
        algo, state, _ = load_run(runs_dir / run_name(*cell_key(row)))
        key = jax.random.PRNGKey(MEASURE_SEED)
        actions = sample_actions(algo.act, algo.acting_params(state), observation, 512, key)[0]
        ax.set_axis_on()
        ax.scatter(actions[:, 0], actions[:, 1], s=2, alpha=0.4)
        ax.set(xlim=(-1.05, 1.05), ylim=(-1.05, 1.05), xticks=[-1, 0, 1], yticks=[-1, 0, 1])
        method, critic, backup, hold, starts, floor = cell_key(row)[:6]
        wide = "" if critic == OWN_CRITIC_HIDDEN else f", critic {critic}"
        started = "" if starts == OWN_LEARNING_STARTS else f", starts {starts:g}"
        floored = "" if floor is None else f", floor {floor:g}"
        label = f"{method}{wide}, backup {backup}, hold {hold}{started}{floored}"
        ax.set_title(f"{label}\nseed {row['seed']}: {row['mode_shares']}", fontsize=7)
    title = f"{TASK}: first actions\n(+x goal right, -x goal left; shares +x -x)"
    figure.suptitle(title, fontsize=8)
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def recorded_rows(path: Path) -> list[dict]:
    return [with_defaults(row) for row in read_rows(path, TEXT_COLUMNS)]


def cell_key(row: dict) -> tuple:
    return tuple(row[key] for key in CELL_KEY)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["maxentdp", "dpmd"])
    parser.add_argument(
        "--critic-hidden",
        nargs="+",
        type=int,
        default=[64, 64],
        help="the critics' layer widths (default: the methods' own, 64 64)",
    )
    parser.add_argument("--backups", nargs="+", type=int, default=[0, 32])
    parser.add_argument("--holds", nargs="+", type=int, default=[1, 8])
    parser.add_argument(
        "--learning-starts",
        type=int,
        default=OWN_LEARNING_STARTS,
        help="env steps of the uniformly random warm-up (default: the methods' own, 5000)",
    )
    parser.add_argument(
        "--alpha-floors",
        nargs="+",
        type=float,
        default=[None],
        help="maxentdp's lower bound of alpha (default: its own, 0.01); dpmd has none",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--total-steps", type=int, default=40_000)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    parser.add_argument("--runs-dir", type=Path, default=BENCH_DIR / "runs" / "two_goal_options")
    args = parser.parse_args()
    args.observations, args.samples = 64, 256  # multimodality.measure's sample sizes
    path = args.out / CSV_NAME
    print(f"{now()}  {command()}")
    critic = " ".join(map(str, args.critic_hidden))
    for method in args.methods:
        grid = itertools.product(args.backups, args.holds, args.alpha_floors, args.seeds)
        for backup, hold, floor, seed in grid:
            if floor is not None and method != "maxentdp":
                continue
            cell = {"critic": critic, "backup": backup, "hold": hold}
            cell |= {"starts": args.learning_starts, "floor": floor, "seed": seed}
            if (method, *cell.values(), args.total_steps) in map(cell_key, recorded_rows(path)):
                continue
            row = run_cell(method, cell, args)
            # Read again: another invocation may have recorded other cells meanwhile.
            write_csv(path, [*recorded_rows(path), row])
    rows = recorded_rows(path)
    missing = [row for row in rows if not (args.runs_dir / run_name(*cell_key(row))).is_dir()]
    if missing:  # a clone has the CSV but not the run directories
        print(f"{path.with_suffix('.png').name} not redrawn: {len(missing)} runs not here")
    else:
        plot_first_actions(rows, args.runs_dir, path.with_suffix(".png"))
    columns = ["method", "critic_hidden", "backup_samples", "explore_hold", "learning_starts"]
    columns += ["alpha_floor", "seed"]
    columns += ["mode_shares", "on_no_mode", "episodes_plus_x", "episodes_minus_x", "eval_return"]
    print(markdown_table(rows, columns))


if __name__ == "__main__":
    main()
