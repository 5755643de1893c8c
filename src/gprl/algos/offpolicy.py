"""What every off-policy method shares: the replay and update-schedule knobs, validated, and the
schedule the off-policy loop follows; soft target updates.

The loop collects `update_every` env steps, stores them in the replay buffer, then runs
update_to_data x update_every gradient steps in one compiled call, each on a fresh batch sampled
from the buffer. Before `learning_starts` env steps it explores (uniform
random actions) and does not update.

With an offline dataset pre-filled into the buffer (`gprl train ALGO --dataset ID`), the run
starts with `offline_updates` gradient steps on the dataset alone, in iterations of as many
gradient steps as an online iteration has, then acts with the trained policy from the first env
step (no random exploration, as FQL's offline-to-online runs) while the same updates go on over
the dataset and the online data together.
"""

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp


@dataclass(frozen=True)
class OffPolicyConfig:
    buffer_size: int = 1_000_000
    """Replay buffer capacity in transitions (capped at the run's budget); the oldest are
    overwritten first. Saved in every checkpoint, so a resumed run replays the same samples."""
    batch_size: int = 256
    """Transitions per gradient step, sampled uniformly with replacement."""
    learning_starts: int = 5_000
    """Env steps of uniformly random actions before the first update (rounded up to whole
    update calls); none when --dataset pre-fills the buffer (the policy acts and learns from
    the first env step, and the budget need not exceed learning_starts)."""
    explore_hold: int = 1
    """Vector steps each random draw of the warm-up is held for (rounded up to whole update
    calls once above 1): 1 draws afresh at every step. Held draws carry the agent further from
    its start, as action repeat does; i.i.d. uniform actions stay within ~sqrt(steps) of it.
    Raise it where rewards lie beyond that (gprl/TwoGoalPoint-v0's goals, for one)."""
    update_to_data: float = 1.0
    """Gradient steps per env step (UTD ratio); per decision (stored transition) where the run
    executes action chunks, whose env-step counts here become decisions."""
    update_every: int = 50
    """Env steps collected between update calls (rounded down to whole vector steps, at least
    one); the update_to_data x update_every gradient steps that follow run in one compiled call
    (lax.scan). 50 is SpinningUp's SAC default; 1 with one env is the SB3 / CleanRL loop, an
    update after every env step, at several times the call overhead."""
    steps_per_iteration: int = 1_000
    """Env steps per iteration: one row of metrics.csv (losses averaged over it); evaluations
    and checkpoints fall between iterations. Rounded down to whole update calls."""
    offline_fraction: float | None = None
    """Share of each batch drawn from an offline dataset pre-filled into the buffer, the rest
    from online data (None: uniform over all stored transitions)."""

    return_floor: bool = False
    """Floor the TD target at the discounted return the transition's episode went on to receive
    until it terminated (Monte Carlo augmented actor-critic, Wilcox et al. 2022), where the
    replay buffer knows one: a success reached once lifts the values of the states that led to
    it at once, not one bootstrap per update. A lower bound on the optimal value where the
    return follows from the actions (deterministic tasks); episodes ended by a time limit or
    still running give none. Off in the references."""

    offline_updates: int = 0
    """Gradient steps on the offline dataset alone (--dataset) before the first env step,
    rounded up to whole iterations of steps_per_iteration x update_to_data gradient steps; they
    advance the evaluation and checkpoint clocks (--eval-every, --checkpoint-every) like env
    steps. FQL's reference runs 1,000,000."""

    def validate(self) -> None:
        """Raise ValueError naming the first nonsensical field."""
        if self.offline_updates < 0:
            raise ValueError(f"offline_updates must be non-negative, got {self.offline_updates}")
        names = ("buffer_size", "batch_size", "update_every", "steps_per_iteration", "explore_hold")
        for name in names:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.update_to_data > 0:
            raise ValueError(f"update_to_data must be positive, got {self.update_to_data}")
        if self.learning_starts < 0:
            raise ValueError(f"learning_starts must be non-negative, got {self.learning_starts}")
        if self.offline_fraction is not None and not 0.0 <= self.offline_fraction <= 1.0:
            raise ValueError(f"offline_fraction must be in [0, 1], got {self.offline_fraction}")
        if self.return_floor and not hasattr(self, "gamma"):
            raise ValueError("return_floor needs a discount: this method has no gamma")

    def tracks_returns(self) -> bool:
        """Whether the replay buffer tracks each transition's return-to-go (with gamma)."""
        return self.return_floor


