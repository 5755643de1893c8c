"""Loops compose an algorithm with a collector; they know neither's insides.

Both loops serve the host and the device path alike: the collector decides whether a rollout
and the update it feeds run as separate calls (host envs) or as one compiled call (JAX envs).

- :class:`OnPolicyLoop`: an update per fresh rollout.
- :class:`OffPolicyLoop`: short rollouts stored in a replay buffer that the loop owns (and the
  trainer checkpoints), each followed by the gradient steps it pays for, sampled from the buffer.

Both expose the same interface to the run loop: reset, iterate, checkpoint_state, restore,
at_stage_boundary and offline_pending.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gprl.algos.base import Algorithm, OffPolicyAlgorithm, OnPolicyAlgorithm
from gprl.collectors import EpisodeStats, split_key
from gprl.replay import (
    replay_add_steps,
    replay_init,
    replay_prefill,
    replay_restart_episodes,
    replay_sample,
)
from gprl.types import Transition


class IterationResult(NamedTuple):
    state: dict
    key: jax.Array
    metrics: dict
    episodes: EpisodeStats
    env_steps: int
    """Env steps taken in this iteration."""
    counted_steps: int
    """The part of env_steps that counts toward the budget."""
    ended_stage: bool
    """Whether this iteration ended a stage (see Algorithm.end_stage) rather than updating."""
    offline_updates: int = 0
    """Gradient steps taken on an offline dataset alone (no env step) in this iteration."""


class OnPolicyLoop:
    """An update per fresh rollout. At the algorithm's stage boundaries (see
    :class:`gprl.algos.base.StageBoundary`) an iteration collects the data the algorithm asks for
    and ends the stage instead, outside any compiled call."""

    def __init__(self, algo: OnPolicyAlgorithm, collector):
        self.algo = algo
        self.collector = collector
        self._train_step = collector.make_train_step(
            algo.acting_params, algo.update, algo.rollout_steps
        )

    def reset(self, seed: int) -> None:
        self.collector.reset(seed, self.algo.start_state_group)

    def checkpoint_state(self) -> dict:
        """Loop-owned arrays a checkpoint must hold: none (a rollout starts afresh)."""
        return {}

    def restore(self, saved: dict) -> None:
        pass

    def at_stage_boundary(self, state) -> bool:
        """Whether the next iteration ends a stage rather than updating."""
        return self.algo.stage_boundary(state) is not None

    def offline_pending(self, state) -> bool:
        """Whether the next iteration trains on an offline dataset alone."""
        return False

    def iterate(self, state, key) -> IterationResult:
        """One update on a fresh rollout, or the end of a stage."""
        boundary = self.algo.stage_boundary(state)
        if boundary is not None:
            return self._end_stage(boundary, state, key)
        state, key, metrics, episodes = self._train_step(state, key)
        # The collector's count, not rollout_steps x num_envs: a step of envs that execute
        # action chunks is several env steps, fewer where an episode ended inside a chunk.
        steps = episodes.env_steps
        return IterationResult(state, key, metrics, episodes, steps, steps, False)

    def _end_stage(self, boundary, state, key) -> IterationResult:
        batch, key, episodes = self.collector.collect(boundary.acting, key, boundary.rollout_steps)
        key, stage_key = split_key(key)
        state, metrics = self.algo.end_stage(state, batch, stage_key)
        steps = episodes.env_steps
        counted = steps if boundary.counted else 0
        return IterationResult(state, key, metrics, episodes, steps, counted, True)


class OffPolicyLoop:
    """Collect `update_interval` vector steps, store them, run the gradient steps they pay for;
    `calls_per_iteration` such calls make an iteration (see
    :class:`gprl.algos.offpolicy.OffPolicySchedule`).

    Each call is one compiled update (on the device path, one compiled rollout-and-update) that
    stores the transitions and scans over gradient steps, each on a batch sampled from the
    buffer; the buffer is donated to it, so it is written in place. Before learning starts the
    calls explore (`algo.explore`) and only store. Stage boundaries are not run here: an
    algorithm that has them is refused.

    make_collector(act) builds the collector for an acting function: the loop acts through one
    that switches between `algo.act` and `algo.explore`, so that both phases share one env.

    offline_data (arrays as :func:`gprl.replay.replay_prefill` takes) pre-fills the buffer. The
    run then starts with the schedule's offline iterations, each one compiled call of gradient
    steps on the dataset alone, and the online phase acts with the policy from its first step
    (no exploration phase).
    """

    def __init__(self, algo: OffPolicyAlgorithm, make_collector, offline_data=None):
        self.algo = algo
        if type(algo).stage_boundary is not Algorithm.stage_boundary:
            raise ValueError(f"{type(algo).__name__}: the off-policy loop runs no stage boundaries")
        self.schedule = algo.schedule
        if self.schedule.offline_iterations and offline_data is None:
            raise ValueError(
                "offline updates train on an offline dataset alone: give one with --dataset"
            )
        if offline_data is None:
            self.schedule.check_warmup_fits()
        # A pre-filled buffer has data to learn from at once: no warm-up.
        self.warmup_calls = 0 if offline_data is not None else self.schedule.warmup_calls
        self.collector = make_collector(self._act)
        self.replay = self._empty_replay(offline_data)
        self._offline_call = jax.jit(self._offline_updates, donate_argnums=0)
        interval = self.schedule.update_interval
        self._explore_call = self.collector.make_train_step(
            self._explore_acting, self._store, interval, donate=True
        )
        self._train_call = self.collector.make_train_step(
            self._policy_acting, self._store_and_update, interval, donate=True
        )

    def _empty_replay(self, offline_data):
        key = jax.random.PRNGKey(0)
        acting = jax.eval_shape(lambda k: self.algo.acting_params(self.algo.init(k)), key)
        obs = jax.ShapeDtypeStruct((1, self.algo.spec.obs_dim), jnp.float32)
        action, extras = jax.eval_shape(self.algo.act, acting, obs, key)
        one = jax.ShapeDtypeStruct
        example = Transition(
            obs=one(obs.shape[1:], jnp.float32),
            action=one(action.shape[1:], jnp.float32),
            reward=one((), jnp.float32),
            terminated=one((), jnp.bool_),
            truncated=one((), jnp.bool_),
            next_obs=one(obs.shape[1:], jnp.float32),
            extras=jax.tree.map(lambda x: one(x.shape[1:], x.dtype), extras),
        )
        offline_rows = 0 if offline_data is None else len(offline_data["reward"])
        buffer = replay_init(
            example,
            self.schedule.buffer_capacity,
            offline_rows,
            self.schedule.return_discount,
            self.collector.env.num_envs,
        )
        return buffer if offline_data is None else replay_prefill(buffer, offline_data)

    def _act(self, acting, obs, key):
        explore_key = acting.get("held_draw", key)
        return jax.lax.cond(
            acting["explore"],
            lambda policy: self.algo.explore(policy, obs, explore_key),
            lambda policy: self.algo.act(policy, obs, key),
            acting["policy"],
        )

    def _explore_acting(self, state):
        acting = {"policy": self.algo.acting_params(state["algo"]), "explore": np.True_}
        if "held_draw" in state:
            acting["held_draw"] = state["held_draw"]
        return acting

    def _policy_acting(self, state):
        return {"policy": self.algo.acting_params(state["algo"]), "explore": np.False_}

    def _store(self, state, batch, key):
        return state | {"replay": replay_add_steps(state["replay"], batch)}, {}

    def _gradient_steps(self, state, key, count: int):
        """count gradient steps, each on a fresh batch from the buffer; mean metrics."""
        replay, schedule = state["replay"], self.schedule

        def gradient_step(algo_state, step_key):
            sample_key, update_key = jax.random.split(step_key)
            sample = replay_sample(
                replay, sample_key, schedule.batch_size, schedule.offline_fraction
            )
            return self.algo.update(algo_state, sample, update_key)

        keys = jax.random.split(key, count)
        algo_state, metrics = jax.lax.scan(gradient_step, state["algo"], keys)
        return state | {"algo": algo_state}, jax.tree.map(jnp.mean, metrics)

    def _store_and_update(self, state, batch, key):
        state, _ = self._store(state, batch, key)
        return self._gradient_steps(state, key, self.schedule.gradient_steps)

    def _offline_updates(self, state, key):
        # The online ring is still empty: every batch comes from the dataset.
        updates = self.schedule.calls_per_iteration * self.schedule.gradient_steps
        return self._gradient_steps(state, key, updates)

    def checkpoint_state(self) -> dict:
        """Loop-owned arrays a checkpoint must hold: the replay buffer."""
        return {"replay": self.replay}

    def restore(self, saved: dict) -> None:
        self.replay = saved["replay"]

    def reset(self, seed: int) -> None:
        self.collector.reset(seed)
        self.replay = replay_restart_episodes(self.replay)
        # Apart from the run's own key stream, which starts from PRNGKey(seed).
        self._held_draws = jax.random.fold_in(jax.random.PRNGKey(seed), 1)

    def _held(self, carry, call: int) -> dict:
        """The carry of a warm-up call, with the key its random draws share when they are held
        (schedule.explore_hold_calls consecutive calls draw with one key)."""
        hold_calls = self.schedule.explore_hold_calls
        if hold_calls is None:
            return carry
        return carry | {"held_draw": jax.random.fold_in(self._held_draws, call // hold_calls)}

    def at_stage_boundary(self, state) -> bool:
        """Never (see the class docstring)."""
        return False

    def offline_pending(self, state) -> bool:
        """Whether the next iteration trains on an offline dataset alone."""
        return int(state["iteration"]) < self.schedule.offline_iterations

    def iterate(self, state, key) -> IterationResult:
        if self.offline_pending(state):
            return self._iterate_offline(state, key)
        schedule = self.schedule
        online_iteration = int(state["iteration"]) - schedule.offline_iterations
        first_call = online_iteration * schedule.calls_per_iteration
        carry = _unaliased({"algo": state, "replay": self.replay})
        updates, counts = [], np.zeros(4)
        for call in range(first_call, first_call + schedule.calls_per_iteration):
            if call < self.warmup_calls:
                carry, key, metrics, episodes = self._explore_call(self._held(carry, call), key)
                carry.pop("held_draw", None)
            else:
                carry, key, metrics, episodes = self._train_call(carry, key)
            if metrics:
                updates.append(metrics)
            counts += (
                episodes.count,
                episodes.return_sum,
                episodes.length_sum,
                episodes.env_steps,
            )
        self.replay = carry["replay"]
        state = carry["algo"] | {"iteration": carry["algo"]["iteration"] + 1}
        metrics = {k: np.mean([m[k] for m in updates]) for k in updates[0]} if updates else {}
        count, return_sum, length_sum, steps = counts
        episodes = EpisodeStats(int(count), float(return_sum), float(length_sum), int(steps))
        return IterationResult(state, key, metrics, episodes, int(steps), int(steps), False)

    def _iterate_offline(self, state, key) -> IterationResult:
        key, update_key = split_key(key)
        carry = _unaliased({"algo": state, "replay": self.replay})
        carry, metrics = self._offline_call(carry, update_key)
        self.replay = carry["replay"]
        state = carry["algo"] | {"iteration": carry["algo"]["iteration"] + 1}
        updates = self.schedule.calls_per_iteration * self.schedule.gradient_steps
        return IterationResult(
            state, key, jax.device_get(metrics), EpisodeStats(0, 0.0, 0.0, 0), 0, 0, False, updates
        )


def _unaliased(tree):
    """tree with every array that appears twice copied: a donated call cannot take one buffer
    as two arguments (a fresh target network is its online network's very arrays)."""
    seen = set()

    def distinct(x):
        if id(x) in seen:
            return jnp.copy(x)
        seen.add(id(x))
        return x

    return jax.tree.map(distinct, tree)


def make_loop(algo, make_collector, offline_data=None):
    """The loop an algorithm's base class asks for; make_collector(act) builds its collector.
    offline_data pre-fills an off-policy loop's replay buffer (on-policy loops have none)."""
    if isinstance(algo, OffPolicyAlgorithm):
        return OffPolicyLoop(algo, make_collector, offline_data)
    if offline_data is not None:
        raise ValueError("an offline dataset needs an off-policy algorithm (a replay buffer)")
    return OnPolicyLoop(algo, make_collector(algo.act))
