"""`gprl collect RUN_DIR --episodes N --out NAME`: record a Minari dataset with a trained policy.

Works for any run directory: a `gprl train` run through the algorithm contract, a `gprl pretrain`
run through its chunk policy. The actions are

- `--policy deterministic` (default): the evaluation policy, `act_deterministic` (a pretrain run
  acts from its configured noise scale: the Gaussian's mean, a generative policy's samples);
- `--policy stochastic`: the training policy, `act` (a pretrain run samples with noise scale 1);

plus, with `--action-noise S`, Gaussian noise of std S in the normalised [-1, 1] action space,
clipped to it. Expert (S = 0), medium (an earlier or smaller run) and noisy or mixed datasets
(several collections, `minari.combine_datasets`) are all made this way, with no download.

Episodes are spread over the envs in a fixed order (env i records episodes i, i + E, ...), so
short episodes are not favoured and the dataset depends only on the run and the seed.

A first SIGINT or SIGTERM stops recording and writes the episodes finished so far as the dataset
(none: no dataset), then exits with 128 + the signal; a second one aborts and writes nothing.
"""

import math
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import jax
import numpy as np
import tyro

from gprl.backends import resolve_backend
from gprl.datasets import (
    DatasetError,
    Episode,
    check_dataset_id,
    check_datasets_writable,
    dataset_path,
    write_dataset,
)
from gprl.envs import EnvError, make_env
from gprl.evaluation import ActionQueue
from gprl.signals import StopSignals, TrainingInterrupted

HOST_BACKENDS = ("auto", "gymnasium", "envpool")


@dataclass
class CollectArgs:
    """Record a Minari dataset by running a trained policy (any `gprl train` or `gprl pretrain`
    run directory)."""

    run_dir: tyro.conf.Positional[Path]
    """The run whose checkpoint acts."""
    out: str
    """Minari id of the new dataset ([namespace/]name-vN), written to Minari's data path
    (MINARI_DATASETS_PATH); an existing dataset is never replaced."""
    episodes: int = 10
    """Complete episodes to record."""
    action_noise: float = 0.0
    """Std of Gaussian noise added to the policy's actions in [-1, 1] (then clipped)."""
    policy: Literal["deterministic", "stochastic"] = "deterministic"
    """Act with the evaluation policy or the training policy's sampling."""
    seed: int = 0
    """Seeds the envs (env i gets seed + i), the policy's sampling and the action noise."""
    num_envs: int = 8
    """Envs stepped together (at most --episodes are used)."""

    def validate(self) -> None:
        if self.episodes < 1:
            raise ValueError(f"--episodes must be at least 1, got {self.episodes}")
        if self.num_envs < 1:
            raise ValueError(f"--num-envs must be at least 1, got {self.num_envs}")
        if not (math.isfinite(self.action_noise) and self.action_noise >= 0):
            raise ValueError(
                f"--action-noise must be a non-negative number, got {self.action_noise}"
            )
        if not 0 <= self.seed < 2**31:
            raise ValueError(f"--seed must be in [0, 2^31), got {self.seed}")


class Collected(NamedTuple):
    dataset_id: str
    path: Path
    episodes: int
    steps: int
    mean_return: float


class _RunActor:
    """A run's policy on a host vector env: actor(obs) -> actions in [-1, 1];
    episode_ended(mask) after each step (chunked policies replan there)."""

    def __init__(self, run_dir: Path, stochastic: bool, num_envs: int, key):
        from gprl.pretrain import is_pretrain_run, load_pretrained
        from gprl.trainer import load_run

        self._queue = None
        if is_pretrain_run(run_dir):
            pretrained = load_pretrained(run_dir)
            policy = pretrained.policy
            if stochastic:
                policy.noise_scale = 1.0
            plan = jax.jit(policy.plan)
            self._queue = ActionQueue(
                lambda obs, key: plan(pretrained.acting, obs, key),
                num_envs,
                pretrained.config.execute_steps,
                key,
            )
            self.env_id, self.backend = pretrained.env_id, pretrained.env_backend
            self.description = f"gprl pretrain {pretrained.kind}"
            return
        algo, state, run = load_run(run_dir)
        acting = algo.acting_params(state)
        self.env_id = run.env
        self.backend = run.env_backend if run.env_backend in HOST_BACKENDS else "auto"
        if resolve_backend(run.env, self.backend) == "jax":
            raise EnvError(f"{run.env} is a JAX environment; gprl collect records host envs")
        self.description = f"gprl {type(algo).__name__}"
        if stochastic:
            act = jax.jit(algo.act)
            self._key = key

            def policy(obs):
                self._key, act_key = jax.random.split(self._key)
                return act(acting, obs, act_key)[0]

        else:
            act_deterministic = jax.jit(algo.act_deterministic)

            def policy(obs):
                return act_deterministic(acting, obs)

        self._policy = policy

    def __call__(self, obs) -> np.ndarray:
        if self._queue is not None:
            return self._queue(obs)
        return np.asarray(self._policy(obs))

    def episode_ended(self, ended) -> None:
        if self._queue is not None:
            self._queue.episode_ended(ended)