class OffPolicySchedule(NamedTuple):
    """The off-policy loop's geometry for one run (see :func:`off_policy_schedule`)."""

    batch_size: int
    buffer_capacity: int
    """Online replay slots."""
    offline_fraction: float | None
    update_interval: int
    """Vector steps per update call."""
    gradient_steps: int
    """Gradient steps per update call."""
    calls_per_iteration: int
    warmup_calls: int
    """Update calls at the start of the online phase that explore and store without updating
    (none when the buffer holds an offline dataset)."""
    explore_hold_calls: int | None
    """Update calls each warm-up draw is held for; None: a fresh draw at every vector step."""
    warmup_refusal: str | None
    """Why the warm-up would leave no update to run, or None (see check_warmup_fits)."""
    offline_iterations: int
    """Iterations of calls_per_iteration x gradient_steps gradient steps on the offline dataset
    alone, before the first env step."""
    num_iterations: int
    """Offline and online iterations."""
    return_discount: float | None
    """The discount per stored transition the replay buffer tracks returns with
    (OffPolicyConfig.tracks_returns); None: not tracked."""

    def check_warmup_fits(self) -> None:
        """Refuse (ValueError) a warm-up that fills the whole run. The loop checks it only when
        no offline dataset pre-fills the buffer: with one, no warm-up runs."""
        if self.warmup_refusal is not None:
            raise ValueError(self.warmup_refusal)


def off_policy_schedule(
    config: OffPolicyConfig, num_envs: int, total_steps: int
) -> OffPolicySchedule:
    """Validate config against the run and derive the loop's schedule; ValueError on nonsense."""
    config.validate()
    update_interval = max(config.update_every // num_envs, 1)
    call_steps = update_interval * num_envs
    gradient_steps = config.update_to_data * call_steps
    if gradient_steps < 1 or gradient_steps != int(gradient_steps):
        raise ValueError(
            f"update_to_data x env steps per update call = {config.update_to_data:g} x "
            f"{call_steps} = {gradient_steps:g} gradient steps per call; it must be a whole "
            "number of at least 1"
        )
    calls_per_iteration = max(config.steps_per_iteration // call_steps, 1)
    iteration_steps = calls_per_iteration * call_steps
    num_iterations = total_steps // iteration_steps
    if num_iterations < 1:
        raise ValueError(
            f"total_steps of {total_steps} env steps is smaller than one iteration "
            f"({iteration_steps} env steps); raise the budget"
        )
    warmup_calls = -(-config.learning_starts // call_steps)
    warmup_refusal = None
    if warmup_calls >= num_iterations * calls_per_iteration:
        warmup_refusal = (
            f"learning_starts ({config.learning_starts}) must be below total_steps "
            f"({total_steps}, {num_iterations * iteration_steps} in whole iterations): no "
            "update would run"
        )
    iteration_updates = calls_per_iteration * int(gradient_steps)
    offline_iterations = -(-config.offline_updates // iteration_updates)
    capacity = min(config.buffer_size, num_iterations * iteration_steps)
    if capacity < call_steps:
        raise ValueError(
            f"buffer_size ({config.buffer_size}) is smaller than the {call_steps} env steps "
            "stored at once (update_every, at least num_envs)"
        )
    return OffPolicySchedule(
        batch_size=config.batch_size,
        buffer_capacity=capacity,
        offline_fraction=config.offline_fraction,
        update_interval=update_interval,
        gradient_steps=int(gradient_steps),
        calls_per_iteration=calls_per_iteration,
        warmup_calls=warmup_calls,
        explore_hold_calls=-(-config.explore_hold // update_interval)
        if config.explore_hold > 1
        else None,
        warmup_refusal=warmup_refusal,
        offline_iterations=offline_iterations,
        num_iterations=offline_iterations + num_iterations,
        return_discount=config.gamma if config.tracks_returns() else None,
    )


def floored_at_return(config: OffPolicyConfig, target, batch):
    """(target floored at each transition's known return-to-go, the share of the batch the
    floor lifted); target unchanged without config.return_floor."""
    if not config.return_floor:
        return target, jnp.zeros(())
    floored = jnp.maximum(target, batch.return_to_go)
    return floored, jnp.mean(floored > target)


def soft_update(target, online, tau: float):
    """Polyak averaging: target <- (1 - tau) * target + tau * online."""
    return jax.tree.map(lambda t, o: t + tau * (o - t), target, online)
