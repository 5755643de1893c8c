"""`gprl sweep SPEC`: every cell of a grid (algorithms x envs x seeds x hyperparameters) runs as a
Ray Tune trial that trains with gprl.trainer.train and writes a normal gprl run directory.

The run directories are the sweep's durable state. A cell's directory is derived from the cell
alone, so a trial that Tune retries after its worker died resumes from its own gprl checkpoint
(exact resume) instead of restarting, and a sweep started again skips its finished cells before
Ray starts. The whole spec is checked (names, values, env ids) before any trial starts.

A spec (YAML; the README's "Sweeps on Ray Tune" section shows every key):

    algorithms: [ppo, gorl]
    envs: [dm_control/cheetah-run-v0]
    seeds: [0, 1, 2]
    total_steps: 1000000
    out: runs/my-sweep            # relative to the current directory
    settings: {num_envs: 16, eval_every: 50000}  # one value for every cell
    grid:                         # every combination of these values
      ppo.learning_rate: [3.0e-4, 1.0e-3]
      gorl.ppo.learning_rate: [3.0e-4]

Names are run options (`num_envs`) or algorithm config fields as on the command line:
`ALGO.FIELD` (nested: `gorl.ppo.learning_rate`) for one algorithm, a bare `FIELD` for every
algorithm of the sweep (each must have it).
"""

import csv
import dataclasses
import hashlib
import itertools
import math
import types
import typing
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from gprl.algos import ALGORITHMS
from gprl.checkpoint import CheckpointError, checkpoint_dir, read_config, read_meta
from gprl.configs import to_jsonable
from gprl.evaluation import default_eval_episodes
from gprl.trainer import RunConfig, TrainingError, complete_run, success_options

SPEC_KEYS = (
    "algorithms",
    "envs",
    "seeds",
    "total_steps",
    "out",
    "settings",
    "grid",
    "max_failures",
    "cpus_per_trial",
)
SWEEP_OWNED = {
    "env": "envs",
    "seed": "seeds",
    "total_steps": "total_steps",
    "out": "out",
    "resume": "--resume",
    "overwrite": "out",
    "progress": "the sweep",
}
# Run options that change nothing a run computes: a finished run matches its cell regardless.
UNRECORDED_RUN_FIELDS = ("out", "resume", "overwrite", "progress")
SWEEP_CSV = "sweep.csv"
MAX_DIR_NAME = 150


class SpecError(ValueError):
    """The sweep spec names something unknown or holds a bad value."""


@dataclass(frozen=True)
class Cell:
    algo: str
    run: RunConfig
    """Complete (defaults filled in); `out` is the cell's run directory."""
    algo_config: Any
    grid_values: tuple[tuple[str, Any], ...]

    @property
    def run_dir(self) -> Path:
        return Path(self.run.out)

    def label(self) -> str:
        values = " ".join(f"{name}={value}" for name, value in self.grid_values)
        return f"{self.algo} {self.run.env} seed {self.run.seed} {values}".rstrip()


@dataclass(frozen=True)
class Sweep:
    cells: list[Cell]
    out: Path
    max_failures: int
    cpus_per_trial: float


