"""Recording episodes of a policy acting in host vector envs, for `gprl collect`.

Episodes are attempted in a fixed order (env i's k-th episode is attempt i + k n, for n envs),
and the ones kept are the first that qualify (every episode, or the successful ones) once every
earlier attempt has finished: short episodes are not favoured, and what is kept depends only on
the policy, the envs and the seeds, never on timing.
"""

import time
from typing import NamedTuple

import jax
import numpy as np

from gprl.datasets import Episode
from gprl.signals import StopSignals


class Recorded(NamedTuple):
    episodes: list[Episode]
    """The episodes kept, in attempt order."""
    attempted: int
    """Attempts considered: all before the last kept one (or all tried, if too few qualified)."""
    successful: int
    """How many of the attempted episodes succeeded."""
    env_steps: int
    seconds: float


class Attempts:
    """Episodes as they finish, numbered in a fixed order (env i's k-th episode is attempt
    i + k n), and the ones kept: the first `wanted` that qualify (all, or the successful ones)
    once every earlier attempt has finished, trying at most `limit`."""

    def __init__(self, num_envs: int, wanted: int, limit: int, only_successful: bool):
        self.num_envs, self.wanted, self.limit = num_envs, wanted, limit
        self.only_successful = only_successful
        self.finished: dict[int, Episode] = {}
        self._counts = [0] * num_envs
        self.complete = False
        """Every attempt that decides which episodes are kept has finished."""

    def recording(self, env_index: int) -> bool:
        return self._number(env_index) < self.limit

    def add(self, env_index: int, episode: Episode) -> None:
        self.finished[self._number(env_index)] = episode
        self._counts[env_index] += 1
        settled = self._settled()
        self.complete = settled >= self.limit or len(self._kept(range(settled))) == self.wanted

    def result(self, interrupted: bool, env_steps: int, seconds: float) -> Recorded:
        """The kept episodes and the attempts that decided them; interrupted, every finished
        attempt counts, even after a gap."""
        numbers = sorted(self.finished) if interrupted else list(range(self._settled()))
        kept = self._kept(numbers)
        if not interrupted and len(kept) == self.wanted:
            numbers = numbers[: kept[-1] + 1]
        successful = sum(self.finished[number].succeeded for number in numbers)
        episodes = [self.finished[number] for number in kept]
        return Recorded(episodes, len(numbers), successful, env_steps, seconds)

    def _number(self, env_index: int) -> int:
        return env_index + self._counts[env_index] * self.num_envs

    def _settled(self) -> int:
        """Every attempt numbered below this has finished."""
        return min(self.limit, *(self._number(i) for i in range(self.num_envs)))

    def _kept(self, numbers) -> list[int]:
        qualify = [n for n in numbers if not self.only_successful or self.finished[n].succeeded]
        return qualify[: self.wanted]


class EpisodeSteps:
    """The steps of one episode while it runs."""

    def __init__(self):
        self.obs, self.actions, self.rewards = [], [], []
        self.terminated, self.truncated, self.success = [], [], []

    def add(self, obs, action, step, index: int) -> None:
        self.obs.append(obs)
        self.actions.append(action)
        self.rewards.append(step.reward[index])
        self.terminated.append(step.terminated[index])
        self.truncated.append(step.truncated[index])
        self.success.append(step.success[index])

    def episode(self, final_obs, reports_success: bool) -> Episode:
        return Episode(
            observations=np.stack([*self.obs, final_obs]),
            actions=np.stack(self.actions),
            rewards=np.asarray(self.rewards, np.float64),
            terminations=np.asarray(self.terminated),
            truncations=np.asarray(self.truncated),
            successes=np.asarray(self.success, bool) if reports_success else None,
        )


def record(
    env, actor, attempts: Attempts, action_noise: float, seed: int, noise_seed, stop: StopSignals
) -> Recorded:
    """Run actor in env (reset with seed) until attempts is complete or a signal stops it; its
    actions get Gaussian noise of std action_noise in [-1, 1], drawn from the JAX key
    noise_seed, and are clipped there."""
    spec, n = env.spec, env.num_envs
    rng = np.random.default_rng(np.asarray(jax.random.key_data(noise_seed)))
    scale = (spec.action_high - spec.action_low) / 2
    offset = (spec.action_high + spec.action_low) / 2
    running = [EpisodeSteps() for _ in range(n)]
    obs, env_steps, start = env.reset(seed), 0, time.perf_counter()
    while stop.received is None and not attempts.complete:
        stop.raise_if_aborted()
        action = np.asarray(actor(obs), np.float32)
        if action_noise > 0:
            noise = rng.standard_normal(action.shape).astype(np.float32)
            action = action + action_noise * noise
        action = np.clip(action, -1.0, 1.0)
        step = env.step(action)
        env_steps += n
        env_action = offset + scale * action
        ended = step.terminated | step.truncated
        for i in range(n):
            if not attempts.recording(i):
                continue
            running[i].add(obs[i], env_action[i], step, i)
            if ended[i]:
                attempts.add(i, running[i].episode(step.final_obs[i], spec.reports_success))
                running[i] = EpisodeSteps()
        actor.episode_ended(ended)
        obs = step.obs
    seconds = time.perf_counter() - start
    return attempts.result(stop.received is not None, env_steps, seconds)
