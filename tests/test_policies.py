from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gprl.policies import (
    DDPMPolicy,
    DDPMPolicyConfig,
    DiffusionPolicy,
    DiffusionPolicyConfig,
    FlowPolicy,
    FlowPolicyConfig,
    GaussianPolicy,
    GaussianPolicyConfig,
    GaussianPolicyNet,
    gaussian_entropy,
    gaussian_log_prob,
    kl_to_standard_normal,
)
from gprl.policies.ddpm import sampling_schedule
from gprl.policies.imitation import EMA_WARMUP_POWER, FitConfig, ImitationFitter

SMALL_FLOW = FlowPolicyConfig(hidden=(32, 32), num_steps=5)
SMALL_DIFFUSION = DiffusionPolicyConfig(hidden=(32, 32), num_train_steps=20, num_steps=5)
SMALL_DDPM = DDPMPolicyConfig(hidden=(32, 32), sampler="ddim", num_steps=5)


def test_gaussian_log_prob_entropy_and_kl_match_closed_forms():
    mean = jnp.array([[0.3, -1.0]])
    std = jnp.array([[0.5, 2.0]])
    x = jnp.array([[0.1, 0.5]])
    expected = sum(
        -0.5 * ((xi - m) / s) ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi)
        for xi, m, s in [(0.1, 0.3, 0.5), (0.5, -1.0, 2.0)]
    )
    assert float(gaussian_log_prob(mean, std, x)[0]) == pytest.approx(expected, rel=1e-5)
    expected_entropy = sum(np.log(s) + 0.5 * (1 + np.log(2 * np.pi)) for s in (0.5, 2.0))
    assert float(gaussian_entropy(std)[0]) == pytest.approx(expected_entropy, rel=1e-5)
    assert float(kl_to_standard_normal(jnp.zeros(3), jnp.ones(3))) == pytest.approx(0.0)
    assert float(kl_to_standard_normal(jnp.ones(1), jnp.ones(1))) == pytest.approx(0.5)


@pytest.mark.parametrize("std_type", ["learned", "softplus"])
def test_gaussian_policy_starts_at_its_init_std(std_type):
    net = GaussianPolicyNet(GaussianPolicyConfig(std_type=std_type, init_std=0.7), 3)
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 4)))
    mean, std = net.apply(params, jax.random.normal(jax.random.PRNGKey(1), (5, 4)))
    assert mean.shape == std.shape == (5, 3)
    np.testing.assert_allclose(np.asarray(std), 0.7, rtol=0.05)
    assert float(jnp.abs(mean).max()) < 0.1


@pytest.mark.parametrize(
    "policy",
    [FlowPolicy(2, SMALL_FLOW), DiffusionPolicy(2, SMALL_DIFFUSION), DDPMPolicy(2, SMALL_DDPM)],
    ids=["flow", "diffusion", "ddim"],
)
def test_sampler_is_a_deterministic_function_of_the_given_noise(policy):
    params = policy.init(jax.random.PRNGKey(0), 3)
    cond = jax.random.normal(jax.random.PRNGKey(1), (8, 3))
    noise = jax.random.normal(jax.random.PRNGKey(2), (8, 2))
    action, chain = policy.sample(params, cond, noise, return_chain=True)
    assert chain.shape == (policy.config.num_steps + 1, 8, 2)
    np.testing.assert_array_equal(np.asarray(chain[0]), np.asarray(noise))
    np.testing.assert_array_equal(np.asarray(chain[-1]), np.asarray(action))
    again = policy.sample(params, cond, noise)
    np.testing.assert_array_equal(np.asarray(again), np.asarray(action))
    other = policy.sample(params, cond, noise + 1.0)
    assert not np.allclose(np.asarray(other), np.asarray(action))


def test_zero_velocity_flow_is_the_identity():
    policy = FlowPolicy(2, FlowPolicyConfig(hidden=(16,), zero_init=True, num_steps=7))
    params = policy.init(jax.random.PRNGKey(0), 3)
    cond = jax.random.normal(jax.random.PRNGKey(1), (10, 3))
    noise = jax.random.normal(jax.random.PRNGKey(2), (10, 2))
    np.testing.assert_allclose(np.asarray(policy.sample(params, cond, noise)), np.asarray(noise))


def test_flow_euler_integrates_a_constant_velocity_exactly():
    policy = FlowPolicy(1, FlowPolicyConfig(hidden=(8,), zero_init=True, num_steps=4))
    params = policy.init(jax.random.PRNGKey(0), 1)
    # Set the output bias: velocity 0.5 everywhere moves x by exactly 0.5 over t in [0, 1].
    trunk = params["params"]["trunk"]
    last = max(k for k in trunk if k.startswith("Dense"))
    trunk[last]["bias"] = jnp.array([0.5])
    out = policy.sample(params, jnp.zeros((3, 1)), jnp.array([[0.0], [1.0], [-2.0]]))
    np.testing.assert_allclose(np.asarray(out)[:, 0], [0.5, 1.5, -1.5], rtol=1e-6)


