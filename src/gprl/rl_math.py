"""Math shared by the methods: returns, advantages, PPO surrogate, normalisation, and an entropy
estimate from samples (for policies without a tractable likelihood).

Everything here is a pure jax function, so a whole rollout-and-update can run inside `jit`.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import digamma, gammaln

NORMALIZE_EPS = 1e-8
NORMALIZE_CLIP = 10.0


def gae_advantages(rewards, values, dones, last_value, gamma: float, gae_lambda: float):
    """Generalised advantage estimation over a time-major rollout.

    rewards, values, dones: (T, N); dones[t] marks that the episode ended after step t (the
    time-limit bootstrap is already folded into rewards). Returns (advantages, returns).
    """
    next_values = jnp.concatenate([values[1:], last_value[None]], axis=0)
    not_done = 1.0 - dones
    deltas = rewards + gamma * next_values * not_done - values

    def backward(carry, inputs):
        delta, mask = inputs
        carry = delta + gamma * gae_lambda * mask * carry
        return carry, carry

    _, advantages = jax.lax.scan(
        backward, jnp.zeros_like(last_value), (deltas, not_done), reverse=True
    )
    return advantages, advantages + values


def ppo_policy_loss(log_ratio, advantages, clip_eps, negative_advantages="clip"):
    """Clipped surrogate (to minimise) of a log probability ratio log pi_new - log pi_old.

    Methods with other likelihoods (or likelihood surrogates) plug their own log ratio in here;
    log_ratio and advantages broadcast against each other (several ratios per sample share its
    advantage). negative_advantages="spo" replaces the clip where the advantage is negative by
    the simple-policy-optimisation penalty A r - |A| (r - 1)^2 / (2 clip_eps), whose gradient
    pulls the ratio back instead of vanishing at the clip edge.
    """
    ratio = jnp.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
    surrogate = jnp.minimum(unclipped, clipped)
    if negative_advantages == "spo":
        penalised = unclipped - jnp.abs(advantages) * (ratio - 1.0) ** 2 / (2.0 * clip_eps)
        surrogate = jnp.where(advantages < 0, penalised, surrogate)
    elif negative_advantages != "clip":
        raise ValueError(f"negative_advantages must be 'clip' or 'spo', got {negative_advantages}")
    loss = -jnp.mean(surrogate)
    info = {
        "approx_kl": jnp.mean((ratio - 1.0) - log_ratio),
        "clip_fraction": jnp.mean(jnp.abs(ratio - 1.0) > clip_eps),
        "ratio_mean": jnp.mean(ratio),
    }
    return loss, info


def value_loss(values, old_values, returns, clip_eps: float | None):
    """0.5 * squared error, optionally with PPO-style value clipping."""
    unclipped = (values - returns) ** 2
    if clip_eps is None:
        return 0.5 * jnp.mean(unclipped)
    clipped_values = old_values + jnp.clip(values - old_values, -clip_eps, clip_eps)
    return 0.5 * jnp.mean(jnp.maximum(unclipped, (clipped_values - returns) ** 2))


def explained_variance(predictions, targets):
    var = jnp.var(targets)
    return jnp.where(var > 0, 1.0 - jnp.var(targets - predictions) / var, jnp.nan)


def running_stats_init(shape) -> dict:
    """Running mean / variance / count as float32 jax arrays (part of the training state)."""
    return {
        "mean": jnp.zeros(shape, jnp.float32),
        "var": jnp.ones(shape, jnp.float32),
        "count": jnp.asarray(1e-4, jnp.float32),
    }


def running_stats_update(stats: dict, batch) -> dict:
    """Chan et al. parallel mean/variance update with a batch of samples along axis 0."""
    batch = jnp.asarray(batch, jnp.float32)
    batch_mean, batch_var, batch_count = batch.mean(0), batch.var(0), batch.shape[0]
    delta = batch_mean - stats["mean"]
    total = stats["count"] + batch_count
    mean = stats["mean"] + delta * batch_count / total
    m2 = stats["var"] * stats["count"] + batch_var * batch_count
    m2 = m2 + delta**2 * stats["count"] * batch_count / total
    return {"mean": mean, "var": m2 / total, "count": total}


def normalize(x, stats: dict, enabled: bool = True):
    """Standardise x with running statistics (clipped to +-10); the identity when disabled."""
    if not enabled:
        return x
    std = jnp.sqrt(stats["var"] + NORMALIZE_EPS)
    return jnp.clip((x - stats["mean"]) / std, -NORMALIZE_CLIP, NORMALIZE_CLIP)


MIN_NEIGHBOUR_DISTANCE = 1e-4
"""Floor of a sample's distance to its nearest neighbour in the entropy estimate: clipping to
[-1, 1] stacks samples on the same point, whose log-distance would be -inf."""


def nearest_neighbour_entropy(samples):
    """Kozachenko-Leonenko estimate of the differential entropy of the distribution that drew
    samples (..., M, d), per leading index: psi(M) - psi(1) + log V_d + d mean_i log r_i, r_i
    the distance from sample i to its nearest other sample, V_d the unit d-ball's volume.
    Consistent for multimodal distributions."""
    count, dim = samples.shape[-2:]
    squared = jnp.sum((samples[..., :, None, :] - samples[..., None, :, :]) ** 2, axis=-1)
    squared = jnp.where(jnp.eye(count, dtype=bool), jnp.inf, squared)
    nearest = jnp.sqrt(jnp.maximum(squared.min(-1), MIN_NEIGHBOUR_DISTANCE**2))
    log_unit_ball = 0.5 * dim * np.log(np.pi) - gammaln(0.5 * dim + 1.0)
    bias = digamma(float(count)) - digamma(1.0) + log_unit_ball
    return bias + dim * jnp.mean(jnp.log(nearest), axis=-1)
