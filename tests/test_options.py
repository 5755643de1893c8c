"""Options that change an update, each checked against the quantity it promises on a fixed
synthetic batch: a test here fails if its option is ignored."""

import itertools
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gprl.algos import ALGORITHMS, FQLConfig
from gprl.policies import FlowPolicyConfig
from gprl.types import EnvSpec, Transition

SPEC = EnvSpec("probe", 3, 2, -np.ones(2, np.float32), np.ones(2, np.float32), None)
NUM_ENVS, ROLLOUT, STEPS = 8, 4, 5
BATCH = NUM_ENVS * ROLLOUT


def make_algo(name: str, **overrides):
    small = dict(
        flow=FlowPolicyConfig(hidden=(32, 32), num_steps=STEPS),
        rollout_steps=ROLLOUT,
        num_epochs=1,
        num_minibatches=1,
    )
    config = replace(ALGORITHMS[name].config(), **(small | overrides))
    return ALGORITHMS[name].algorithm(config, SPEC, NUM_ENVS, 10_000)


def flow_minibatch(algo, state, key):
    """A minibatch of the algorithm's own actions (with their chains) on random observations,
    holding everything the on-policy losses read."""
    obs_key, act_key = jax.random.split(key)
    obs = jax.random.normal(obs_key, (BATCH, SPEC.obs_dim))
    _, extras = jax.jit(algo.act)(algo.acting_params(state), obs, act_key)
    ones = jnp.ones(BATCH)
    return {"obs": algo.normalized(algo.acting_params(state), obs), "advantages": ones} | {
        "value": ones,
        "returns": ones,
        **extras,
    }


def with_log_ratio(algo, params, minibatch, log_ratio):
    """The minibatch with old per-step log-likelihoods such that the method's per-step log ratio
    at params is exactly log_ratio (B, K)."""
    current, _ = jax.jit(algo.step_log_probs)(params, minibatch)
    return minibatch | {"old_step_log_prob": current - log_ratio}


def policy_loss(algo, params, minibatch) -> float:
    """The clipped surrogate part of an actor-critic flow method's loss on the minibatch."""
    _, info = jax.jit(lambda p, m: algo.loss(p, m, algo.config.clip_eps, {}))(params, minibatch)
    return float(info["policy_loss"])


def grpo_loss(algo, params, minibatch) -> float:
    """GRPO's loss (critic-free: its clipped surrogate alone, without a KL term here)."""
    loss, _ = jax.jit(lambda p, m: algo.loss(p, m, {}))(params, minibatch)
    return float(loss)


def standardised(x):
    return (x - x.mean()) / x.std()


# ----- GRPO (GRPO-Guard) -------------------------------------------------------------------------


def grpo_case(**overrides):
    """GRPO with a minibatch whose per-step log ratios have step-dependent offsets c_k and
    spreads s_k around one standardised per-sample variable z, the advantages being z."""
    algo = make_algo("grpo", **overrides)
    state = algo.init(jax.random.PRNGKey(0))
    params = state["params"]
    minibatch = flow_minibatch(algo, state, jax.random.PRNGKey(1))
    z = standardised(jax.random.normal(jax.random.PRNGKey(2), (BATCH,)))
    offsets, spreads = jnp.linspace(-0.5, 0.5, STEPS), jnp.linspace(0.02, 0.1, STEPS)
    log_ratio = offsets + spreads * z[:, None]
    minibatch = with_log_ratio(algo, params, minibatch, log_ratio) | {"advantages": z}
    return algo, params, minibatch, z


def test_grpo_normalize_step_ratios_centres_each_step_and_equalises_its_spread():
    # Normalised, step k's log ratio c_k + s_k z becomes (mean_k s_k) z at every step: offsets
    # gone, all inside the clip range here, so the loss is -mean(z exp(mean(s) z)).
    algo, params, minibatch, z = grpo_case(normalize_step_ratios=True)
    expected = -jnp.mean(z * jnp.exp(0.06 * z))
    assert grpo_loss(algo, params, minibatch) == pytest.approx(float(expected), rel=1e-3)
    # Without it, the offsets reach the clip: another loss.
    plain, *_ = grpo_case()
    assert abs(grpo_loss(plain, params, minibatch) - float(expected)) > 0.05


