"""Command line: `gprl train ALGO ...` (one subcommand per registered algorithm),
`gprl pretrain KIND ...` (one per imitation policy), `gprl collect RUN_DIR ...`,
`gprl eval RUN_DIR ...`, `gprl report RUN_DIR... --out DIR` and `gprl sweep SPEC`."""

import contextlib
import dataclasses
import io
import json
import re
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Union

import tyro

from gprl.signals import TrainingInterrupted

EVAL_USAGE = (
    "  gprl eval RUN_DIR [--episodes N] [--video] [--plot-actions]   evaluate a run's checkpoint"
)
COLLECT_USAGE = (
    "  gprl collect {RUN_DIR | --policy MODULE:ATTR --env ID} --episodes N --out NAME"
    " [--action-noise S] [--only-successful]   record a Minari dataset"
)
REPORT_USAGE = (
    "  gprl report RUN_DIR... --out DIR [--metric M]   aggregate runs: tables, curves, IQM "
    "(rliable)"
)
SWEEP_USAGE = (
    "  gprl sweep SPEC [--resume] [--address ADDR]   run a grid of runs as Ray Tune trials"
)


def _usage() -> str:
    from gprl.algos import ALGORITHMS
    from gprl.policies import POLICIES

    lines = ["usage: gprl {train,pretrain,collect,eval,report,sweep} ...", ""]
    width = max(map(len, ALGORITHMS))
    for name, entry in ALGORITHMS.items():
        lines.append(f"  gprl train {name:<{width}} --env ID --total-steps N ...   {entry.summary}")
    for kind, entry in POLICIES.items():
        lines.append(f"  gprl pretrain {kind:<9} --dataset NAME --steps N ...   {entry.summary}")
    lines += [
        COLLECT_USAGE,
        EVAL_USAGE,
        REPORT_USAGE,
        SWEEP_USAGE,
        "",
        "Run `gprl train ALGO --help` (or `gprl pretrain KIND --help`, `gprl collect --help`, "
        "`gprl eval --help`, `gprl report --help`, `gprl sweep --help`) for every option.",
    ]
    return "\n".join(lines)


def _train_commands() -> dict[type, str]:
    """One dataclass per algorithm: the run options plus a field named after the algorithm that
    holds its config (so `--ALGO.FIELD` options)."""
    from gprl.algos import ALGORITHMS
    from gprl.trainer import RunConfig

    commands = {}
    for name, entry in ALGORITHMS.items():
        field_name = name.replace("-", "_")
        command = dataclasses.make_dataclass(
            f"Train{entry.algorithm.__name__}",
            [(field_name, entry.config, dataclasses.field(default_factory=entry.default_config))],
            bases=(RunConfig,),
        )
        command.__doc__ = f"Train {entry.summary}."
        commands[command] = name
    return commands


def _pretrain_commands() -> dict[type, str]:
    """One dataclass per policy kind: the pretrain run options and imitation settings, plus a
    field named after the kind that holds the policy's config (so `--KIND.FIELD` options)."""
    from gprl.policies import POLICIES
    from gprl.pretrain import PretrainConfig, PretrainRun

    commands = {}
    for kind, entry in POLICIES.items():
        command = dataclasses.make_dataclass(
            f"Pretrain{entry.policy.__name__}",
            [
                (
                    kind,
                    entry.config,
                    dataclasses.field(default_factory=lambda d=entry.default_config: d),
                )
            ],
            bases=(PretrainRun, PretrainConfig),
        )
        command.__doc__ = f"Pretrain a policy by imitation of a Minari dataset: {entry.summary}."
        commands[command] = kind
    return commands


