"""The on-policy flow methods: likelihood guards, the SDE step, group advantages, and learning.

Guards first: a method's ratio must be exactly 1 before its first gradient step (sampling and
re-scoring agree), its chain log-likelihood must equal the Gaussian densities computed one step
at a time, and changing the time grid or the noise floor between sampling and re-scoring must
break that.
"""

import csv
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

import gprl.algos.flow_onpolicy as flow_onpolicy
import gprl.policies.flow as flow_module
from gprl.algos import ALGORITHMS
from gprl.algos.grpo import group_relative_advantages
from gprl.algos.onpolicy import flatten_time
from gprl.configs import from_jsonable, to_jsonable
from gprl.policies import FlowPolicyConfig
from gprl.policies.flow import sde_transition, time_grid
from gprl.trainer import RunConfig, train
from gprl.types import EnvSpec, Transition

FLOW_METHODS = ("fpo", "dppo-flow", "reinflow", "flow-sde", "grpo")
CHAIN_METHODS = ("dppo-flow", "reinflow", "flow-sde", "grpo")
SPEC = EnvSpec("probe", 3, 2, -np.ones(2, np.float32), np.ones(2, np.float32), None)
NUM_ENVS, ROLLOUT = 8, 4


def small_config(name: str, **overrides):
    config = ALGORITHMS[name].config()
    return replace(
        config,
        flow=FlowPolicyConfig(hidden=(32, 32), num_steps=5),
        rollout_steps=ROLLOUT,
        num_epochs=1,
        num_minibatches=1,
        **overrides,
    )


def make_algo(name: str, **overrides):
    return ALGORITHMS[name].algorithm(small_config(name, **overrides), SPEC, NUM_ENVS, 10_000)


def rollout(algo, state, key):
    """A (T, N) batch of the algorithm's own actions on random observations and rewards."""
    obs_key, reward_key, act_key = jax.random.split(key, 3)
    obs = jax.random.normal(obs_key, (ROLLOUT, NUM_ENVS, SPEC.obs_dim))
    acting = algo.acting_params(state)
    actions, extras = jax.vmap(algo.act, in_axes=(None, 0, 0))(
        acting, obs, jax.random.split(act_key, ROLLOUT)
    )
    done = jnp.ones((ROLLOUT, NUM_ENVS), bool)  # one-step episodes: every env step is an episode
    rewards = jax.random.normal(reward_key, (ROLLOUT, NUM_ENVS))
    return Transition(obs, actions, rewards, done, ~done, obs, extras)


RATIO_CASES = [pytest.param(name, {}, id=name) for name in FLOW_METHODS] + [
    pytest.param(name, {"learned_source_std": True}, id=f"{name}-learned-source")
    for name in CHAIN_METHODS
]


@pytest.mark.parametrize(("name", "overrides"), RATIO_CASES)
def test_ratio_is_one_before_the_first_gradient_step(name, overrides):
    # One epoch of one minibatch: the only ratio the update computes is at the parameters the
    # rollout was sampled with, so it must be 1 up to float rounding, with nothing clipped.
    algo = make_algo(name, **overrides)
    state = algo.init(jax.random.PRNGKey(0))
    batch = rollout(algo, state, jax.random.PRNGKey(1))
    _, metrics = jax.jit(algo.update)(state, batch, jax.random.PRNGKey(2))
    assert abs(float(metrics["ratio_mean"]) - 1.0) < 1e-5
    assert abs(float(metrics["approx_kl"])) < 1e-7
    assert float(metrics["clip_fraction"]) == 0.0


@pytest.mark.parametrize("name", ("fpo", "reinflow", "dppo-flow"))
def test_noise_scale_schedule_contracts_the_spread(name):
    algo = make_algo(name, final_noise_scale=0.1)
    first = algo.init(jax.random.PRNGKey(0))
    last = first | {"iteration": jnp.asarray(algo.num_iterations - 1, jnp.int32)}
    obs = jnp.zeros((512, SPEC.obs_dim))

    def spread(state):
        actions, _ = jax.jit(algo.act)(algo.acting_params(state), obs, jax.random.PRNGKey(1))
        return float(jnp.mean(jnp.std(actions, axis=0)))

    assert spread(last) < 0.2 * spread(first)


