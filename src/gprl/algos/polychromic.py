"""The polychromic objective's set-level advantage ("Polychromic Objectives for Reinforcement
Learning"): reward a group of episodes that share a start for succeeding in different ways.

From n episodes of one group, every set of k of them scores (mean return of the set) x (its
diversity), and each episode's advantage is the mean score of the sets that hold it minus the
mean score of all the group's sets. An episode that repeats what the others already do lowers
the diversity of every set it joins, so among equally good episodes the rarer outcomes gain.

Diversity needs no task knowledge: it is the share of distinct outcomes among the set's k
episodes, where an outcome is a vector per episode (its first action, or its final observation)
and two episodes count as the same outcome when their vectors lie within a radius. Members are
taken in group order, and one counts as new when no earlier member of the set is that close; the
diversity lies in [1 / k, 1]. The product assumes non-negative returns (successes), so that more
diversity never lowers a set's score.

The paper fine-tunes pretrained policies, and that is where it helps here too (GRPO on
FourModeBandit, seed 0): fine-tuning a behaviour clone of four-mode demos for 100k steps, plain
GRPO drifts to shares of 0.18 / 0.18 / 0.36 / 0.23, with sets of 4 they stay 0.23-0.24 each.
From scratch no variant kept a second mode: the product rewards diverse failures, so a policy
that rarely succeeds spreads out instead of learning (return ~0 after 200k steps); mixed with
the standardised returns (`polychromic_weight` 0.5), or with best_per_outcome, it learns and
collapses to one mode like plain GRPO.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

MAX_SETS = 20_000
"""A cap on C(n, k), the sets enumerated per group, to keep the update's memory small."""
SCORES = ("product", "best_per_outcome")
"""How a set is scored: "product" is the paper's (mean return) x (share of distinct outcomes);
"best_per_outcome" sums, over the set's distinct outcomes, the best return reaching each, / k."""


def check_set_size(set_size: int, group_size: int) -> None:
    """A one-line ValueError unless 2 <= set_size < group_size (a set of the whole group is the
    only set, and would give every episode the advantage 0) and the sets are few enough."""
    if not 2 <= set_size < group_size:
        raise ValueError(
            f"polychromic_set_size must be 0 (off), or at least 2 and below group_size "
            f"({group_size}), got {set_size}"
        )
    if math.comb(group_size, set_size) > MAX_SETS:
        raise ValueError(
            f"polychromic sets of {set_size} from groups of {group_size} are "
            f"{math.comb(group_size, set_size)}, more than {MAX_SETS}: use a smaller set size"
        )


def set_scores(set_returns, same, score: str):
    """(..., S) scores of sets from their members' returns (..., S, k) and which members share
    an outcome (..., S, k, k); score names the objective (see SCORES)."""
    set_size = set_returns.shape[-1]
    earlier = jnp.tril(jnp.ones((set_size, set_size), bool), k=-1)  # [p, q]: q before p
    if score == "product":
        new_outcome = ~jnp.any(same & earlier, axis=-1)
        return set_returns.mean(-1) * new_outcome.sum(-1) / set_size
    others, own = set_returns[..., None, :], set_returns[..., :, None]
    beaten = same & ((others > own) | ((others == own) & earlier))
    return jnp.where(jnp.any(beaten, axis=-1), 0.0, set_returns).sum(-1) / set_size


def set_level_advantages(returns, outcomes, finished, set_size: int, radius: float, score: str):
    """Per-episode set-level advantages for groups of n episodes sharing a start.

    Args:
        returns: (..., n) episode returns (non-negative: successes or offset returns).
        outcomes: (..., n, d) each episode's outcome vector.
        finished: (..., n) which episodes count; a set with an unfinished member is left out.
        set_size: k, the episodes per set (2 <= k <= n).
        radius: outcomes within this Euclidean distance are the same outcome.
        score: how a set is scored, one of SCORES.

    Returns (..., n): mean score of the sets holding the episode minus the group's mean set
    score; 0 for unfinished episodes and groups with fewer than k finished ones.
    """
    group_size = returns.shape[-1]
    sets = np.array(list(itertools.combinations(range(group_size), set_size)))
    membership = jnp.asarray(np.eye(group_size)[sets].sum(1))  # (S, n)
    distance = jnp.linalg.norm(outcomes[..., :, None, :] - outcomes[..., None, :, :], axis=-1)
    same = (distance <= radius)[..., sets[:, :, None], sets[:, None, :]]  # (..., S, k, k)
    score = set_scores(returns[..., sets], same, score)
    weight = jnp.prod(finished[..., sets].astype(jnp.float32), axis=-1)
    group_mean = (weight * score).sum(-1, keepdims=True) / jnp.maximum(
        weight.sum(-1, keepdims=True), 1.0
    )
    held_weight = (weight[..., :, None] * membership).sum(-2)
    held_mean = ((weight * score)[..., :, None] * membership).sum(-2) / jnp.maximum(held_weight, 1)
    return jnp.where(held_weight > 0, held_mean - group_mean, 0.0)


def episode_outcomes(values, dones, ordinal, outcome: str):
    """(T, N, d) outcome vectors of the episodes of a rollout, indexed like the returns: row j of
    env n is the j-th episode of env n counted from the rollout's start.

    values are the rollout's actions (outcome "first_action": the action of each episode's first
    step) or its next observations ("final_obs": the observation its last step ended in);
    dones (T, N) int, ordinal (T, N) each step's episode number.
    """
    steps, num_envs = dones.shape
    if outcome == "first_action":
        first = jnp.concatenate([jnp.ones_like(dones[:1]), dones[:-1]], axis=0)
        picked = values * first[..., None]
    else:
        picked = values * dones[..., None]
    segment = (ordinal * num_envs + jnp.arange(num_envs)).ravel()
    flat = picked.reshape(steps * num_envs, -1)
    summed = jax.ops.segment_sum(flat, segment, steps * num_envs)
    return summed.reshape(steps, num_envs, -1)