def _parse(spec, argv, prog: str):
    """tyro.cli, with its parse errors (a multi-line box) turned into one line."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return tyro.cli(spec, args=argv, prog=prog)
    except SystemExit as exit_request:
        if not exit_request.code:
            raise
        raise ValueError(_box_message(captured.getvalue())) from None


def _box_message(text: str) -> str:
    """The message inside a tyro error box: its first paragraph after the title. (The box has
    borders on a terminal, and only rules under the title and between paragraphs elsewhere.)"""
    lines = []
    for line in text.splitlines()[1:]:
        content = line.strip().strip("│").strip()
        if content and not set(content) <= set("─-╰╯"):
            lines.append(content)
        elif lines:
            break
    return re.sub(r"\s+", " ", " ".join(lines)) or "invalid arguments"


@dataclass
class EvalArgs:
    """Evaluate the checkpoint of a run directory: a train run with its deterministic policy, a
    pretrain run acting from its noise scale (--noise-scale)."""

    run_dir: tyro.conf.Positional[Path]
    episodes: int | None = None
    """Evaluation episodes, run in parallel. Default: the run's episodes per evaluation (50 on
    envs that report success, else 10)."""
    video: bool = False
    """Also render one episode to RUN_DIR/videos/eval.mp4 (host envs; needs headless MuJoCo
    rendering for MuJoCo tasks)."""
    noise_scale: float | None = None
    """Pretrain runs: scale of the noise the policy acts from; 0 gives the zero-noise plan that
    fine-tuning starts from and evaluates. Default: the run's (1 for the generative kinds, 0 for
    the Gaussian)."""
    plot_actions: bool = False
    """Also draw the stochastic policy's actions at a few observations to
    RUN_DIR/plots/actions.png, with the optimal modes and their coverage on the multimodal
    diagnostic tasks (host envs)."""
    seed: int = 12345
    """Seeds the evaluation envs, and the plot's observations and samples."""


PLOT_SEED = EvalArgs.seed
"""Seeds the observations and samples of the plot `gprl train` draws, as `gprl eval`'s."""


def _train(argv) -> None:
    from gprl.trainer import RunConfig, train

    commands = _train_commands()
    options = [Annotated[command, tyro.conf.subcommand(name)] for command, name in commands.items()]
    args = _parse(Union[tuple(options)], argv, "gprl train")  # noqa: UP007
    algo_name = commands[type(args)]
    algo_config = getattr(args, algo_name.replace("-", "_"))
    run = RunConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig)})
    run_dir = train(algo_name, run, algo_config)
    _print_summary(run_dir)
    _plot_modes(run_dir)


def _plot_modes(run_dir: Path) -> None:
    """On a task whose optimal actions are known (the multimodal diagnostic tasks), show which
    of them the trained stochastic policy keeps, as `gprl eval --plot-actions` does."""
    from gprl.envs.diagnostics import OPTIMAL_MODES
    from gprl.initial_policy import chunk_options
    from gprl.rundir import saved_configs
    from gprl.trainer import load_run

    # The saved config first: a run on any other task is not rebuilt from its checkpoint.
    env_id = saved_configs(run_dir)["run"]["env"]
    # A chunked run's actions and observations are not the task's, which the modes describe.
    if env_id not in OPTIMAL_MODES or chunk_options(run_dir):
        return
    algo, state, _ = load_run(run_dir)
    _plot_actions(env_id, algo, algo.acting_params(state), run_dir, seed=PLOT_SEED)


def _pretrain(argv) -> None:
    import csv

    from gprl.pretrain import PretrainConfig, PretrainRun, pretrain

    commands = _pretrain_commands()
    options = [Annotated[command, tyro.conf.subcommand(kind)] for command, kind in commands.items()]
    args = _parse(Union[tuple(options)], argv, "gprl pretrain")  # noqa: UP007
    kind = commands[type(args)]
    run = PretrainRun(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainRun)})
    config = PretrainConfig(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainConfig)}
    )
    run_dir = pretrain(kind, run, config, getattr(args, kind))
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    last_eval = [r for r in rows if r.get("eval_return")][-1]
    data_return = json.loads((run_dir / "config.json").read_text())["dataset"]["mean_return"]
    print(
        f"finished: {rows[-1]['grad_steps']} gradient steps in {float(rows[-1]['wall_time']):.0f} "
        f"s; final eval return {float(last_eval['eval_return']):.3f} "
        f"(+- {float(last_eval['eval_return_std']):.3f}), dataset mean return {data_return:.3f}"
    )
    print(f"run directory: {run_dir}  (metrics.csv, learning_curve.png, checkpoint/)")