@pytest.mark.parametrize("name", ("reinflow", "dppo-flow"))
def test_a_learned_source_std_contracts_where_only_a_precise_action_pays(name):
    # Reward -|a|^2: the best policy puts every action at 0. Scored in the likelihood, x_0's std
    # gets the policy gradient a Gaussian policy's std gets, and falls from its start at 1.
    algo = make_algo(name, learned_source_std=True, source_std=1.0, learning_rate=1e-2)
    state = algo.init(jax.random.PRNGKey(0))
    assert float(jnp.max(jnp.abs(state["params"]["source_log_std"]))) == 0.0

    @jax.jit
    def update(state, i):
        batch = rollout(algo, state, jax.random.fold_in(jax.random.PRNGKey(100), i))
        batch = batch._replace(reward=-jnp.sum(batch.action**2, axis=-1))
        return algo.update(state, batch, jax.random.fold_in(jax.random.PRNGKey(200), i))

    for i in range(60):
        state, metrics = update(state, i)
    assert float(metrics["source_std"]) < 0.7
    assert float(jnp.max(jnp.exp(state["params"]["source_log_std"]))) < 0.8


@pytest.mark.parametrize("name", ("reinflow", "dppo-flow"))
def test_the_source_is_narrow_from_scratch_and_standard_to_fine_tune_or_resume_older_runs(name):
    def source_spread(config):
        algo = ALGORITHMS[name].algorithm(config, SPEC, NUM_ENVS, 10_000)
        _, extras = algo.act(
            algo.acting_params(algo.init(jax.random.PRNGKey(0))),
            jnp.zeros((4096, SPEC.obs_dim)),
            jax.random.PRNGKey(1),
        )
        return float(jnp.std(extras["chain"][:, 0]))

    config = small_config(name)
    assert abs(source_spread(config) - 0.1) < 0.01
    assert config.starting_source_std(fine_tuning=True) == 1.0
    # A run saved before the option existed resumes with the N(0, I) source it trained with.
    saved = to_jsonable(config)
    del saved["source_std"]
    assert abs(source_spread(from_jsonable(type(config), saved)) - 1.0) < 0.05


def test_dppo_flow_learns_its_source_std_from_scratch_only():
    config = small_config("dppo-flow")
    algo = ALGORITHMS["dppo-flow"].algorithm(config, SPEC, NUM_ENVS, 10_000)
    state = algo.init(jax.random.PRNGKey(0))
    np.testing.assert_allclose(np.exp(state["params"]["source_log_std"]), 0.1, rtol=1e-6)
    batch = rollout(algo, state, jax.random.PRNGKey(1))
    _, metrics = jax.jit(algo.update)(state, batch, jax.random.PRNGKey(2))
    assert abs(float(metrics["source_std"]) - 0.1) < 0.01
    assert not config.learns_source_std(fine_tuning=True)
    assert not small_config("reinflow").learns_source_std(fine_tuning=False)
    # A run saved before the option existed resumes with the fixed source it trained with.
    saved = to_jsonable(config)
    del saved["learned_source_std"]
    assert not from_jsonable(type(config), saved).learns_source_std(fine_tuning=False)


def euler_step_residual_std(algo, key) -> float:
    """The std of a from-scratch rollout's Euler-step noise: chain[k + 1] - chain[k] - v / K,
    with the velocity recomputed by the policy network."""
    state = algo.init(jax.random.PRNGKey(6))
    data = scored_rollout(algo, state, key)
    chains = np.asarray(data["chain"])  # (B, K + 1, d)
    steps = algo.num_steps
    residuals = []
    for k in range(steps):
        t = jnp.full((chains.shape[0],), k / steps)
        velocity = algo.policy.velocity(state["params"]["policy"], data["obs"], chains[:, k], t)
        residuals.append(chains[:, k + 1] - chains[:, k] - np.asarray(velocity) / steps)
    return float(np.std(residuals))


def test_dppo_flow_steps_with_noise_0_1_from_scratch_and_0_05_when_fine_tuning():
    assert abs(euler_step_residual_std(make_algo("dppo-flow"), jax.random.PRNGKey(7)) - 0.1) < 0.01
    config = small_config("dppo-flow")
    assert config.step_std(fine_tuning=True) == 0.05
    assert replace(config, denoising_std=0.3).step_std(fine_tuning=False) == 0.3


