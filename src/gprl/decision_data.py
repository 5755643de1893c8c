"""Offline datasets for runs that execute action chunks: recorded steps windowed into the
decisions a run's chunk-executing envs (gprl.envs.chunked) would have produced, for the replay
buffer's offline region."""

import numpy as np

from gprl.datasets import DatasetError, Demonstrations
from gprl.envs.chunked import Chunking
from gprl.envs.sources import ends_on_success


def as_run_sees(demos: Demonstrations, env_id, sparse_reward: bool, end_on_success: bool):
    """The dataset's steps as envs with the run's options would have recorded them: reward 1 on
    a step that reported success and 0 elsewhere (sparse_reward); a step that reported success
    terminal, so that learning does not bootstrap past it (end_on_success, or an env that ends
    episodes on success by itself), the steps after it kept as transitions of their own.
    DatasetError in one line where an option is asked of a dataset that records no success."""
    end_on_success = end_on_success or ends_on_success(env_id)
    if not (sparse_reward or end_on_success):
        return demos
    successes = demos.step_successes
    if successes is None:
        raise DatasetError(
            f"dataset {demos.dataset_id} records no success on its steps, so it cannot be "
            "relabelled for --sparse-reward or --end-on-success (or an env that ends "
            "episodes on success)"
        )
    if sparse_reward:
        rewards = successes.astype(np.float32)
        starts = np.cumsum(demos.episode_lengths) - demos.episode_lengths
        returns = np.add.reduceat(rewards, starts).astype(np.float64)
        demos = demos._replace(rewards=rewards, episode_returns=returns)
    if end_on_success:
        demos = demos._replace(terminations=demos.terminations | successes)
    return demos


def decision_transitions(
    demos: Demonstrations, chunking: Chunking | None, discount: float = 1.0
) -> dict:
    """An offline dataset's transitions as a run with this chunking stores them in its replay
    buffer (gprl.replay.DATASET_FIELDS), with each one's `return_to_go` (returns_to_go with the
    run's discount per env step: `discount`, or a chunked run's chunking.discount): its steps
    where the run takes one action per step
    (None), else its decisions. A decision is a window of steps as the envs' ChunkExecution
    executes a chunk (Ta predicted actions, Te executed, H observations); one starts at every
    recorded step t (a decision may start in any state), and holds
    - obs: the H observations up to t, the episode's first repeated before its start;
    - action: the flat chunk a_t .. a_{t+Ta-1};
    - reward: sum_{k<Te} discount^k r_{t+k} over the executed steps;
    - terminated, truncated: those of its last executed step; next_obs: the H observations
      after it.

    A window that an episode's termination cuts short is kept: the decision ends there without a
    bootstrap, as in the envs (so does a window reaching a terminal step mid-episode: a success,
    in a dataset relabelled to end on success). Its actions past the episode's last step repeat
    that step's action, as pretraining pads chunks (gprl.pretrained.chunk_targets): they are
    never executed, and a repeat keeps the chunk among the actions the data shows in that state,
    where zeros would be an action nobody took for a BC policy to imitate. A window that runs
    past the end of an episode that did not terminate is dropped: its bootstrap would need
    discount^k with k < Te, which one discount per decision cannot give (the envs refuse such
    time limits: gprl.envs.chunked.check_fits). DatasetError in one line where no window is
    left."""
    returns = returns_to_go(demos, discount if chunking is None else chunking.discount)
    if chunking is None:
        return demos.transitions() | {"return_to_go": returns}
    first, last = _episode_bounds(demos)
    starts = np.arange(len(demos.rewards))
    stop = np.minimum(starts + chunking.execute_steps - 1, _next_terminal(demos, last))
    terminated = demos.terminations[stop]
    keep = (stop - starts + 1 == chunking.execute_steps) | terminated
    if not keep.any():
        raise DatasetError(
            f"dataset {demos.dataset_id} has no episode of {chunking.execute_steps} steps, the "
            "actions a chunk executes, and none that terminates sooner: nothing to learn from"
        )
    starts, stop, first, last = starts[keep], stop[keep], first[keep], last[keep]
    actions = demos.actions[
        np.minimum(starts[:, None] + np.arange(chunking.chunk_length), last[:, None])
    ]
    return {
        "obs": _history(demos, first, starts - first, chunking.obs_history),
        "action": actions.reshape(len(starts), -1),
        "reward": _discounted_sums(demos.rewards, starts, stop, chunking),
        "terminated": terminated[keep],
        "truncated": demos.truncations[stop],
        "next_obs": _history(demos, first, stop - first + 1, chunking.obs_history),
        "return_to_go": returns[starts],
    }


def returns_to_go(demos: Demonstrations, discount: float) -> np.ndarray:
    """(steps,) float32: from each step, the discounted sum of the rewards up to the terminal
    step that ends its bootstrap (a decision starting there sums the same rewards with the same
    discounts, its bootstrap discounted per env step); -inf for the steps of an episode's tail
    that ends without terminating."""
    end = _next_terminal(demos, _episode_bounds(demos)[1])
    returns = np.empty(len(demos.rewards))
    later = 0.0
    for step in range(len(returns) - 1, -1, -1):
        later = demos.rewards[step] + (discount * later if end[step] != step else 0.0)
        returns[step] = later
    returns[~demos.terminations[end]] = -np.inf
    return returns.astype(np.float32)


def _episode_bounds(demos: Demonstrations) -> tuple[np.ndarray, np.ndarray]:
    """(N,) each step's episode's first and last step."""
    lengths = demos.episode_lengths
    first = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return first, first + np.repeat(lengths, lengths) - 1


def _next_terminal(demos: Demonstrations, last: np.ndarray) -> np.ndarray:
    """(N,) the first step at or after each step that ends its episode's bootstrap: a terminal
    step (one that reported success, where success ends episodes, may lie mid-episode), else
    the episode's last step."""
    index = np.where(demos.terminations, np.arange(len(last)), len(last))
    following = np.minimum.accumulate(index[::-1])[::-1]
    return np.minimum(following, last)


def _discounted_sums(rewards, starts, stop, chunking) -> np.ndarray:
    """(M,) float32 sum_k discount^k r_{start+k} over the steps start..stop of each window."""
    total, weight = np.zeros(len(starts)), 1.0
    for offset in range(chunking.execute_steps):
        step = np.minimum(starts + offset, stop)
        total += np.where(starts + offset <= stop, weight * rewards[step], 0.0)
        weight *= chunking.discount
    return total.astype(np.float32)


def _history(demos: Demonstrations, first, positions, length: int) -> np.ndarray:
    """(M, length x obs_dim): the `length` observations of each episode (its steps from
    `first`) up to position p (0: the reset's, p: after p steps), oldest first, the reset's
    repeated before the start; the one after p steps is next_obs[first + p - 1]."""
    window = np.maximum(positions[:, None] - np.arange(length)[::-1], 0)
    after_steps = demos.next_obs[first[:, None] + np.maximum(window - 1, 0)]
    frames = np.where((window == 0)[..., None], demos.obs[first][:, None], after_steps)
    return frames.reshape(len(positions), -1)