def collect(args: CollectArgs) -> Collected:
    """Run the policy of args.run_dir and write args.episodes episodes as a Minari dataset.
    Bad arguments, an existing dataset id, an unwritable dataset folder or an unusable run fail
    before any env is stepped. A first SIGINT / SIGTERM writes the episodes finished so far and
    raises TrainingInterrupted; a second raises KeyboardInterrupt and writes nothing."""
    args.validate()
    if dataset_path(check_dataset_id(args.out)).exists():
        raise DatasetError(f"dataset {args.out} already exists; choose another --out")
    check_datasets_writable()
    policy_key, noise_seed = jax.random.split(jax.random.PRNGKey(args.seed))
    num_envs = min(args.num_envs, args.episodes)
    with StopSignals() as stop:
        actor = _RunActor(args.run_dir, args.policy == "stochastic", num_envs, policy_key)
        env = make_env(actor.env_id, num_envs, args.seed, backend=actor.backend)
        try:
            episodes = _record(env, actor, args, noise_seed, stop)
        finally:
            env.close()
        if stop.received is not None and not episodes:
            raise TrainingInterrupted(
                f"{_signal_name(stop.received)}: stopped before an episode finished; "
                "wrote no dataset",
                stop.received,
            )
        description = (
            f"{len(episodes)} episodes of {actor.description} from {args.run_dir}, "
            f"{args.policy} policy, action noise {args.action_noise}, seed {args.seed}"
        )
        stop.raise_if_aborted()
        path = write_dataset(args.out, episodes, env.spec, description, actor.description)
    if stop.received is not None:
        raise TrainingInterrupted(
            f"{_signal_name(stop.received)}: stopped after {len(episodes)} of {args.episodes} "
            f"episodes and wrote them as dataset {args.out} ({path})",
            stop.received,
        )
    returns = [float(np.sum(e.rewards)) for e in episodes]
    steps = sum(len(e.rewards) for e in episodes)
    return Collected(args.out, path, len(episodes), steps, float(np.mean(returns)))


def _signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def _record(env, actor: _RunActor, args: CollectArgs, noise_seed, stop: StopSignals):
    """The episodes recorded, in dataset order; all args.episodes unless a signal stopped it."""
    num_episodes, action_noise = args.episodes, args.action_noise
    spec = env.spec
    n = env.num_envs
    quota = np.array([len(range(i, num_episodes, n)) for i in range(n)])
    finished: list[list[Episode]] = [[] for _ in range(n)]
    rng = np.random.default_rng(np.asarray(jax.random.key_data(noise_seed)))
    scale, offset = (
        (spec.action_high - spec.action_low) / 2,
        (spec.action_high + spec.action_low) / 2,
    )

    def fresh():
        return {"obs": [], "actions": [], "rewards": [], "terminated": [], "truncated": []}

    current = [fresh() for _ in range(n)]
    obs = env.reset(args.seed)
    while stop.received is None and any(len(finished[i]) < quota[i] for i in range(n)):
        stop.raise_if_aborted()
        action = np.asarray(actor(obs), np.float32)
        if action_noise > 0:
            action = action + action_noise * rng.standard_normal(action.shape).astype(np.float32)
        action = np.clip(action, -1.0, 1.0)
        step = env.step(action)
        env_action = offset + scale * action
        ended = step.terminated | step.truncated
        for i in range(n):
            if len(finished[i]) == quota[i]:
                continue
            record = current[i]
            record["obs"].append(obs[i])
            record["actions"].append(env_action[i])
            record["rewards"].append(step.reward[i])
            record["terminated"].append(step.terminated[i])
            record["truncated"].append(step.truncated[i])
            if ended[i]:
                finished[i].append(
                    Episode(
                        observations=np.stack([*record["obs"], step.final_obs[i]]),
                        actions=np.stack(record["actions"]),
                        rewards=np.asarray(record["rewards"], np.float64),
                        terminations=np.asarray(record["terminated"]),
                        truncations=np.asarray(record["truncated"]),
                    )
                )
                current[i] = fresh()
        actor.episode_ended(ended)
        obs = step.obs
    # Env i's k-th episode is episode i + k * n of the dataset.
    numbers = [i + k * n for i in range(n) for k in range(len(finished[i]))]
    return [finished[number % n][number // n] for number in sorted(numbers)]
