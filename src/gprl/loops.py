"""Loops compose an algorithm with a collector; they know neither's insides.

:class:`OnPolicyLoop` serves the host and the device path alike: the collector decides whether a
rollout and the update it feeds run as separate calls (host envs) or as one compiled call (JAX
envs). A staged algorithm's refits (see :class:`gprl.algos.base.RefitRequest`) run between
iterations, outside any compiled call.
"""

from typing import NamedTuple

import jax

from gprl.algos.base import OnPolicyAlgorithm
from gprl.collectors import EpisodeStats, split_key


class IterationResult(NamedTuple):
    state: dict
    key: jax.Array
    metrics: dict
    episodes: EpisodeStats
    env_steps: int
    """Env steps taken in this iteration."""
    counted_steps: int
    """The part of env_steps that counts toward the budget."""
    refit: bool
    """Whether this iteration was a refit rather than an update."""


class OnPolicyLoop:
    def __init__(self, algo: OnPolicyAlgorithm, collector, num_envs: int):
        self.algo = algo
        self.collector = collector
        self.num_envs = num_envs
        self.start_state_group = type(algo).start_state_group(algo.config)
        self._train_step = collector.make_train_step(
            algo.acting_params, algo.update, algo.rollout_steps
        )

    def reset(self, seed: int) -> None:
        self.collector.reset(seed, self.start_state_group)

    def iterate(self, state, key) -> IterationResult:
        """One update on a fresh rollout, or the refit the algorithm asks for."""
        request = self.algo.refit_request(state)
        if request is None:
            state, key, metrics, episodes = self._train_step(state, key)
            steps = self.algo.rollout_steps * self.num_envs
            return IterationResult(state, key, metrics, episodes, steps, steps, False)
        batch, key, episodes = self.collector.collect(request.acting, key, request.rollout_steps)
        key, refit_key = split_key(key)
        state, metrics = self.algo.refit(state, batch, refit_key)
        steps = request.rollout_steps * self.num_envs
        counted = steps if request.counted else 0
        return IterationResult(state, key, metrics, episodes, steps, counted, True)
