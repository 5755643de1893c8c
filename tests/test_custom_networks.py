"""A user's own flax torsos in gprl's policies and critics (the protocol of gprl.networks), the
default networks left as they were, and policy configs refused before anything trains."""

from dataclasses import replace

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gprl.algos.ppo import GaussianActorCritic, PPOConfig
from gprl.networks import QEnsemble
from gprl.policies import (
    DiffusionPolicy,
    DiffusionPolicyConfig,
    FlowPolicy,
    FlowPolicyConfig,
    GaussianPolicy,
    GaussianPolicyConfig,
    MeanFlowPolicy,
    MeanFlowPolicyConfig,
    ShortcutPolicy,
    ShortcutPolicyConfig,
)
from gprl.policies.flow import sde_transition
from gprl.policies.imitation import FitConfig, ImitationFitter


class VelocityTorso(nn.Module):
    """A user's velocity torso: (cond, x, t) -> features, no output layer."""

    width: int = 32

    @nn.compact
    def __call__(self, cond, x, t):
        # t is one time per sample, or (start, length) for the one-step policies.
        times = t[..., None] if t.ndim == x.ndim - 1 else t
        hidden = jnp.concatenate([cond, x, times], axis=-1)
        hidden = nn.silu(nn.Dense(self.width, name="user_in")(hidden))
        return nn.silu(nn.Dense(self.width, name="user_out")(hidden))


class ObsTorso(nn.Module):
    """A user's actor or state-value torso: obs -> features."""

    @nn.compact
    def __call__(self, obs):
        return nn.tanh(nn.Dense(16, name="user_layer")(obs))


class QTorso(nn.Module):
    """A user's Q torso, called with the observation and the action apart."""

    @nn.compact
    def __call__(self, obs, action):
        return nn.relu(nn.Dense(8, name="user_layer")(obs) * nn.Dense(8)(action))


def init(policy, cond_dim: int, seed: int = 0):
    # Compiled: an eager init dispatches each of its many small ops alone (seconds on CPU).
    return jax.jit(policy.init, static_argnums=1)(jax.random.PRNGKey(seed), cond_dim)


