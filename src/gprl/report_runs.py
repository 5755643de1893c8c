"""Reading run directories for `gprl report` and pooling them into groups.

Runs pool by configuration, not by algorithm name. A group is one algorithm with one algorithm
config and one set of run options (all but `UNPOOLED_OPTIONS`, which do not change what a run
learns, and the env, which is the task); its runs are that configuration's seeds on each task.
A group is named by its algorithm where the algorithm has one configuration, else by the fields
that tell its configurations apart ("ppo [learning_rate=0.0001]"). `init` and `dataset` name a
task's own pretrained policy or dataset, or a seed's own (each seed fine-tuning the imitation run
of that seed), so they differ across the tasks and seeds of one configuration; they split a group
only where one task holds several that are not one per seed (one of them shared by several seeds,
or several on one seed). Whether a run has one is part of its configuration ("ppo [init=null]",
from scratch, beside "ppo [init=given]"). What was pooled is printed and written to report.md.
The configs read are those saved with the checkpoint, which resume and eval use; a config.json
edited by hand since is refused.

A directory given twice (under any paths) counts once. Two runs of one configuration with one
seed on one task are one sample, not two seeds: the report refuses them in one line naming both,
so the user chooses. `gprl pretrain` runs are skipped with the reason stated: they have no
env-step evaluations to aggregate.

A run is scored by one of `METRICS`: its evaluation return, or its evaluation success rate
(the fraction of evaluation episodes that succeeded), which runs on envs that report success
have; `choose_metric` picks the success rate where every run has one, as the papers report.
"""

import csv
import dataclasses
import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gprl.checkpoint import CHECKPOINT, CONFIG_JSON
from gprl.rundir import saved_configs

UNPOOLED_OPTIONS = frozenset(
    {"env", "seed", "out", "resume", "progress", "overwrite", "tensorboard", "wandb_project"}
)
"""Run options that runs of one group may differ in (the env is the task axis instead)."""
TASK_INPUTS = ("init", "dataset")
"""Run options naming a task's or a seed's own pretrained policy or dataset."""
NONE, GIVEN = json.dumps(None), json.dumps("given")
"""A task input's settings value: unset (from scratch, no dataset) or given (its value is then
among the run's task inputs)."""
METRICS = ("return", "success_rate")
"""What a report can score runs by; "auto" chooses (see `choose_metric`)."""


class SkippedRun(ValueError):
    """A directory that is a gprl run but not one a report aggregates (a pretrain run)."""


@dataclass(frozen=True)
class RunSummary:
    run_dir: Path
    algo: str
    env: str
    seed: int
    env_steps: int
    final_eval_return: float
    steps_per_second: float
    curve: np.ndarray
    """(n, 2): env steps and deterministic evaluation return at each evaluation."""
    settings: tuple = ()
    """Sorted (field, JSON value) pairs of the algorithm config and the run options that shape
    what the run learns; a task input there is only `NONE` or `GIVEN`."""
    task_inputs: tuple = ()
    """(field, JSON value) pairs of the `TASK_INPUTS` the run was given."""
    group: str = ""
    """The name of the group the run pools into; set by `group_runs`."""
    success_curve: np.ndarray | None = None
    """(n, 2): env steps and evaluation success rate at each evaluation that has one; None for
    runs on envs that do not report success."""

    def scores(self, metric: str) -> np.ndarray:
        """(n, 2): env steps and the run's `metric` (one of METRICS) at each evaluation."""
        if metric == "return":
            return self.curve
        if self.success_curve is None:
            raise ValueError(
                f"{self.run_dir} has no success rates ({self.env} does not report success); "
                "report returns with --metric return"
            )
        return self.success_curve


def choose_metric(runs: list[RunSummary], metric: str = "auto") -> str:
    """`metric`, or for "auto" the success rate where every run has one, else the return;
    ValueError for an unknown metric or one a run lacks."""
    if metric == "auto":
        return "return" if any(r.success_curve is None for r in runs) else "success_rate"
    if metric not in METRICS:
        raise ValueError(f"unknown metric '{metric}'; choose auto, {', '.join(METRICS)}")
    for run in runs:
        run.scores(metric)
    return metric