def test_reinflow_noise_bounds_are_wider_from_scratch_than_when_fine_tuning():
    # The noise net starts at the middle of its log-range: sqrt(0.1 x 0.3) from scratch.
    residual_std = euler_step_residual_std(make_algo("reinflow"), jax.random.PRNGKey(7))
    assert abs(residual_std - np.sqrt(0.1 * 0.3)) < 0.015
    config = small_config("reinflow")
    assert config.noise_std_bounds(fine_tuning=True) == (0.08, 0.16)
    assert replace(config, max_noise_std=0.5).noise_std_bounds(fine_tuning=False) == (0.1, 0.5)
    with pytest.raises(ValueError, match=r"from scratch they are 0\.1 and 0\.09"):
        replace(config, max_noise_std=0.09).validate()


def test_the_source_density_is_that_of_the_learned_std_times_the_noise_scale():
    algo = make_algo("reinflow", learned_source_std=True, final_noise_scale=0.2)
    state = algo.init(jax.random.PRNGKey(3))
    state["iteration"] = jnp.asarray(algo.num_iterations // 2, jnp.int32)
    state["params"]["source_log_std"] = jnp.log(jnp.array([0.5, 2.0]))
    data = scored_rollout(algo, state, jax.random.PRNGKey(4))
    std = np.asarray(data["noise_scale"])[:, None] * np.array([0.5, 2.0])
    x0 = np.asarray(data["chain"])[:, 0]
    np.testing.assert_allclose(x0.std(axis=0) / std.mean(axis=0), 1.0, atol=0.3)
    expected = norm.logpdf(x0, 0.0, std).sum(axis=-1)
    batched = algo.source_log_prob(state["params"], data)
    np.testing.assert_allclose(np.asarray(batched), expected, rtol=1e-5, atol=1e-5)


def scored_rollout(algo, state, key):
    """The flattened data an update scores: normalised obs and the stored extras."""
    batch = rollout(algo, state, key)
    obs = algo.normalized(algo.acting_params(state), batch.obs)
    return flatten_time({"obs": obs} | batch.extras)


def independent_step_log_probs(algo, params, data):
    """Per-step Gaussian log densities of the stored chains, recomputed one step and one sample
    at a time with the velocity network called directly and scipy's density."""
    chains = np.asarray(data["chain"])  # (B, K + 1, d)
    steps = algo.num_steps
    log_probs = np.zeros((chains.shape[0], steps))
    for b in range(chains.shape[0]):
        obs = data["obs"][b : b + 1]
        aux = {name: data[name][b : b + 1] for name in algo.aux_names}
        for k in range(steps):
            x, t = chains[b, k][None], k / steps
            velocity = algo.policy.velocity(params["policy"], obs, x, jnp.full((1,), t))
            mean, std = algo.transition(params, obs, aux, k, x, velocity, t)
            mean, std = np.asarray(mean)[0], np.asarray(std)[0] * float(data["noise_scale"][b])
            if np.all(std > 0):
                log_probs[b, k] = norm.logpdf(chains[b, k + 1], mean, std).sum()
            else:  # a deterministic step lands exactly on its mean
                np.testing.assert_allclose(chains[b, k + 1], mean, atol=1e-5)
    return log_probs


@pytest.mark.parametrize("name", CHAIN_METHODS)
def test_chain_log_likelihood_equals_independent_gaussian_densities(name):
    # Half-way through a noise-scale schedule: each sample's stds are scaled by its own s.
    algo = make_algo(name, final_noise_scale=0.2)
    state = algo.init(jax.random.PRNGKey(3))
    state["iteration"] = jnp.asarray(algo.num_iterations // 2, jnp.int32)
    data = scored_rollout(algo, state, jax.random.PRNGKey(4))
    data = {k: v[:6] for k, v in data.items()}
    batched, _ = algo.step_log_probs(state["params"], data)
    expected = independent_step_log_probs(algo, state["params"], data)
    np.testing.assert_allclose(np.asarray(batched), expected, rtol=1e-4, atol=1e-4)
    if name == "flow-sde":  # exactly one stochastic step per action
        assert ((expected != 0).sum(axis=1) == 1).all()


def rescored_log_ratio(sampling_algo, scoring_algo, key):
    state = sampling_algo.init(jax.random.PRNGKey(5))
    data = scored_rollout(sampling_algo, state, key)
    old = sampling_algo.step_log_probs(state["params"], data)[0]
    new = scoring_algo.step_log_probs(state["params"], data)[0]
    return np.abs(np.asarray(new - old)).max()


def test_rescoring_on_another_time_grid_or_noise_floor_breaks_the_ratio(monkeypatch):
    algo = make_algo("reinflow")
    assert rescored_log_ratio(algo, algo, jax.random.PRNGKey(6)) < 1e-5
    # A noise floor other than the sampler's: same parameters, a ratio far from 1.
    other_floor = make_algo("reinflow", min_noise_std=0.02)
    assert rescored_log_ratio(algo, other_floor, jax.random.PRNGKey(6)) > 0.1
    # A time grid other than the sampler's (shifted by half a step) when re-scoring; the SDE's
    # noise depends on t, so a grid mismatch shows at once.
    algo = make_algo("flow-sde", sde_steps="all")
    state = algo.init(jax.random.PRNGKey(5))
    data = scored_rollout(algo, state, jax.random.PRNGKey(6))
    old = algo.step_log_probs(state["params"], data)[0]
    shifted_grid = lambda k: time_grid(k) + 0.5 / k  # noqa: E731
    monkeypatch.setattr(flow_onpolicy, "time_grid", shifted_grid)
    monkeypatch.setattr(flow_module, "time_grid", shifted_grid)
    shifted = algo.step_log_probs(state["params"], data)[0]
    assert np.abs(np.asarray(shifted - old)).max() > 0.1


def test_sde_step_keeps_the_flow_marginals():
    # For a point-mass target a*, the exact velocity is (a* - x) / (1 - t) and the flow's
    # marginal at time t is N(t a*, (1 - t)^2). The SDE, with noise injected at every step,
    # must keep those marginals (up to the Euler-Maruyama discretisation).
    target, steps, samples = 0.6, 100, 40_000
    dt = 1.0 / steps
    x = jax.random.normal(jax.random.PRNGKey(0), (samples,))
    noises = jax.random.normal(jax.random.PRNGKey(1), (steps, samples))
    for k in range(steps // 2):
        t = k * dt
        velocity = (target - x) / (1.0 - t)
        mean, std = sde_transition(x, velocity, t, dt, noise_level=0.7)
        x = mean + std * noises[k]
    assert float(x.mean()) == pytest.approx(0.5 * target, abs=0.02)
    assert float(x.std()) == pytest.approx(0.5, abs=0.03)


def test_group_relative_advantages_by_hand():
    # 2 groups of 2 envs, 3 steps. Env 0: episodes (1) and (2, 3); env 1: (5) and (0, unfinished);
    # env 2: (1, 1, 1 unfinished); env 3: (2) then (4, 4 unfinished).
    rewards = jnp.array([[1.0, 5.0, 1.0, 2.0], [2.0, 0.0, 1.0, 4.0], [3.0, 0.0, 1.0, 4.0]])
    dones = jnp.array([[1, 1, 0, 1], [0, 0, 0, 0], [1, 0, 0, 0]], bool)
    advantages = np.asarray(group_relative_advantages(rewards, dones, group_size=2))
    # Group (0, 1), first episodes: returns 1 and 5 -> -1 and +1. Second episodes: only env 0's
    # finished, so nothing to compare with -> 0. Group (2, 3): env 2 never finished -> 0.
    expected = np.array([[-1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(advantages, expected, atol=1e-6)


def test_grouped_restarts_start_a_group_from_one_state():
    from gprl.envs import make_env

    env = make_env("gprl/ContextualTarget-v0", 6, 0, backend="gymnasium")
    obs = env.restart(11, start_state_group=3)
    np.testing.assert_array_equal(obs[0], obs[2])
    np.testing.assert_array_equal(obs[3], obs[5])
    assert not np.array_equal(obs[0], obs[3])
    step = env.step(np.zeros((6, 2), np.float32))  # one-step episodes: resets stay in step
    np.testing.assert_array_equal(step.obs[0], step.obs[1])
    env.close()


GRPO_SMALL = ALGORITHMS["grpo"].config(group_size=4)

PROBE_OVERRIDES = {
    # The velocity loss (FPO's default, chosen on DMC) weights every flow time alike; on this
    # task, whose reward asks for a precise action, it ends at -0.04 to -0.06 in 20k steps, the
    # epsilon loss (the pairs near the action weighted by t^2) at -0.02.
    "fpo": {"negative_advantages": "spo", "loss_mode": "epsilon"},
}


def learning_cases():
    """Every method learns on the device path, on host envs under -m slow: their host runs
    execute the same algorithm code, and the resume tests run them on host envs. dppo-flow's and
    ReinFlow's runs from scratch are -m slow too: the default suite has them improve a
    pretrained policy (test_finetune)."""
    for name in FLOW_METHODS:
        device_slow = pytest.mark.slow if name in ("dppo-flow", "reinflow") else ()
        yield pytest.param(name, "jax", id=f"{name}-jax", marks=device_slow)
        yield pytest.param(name, "gymnasium", id=f"{name}-gymnasium", marks=pytest.mark.slow)


@pytest.mark.parametrize(("name", "backend"), learning_cases())
def test_method_learns_an_observation_dependent_optimal_action(name, backend, tmp_path):
    # The same algorithm code on host envs and on the device path (the JAX twin, in jit).
    config = replace(
        ALGORITHMS[name].config(),
        rollout_steps=32,
        num_minibatches=4,
        learning_rate=1e-3,
        **PROBE_OVERRIDES.get(name, {}),
    )
    run = RunConfig(
        env="gprl/ContextualTarget-v0",
        env_backend=backend,
        # Past the bar from 6-10k steps (FPO -0.029 at 10k and at 12k, Flow-SDE -0.022, GRPO
        # -0.023; their evaluations every 2k steps, 2026-12-05).
        total_steps=12_288,
        num_envs=8,
        out=tmp_path / "run",
        progress=False,
        eval_every=12_288,
        eval_episodes=64,
    )
    with open(train(name, run, config) / "metrics.csv", newline="") as f:
        evals = [float(r["eval_return"]) for r in csv.DictReader(f) if r["eval_return"]]
    assert evals[-1] > -0.04  # the best constant action earns about -0.43, the optimum 0


RESUME_OVERRIDES = {
    "fpo": {"ratio": "per_pair", "negative_advantages": "spo"},
    "reinflow": {"w2_coef": 0.1},  # a reference policy in the state
    "grpo": {"group_size": 2, "kl_coef": 0.01},  # grouped restarts at every boundary
}


# GRPO's grouped restarts run by default; FPO's and ReinFlow's state (ReinFlow's reference policy
# is also resumed in test_finetune) with -m slow.
@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=[] if name == "grpo" else pytest.mark.slow)
        for name in sorted(RESUME_OVERRIDES)
    ],
)
def test_interrupted_flow_run_resumes_exactly(name, tmp_path, resume_check):
    config = replace(
        ALGORITHMS[name].config(),
        flow=FlowPolicyConfig(hidden=(32, 32), num_steps=5),
        rollout_steps=32,
        num_minibatches=4,
        **RESUME_OVERRIDES[name],
    )
    run = RunConfig(
        env="gprl/TwoGoalPoint-v0",
        total_steps=4096,
        num_envs=4,
        out=tmp_path / "interrupted",
        progress=False,
        eval_every=1024,
        eval_episodes=4,
        checkpoint_every=1024,
    )
    resume_check.train(name, run, config, 13)


def test_grpo_refuses_envpool_and_a_group_that_does_not_divide_the_envs(tmp_path):
    from gprl.envs import EnvError

    run = RunConfig(env="Hopper-v5", env_backend="envpool", total_steps=4096, num_envs=8)
    with pytest.raises(EnvError, match="one initial state"):
        train("grpo", replace(run, out=tmp_path / "a", progress=False), GRPO_SMALL)
    run = replace(run, env="gprl/ContextualTarget-v0", env_backend="auto", num_envs=6)
    with pytest.raises(ValueError, match=r"multiple of grpo\.group_size"):
        train("grpo", replace(run, out=tmp_path / "b", progress=False), GRPO_SMALL)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