def fit(loss_fn, params, steps, learning_rate=3e-3):
    optimizer = optax.adam(learning_rate)

    def step(carry, key):
        params, opt_state = carry
        grads = jax.grad(loss_fn)(params, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    keys = jax.random.split(jax.random.PRNGKey(7), steps)
    (params, _), _ = jax.jit(lambda p: jax.lax.scan(step, (p, optimizer.init(p)), keys))(params)
    return params


def test_custom_velocity_torso_is_fitted_by_imitation_to_a_known_map():
    # Deterministic demonstrations a = (c / 2, -c): every noise must flow to that action.
    cond = jax.random.uniform(jax.random.PRNGKey(0), (512, 1), minval=-1.0, maxval=1.0)
    actions = jnp.concatenate([cond / 2, -cond], axis=-1)
    policy = FlowPolicy(2, FlowPolicyConfig(num_steps=8), velocity_torso=VelocityTorso())
    params = init(policy, 1)
    assert set(params["params"]) == {"torso", "head"}
    assert set(params["params"]["torso"]) == {"user_in", "user_out"}
    fitter = ImitationFitter(policy, FitConfig(batch_size=128, learning_rate=3e-3))
    params, losses = fitter.fit(params, cond, actions, jax.random.PRNGKey(2), 1500)
    assert losses["val_loss"] < 0.1 * losses["val_loss_at_init"]
    test_cond = jnp.array([[-0.8], [0.0], [0.6]])
    noise = jax.random.normal(jax.random.PRNGKey(3), (3, 2))
    expected = jnp.concatenate([test_cond / 2, -test_cond], axis=-1)
    np.testing.assert_allclose(policy.sample(params, test_cond, noise), expected, atol=0.1)


def test_custom_velocity_torso_is_integrated_step_by_step():
    policy = FlowPolicy(2, FlowPolicyConfig(num_steps=5), velocity_torso=VelocityTorso())
    params = init(policy, 3)
    # A larger head than gprl's small-gain one, so that the velocity varies with x and t.
    head = params["params"]["head"]
    head["kernel"] = jax.random.normal(jax.random.PRNGKey(4), head["kernel"].shape) * 0.3
    cond = jax.random.normal(jax.random.PRNGKey(1), (4, 3))
    noise = jax.random.normal(jax.random.PRNGKey(2), (4, 2))
    x, chain = noise, [noise]
    velocity = jax.jit(policy.velocity)
    for k in range(5):
        x = x + velocity(params, cond, x, jnp.full((4,), k / 5)) / 5
        chain.append(x)
    action, sampled_chain = policy.sample(params, cond, noise, return_chain=True)
    np.testing.assert_allclose(action, x, rtol=1e-5, atol=1e-6)
    velocities = policy.chain_velocities(params, cond, sampled_chain)
    np.testing.assert_allclose(velocities, np.diff(np.stack(chain), axis=0) * 5, rtol=1e-4)
    step_noise = jax.random.normal(jax.random.PRNGKey(3), (5, 4, 2))
    _, stochastic_chain = policy.sample_stochastic(
        params, cond, noise, step_noise, lambda k, x, v, t: sde_transition(x, v, t, 0.2, 0.5)
    )
    assert bool(jnp.all(jnp.isfinite(stochastic_chain)))
    assert not np.allclose(stochastic_chain[-1], action)


@pytest.mark.parametrize(
    "policy",
    [
        FlowPolicy(2, FlowPolicyConfig(num_steps=3), VelocityTorso()),
        DiffusionPolicy(2, DiffusionPolicyConfig(num_train_steps=10, num_steps=3), VelocityTorso()),
        MeanFlowPolicy(2, MeanFlowPolicyConfig(num_steps=2), VelocityTorso()),
        ShortcutPolicy(2, ShortcutPolicyConfig(num_steps=2, max_level=3), VelocityTorso()),
    ],
    ids=lambda policy: policy.kind,
)
def test_every_generative_policy_trains_a_custom_velocity_torso(policy):
    params = init(policy, 3)
    cond = jax.random.normal(jax.random.PRNGKey(1), (16, 3))
    actions = jnp.tanh(jax.random.normal(jax.random.PRNGKey(2), (16, 2)))
    loss_grad = jax.jit(jax.grad(lambda p: policy.loss(p, cond, actions, jax.random.PRNGKey(3))[0]))
    grads = loss_grad(params)
    assert float(jnp.abs(grads["params"]["torso"]["user_in"]["kernel"]).sum()) > 0
    assert grads["params"]["head"]["kernel"].shape == (32, 2)
    sample = policy.sample(params, cond, jnp.zeros((16, 2)))
    assert sample.shape == (16, 2) and bool(jnp.all(jnp.isfinite(sample)))


def test_zero_init_applies_to_the_head_on_a_custom_torso():
    policy = FlowPolicy(2, FlowPolicyConfig(zero_init=True), velocity_torso=VelocityTorso())
    params = init(policy, 3)
    noise = jax.random.normal(jax.random.PRNGKey(1), (6, 2))
    np.testing.assert_array_equal(policy.sample(params, jnp.ones((6, 3)), noise), noise)


def test_custom_actor_and_critic_torsos_learn_in_the_actor_critic():
    obs = jax.random.normal(jax.random.PRNGKey(0), (256, 3))
    target_values = obs[:, 0] - 2 * obs[:, 1]
    target_actions = jnp.stack([jnp.tanh(obs[:, 2]), 0.5 * obs[:, 0]], axis=-1)
    model = GaussianActorCritic(PPOConfig(), 3, 2, actor_torso=ObsTorso(), critic_torso=ObsTorso())
    params = jax.jit(model.init_params)(jax.random.PRNGKey(1))
    assert "user_layer" in params["actor"]["params"]["TorsoHead_0"]["torso"]
    assert set(params["critic"]["params"]) == {"torso", "head"}
    mean, std = model.distribution(params["actor"], obs)
    assert mean.shape == std.shape == (256, 2)
    assert model.value(params["critic"], obs).shape == (256,)

    def loss(params, _):
        mean, _ = model.distribution(params["actor"], obs)
        values = model.value(params["critic"], obs)
        return jnp.mean((values - target_values) ** 2) + jnp.mean((mean - target_actions) ** 2)

    before = float(loss(params, None))
    params = fit(loss, params, 800)
    assert float(loss(params, None)) < 0.05 * before


def test_custom_actor_torso_in_the_gaussian_policy_and_q_torso_in_the_ensemble():
    policy = GaussianPolicy(2, GaussianPolicyConfig(std_type="softplus"), actor_torso=ObsTorso())
    params = init(policy, 3)
    mean, std = policy.net.apply(params, jnp.ones((5, 3)))
    assert mean.shape == std.shape == (5, 2)
    np.testing.assert_allclose(std, 1.0, rtol=0.05)
    ensemble = QEnsemble((), 3, torso=QTorso())
    q_params = jax.jit(ensemble.init)(jax.random.PRNGKey(1), jnp.ones((1, 3)), jnp.ones((1, 2)))
    member_kernels = q_params["params"]["VmapTorsoHead_0"]["torso"]["user_layer"]["kernel"]
    assert member_kernels.shape == (3, 3, 8)
    assert not np.allclose(member_kernels[0], member_kernels[1])
    values = ensemble.apply(q_params, jnp.ones((4, 3)), jnp.ones((4, 2)))
    assert values.shape == (3, 4)


def param_paths(init_fn) -> list[str]:
    """The leaf paths of the parameters init_fn(key) returns (shapes only: nothing is run)."""
    params = jax.eval_shape(init_fn, jax.random.PRNGKey(0))
    leaves = jax.tree_util.tree_leaves_with_path(params)
    return sorted(jax.tree_util.keystr(path) for path, _ in leaves)


def test_default_networks_keep_the_parameter_trees_checkpoints_hold():
    flow = FlowPolicy(2, FlowPolicyConfig(hidden=(8, 8, 8)))
    assert param_paths(lambda key: flow.init(key, 3)) == [
        f"['params']['{layer}']['{leaf}']"
        for layer in ("first", "trunk']['Dense_0", "trunk']['Dense_1", "trunk']['Dense_2")
        for leaf in ("bias", "kernel")
    ]
    model = GaussianActorCritic(PPOConfig(), 3, 2)
    assert param_paths(model.init_params) == [
        f"['{part}']['params']['{leaf}']"
        for part, leaf in [
            ("actor", "MLP_0']['Dense_0']['bias"),
            ("actor", "MLP_0']['Dense_0']['kernel"),
            ("actor", "MLP_0']['Dense_1']['bias"),
            ("actor", "MLP_0']['Dense_1']['kernel"),
            ("actor", "MLP_0']['Dense_2']['bias"),
            ("actor", "MLP_0']['Dense_2']['kernel"),
            ("actor", "log_std"),
            ("critic", "Dense_0']['bias"),
            ("critic", "Dense_0']['kernel"),
            ("critic", "Dense_1']['bias"),
            ("critic", "Dense_1']['kernel"),
            ("critic", "Dense_2']['bias"),
            ("critic", "Dense_2']['kernel"),
        ]
    ]


BAD_CONFIGS = [
    (FlowPolicy, FlowPolicyConfig(num_steps=0), "num_steps"),
    (FlowPolicy, FlowPolicyConfig(hidden=()), "hidden"),
    (FlowPolicy, FlowPolicyConfig(hidden=(32, 0)), "hidden"),
    (FlowPolicy, FlowPolicyConfig(activation="swish"), "activation"),
    (FlowPolicy, FlowPolicyConfig(time_embed_dim=1), "time_embed_dim"),
    (FlowPolicy, FlowPolicyConfig(time_sampling="sobol"), "time_sampling"),
    (DiffusionPolicy, DiffusionPolicyConfig(num_steps=0), "num_steps"),
    (DiffusionPolicy, DiffusionPolicyConfig(num_train_steps=5), "num_train_steps"),
    (DiffusionPolicy, DiffusionPolicyConfig(clip_sample=0.0), "clip_sample"),
    (DiffusionPolicy, DiffusionPolicyConfig(hidden=()), "hidden"),
    (MeanFlowPolicy, MeanFlowPolicyConfig(time_max_period=0.0), "time_max_period"),
    (MeanFlowPolicy, MeanFlowPolicyConfig(flow_matching_fraction=1.5), "flow_matching_fraction"),
    (MeanFlowPolicy, MeanFlowPolicyConfig(adaptive_weight_power=-1.0), "adaptive_weight_power"),
    (ShortcutPolicy, ShortcutPolicyConfig(consistency_fraction=0.0), "consistency_fraction"),
    (ShortcutPolicy, ShortcutPolicyConfig(max_level=0), "max_level"),
    (ShortcutPolicy, ShortcutPolicyConfig(num_steps=-1), "num_steps"),
    (GaussianPolicy, GaussianPolicyConfig(std_type="fixed"), "std_type"),
    (GaussianPolicy, GaussianPolicyConfig(init_std=0.0), "init_std"),
    (GaussianPolicy, GaussianPolicyConfig(min_std=-1.0), "min_std"),
    (GaussianPolicy, GaussianPolicyConfig(hidden=(-4,)), "hidden"),
    (GaussianPolicy, GaussianPolicyConfig(activation="swish"), "activation"),
]


@pytest.mark.parametrize(
    "policy_class, config, field", BAD_CONFIGS, ids=[f"{c.kind}-{f}" for c, _, f in BAD_CONFIGS]
)
def test_bad_policy_configs_are_refused_in_one_line_before_any_network(policy_class, config, field):
    with pytest.raises(ValueError, match=field) as refusal:
        policy_class(2, config)
    assert "\n" not in str(refusal.value)
    # The same config with the one bad field back at its default builds.
    policy_class(2, replace(config, **{field: getattr(type(config)(), field)}))


def test_the_actor_critic_refuses_a_bad_actor_config():
    bad_actor = GaussianPolicyConfig(activation="swish")
    with pytest.raises(ValueError, match="activation"):
        GaussianActorCritic(PPOConfig(actor=bad_actor), 3, 2)