def test_grpo_reweight_noise_levels_weights_each_step_by_its_noise_variance():
    algo, params, minibatch, z = grpo_case(reweight_noise_levels=True)
    small = 0.05 * z[:, None] * jnp.linspace(0.2, 1.0, STEPS)  # inside the clip range
    minibatch = with_log_ratio(algo, params, minibatch, small)
    _, stds = jax.jit(algo.step_log_probs)(params, minibatch)
    variance = jnp.mean(stds**2, axis=(1, 2))
    weights = variance / variance.mean()
    assert float(weights.max() / weights.min()) > 2  # the SDE's noise differs across steps
    surrogate = z[:, None] * jnp.exp(small)
    expected = -jnp.mean(surrogate * weights)
    assert grpo_loss(algo, params, minibatch) == pytest.approx(float(expected), rel=1e-3)
    plain, *_ = grpo_case()
    assert grpo_loss(plain, params, minibatch) == pytest.approx(-float(jnp.mean(surrogate)))
    assert abs(float(expected - (-jnp.mean(surrogate)))) > 1e-3


# ----- DPPO on a flow (dppo-flow) -----------------------------------------------------------------


def chain_gradient(algo, params, minibatch):
    """|d policy loss / d stored chain| per chain index x_0..x_K, summed over samples."""

    def loss_of_chain(chain):
        _, info = algo.loss(params, minibatch | {"chain": chain}, algo.config.clip_eps, {})
        return info["policy_loss"]

    gradient = jax.jit(jax.grad(loss_of_chain))(minibatch["chain"])  # (B, K + 1, d)
    return np.abs(np.asarray(gradient)).sum(axis=(0, 2))


@pytest.mark.parametrize("fine_tuned_steps", [None, 2])
def test_dppo_flow_fine_tuned_steps_trains_only_the_last_steps(fine_tuned_steps):
    algo = make_algo(
        "dppo-flow",
        fine_tuned_steps=fine_tuned_steps,
        normalize_advantages=False,
        learned_source_std=False,  # the steps' columns only
    )
    state = algo.init(jax.random.PRNGKey(0))
    minibatch = flow_minibatch(algo, state, jax.random.PRNGKey(1))
    minibatch = with_log_ratio(algo, state["params"], minibatch, jnp.zeros((BATCH, STEPS)))
    gradient = chain_gradient(algo, state["params"], minibatch)
    # Step k's likelihood reads x_k and x_{k+1}: training steps K - m..K - 1 reaches x_{K-m}..x_K.
    first_reached = STEPS - (fine_tuned_steps or STEPS)
    assert (gradient[:first_reached] == 0).all()
    assert (gradient[first_reached:] > 1e-6).all()


@pytest.mark.parametrize("fine_tuned_steps", [None, 3])
def test_dppo_flow_denoising_discount_weights_a_step_by_discount_to_the_steps_after_it(
    fine_tuned_steps,
):
    # Advantage 1 everywhere and per-step ratios exp(l_k) inside the clip range: the surrogate
    # is -mean over trained steps of discount^(K - 1 - k) exp(l_k).
    discount = 0.5
    algo = make_algo(
        "dppo-flow",
        fine_tuned_steps=fine_tuned_steps,
        denoising_discount=discount,
        normalize_advantages=False,
        learned_source_std=False,
    )
    state = algo.init(jax.random.PRNGKey(0))
    minibatch = flow_minibatch(algo, state, jax.random.PRNGKey(1))
    step_log_ratio = 0.03 * jnp.arange(STEPS, dtype=jnp.float32)
    log_ratio = jnp.broadcast_to(step_log_ratio, (BATCH, STEPS))
    minibatch = with_log_ratio(algo, state["params"], minibatch, log_ratio)
    trained = np.arange(STEPS - (fine_tuned_steps or STEPS), STEPS)
    weights = discount ** (STEPS - 1 - trained)
    expected = -np.mean(weights * np.exp(np.asarray(step_log_ratio)[trained]))
    assert policy_loss(algo, state["params"], minibatch) == pytest.approx(expected, rel=1e-4)
    assert abs(expected + np.mean(np.exp(np.asarray(step_log_ratio)[trained]))) > 0.1


# ----- FPO ----------------------------------------------------------------------------------------


