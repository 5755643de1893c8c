"""Command line: `gprl train {ppo,gorl} ...` and `gprl eval RUN_DIR ...`."""

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import tyro

USAGE = """usage: gprl {train,eval} ...

  gprl train ppo  --env ID --total-steps N ...   Gaussian PPO
  gprl train gorl --env ID --total-steps N ...   GoRL (latent PPO + flow/diffusion decoder)
  gprl eval RUN_DIR [--episodes N] [--video]     evaluate a run's checkpoint

Run `gprl train ppo --help` (or gorl, eval) for every option."""


def _train_configs():
    from gprl.algos import GoRLConfig, PPOConfig
    from gprl.trainer import RunConfig

    @dataclass
    class TrainPPO(RunConfig):
        """Train Gaussian PPO."""

        ppo: PPOConfig = field(default_factory=PPOConfig)

    @dataclass
    class TrainGoRL(RunConfig):
        """Train GoRL: PPO on a Gaussian latent policy decoded by a flow or diffusion model.
        Decoder data-collection steps count toward --total-steps unless
        --gorl.no-count-collection-steps."""

        gorl: GoRLConfig = field(default_factory=GoRLConfig)

    return TrainPPO, TrainGoRL


@dataclass
class EvalArgs:
    """Evaluate the checkpoint of a run directory with the deterministic policy."""

    run_dir: tyro.conf.Positional[Path]
    episodes: int = 10
    video: bool = False
    """Also render one episode to RUN_DIR/videos/eval.mp4 (needs headless MuJoCo rendering)."""
    seed: int = 12345


def _train(argv) -> None:
    from gprl.trainer import RunConfig, train

    train_ppo, train_gorl = _train_configs()
    args = tyro.cli(
        Annotated[train_ppo, tyro.conf.subcommand("ppo")]
        | Annotated[train_gorl, tyro.conf.subcommand("gorl")],
        args=argv,
        prog="gprl train",
    )
    algo_name, algo_config = ("ppo", args.ppo) if hasattr(args, "ppo") else ("gorl", args.gorl)
    run = RunConfig(**{name: getattr(args, name) for name in RunConfig.__dataclass_fields__})
    run_dir = train(algo_name, run, algo_config)
    _print_summary(run_dir)


def _print_summary(run_dir: Path) -> None:
    import csv
    import json

    with open(run_dir / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("eval_return")]
    last = rows[-1]
    print(
        f"finished: {last['env_steps']} env steps in {float(last['wall_time']):.0f} s; "
        f"final deterministic eval return {float(last['eval_return']):.3f} "
        f"(+- {float(last['eval_return_std']):.3f})"
    )
    config = json.loads((run_dir / "config.json").read_text())
    if config["algo"] == "gorl":
        counted = config["algo_config"]["count_collection_steps"]
        print(
            "GoRL decoder data-collection steps are "
            + ("counted in" if counted else "NOT counted in (see uncounted_env_steps)")
            + " the env steps above"
        )
    print(f"run directory: {run_dir}  (metrics.csv, learning_curve.png, checkpoint/)")


def _eval(argv) -> None:
    from gprl.envs import make_env
    from gprl.evaluation import evaluate, record_video
    from gprl.trainer import load_run

    args = tyro.cli(EvalArgs, args=argv, prog="gprl eval")
    algo, state, run = load_run(args.run_dir)
    acting = algo.acting_params(state)
    action_fn = algo.eval_action_fn(state)
    with make_env(run.env, args.episodes, args.seed) as env:
        result = evaluate(action_fn, acting, env, args.seed)
    print(
        f"{run.env}: return {result['eval_return']:.3f} +- {result['eval_return_std']:.3f} "
        f"over {args.episodes} episodes (mean length {result['eval_length']:.0f})"
    )
    if args.video:
        with make_env(run.env, 1, args.seed, render=True) as env:
            path = record_video(
                action_fn, acting, env, args.seed, args.run_dir / "videos" / "eval.mp4"
            )
        print(f"video: {path}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"train": _train, "eval": _eval}
    if not argv or argv[0] not in commands:
        print(USAGE, file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    from gprl.checkpoint import CheckpointError
    from gprl.envs import EnvError
    from gprl.trainer import TrainingError

    try:
        commands[argv[0]](argv[1:])
    except (EnvError, CheckpointError, TrainingError, FileExistsError, ValueError) as e:
        print(f"gprl: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(
            "gprl: interrupted; resume from the last checkpoint with --resume RUN_DIR",
            file=sys.stderr,
        )
        sys.exit(130)


if __name__ == "__main__":
    main()