def load_spec(path: Path) -> Sweep:
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text())
    except OSError as e:
        raise SpecError(f"cannot read sweep spec {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise SpecError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    return parse_spec(spec, str(path))


def parse_spec(spec, source: str = "sweep spec") -> Sweep:
    """The cells of a spec, each config validated; env ids are checked by check_envs."""
    _check_keys(spec, source)
    algos = _names(spec["algorithms"], "algorithms")
    for algo in algos:
        if algo not in ALGORITHMS:
            raise SpecError(f"unknown algorithm '{algo}'; choose from {', '.join(ALGORITHMS)}")
    envs = _names(spec["envs"], "envs")
    seeds = [_coerce(int, seed, "seeds") for seed in _listed(spec["seeds"], "seeds")]
    total_steps = _coerce(int, spec["total_steps"], "total_steps")
    out = Path(_coerce(str, spec["out"], "out")).absolute()
    settings = {
        name: _targets(name, value, algos, listed=False)
        for name, value in _mapping(spec.get("settings"), "settings").items()
    }
    grid = {
        name: [_targets(name, value, algos, listed=True) for value in _listed(values, name)]
        for name, values in _mapping(spec.get("grid"), "grid").items()
    }
    max_failures = _coerce(int, spec.get("max_failures", 3), "max_failures")
    cpus_per_trial = _coerce(float, spec.get("cpus_per_trial", 1), "cpus_per_trial")
    if max_failures < 0:
        raise SpecError(f"max_failures must be 0 or more, got {max_failures}")
    if not cpus_per_trial > 0:
        raise SpecError(f"cpus_per_trial must be positive, got {cpus_per_trial}")
    cells = []
    for algo in algos:
        for algo_config, run_values, grid_values in _configurations(algo, settings, grid):
            for env, seed in itertools.product(envs, seeds):
                name = _dir_name(algo, env, seed, grid_values)
                run = RunConfig(
                    env=env,
                    total_steps=total_steps,
                    seed=seed,
                    out=out / name,
                    progress=False,
                    **run_values,
                )
                try:
                    complete_run(run)
                except ValueError as e:
                    raise SpecError(f"{algo} {env} seed {seed}: {e}") from None
                cells.append(Cell(algo, run, algo_config, grid_values))
    names = [cell.run_dir.name for cell in cells]
    duplicate = next((name for name in names if names.count(name) > 1), None)
    if duplicate:
        raise SpecError(f"two cells of {source} would share the run directory {duplicate}")
    return Sweep(cells, out, max_failures, cpus_per_trial)


def _check_keys(spec, source: str) -> None:
    if not isinstance(spec, dict):
        raise SpecError(f"{source} must be a mapping with keys {', '.join(SPEC_KEYS)}")
    unknown = [key for key in spec if key not in SPEC_KEYS]
    if unknown:
        raise SpecError(f"unknown key '{unknown[0]}' in {source}; keys: {', '.join(SPEC_KEYS)}")
    for key in ("algorithms", "envs", "seeds", "total_steps", "out"):
        if key not in spec:
            raise SpecError(f"{source} has no '{key}'")


def _configurations(algo: str, settings: dict, grid: dict):
    """(validated algorithm config, run option values, grid values) for each grid point."""
    # A name scoped to another algorithm does not multiply this algorithm's cells.
    axes = {
        name: choices
        for name, choices in grid.items()
        if any(scope in (None, algo) for scope, _, _ in choices[0])
    }
    for combination in itertools.product(*axes.values()):
        chosen = [*settings.values(), *combination]
        run_values = {path: value for t in chosen for scope, path, value in t if scope is None}
        algo_values = {path: value for t in chosen for scope, path, value in t if scope == algo}
        grid_values = tuple(
            (name, next(value for _, _, value in targets))
            for name, targets in zip(axes, combination, strict=True)
        )
        algo_config = _with_values(ALGORITHMS[algo].config(), algo_values)
        try:
            if hasattr(algo_config, "validate"):
                algo_config.validate()
        except ValueError as e:
            raise SpecError(f"{algo}: {e}") from None
        yield algo_config, run_values, grid_values


def _listed(value, name: str) -> list:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise SpecError(f"'{name}' lists no values")
    return values


def _names(value, name: str) -> list[str]:
    return [_coerce(str, item, name) for item in _listed(value, name)]


def _mapping(value, name: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpecError(f"'{name}' must map names to values")
    return value


def _targets(name: str, value, algos: list[str], listed: bool):
    """Where a spec name goes: [(None or algorithm, field path, value checked against the
    field's type)]."""
    if not listed and isinstance(value, list) and value:
        hint = "put lists of values to try under 'grid'"
    else:
        hint = ""
    key = str(name).replace("-", "_")
    head, _, rest = key.partition(".")
    scoped = {algo.replace("-", "_"): algo for algo in ALGORITHMS}
    if rest and head in scoped:
        algo = scoped[head]
        if algo not in algos:
            raise SpecError(f"'{name}' sets {algo}, which is not among the sweep's algorithms")
        field_type = _field_type(ALGORITHMS[algo].config, rest, name, algo)
        return [(algo, rest, _coerce(field_type, value, name, hint))]
    run_types = typing.get_type_hints(RunConfig)
    if key in run_types:
        if key in SWEEP_OWNED:
            raise SpecError(f"'{name}' is set by the sweep itself (see '{SWEEP_OWNED[key]}')")
        return [(None, key, _coerce(run_types[key], value, name, hint))]
    targets = []
    for algo in algos:
        field_type = _field_type(ALGORITHMS[algo].config, key, name, algo)
        targets.append((algo, key, _coerce(field_type, value, name, hint)))
    return targets


def _field_type(config_cls, path: str, name: str, algo: str):
    field_type = config_cls
    for part in path.split("."):
        hints = typing.get_type_hints(field_type) if dataclasses.is_dataclass(field_type) else {}
        if part not in hints:
            raise SpecError(f"unknown field '{name}': not a run option nor a field of {algo}")
        field_type = hints[part]
    if dataclasses.is_dataclass(field_type):
        raise SpecError(f"'{name}' is a group of settings; set its fields ('{name}.FIELD')")
    return field_type


def _coerce(tp, value, name: str, hint: str = ""):
    """value as an instance of the type hint tp (YAML reads 3e-4 as a string: numbers written
    so are accepted), or SpecError naming the field."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        options = [option for option in typing.get_args(tp) if option is not type(None)]
        for option in options:
            try:
                return _coerce(option, value, name)
            except SpecError:
                continue
        raise _bad(name, value, " or ".join(map(_type_name, options)), hint)
    if origin is typing.Literal:
        if value in typing.get_args(tp):
            return value
        raise _bad(name, value, "one of " + ", ".join(map(str, typing.get_args(tp))), hint)
    if origin is tuple:
        item = typing.get_args(tp)[0]
        if not isinstance(value, list):
            raise _bad(name, value, f"a list of {_type_name(item)}", hint)
        return tuple(_coerce(item, v, name) for v in value)
    if tp in (int, float) and isinstance(value, str):
        try:
            value = float(value) if tp is float else int(value)
        except ValueError:
            raise _bad(name, value, _type_name(tp), hint) from None
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if tp is float and number and math.isfinite(value):
        return float(value)
    if tp is int and number and float(value).is_integer():
        return int(value)
    if (tp is bool and isinstance(value, bool)) or (tp is str and isinstance(value, str)):
        return value
    if tp is Path and isinstance(value, str):
        return Path(value)
    raise _bad(name, value, _type_name(tp), hint)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _bad(name: str, value, expected: str, hint: str) -> SpecError:
    return SpecError(f"'{name}' must be {expected}, got {value!r}" + (f"; {hint}" if hint else ""))


def _with_values(config, values: dict[str, Any]):
    """A copy of a (nested) dataclass config with the values at dotted field paths replaced."""
    nested: dict[str, dict] = {}
    direct = {}
    for path, value in values.items():
        head, _, rest = path.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            direct[head] = value
    for head, inner in nested.items():
        direct[head] = _with_values(getattr(config, head), inner)
    return dataclasses.replace(config, **direct)


def _dir_name(algo: str, env: str, seed: int, grid_values) -> str:
    parts = [algo, env.replace("/", "_")]
    parts += [f"{name}={value}" for name, value in grid_values]
    name = "-".join(parts)
    if len(name) > MAX_DIR_NAME:  # file systems cap names at 255 bytes
        digest = hashlib.sha256(name.encode()).hexdigest()[:12]
        name = f"{name[: MAX_DIR_NAME - 13]}-{digest}"
    return f"{name}-s{seed}".replace(" ", "")


def check_envs(sweep: Sweep) -> dict[str, int]:
    """Open every env once (bad ids and success options fail here, before any trial), fill in
    env-dependent default eval_episodes, return each cell's iterations by run directory name."""
    from gprl.backends import open_environments, resolve_backend

    specs, iterations = {}, {}
    for cell in sweep.cells:
        algo_cls = ALGORITHMS[cell.algo].algorithm
        key = (cell.run.env, cell.run.env_backend, cell.run.sparse_reward, cell.run.end_on_success)
        if key not in specs:
            envs = open_environments(*key[:2], 1, 1, 0, 0, **success_options(cell.run))
            envs.close()
            specs[key] = envs.spec
        cell.run.eval_episodes = cell.run.eval_episodes or default_eval_episodes(specs[key])
        try:
            algo = algo_cls(cell.algo_config, specs[key], cell.run.num_envs, cell.run.total_steps)
        except ValueError as e:
            raise SpecError(f"{cell.label()}: {e}") from None
        # Envs restarted in groups rule some backends out.
        resolve_backend(cell.run.env, cell.run.env_backend, algo.start_state_group)
        iterations[cell.run_dir.name] = algo.num_iterations
    return iterations


def _record(algo: str, run: dict, algo_config: dict) -> dict:
    """What a run directory must hold to be this cell's run."""
    run = {k: v for k, v in run.items() if k not in UNRECORDED_RUN_FIELDS}
    return {"algo": algo, "run": run, "algo_config": algo_config}


def cell_status(cell: Cell, num_iterations: int) -> str:
    """'finished', 'partial' (a checkpoint to resume from) or 'new'. A run directory holding
    another configuration is an error: the sweep never replaces a run it did not write."""
    try:
        checkpoint_dir(cell.run_dir)
    except CheckpointError:
        return "new"  # nothing to lose: a directory without a checkpoint is started afresh
    saved = read_config(cell.run_dir)
    wanted = _record(cell.algo, to_jsonable(cell.run), to_jsonable(cell.algo_config))
    if _record(saved.get("algo"), saved.get("run", {}), saved.get("algo_config")) != wanted:
        raise SpecError(
            f"{cell.run_dir} holds a run with another configuration than its cell "
            f"({cell.label()}); move it aside or change 'out'"
        )
    done = read_meta(cell.run_dir)["progress"]["iteration"] >= num_iterations
    return "finished" if done else "partial"


def run_sweep(
    spec_path: Path,
    resume: bool = False,
    address: str | None = None,
    num_cpus: int | None = None,
    on_iteration=None,
) -> Path:
    """Run the cells of a spec that are not finished; returns the sweep's output folder.

    on_iteration(iteration, row) is also called in each trial (tests use it to kill a worker).
    """
    sweep = load_spec(spec_path)
    iterations = check_envs(sweep)
    status = {c.run_dir.name: cell_status(c, iterations[c.run_dir.name]) for c in sweep.cells}
    partial = [cell for cell in sweep.cells if status[cell.run_dir.name] == "partial"]
    if partial and not resume:
        raise SpecError(
            f"{len(partial)} cells of this sweep are unfinished in {sweep.out} (e.g. "
            f"{partial[0].run_dir.name}); continue them with --resume"
        )
    pending = [cell for cell in sweep.cells if status[cell.run_dir.name] != "finished"]
    finished = len(sweep.cells) - len(pending)
    if not pending:
        print(f"all {len(sweep.cells)} cells are finished in {sweep.out}; nothing to run")
        _write_summary(sweep)
        return sweep.out
    print(
        f"{len(pending)} of {len(sweep.cells)} cells to run"
        + (f" ({finished} finished, skipped)" if finished else "")
        + (f", {len(partial)} resumed from their checkpoints" if partial else "")
    )
    errors = _run_trials(sweep, pending, address, num_cpus, on_iteration)
    _write_summary(sweep)
    if errors:
        last_line = str(errors[0]).strip().splitlines()[-1] if str(errors[0]).strip() else ""
        raise TrainingError(
            f"{len(errors)} of {len(pending)} trials failed after {sweep.max_failures} retries "
            f"(first: {last_line or type(errors[0]).__name__}); their checkpoints are kept in "
            f"{sweep.out}: fix the cause and run again with --resume"
        )
    return sweep.out


def _run_trials(sweep: Sweep, cells: list[Cell], address, num_cpus, on_iteration) -> list:
    """Run the cells as Tune trials; returns the errors of those that failed."""
    import ray
    from ray import tune

    if not ray.is_initialized():
        if address is not None:
            try:
                ray.init(address=address, log_to_driver=False)
            except (ConnectionError, RuntimeError) as e:
                reason = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise ValueError(f"cannot join the Ray cluster at {address}: {reason}") from None
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    by_name = {cell.run_dir.name: cell for cell in cells}
    trainable = tune.with_resources(
        tune.with_parameters(_trial, cells=by_name, on_iteration=on_iteration),
        {"cpu": sweep.cpus_per_trial},
    )
    tuner = tune.Tuner(
        trainable,
        param_space={"cell": tune.grid_search(list(by_name))},
        run_config=tune.RunConfig(
            name=f"tune-{datetime.now().strftime('%Y%m%d-%H%M%S')}",
            storage_path=str(sweep.out / ".tune"),
            failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
            verbose=1,
        ),
    )
    return tuner.fit().errors


def _trial(config: dict, cells: dict[str, Cell], on_iteration=None) -> None:
    """One Tune trial: train the cell, or resume it from its checkpoint when a worker running it
    died (Tune retries the trial; its gprl checkpoint, not Tune's, holds the state)."""
    from ray import tune

    from gprl.trainer import has_checkpoint, train

    cell = cells[config["cell"]]

    def report(iteration: int, row: dict) -> None:
        tune.report({k: v for k, v in row.items() if isinstance(v, int | float)})
        if on_iteration is not None:
            on_iteration(iteration, row)

    if has_checkpoint(cell.run_dir):
        run = RunConfig(resume=cell.run_dir, progress=False)
    else:
        run = dataclasses.replace(cell.run, overwrite=True)
    train(cell.algo, run, cell.algo_config, on_iteration=report)


def _write_summary(sweep: Sweep) -> None:
    """OUT/sweep.csv: one row per cell with its grid values and final evaluation."""
    from gprl.logger import METRICS_CSV

    rows = []
    for cell in sweep.cells:
        row = {"algo": cell.algo, "env": cell.run.env, "seed": cell.run.seed}
        row |= dict(cell.grid_values)
        evaluations = []
        with_metrics = cell.run_dir / METRICS_CSV
        if with_metrics.exists():
            with open(with_metrics, newline="") as f:
                evaluations = [r for r in csv.DictReader(f) if r.get("eval_return")]
        last = evaluations[-1] if evaluations else {}
        row |= {
            "env_steps": last.get("env_steps", ""),
            "final_eval_return": last.get("eval_return", ""),
            "final_eval_success_rate": last.get("eval_success_rate", ""),
            "run_dir": cell.run_dir.name,
        }
        rows.append(row)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    sweep.out.mkdir(parents=True, exist_ok=True)
    with open(sweep.out / SWEEP_CSV, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