def read_run(run_dir: Path) -> RunSummary:
    """Summarise one run directory; ValueError naming the directory if it is not a finished
    gprl run with at least one evaluation (SkippedRun if it is a pretrain run)."""
    run_dir = Path(run_dir)
    config = _saved_configs(run_dir)
    if "pretrain" in config:
        raise SkippedRun(
            f"{run_dir} is a gprl pretrain run ({config['pretrain']}), which has no env-step "
            "evaluations to aggregate"
        )
    try:
        env, seed = config["run"]["env"], int(config["run"]["seed"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{run_dir}/{CONFIG_JSON} has no run env and seed ({e!r})") from None
    curve, success_curve, steps, wall_time = _evaluations(run_dir)
    settings, task_inputs = _settings(config)
    return RunSummary(
        run_dir,
        config.get("algo", "?"),
        env,
        seed,
        steps,
        float(curve[-1, 1]),
        steps / wall_time if wall_time else 0.0,
        curve,
        settings,
        task_inputs,
        config.get("algo", "?"),
        success_curve,
    )


def _saved_configs(run_dir: Path) -> dict:
    """The configs saved with the run's checkpoint (config.json before the first one); a
    config.json edited since is refused (CheckpointError)."""
    if not (run_dir / CONFIG_JSON).is_file() and not (run_dir / CHECKPOINT).is_dir():
        raise ValueError(f"{run_dir} is not a gprl run directory (no config.json or checkpoint)")
    config = saved_configs(run_dir)
    if not isinstance(config, dict):
        raise ValueError(f"{run_dir} is not a gprl run directory ({CONFIG_JSON} is no object)")
    return config


def _evaluations(run_dir: Path):
    """The return and success-rate curves (None without success rates), the env steps and the
    wall time of the run's metrics.csv."""
    try:
        with open(run_dir / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise ValueError(f"{run_dir} is not a gprl run directory ({type(e).__name__})") from e
    evaluated = [r for r in rows if r.get("eval_return")]
    if not evaluated:
        raise ValueError(f"{run_dir} has no evaluation in its metrics.csv")
    try:
        curve = _curve(evaluated, "eval_return")
        succeeded = [r for r in evaluated if r.get("eval_success_rate")]
        success_curve = _curve(succeeded, "eval_success_rate") if succeeded else None
        steps, wall_time = int(float(rows[-1]["env_steps"])), float(rows[-1]["wall_time"])
        return curve, success_curve, steps, wall_time
    except (KeyError, ValueError) as e:
        raise ValueError(f"{run_dir}/metrics.csv is malformed ({e})") from e


def _curve(rows: list[dict], column: str) -> np.ndarray:
    return np.array([(float(r["env_steps"]), float(r[column])) for r in rows], np.float64)


def _settings(config: dict) -> tuple[tuple, tuple]:
    """The run's configuration as sorted (field, JSON value) pairs, and its task inputs. Configs
    are completed with the defaults of fields added to gprl since the run was saved, so runs
    from two gprl versions with the same settings pool."""
    from gprl.algos import ALGORITHMS
    from gprl.trainer import RunConfig

    entry = ALGORITHMS.get(config.get("algo"))
    algo_config = _completed(entry and entry.config, config.get("algo_config") or {})
    run = _completed(RunConfig, config["run"])
    fields = _flattened(algo_config) | {
        name: value for name, value in run.items() if name not in UNPOOLED_OPTIONS
    }
    encoded = {name: json.dumps(value, sort_keys=True) for name, value in fields.items()}
    inputs = tuple((name, encoded[name]) for name in TASK_INPUTS if encoded.get(name, NONE) != NONE)
    # Whether a run has an init or a dataset stays in its settings: from scratch and from a
    # pretrained start are two configurations, whatever start each task or seed has.
    encoded |= {name: GIVEN for name, _ in inputs}
    return tuple(sorted(encoded.items())), inputs


def _completed(config_class, saved: dict) -> dict:
    from gprl.configs import from_jsonable, to_jsonable

    if config_class is None:
        return saved
    try:
        return json.loads(json.dumps(to_jsonable(from_jsonable(config_class, saved))))
    except (TypeError, ValueError):
        return saved  # saved by a gprl with other fields: compare it as it is


def _flattened(config: dict, prefix: str = "") -> dict:
    flat = {}
    for name, value in config.items():
        if isinstance(value, dict):
            flat |= _flattened(value, f"{prefix}{name}.")
        else:
            flat[f"{prefix}{name}"] = value
    return flat


# ----- groups ---------------------------------------------------------------------------------


def group_runs(runs: list[RunSummary]) -> list[RunSummary]:
    """The runs with their group names set (see the module docstring); ValueError naming both
    directories when one group holds one seed twice on one task."""
    keys = _configuration_keys(runs)
    names = {}
    for algo in {r.algo for r in runs}:
        configurations = sorted({keys[i] for i, r in enumerate(runs) if r.algo == algo})
        differing = sorted(_differing_fields([dict(c) for c in configurations]))
        for configuration in configurations:
            fields = dict(configuration)
            shown = [f"{name}={_shown(fields.get(name))}" for name in differing]
            names[algo, configuration] = f"{algo} [{', '.join(shown)}]" if shown else algo
    grouped = [dataclasses.replace(r, group=names[r.algo, keys[i]]) for i, r in enumerate(runs)]
    _refuse_repeated_seeds(grouped)
    return grouped


def _configuration_keys(runs: list[RunSummary]) -> list[tuple]:
    """Each run's configuration: its settings, with its task inputs where one task holds runs
    of those settings with several task inputs that are not one per seed."""
    cells = defaultdict(set)
    for r in runs:
        cells[r.algo, r.settings, r.env].add((r.seed, r.task_inputs))
    split = {
        (algo, settings)
        for (algo, settings, _), found in cells.items()
        if not _one_input_per_seed(found)
    }
    return [
        tuple(sorted((dict(r.settings) | dict(r.task_inputs)).items()))
        if (r.algo, r.settings) in split
        else r.settings
        for r in runs
    ]


def _one_input_per_seed(cells: set[tuple]) -> bool:
    """Whether the (seed, task inputs) pairs of one task are one input, or one per seed."""
    seeds = {seed for seed, _ in cells}
    inputs = {found for _, found in cells}
    return len(inputs) == 1 or len(seeds) == len(inputs) == len(cells)


def _differing_fields(configurations: list[dict]) -> set[str]:
    names = {name for c in configurations for name in c}
    return {name for name in names if len({c.get(name) for c in configurations}) > 1}


def _shown(encoded: str | None) -> str:
    if encoded is None:
        return "unset"  # a field this run's gprl version did not have
    value = json.loads(encoded)
    return value if isinstance(value, str) else encoded


def _refuse_repeated_seeds(runs: list[RunSummary]) -> None:
    first = {}
    for r in runs:
        other = first.setdefault((r.group, r.env, r.seed), r)
        if other is not r:
            raise ValueError(
                f"{other.run_dir} and {r.run_dir} are both seed {r.seed} of {r.group} on "
                f"{r.env}: one configuration and seed is one sample, not two seeds; leave one out"
            )


def read_runs(run_dirs: list[Path]) -> tuple[list[RunSummary], list[str]]:
    """The grouped runs of run_dirs, each directory once however it was named, and notes on
    what was left out or merged."""
    given = defaultdict(list)
    for run_dir in run_dirs:
        given[Path(run_dir).resolve()].append(Path(run_dir))
    runs, notes = [], []
    for paths in given.values():
        if len(paths) > 1:
            names = ", ".join(dict.fromkeys(str(p) for p in paths))
            notes.append(f"{paths[0]} was given {len(paths)} times ({names}); counted once")
        try:
            runs.append(read_run(paths[0]))
        except SkippedRun as e:
            notes.append(f"skipped {e}")
    if not runs:
        raise ValueError(
            "no training runs to report" + (f": {'; '.join(notes)}" if notes else " given")
        )
    return group_runs(runs), notes


def pooling_lines(runs: list[RunSummary]) -> tuple[Path, list[str]]:
    """The folder holding every run directory, and one line per group and task: the seeds
    pooled and their directories relative to that folder."""
    resolved = [r.run_dir.resolve() for r in runs]
    parent = Path(os.path.commonpath([d.parent for d in resolved]))
    cells = defaultdict(list)
    for r, run_dir in sorted(zip(runs, resolved, strict=True), key=lambda p: seed_order(p[0])):
        cells[r.group, r.env].append((r.seed, str(run_dir.relative_to(parent))))
    return parent, [
        f"{group} on {task}: seeds {', '.join(str(seed) for seed, _ in found)} from "
        + ", ".join(name for _, name in found)
        for (group, task), found in cells.items()
    ]


def seed_order(run: RunSummary) -> tuple:
    return run.group, run.env, run.seed