def test_fpo_loss_mode_velocity_is_the_velocity_error_and_epsilon_is_t_squared_times_it():
    # x_t - t v - eps = t (a - eps - v): the noise error is t times the velocity error.
    velocity_mode = make_algo("fpo", loss_mode="velocity")
    epsilon_mode = make_algo("fpo", loss_mode="epsilon")
    params = velocity_mode.init(jax.random.PRNGKey(0))["params"]["policy"]
    keys = jax.random.split(jax.random.PRNGKey(1), 4)
    obs = jax.random.normal(keys[0], (BATCH, SPEC.obs_dim))
    actions = jax.random.uniform(keys[1], (BATCH, SPEC.action_dim), minval=-1, maxval=1)
    times = jax.random.uniform(keys[2], (BATCH, 3), minval=0.2, maxval=0.9)
    noises = jax.random.normal(keys[3], (BATCH, 3, SPEC.action_dim))
    by_velocity = velocity_mode.cfm_losses(params, obs, actions, times, noises)
    by_epsilon = epsilon_mode.cfm_losses(params, obs, actions, times, noises)

    x_t = (1 - times[..., None]) * noises + times[..., None] * actions[:, None]
    repeated_obs = jnp.broadcast_to(obs[:, None], (BATCH, 3, SPEC.obs_dim))
    velocity = velocity_mode.policy.velocity(params, repeated_obs, x_t, times)
    expected = jnp.mean((velocity - (actions[:, None] - noises)) ** 2, axis=-1)
    np.testing.assert_allclose(by_velocity, expected, rtol=1e-5)
    np.testing.assert_allclose(by_epsilon, times**2 * expected, rtol=1e-4)


def test_fpo_time_sampling_draws_grid_times_or_uniform_ones():
    def sampled_times(time_sampling):
        algo = make_algo("fpo", time_sampling=time_sampling)
        state = algo.init(jax.random.PRNGKey(0))
        data = flow_minibatch(algo, state, jax.random.PRNGKey(1))
        scored = algo.score_rollout(state["params"], data, jax.random.PRNGKey(2))
        return np.asarray(scored["cfm_times"]).ravel()

    grid = sampled_times("grid") * STEPS
    np.testing.assert_allclose(grid, np.round(grid), atol=1e-5)
    assert set(np.round(grid).astype(int)) == set(range(STEPS))  # 0 .. K - 1, never 1
    uniform = sampled_times("uniform")
    assert (uniform >= 0).all() and (uniform < 1).all()
    off_grid = np.abs(uniform * STEPS - np.round(uniform * STEPS)) > 1e-3
    assert off_grid.mean() > 0.9 and len(np.unique(uniform)) == len(uniform)


# ----- value clipping -----------------------------------------------------------------------------


def one_step_batch(algo, state, reward):
    """Random observations, every step a one-step episode with the same reward: the value
    target is the reward itself."""
    obs = jax.random.normal(jax.random.PRNGKey(3), (ROLLOUT, NUM_ENVS, SPEC.obs_dim))
    keys = jax.random.split(jax.random.PRNGKey(4), ROLLOUT)
    actions, extras = jax.vmap(algo.act, in_axes=(None, 0, 0))(algo.acting_params(state), obs, keys)
    done = jnp.ones((ROLLOUT, NUM_ENVS), bool)
    rewards = jnp.full((ROLLOUT, NUM_ENVS), reward)
    return Transition(obs, actions, rewards, done, ~done, obs, extras)


def test_value_clip_eps_bounds_how_far_an_update_moves_the_values():
    # PPO's update stands for every on-policy method's (one shared objective, ppo_objective).
    # Returns 5 where the critic starts near 0: clipped to 0.05 around the old values, the
    # value loss has no gradient once a value moved 0.05, so 50 epochs stop there (measured
    # 0.10, Adam's momentum carrying it on a few steps); unclipped they move 0.57.
    def value_change(value_clip_eps):
        overrides = dict(
            num_epochs=50,
            learning_rate=3e-4,
            normalize_observations=False,
            normalize_rewards=False,
            value_clip_eps=value_clip_eps,
        )
        config = replace(
            ALGORITHMS["ppo"].config(), rollout_steps=ROLLOUT, num_minibatches=1, **overrides
        )
        algo = ALGORITHMS["ppo"].algorithm(config, SPEC, NUM_ENVS, 10_000)
        state = algo.init(jax.random.PRNGKey(0))
        batch = one_step_batch(algo, state, 5.0)
        update = jax.jit(algo.update)
        state, before = update(state, batch, jax.random.PRNGKey(5))
        _, after = update(state, batch, jax.random.PRNGKey(6))
        return float(after["value_mean"] - before["value_mean"])

    clipped, unclipped = value_change(0.05), value_change(None)
    assert 0.04 < clipped < 0.15
    assert unclipped > 3 * clipped


# ----- GoRL ---------------------------------------------------------------------------------------


