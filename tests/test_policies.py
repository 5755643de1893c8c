import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gprl.policies import (
    DiffusionPolicy,
    DiffusionPolicyConfig,
    FlowPolicy,
    FlowPolicyConfig,
    GaussianPolicyConfig,
    GaussianPolicyNet,
    gaussian_entropy,
    gaussian_log_prob,
    kl_to_standard_normal,
)

SMALL_FLOW = FlowPolicyConfig(hidden=(32, 32), num_steps=5)
SMALL_DIFFUSION = DiffusionPolicyConfig(hidden=(32, 32), num_train_steps=20, num_steps=5)


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


@pytest.mark.parametrize("policy", [FlowPolicy(2, SMALL_FLOW), DiffusionPolicy(2, SMALL_DIFFUSION)])
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
    np.testing.assert_allclose(np.asarray(policy.sample(params, cond, noise)), x, rtol=1e-5)
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
        FlowPolicy(1, FlowPolicyConfig(hidden=(64, 64))),
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