def _collect(argv) -> None:
    from gprl.collect import CollectArgs, collect

    result = collect(_parse(CollectArgs, argv, "gprl collect"))
    success = (
        ""
        if result.success_rate is None
        else f", kept {result.episodes} of {result.attempted} attempted (success rate "
        f"{result.success_rate:.2f})"
    )
    print(
        f"wrote dataset {result.dataset_id}: {result.episodes} episodes, {result.steps} steps, "
        f"mean return {result.mean_return:.3f}{success}, "
        f"{result.env_steps_per_second:.0f} env steps/s  ({result.path})"
    )


def _print_summary(run_dir: Path) -> None:
    import csv

    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    last_eval = [r for r in rows if r.get("eval_return")][-1]
    success = last_eval.get("eval_success_rate")
    print(
        f"finished: {rows[-1]['env_steps']} env steps in {float(rows[-1]['wall_time']):.0f} s; "
        f"final deterministic eval return {float(last_eval['eval_return']):.3f} "
        f"(+- {float(last_eval['eval_return_std']):.3f})"
        + (f", success rate {float(success):.3f}" if success else "")
    )
    offline = [r for r in rows if r.get("offline_updates") and int(r["env_steps"]) == 0]
    if offline:
        print(
            f"offline phase: {offline[-1]['offline_updates']} gradient steps on the dataset; "
            f"eval return {float(offline[-1]['eval_return']):.3f} before the first env step"
        )
    uncounted = rows[-1].get("uncounted_env_steps")
    if uncounted:
        print(f"plus {uncounted} env steps of refit data collection not counted in the budget")
    print(f"run directory: {run_dir}  (metrics.csv, learning_curve.png, checkpoint/)")


def _eval(argv) -> None:
    from gprl.pretrain import is_pretrain_run

    args = _parse(EvalArgs, argv, "gprl eval")
    if args.episodes is not None and args.episodes < 1:
        raise ValueError(f"--episodes must be at least 1, got {args.episodes}")
    pretrain_run = is_pretrain_run(args.run_dir)
    if args.noise_scale is not None and not pretrain_run:
        raise ValueError(
            "--noise-scale applies to pretrain runs; a train run acts deterministically"
        )
    evaluate = _eval_pretrain_run if pretrain_run else _eval_train_run
    args = dataclasses.replace(args, episodes=args.episodes or _run_eval_episodes(args.run_dir))
    env_id, result, sampler, acting = evaluate(args)
    print(
        f"{env_id}: return {result['eval_return']:.3f} +- {result['eval_return_std']:.3f} "
        f"over {args.episodes} episodes (mean length {result['eval_length']:.0f})"
    )
    if "eval_success_rate" in result:
        rate = result["eval_success_rate"]
        print(
            f"success rate {rate:.3f} ({round(rate * args.episodes)} of {args.episodes} episodes)"
        )
    if "noise_scale" in result:
        print(_acting_noise_line(result["noise_scale"]))
    if args.plot_actions:
        _plot_actions(env_id, sampler, acting, args.run_dir, args.seed)


def _acting_noise_line(noise_scale: float) -> str:
    if noise_scale == 0:
        return "acting from zero noise (the policy's zero-noise plan)"
    return f"acting from noise of scale {noise_scale:g} (--noise-scale 0: the zero-noise plan)"


def _run_eval_episodes(run_dir: Path) -> int:
    """The episodes per evaluation a (train or pretrain) run was saved with."""
    from gprl.rundir import saved_configs

    return saved_configs(run_dir)["run"]["eval_episodes"]