def test_gorl_warm_start_decoder_refits_from_the_previous_decoder():
    # Refits that barely move the decoder (one step at learning rate 1e-12) end where they
    # started: the first, which has no decoder before it, at a fresh one, far from the initial
    # decoder; the second, warm-started, at the first refit's decoder. (No update fills the
    # refit check's probe states here, so the check is off: every refit is taken.)
    gorl = ALGORITHMS["gorl"].config()
    config = replace(
        gorl,
        ppo=replace(gorl.ppo, rollout_steps=ROLLOUT, num_minibatches=1),
        flow=replace(gorl.flow, hidden=(16, 16), num_steps=2),
        decoder_train_steps=1,
        decoder_eval_every=1,
        decoder_learning_rate=1e-12,
        warm_start_decoder=True,
        refit_tolerance=None,
    )
    algo = ALGORITHMS["gorl"].algorithm(config, SPEC, NUM_ENVS, 10_000)
    state = algo.init(jax.random.PRNGKey(0))
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    shape = (16, NUM_ENVS)
    extras = {
        "decoded": jax.random.uniform(keys[1], (*shape, 2), minval=-1, maxval=1),
        "prior_noise": jax.random.normal(keys[2], (*shape, 2)),
    }
    obs = jax.random.normal(keys[0], (*shape, SPEC.obs_dim))
    batch = Transition(obs, None, None, None, None, obs, extras)
    first, _ = algo.end_stage(state, batch, jax.random.PRNGKey(2))
    second, _ = algo.end_stage(first, batch, jax.random.PRNGKey(3))
    assert int(second["stage"]) == 2
    assert largest_difference(state["decoder"], first["decoder"]) > 0.1
    assert largest_difference(first["decoder"], second["decoder"]) < 1e-6


def largest_difference(params, other) -> float:
    pairs = zip(jax.tree.leaves(params), jax.tree.leaves(other), strict=True)
    return max(float(jnp.abs(a - b).max()) for a, b in pairs)


# ----- FQL ----------------------------------------------------------------------------------------


def fql_update(**overrides):
    """One FQL update from a state whose one-step policy outputs 0 for every input (all its
    weights zero), so that the critics' values at the actor's actions are known: Q(s, 0).
    Returns (algo, state before, batch, metrics)."""
    from gprl.algos import FQLConfig

    small = FlowPolicyConfig(hidden=(16,), num_steps=2)
    config = FQLConfig(flow=small, actor_hidden=(16,), critic_hidden=(16,), **overrides)
    spec = replace(SPEC, max_episode_steps=1)
    algo = ALGORITHMS["fql"].algorithm(config, spec, NUM_ENVS, 10_000)
    state = algo.init(jax.random.PRNGKey(0))
    zero_actor = jax.tree.map(jnp.zeros_like, state["params"]["actor"])
    state = state | {"params": state["params"] | {"actor": zero_actor}}
    keys = jax.random.split(jax.random.PRNGKey(1), 4)
    obs = jax.random.normal(keys[0], (BATCH, SPEC.obs_dim))
    next_obs = jax.random.normal(keys[1], (BATCH, SPEC.obs_dim))
    action = jax.random.uniform(keys[2], (BATCH, SPEC.action_dim), minval=-1, maxval=1)
    reward = jax.random.normal(keys[3], (BATCH,))
    terminated = jnp.arange(BATCH) % 4 == 0
    batch = Transition(obs, action, reward, terminated, jnp.zeros(BATCH, bool), next_obs, {})
    _, metrics = jax.jit(algo.update)(state, batch, jax.random.PRNGKey(2))
    return algo, state, batch, metrics


def ensemble_at_zero_action(algo, critic, obs):
    return np.asarray(algo.critic.apply(critic, obs, jnp.zeros((obs.shape[0], 2))))  # (E, B)


@pytest.mark.parametrize(
    ("aggregation", "normalize"), [("mean", False), ("min", True)], ids=["mean", "min-normalized"]
)
def test_fql_q_aggregation_and_normalize_q_loss_shape_the_target_and_the_actor_loss(
    aggregation, normalize
):
    # q_aggregation combines the critics in the TD target and in the actor's loss;
    # normalize_q_loss divides the actor's -Q by the batch's mean |Q|.
    algo, state, batch, metrics = fql_update(
        q_aggregation=aggregation, normalize_q_loss=normalize, num_critics=3
    )
    combine = {"mean": lambda q: q.mean(0), "min": lambda q: q.min(0)}[aggregation]
    ensemble = ensemble_at_zero_action(algo, state["params"]["critic"], batch.obs)
    q = combine(ensemble)
    assert float(metrics["actor/q"]) == pytest.approx(q.mean(), rel=1e-4)
    scale = np.abs(q).mean() if normalize else 1.0
    assert float(metrics["actor/q_loss"]) == pytest.approx(-q.mean() / scale, rel=1e-4)
    next_q = combine(ensemble_at_zero_action(algo, state["target_critic"], batch.next_obs))
    continues = 1.0 - np.asarray(batch.terminated, np.float32)
    target = np.asarray(batch.reward) + algo.config.gamma * continues * next_q
    assert float(metrics["critic/target_mean"]) == pytest.approx(target.mean(), rel=1e-4)
    # The critics disagree, and |Q| is not 1, enough that either option changes the numbers.
    assert abs(ensemble.mean(0).mean() - ensemble.min(0).mean()) > 1e-3
    assert abs(np.abs(q).mean() - 1.0) > 0.1


