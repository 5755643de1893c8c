import jax.numpy as jnp
import numpy as np
import pytest

from gprl.rl_math import (
    gae_advantages,
    normalize,
    ppo_policy_loss,
    running_stats_init,
    running_stats_update,
    value_loss,
)


def test_gae_matches_hand_computed_case():
    # One env, three steps, the episode ends after step 1 (index 1).
    rewards = np.array([[1.0], [2.0], [3.0]])
    values = np.array([[0.5], [1.0], [1.5]])
    dones = np.array([[0.0], [1.0], [0.0]])
    last_value = np.array([2.0])
    gamma, lam = 0.9, 0.8
    # deltas: t0: 1 + .9*1.0 - .5 = 1.4 ; t1: 2 + 0 - 1 = 1.0 ; t2: 3 + .9*2 - 1.5 = 3.3
    # advantages: A2 = 3.3 ; A1 = 1.0 (episode boundary) ; A0 = 1.4 + .72 * 1.0 = 2.12
    advantages, returns = gae_advantages(
        jnp.asarray(rewards),
        jnp.asarray(values),
        jnp.asarray(dones),
        jnp.asarray(last_value),
        gamma,
        lam,
    )
    np.testing.assert_allclose(np.asarray(advantages)[:, 0], [2.12, 1.0, 3.3], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(returns)[:, 0], [2.62, 2.0, 4.8], rtol=1e-6)


def test_gae_lambda_one_gives_discounted_returns():
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=(6, 2))
    values = rng.normal(size=(6, 2))
    dones = np.zeros((6, 2))
    last_value = np.array([0.3, -0.2])
    _, returns = gae_advantages(rewards, values, dones, last_value, 0.95, 1.0)
    expected = np.zeros((6, 2))
    running = last_value
    for t in reversed(range(6)):
        running = rewards[t] + 0.95 * running
        expected[t] = running
    np.testing.assert_allclose(np.asarray(returns), expected, rtol=1e-5)


def test_running_stats_match_numpy_over_batches():
    rng = np.random.default_rng(1)
    data = rng.normal(3.0, 2.0, size=(1000, 4))
    stats = running_stats_init((4,))
    for chunk in np.array_split(data, 7):
        stats = running_stats_update(stats, chunk)
    np.testing.assert_allclose(stats["mean"], data.mean(0), rtol=1e-4)
    np.testing.assert_allclose(stats["var"], data.var(0), rtol=1e-3)
    normalized = np.asarray(normalize(data, stats))
    np.testing.assert_allclose(normalized.mean(0), 0.0, atol=1e-3)
    np.testing.assert_allclose(normalized.std(0), 1.0, atol=1e-3)


def test_disabled_normalizer_is_identity():
    stats = running_stats_update(running_stats_init((2,)), np.array([[5.0, 1.0], [7.0, 3.0]]))
    x = np.array([[1.5, -2.0]], np.float32)
    np.testing.assert_allclose(np.asarray(normalize(x, stats, enabled=False)), x)


def test_ppo_loss_clips_only_beyond_epsilon():
    advantages = jnp.array([1.0, 1.0, -1.0])
    old = jnp.zeros(3)
    new = jnp.log(jnp.array([1.5, 1.1, 0.5]))
    loss, info = ppo_policy_loss(new - old, advantages, clip_eps=0.2)
    # min(r A, clip(r) A): 1.2, 1.1, -0.8 -> mean 0.5 -> loss -0.5
    assert float(loss) == pytest.approx(-(1.2 + 1.1 - 0.8) / 3, rel=1e-6)
    assert float(info["clip_fraction"]) == pytest.approx(2 / 3)
    _, same = ppo_policy_loss(old - old, advantages, clip_eps=0.2)
    assert float(same["ratio_mean"]) == 1.0 and float(same["approx_kl"]) == 0.0


def test_value_clipping_limits_update():
    old = jnp.array([0.0])
    returns = jnp.array([10.0])
    unclipped = value_loss(jnp.array([5.0]), old, returns, None)
    clipped = value_loss(jnp.array([5.0]), old, returns, 0.2)
    assert float(unclipped) == pytest.approx(12.5)
    assert float(clipped) == pytest.approx(0.5 * 9.8**2)