def _check_plot_backend(args: EvalArgs, env_id: str) -> None:
    from gprl.backends import resolve_backend

    if args.plot_actions and resolve_backend(env_id, "auto") == "jax":
        raise ValueError(f"--plot-actions draws on host envs; {env_id} is a JAX environment")


def _eval_train_run(args: EvalArgs):
    """Evaluate (and film) a `gprl train` run: (env id, result, its algorithm, acting params)."""
    from gprl.backends import make_evaluator, open_environments
    from gprl.envs import make_env
    from gprl.evaluation import record_video
    from gprl.initial_policy import chunk_options
    from gprl.trainer import load_run, success_options

    algo, state, run = load_run(args.run_dir)
    _check_plot_backend(args, run.env)
    acting = algo.acting_params(state)
    options = success_options(run) | chunk_options(args.run_dir)
    envs = open_environments(
        run.env, run.env_backend, 1, args.episodes, args.seed, args.seed, **options
    )
    try:
        result = make_evaluator(envs, algo.act_deterministic, args.seed).evaluate(acting)
    finally:
        envs.close()
    if args.video:
        with make_env(run.env, 1, args.seed, render=True, backend="gymnasium", **options) as env:
            path = record_video(
                algo.act_deterministic, acting, env, args.seed, args.run_dir / "videos" / "eval.mp4"
            )
        print(f"video: {path}")
    return run.env, result, algo, acting


class _PretrainedSampler:
    """A pretrain run's stochastic policy as the action plot samples an algorithm's `act`: the
    first action of a chunk planned from unit noise (as `gprl collect --policy stochastic`)."""

    def __init__(self, pretrained):
        self._policy = pretrained.policy
        self._policy.noise_scale = 1.0

    def act(self, acting, obs, key):
        return self._policy.plan(acting, obs, key)[..., 0, :], {}


def _eval_pretrain_run(args: EvalArgs):
    from gprl.pretrain import evaluate_run, load_pretrained

    if args.video:
        raise ValueError("--video is not supported for pretrain runs")
    env_id, result = evaluate_run(args.run_dir, args.episodes, args.seed, args.noise_scale)
    if not args.plot_actions:
        return env_id, result, None, None
    # Pretraining refuses JAX envs, so a pretrain run can always be drawn on host envs.
    pretrained = load_pretrained(args.run_dir)
    return env_id, result, _PretrainedSampler(pretrained), pretrained.acting


def _plot_actions(env_id: str, sampler, acting, run_dir: Path, seed: int) -> None:
    from gprl.action_plots import coverage_lines, plot_actions
    from gprl.envs import make_env

    with make_env(env_id, 1, seed, backend="gymnasium") as env:
        plot = plot_actions(sampler, acting, env, run_dir / "plots" / "actions.png", seed=seed)
    print(f"action plot: {plot.path}")
    for line in coverage_lines(plot):
        print(line)


@dataclass
class ReportArgs:
    """Aggregate run directories into a benchmark report: per-task tables, learning curves with
    confidence bands, IQM / mean / optimality gap with 95% stratified-bootstrap intervals and
    performance profiles (rliable); writes report.md, CSVs and PNGs to --out."""

    run_dirs: tyro.conf.Positional[tuple[Path, ...]]
    """Run directories (any algorithms, tasks and seeds)."""
    out: Path = Path("report")
    """Directory for report.md, runs.csv, tasks.csv, aggregate.csv, curves.png, aggregate.png,
    profiles.png."""
    score_scale: float = 1.0
    """Divide returns by this before aggregating across tasks (1000 for DM Control)."""
    title: str = "gprl report"
    """Heading of report.md."""
    metric: Literal["auto", "return", "success_rate"] = "auto"
    """What the runs are scored by: the final evaluation return, or the final evaluation success
    rate (fraction of evaluation episodes that succeeded; runs on envs that report success).
    auto: the success rate when every run has one, else the return."""


def _report(argv) -> None:
    from gprl.report import write_report

    args = _parse(ReportArgs, argv, "gprl report")
    if not args.run_dirs:
        raise ValueError("give at least one run directory")
    report = write_report(list(args.run_dirs), args.out, args.score_scale, args.title, args.metric)
    print(f"report: {report}")