def test_target_subset_takes_the_minimum_of_that_many_target_critics_drawn_per_update():
    # REDQ / RLPD: the TD target is min over a random subset of the critics, redrawn each step.
    algo, state, batch, first = fql_update(num_critics=4, target_subset=2)
    next_q = ensemble_at_zero_action(algo, state["target_critic"], batch.next_obs)
    continues = 1.0 - np.asarray(batch.terminated, np.float32)
    pair_targets = {
        pair: (
            np.asarray(batch.reward) + algo.config.gamma * continues * next_q[list(pair)].min(0)
        ).mean()
        for pair in itertools.combinations(range(4), 2)
    }
    # Every pair's minimum differs, so a target's match below names the pair drawn.
    assert len({round(float(v), 5) for v in pair_targets.values()}) == 6
    update = jax.jit(algo.update)
    targets = [float(first["critic/target_mean"])] + [
        float(update(state, batch, jax.random.PRNGKey(seed))[1]["critic/target_mean"])
        for seed in range(4)
    ]
    drawn = set()
    for target in targets:
        matching = [pair for pair, v in pair_targets.items() if v == pytest.approx(target, 1e-4)]
        assert len(matching) == 1, (target, pair_targets)
        drawn.add(matching[0])
    assert len(drawn) >= 2  # redrawn with each update's key
    _, _, _, all_four = fql_update(num_critics=4, target_subset=4)
    _, _, _, as_min = fql_update(num_critics=4, q_aggregation="min")
    assert float(all_four["critic/target_mean"]) == pytest.approx(
        float(as_min["critic/target_mean"]), rel=1e-5
    )
    with pytest.raises(ValueError, match="target_subset"):
        FQLConfig(num_critics=4, target_subset=5).validate()


# ----- DSRL ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("base_sampling_steps", [None, 2])
def test_dsrl_base_sampling_steps_integrates_the_frozen_policy_in_that_many_steps(
    base_sampling_steps,
):
    from gprl.algos import DSRLConfig
    from gprl.policies import FlowPolicy
    from gprl.pretrain import ChunkPolicy, PretrainConfig, Pretrained

    # An untrained 6-step flow policy (not zero-initialised: its velocity depends on x and t,
    # so integrating it in fewer steps lands elsewhere).
    policy_config = FlowPolicyConfig(hidden=(16, 16), num_steps=6)
    policy = FlowPolicy(2, policy_config)
    acting = {
        "params": policy.init(jax.random.PRNGKey(0), 3),
        "obs_norm": {"mean": np.zeros(3), "var": np.ones(3), "count": 1.0},
        "action_norm": {"center": np.zeros(2), "half_range": np.ones(2)},
    }
    acting = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), acting)
    pretrained = Pretrained(
        kind="flow",
        policy=ChunkPolicy(policy, 1, 2, 1.0),
        acting=acting,
        config=PretrainConfig(),
        policy_config=policy_config,
        env_id="probe",
        env_backend="gymnasium",
        obs_dim=3,
        action_dim=2,
    )
    config = DSRLConfig(
        base_sampling_steps=base_sampling_steps, actor_hidden=(16,), critic_hidden=(16,)
    )
    dsrl = ALGORITHMS["dsrl"].algorithm(config, SPEC, NUM_ENVS, 10_000, pretrained=pretrained)
    obs = jax.random.uniform(jax.random.PRNGKey(1), (BATCH, 3), minval=-1, maxval=1)
    acting_dsrl = dsrl.acting_params(dsrl.init(jax.random.PRNGKey(2)))
    start = jax.jit(dsrl.act_deterministic)(acting_dsrl, obs)

    # The deterministic action starts at noise 0: the frozen policy's action from zero noise.
    zero = jnp.zeros((BATCH, 2))
    plan = jax.jit(pretrained.policy.plan_from_noise, static_argnums=3)
    expected = plan(acting, obs, zero, base_sampling_steps)[:, 0]
    np.testing.assert_allclose(start, expected, atol=1e-5)
    other_steps = 6 if base_sampling_steps else 2
    elsewhere = plan(acting, obs, zero, other_steps)[:, 0]
    assert np.abs(np.asarray(start - elsewhere)).max() > 1e-3