def test_flow_sampler_equals_euler_on_the_full_velocity_network():
    # The sampler projects the condition and the time grid once per call; the result must be
    # the plain Euler integration of velocity(cond, x, t), the function the loss trains.
    policy = FlowPolicy(2, FlowPolicyConfig(num_steps=5))
    params = policy.init(jax.random.PRNGKey(0), 3)
    params = jax.tree.map(
        lambda p: p + 0.3 * jax.random.normal(jax.random.PRNGKey(4), p.shape), params
    )
    cond = jax.random.normal(jax.random.PRNGKey(1), (6, 3))
    x = noise = jax.random.normal(jax.random.PRNGKey(2), (6, 2))
    for k in range(5):
        x = x + 0.2 * policy.velocity(params, cond, x, jnp.full((6,), k * 0.2))
    np.testing.assert_allclose(
        np.asarray(policy.sample(params, cond, noise)), x, rtol=1e-5, atol=1e-5
    )
    assert not np.allclose(np.asarray(x), np.asarray(noise), atol=0.1)


def _fit(policy, cond, actions, steps=1500, lr=3e-3):
    params = policy.init(jax.random.PRNGKey(0), cond.shape[-1])
    optimizer = optax.adam(lr)

    @jax.jit
    def step(params, opt_state, key):
        grads, _ = jax.grad(policy.loss, has_aux=True)(params, cond, actions, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    opt_state = optimizer.init(params)
    for key in jax.random.split(jax.random.PRNGKey(1), steps):
        params, opt_state = step(params, opt_state, key)
    return params


@pytest.mark.parametrize(
    "policy",
    [
        # The flow's two modes are also checked through `gprl pretrain` (test_pretrain).
        pytest.param(FlowPolicy(1, FlowPolicyConfig(hidden=(64, 64))), marks=pytest.mark.slow),
        DiffusionPolicy(
            1, DiffusionPolicyConfig(hidden=(64, 64), num_train_steps=50, num_steps=10)
        ),
    ],
    ids=["flow", "diffusion"],
)
def test_behaviour_cloning_keeps_both_modes(policy):
    # Actions are +-0.6 with equal probability, whatever the condition: the sampler must put
    # mass on both modes (a Gaussian fit would centre on 0).
    rng = np.random.default_rng(0)
    cond = jnp.asarray(rng.uniform(-1, 1, (2048, 2)), jnp.float32)
    actions = jnp.asarray(
        rng.choice([-0.6, 0.6], (2048, 1)) + 0.02 * rng.normal(size=(2048, 1)), jnp.float32
    )
    params = _fit(policy, cond, actions)
    samples = np.asarray(
        policy.sample(params, cond[:1000], jax.random.normal(jax.random.PRNGKey(5), (1000, 1)))
    )[:, 0]
    near = np.minimum(np.abs(samples - 0.6), np.abs(samples + 0.6)) < 0.15
    assert near.mean() > 0.85
    upper_share = (samples[near] > 0).mean()
    assert 0.3 < upper_share < 0.7


def test_ddpm_schedule_and_posterior_match_their_closed_forms():
    # DPPO's cosine schedule: alpha_bar_t = f(t) / f(0), f(t) = cos^2((t / K + s) / (1 + s) pi / 2),
    # with each beta clipped at 0.999 (which only the last step reaches).
    policy = DDPMPolicy(1, DDPMPolicyConfig(hidden=(8,)))
    steps = np.arange(21) / 20
    f = np.cos((steps + 0.008) / 1.008 * np.pi / 2) ** 2
    expected = f[1:] / f[0]
    np.testing.assert_allclose(policy.alpha_bars_host[:-1], expected[:-1], rtol=1e-5)
    assert policy.alpha_bars_host[-1] == pytest.approx(expected[-2] * 0.001, rel=1e-4)
    # Over all K steps the step is the DDPM posterior: std^2 = beta (1 - a') / (1 - a), mean
    # coef1 x0 + coef2 x (Ho et al. eq. 7), at any x and clean x0.
    schedule, direction, std = policy.step_scales(20)
    a, a_next = schedule["alpha_bar"], schedule["alpha_bar_next"]
    beta = 1 - a / a_next
    variance = beta * (1 - a_next) / (1 - a)
    np.testing.assert_allclose(schedule["sigma"] ** 2, variance, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(std[:-1], np.maximum(np.sqrt(variance[:-1]), 1e-3), rtol=1e-6)
    assert std[-1] == 0.0
    x, clean = np.random.default_rng(0).normal(size=(2, 20))
    eps = (x - np.sqrt(a) * clean) / np.sqrt(1 - a)
    mean = np.sqrt(a_next) * clean + direction * eps
    coef1 = beta * np.sqrt(a_next) / (1 - a)
    coef2 = (1 - a_next) * np.sqrt(1 - beta) / (1 - a)
    np.testing.assert_allclose(mean, coef1 * clean + coef2 * x, rtol=1e-5, atol=1e-8)
    # Fewer steps: strided from the noisiest step, the last one ending at the clean action.
    assert sampling_schedule(policy.alpha_bars_host, 4)["index"].tolist() == [19, 14, 9, 4]


def test_ddpm_sampling_is_a_deterministic_function_of_the_noise_and_the_step_noises():
    policy = DDPMPolicy(2, DDPMPolicyConfig(hidden=(32, 32), num_train_steps=10, num_steps=10))
    params = policy.init(jax.random.PRNGKey(0), 3)
    cond = jax.random.normal(jax.random.PRNGKey(1), (8, 3))
    noise = jax.random.normal(jax.random.PRNGKey(2), (8, 2))
    step_noise = jax.random.normal(jax.random.PRNGKey(3), (10, 8, 2))
    assert policy.step_noise_steps() == 10
    action, chain = policy.sample(params, cond, noise, step_noise=step_noise, return_chain=True)
    assert chain.shape == (11, 8, 2)
    again = policy.sample(params, cond, noise, step_noise=step_noise)
    np.testing.assert_array_equal(np.asarray(again), np.asarray(action))
    other = policy.sample(params, cond, noise, step_noise=step_noise.at[3].add(1.0))
    assert not np.allclose(np.asarray(other), np.asarray(action))
    # The last step is noiseless, and every predicted clean action is clipped to [-1, 1].
    last = policy.sample(params, cond, noise, step_noise=step_noise.at[-1].add(1.0))
    np.testing.assert_array_equal(np.asarray(last), np.asarray(action))
    assert float(jnp.abs(action).max()) <= 1.0 + 1e-6


def test_ddpm_and_few_step_ddim_sample_both_modes_alike():
    # Actions are +-0.6 with equal probability, whatever the condition: the DDPM posterior chain
    # and a 5-step deterministic DDIM from the same network must both split between the modes.
    rng = np.random.default_rng(0)
    cond = rng.uniform(-1, 1, (1024, 2)).astype(np.float32)
    actions = (rng.choice([-0.6, 0.6], (1024, 1)) + 0.02 * rng.normal(size=(1024, 1))).astype(
        np.float32
    )
    config = DDPMPolicyConfig(hidden=(64, 64))
    ddpm = DDPMPolicy(1, config)
    fitter = ImitationFitter(ddpm, FitConfig(batch_size=256, learning_rate=3e-3, chunk_steps=1000))
    params, _ = fitter.fit(
        ddpm.init(jax.random.PRNGKey(0), 2), cond, actions, jax.random.PRNGKey(1), 1000
    )
    ddim = DDPMPolicy(1, replace(config, sampler="ddim", num_steps=5))
    noise = jax.random.normal(jax.random.PRNGKey(5), (1000, 1))
    step_noise = jax.random.normal(jax.random.PRNGKey(6), (20, 1000, 1))
    posterior = np.asarray(ddpm.sample(params, cond[:1000], noise, step_noise=step_noise))[:, 0]
    deterministic = np.asarray(ddim.sample(params, cond[:1000], noise))[:, 0]
    for samples in (posterior, deterministic):
        near = np.minimum(np.abs(samples - 0.6), np.abs(samples + 0.6)) < 0.25
        assert near.mean() > 0.85
        assert 0.35 < (samples[near] > 0).mean() < 0.65
    # The same distribution: 1-Wasserstein distance of the two samples (modes 1.2 apart).
    assert np.abs(np.sort(posterior) - np.sort(deterministic)).mean() < 0.15


def test_fitter_keeps_a_warmed_up_moving_average_and_measures_it():
    policy = GaussianPolicy(1, GaussianPolicyConfig(hidden=(8,)))
    fitter = ImitationFitter(policy, FitConfig(batch_size=16, chunk_steps=1, ema_decay=0.9))
    rng = np.random.default_rng(0)
    cond, actions = rng.normal(size=(64, 2)), rng.normal(size=(64, 1)).astype(np.float32)
    split, key = fitter.split(cond, actions, jax.random.PRNGKey(0))
    state = fitter.init(policy.init(jax.random.PRNGKey(1), 2), split)
    # Host copies: the expected average is plain numpy (no eager JAX op to compile per leaf).
    average = jax.device_get(state["params"])
    for update, step_key in enumerate(jax.random.split(key, 6)):
        state, info = fitter.step(state, split, step_key)
        decay = min(0.9, 1 - (1 + update) ** -EMA_WARMUP_POWER)
        latest = jax.device_get(state["params"])
        average = jax.tree.map(lambda m, p, d=decay: d * m + (1 - d) * p, average, latest)
    kept = jax.device_get(state["ema_params"])
    jax.tree.map(
        lambda k, expected: np.testing.assert_allclose(k, expected, rtol=1e-5, atol=1e-7),
        kept,
        average,
    )
    gaps = jax.tree.map(lambda k, p: np.abs(k - p).max(), kept, latest)
    assert max(jax.tree.leaves(gaps)) > 1e-4
    # The held-out loss is the average's.
    val_loss = [
        float(fitter._val_loss(params, *split.val, split.val_key)) for params in (kept, latest)
    ]
    assert info["val_loss"] == pytest.approx(val_loss[0]) and val_loss[0] != val_loss[1]