@dataclass
class SweepArgs:
    """Run every cell of a sweep spec (algorithms x envs x seeds x hyperparameter grid, YAML; see
    gprl.sweep) as a Ray Tune trial writing a gprl run directory. Finished cells are skipped;
    a trial whose worker dies resumes from its checkpoint."""

    spec: tyro.conf.Positional[Path]
    """The sweep spec (YAML)."""
    resume: bool = False
    """Continue an interrupted sweep: its unfinished runs resume from their checkpoints."""
    address: str | None = None
    """Address of an existing Ray cluster (gprl installed on its nodes). Default: a local Ray
    instance using every core."""
    num_cpus: int | None = None
    """Cores of the local Ray instance (default: all); trials take cpus_per_trial each."""


def _sweep(argv) -> None:
    from gprl.sweep import run_sweep

    args = _parse(SweepArgs, argv, "gprl sweep")
    if args.num_cpus is not None and args.num_cpus < 1:
        raise ValueError(f"--num-cpus must be at least 1, got {args.num_cpus}")
    out = run_sweep(args.spec, args.resume, args.address, args.num_cpus)
    print(f"sweep: {out}  (one run directory per cell, sweep.csv)")


ABORTED = {
    "train": "stopped without saving, resume from the last checkpoint with --resume RUN_DIR",
    "pretrain": "stopped without saving, resume from the last checkpoint with --resume RUN_DIR",
    "collect": "stopped without writing a dataset",
}
"""What a second signal (or a first one before a command handles signals) leaves behind."""


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    commands = {
        "train": _train,
        "pretrain": _pretrain,
        "collect": _collect,
        "eval": _eval,
        "report": _report,
        "sweep": _sweep,
    }
    if not argv or argv[0] not in commands:
        asked_for_help = bool(argv) and argv[0] in ("-h", "--help")
        print(_usage(), file=sys.stdout if asked_for_help else sys.stderr)
        sys.exit(0 if asked_for_help else 2)
    try:
        commands[argv[0]](argv[1:])
    except (Exception, KeyboardInterrupt) as error:
        if isinstance(error, KeyboardInterrupt | TrainingInterrupted):
            # The outcome is decided: one more Ctrl-C on the way out would only print a
            # traceback from wherever the interpreter is tearing down.
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, signal.SIG_IGN)
        message, exit_code = _failure(argv[0], error)
        print(f"gprl: {message}", file=sys.stderr)
        sys.exit(exit_code)


def _failure(command: str, error: BaseException) -> tuple[str, int]:
    """The one line and exit status for a command that stopped on `error`; re-raises errors
    that are bugs (their traceback is what a bug report needs)."""
    from gprl.signals import SecondSignal, TrainingInterrupted

    if isinstance(error, TrainingInterrupted):
        return str(error), error.exit_code
    if isinstance(error, KeyboardInterrupt):
        again = "interrupted again" if isinstance(error, SecondSignal) else "interrupted"
        return f"{again}; {ABORTED.get(command, 'stopped')}", 130
    if isinstance(error, (OSError, ValueError, *_user_errors())):
        return f"error: {_first_line(error)}", 2
    raise error


def _user_errors() -> tuple[type, ...]:
    """Errors gprl raises for bad input or a run it cannot go on with (their modules import JAX,
    so they are looked up only once a command failed)."""
    from gprl.checkpoint import CheckpointError
    from gprl.envs import EnvError
    from gprl.trainer import TrainingError

    return EnvError, CheckpointError, TrainingError


def _first_line(error: BaseException) -> str:
    # An OSError names its path, not the operation: "/proc/x: No such file or directory".
    if isinstance(error, OSError) and error.strerror and error.filename:
        target = f"{error.filename} -> {error.filename2}" if error.filename2 else error.filename
        return f"{target}: {error.strerror}"
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


if __name__ == "__main__":
    main()
