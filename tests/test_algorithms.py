"""Learning tests on probe environments where the right answer is known."""

import csv
import functools
from dataclasses import fields, is_dataclass, replace

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gprl.algos import ALGORITHMS, GoRL, GoRLConfig, PPOConfig
from gprl.algos.base import OnPolicyAlgorithm
from gprl.envs import make_env
from gprl.envs.diagnostics import bimodal_modes, contextual_target_optimum
from gprl.networks import CustomNetworks
from gprl.policies import FlowPolicy, FlowPolicyConfig
from gprl.pretrained import ChunkPolicy, PretrainConfig, Pretrained
from gprl.rl_math import normalize, running_stats_init, running_stats_update
from gprl.trainer import RunConfig, load_run, train
from gprl.types import EnvSpec, Transition

FAST_PPO = PPOConfig(rollout_steps=32, num_minibatches=4, learning_rate=1e-3)


def fast_gorl(**overrides) -> GoRLConfig:
    return replace(
        GoRLConfig(
            ppo=replace(GoRLConfig().ppo, rollout_steps=32, num_minibatches=4, learning_rate=1e-3)
        ),
        **overrides,
    )


def read_rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def eval_rows(run_dir):
    return [r for r in read_rows(run_dir) if r["eval_return"]]


def test_ppo_learns_an_observation_dependent_optimal_action(tmp_path):
    run = RunConfig(
        env="gprl/ContextualTarget-v0",
        total_steps=20_000,
        num_envs=8,
        out=tmp_path / "run",
        progress=False,
        eval_every=5_000,
        eval_episodes=32,
    )
    run_dir = train("ppo", run, FAST_PPO)
    assert float(eval_rows(run_dir)[-1]["eval_return"]) > -0.03  # a = 0 earns about -0.43
    algo, state, _ = load_run(run_dir)
    contexts = np.random.default_rng(7).uniform(-1, 1, (256, 3)).astype(np.float32)
    actions = np.asarray(algo.act_deterministic(algo.acting_params(state), contexts))
    error = np.abs(actions - contextual_target_optimum(contexts)).mean()
    assert error < 0.08


def test_ppo_bootstraps_values_at_time_limits(tmp_path):
    # Reward 1 forever, cut at 10 steps, constant observation: with time-limit bootstrapping the
    # value is 1 / (1 - gamma) = 10; treating the cut as termination would give at most 6.5.
    config = replace(FAST_PPO, gamma=0.9, normalize_rewards=False, num_epochs=20)
    run = RunConfig(
        env="gprl/TruncationProbe-v0",
        total_steps=12_000,
        num_envs=8,
        out=tmp_path / "run",
        progress=False,
        eval_every=0,
        eval_episodes=2,
    )
    run_dir = train("ppo", run, config)
    final_value = float(read_rows(run_dir)[-1]["value_mean"])
    assert final_value == pytest.approx(10.0, abs=0.6)


def test_gorl_keeps_the_optimum_through_a_decoder_refit(tmp_path):
    config = fast_gorl(num_stages=2, stage_weights=(1.0, 1.0), decoder_train_steps=1500)
    run = RunConfig(
        env="gprl/ContextualTarget-v0",
        total_steps=30_000,
        num_envs=8,
        out=tmp_path / "run",
        progress=False,
        eval_every=2_000,
        eval_episodes=32,
    )
    run_dir = train("gorl", run, config)
    rows = eval_rows(run_dir)
    before_refit = [r for r in rows if r["stage"] == "0"]
    after_refit = [r for r in rows if r["stage"] == "1"]
    assert float(before_refit[-1]["eval_return"]) > -0.03
    # The first evaluation after the refit runs the freshly reset encoder (z ~ prior mean) through
    # the new decoder: it must already reproduce the stage-0 policy.
    assert float(after_refit[0]["eval_return"]) > -0.05
    assert float(after_refit[-1]["eval_return"]) > -0.03
    refit = next(r for r in read_rows(run_dir) if r.get("decoder_val_loss"))
    assert float(refit["decoder_val_loss"]) < 0.5 * float(refit["decoder_val_loss_at_init"])
    # Taken, not refused by the refit check (which would keep the policy without a refit).
    assert refit["refit/accepted"] == "1"
    # The trainer evaluates right before and right after the refit: within 5% of the gap
    # between the optimum (0) and the best constant action (-0.43).
    before, after = float(refit["eval_return_before_refit"]), float(refit["eval_return"])
    assert abs(after - before) < 0.02


# The diffusion decoder's refit is -m slow: the refit is the same code for both decoders, and
# test_policies checks that diffusion behaviour cloning keeps both modes.
@pytest.mark.parametrize("decoder", ["flow", pytest.param("diffusion", marks=pytest.mark.slow)])
def test_gorl_decoder_refit_puts_mass_on_both_modes(decoder):
    env = make_env("gprl/BimodalBandit-v0", 1, 0)
    config = fast_gorl(decoder=decoder, decoder_train_steps=2000, decoder_coupling="independent")
    algo = GoRL(config, env.spec, 1, 100_000)
    rng = np.random.default_rng(0)
    contexts = rng.uniform(-1, 1, (6000, 2)).astype(np.float32)
    chosen = bimodal_modes(contexts)[np.arange(6000), rng.integers(0, 2, 6000)]
    actions = np.clip(chosen + 0.03 * rng.normal(size=6000), -0.99, 0.99)
    pre_tanh = np.arctanh(actions)[:, None].astype(np.float32)
    stats = running_stats_update(running_stats_init((2,)), contexts)
    params, _ = algo.fit_decoder(
        algo.decoder.init(jax.random.PRNGKey(1), 2),
        contexts,
        pre_tanh,
        stats,
        jax.random.PRNGKey(2),
    )
    test_contexts = rng.uniform(-1, 1, (2000, 2)).astype(np.float32)
    prior = jax.random.normal(jax.random.PRNGKey(3), (2000, 1))
    cond = normalize(test_contexts, stats)
    sampled = np.tanh(np.asarray(algo.decoder.sample(params, cond, prior)))[:, 0]
    distance = np.abs(sampled[:, None] - bimodal_modes(test_contexts))
    near = distance.min(axis=1) < 0.2
    assert near.mean() > 0.85
    lower_share = (distance.argmin(axis=1)[near] == 0).mean()
    assert 0.3 < lower_share < 0.7


def refit_errors(coupling: str) -> tuple[float, float]:
    """Mean |action after a refit - action before| over held-out states: deterministic
    (evaluation) actions, and stochastic ones drawn with the same keys (the same prior noise)."""
    env = make_env("gprl/ContextualTarget-v0", 1, 0)
    # Every refit taken: this measures what a refit fits, not whether GoRL would take it.
    config = fast_gorl(decoder_coupling=coupling, refit_tolerance=None, decoder_train_steps=3000)
    algo = GoRL(config, env.spec, 16, 100_000)
    state = algo.init(jax.random.PRNGKey(0))
    # A stage-0 policy worth preserving: means that vary with the state across most of the
    # action range.
    actor = jax.tree.map(lambda x: x, state["params"]["actor"])
    layers = actor["params"]["MLP_0"]
    head = layers[max(layers, key=lambda name: int(name.rsplit("_", 1)[1]))]
    head["kernel"] = head["kernel"] * 150.0
    state = state | {"params": state["params"] | {"actor": actor}}
    acting = algo.acting_params(state)
    contexts = np.random.default_rng(0).uniform(-1, 1, (64, 16, 3)).astype(np.float32)
    act = jax.jit(algo.act)
    steps = [act(acting, obs, jax.random.PRNGKey(i)) for i, obs in enumerate(contexts)]
    batch = Transition(
        contexts,
        np.stack([np.asarray(a) for a, _ in steps]),
        np.zeros((64, 16), np.float32),
        np.ones((64, 16), bool),
        np.zeros((64, 16), bool),
        contexts,
        jax.tree.map(lambda *xs: np.stack(xs), *[extras for _, extras in steps]),
    )
    refitted, _ = algo.end_stage(state, batch, jax.random.PRNGKey(1))
    held_out = np.random.default_rng(1).uniform(-1, 1, (512, 3)).astype(np.float32)
    after = algo.acting_params(refitted)
    deterministic = np.abs(
        algo.act_deterministic(after, held_out) - algo.act_deterministic(acting, held_out)
    ).mean()
    key = jax.random.PRNGKey(2)
    stochastic = np.abs(act(after, held_out, key)[0] - act(acting, held_out, key)[0]).mean()
    return float(deterministic), float(stochastic)


# The default suite keeps the refit's end-to-end tests (the optimum kept through a refit, a refit
# that would lose the policy refused: test_gorl_refit); this closer look runs with -m slow.
@pytest.mark.slow
def test_paired_refit_reproduces_the_policy_sample_by_sample():
    deterministic, stochastic = refit_errors("paired")
    assert deterministic < 0.01 and stochastic < 0.01
    # Fitting the action distribution from fresh noise keeps the distribution at best, not each
    # sample, and not the evaluation action.
    independent_deterministic, independent_stochastic = refit_errors("independent")
    assert independent_stochastic > 3 * stochastic
    assert independent_deterministic > deterministic


# ----- the algorithm contract, over every registered method ----------------------------------

CONTRACT_SPEC = EnvSpec("probe", 3, 2, -np.ones(2, np.float32), np.ones(2, np.float32), None)
CONTRACT_ENVS, CONTRACT_STEPS = 8, 100_000
NETWORKS_USED = {
    "ppo": {"actor", "critic"},
    "gorl": {"actor", "critic", "velocity"},
    "gorl-reference": {"actor", "critic", "velocity"},
    "fpo": {"velocity", "critic"},
    "dppo": {"velocity", "critic"},
    "dppo-flow": {"velocity", "critic"},
    "reinflow": {"velocity", "critic"},
    "flow-sde": {"velocity", "critic"},
    "grpo": {"velocity"},
    "sac": {"actor", "critic"},
    "dsrl": {"actor", "critic"},
    "residual": {"actor", "critic"},
    "fql": {"velocity", "critic"},
    "qc-fql": {"velocity", "critic"},
    "qc": {"velocity", "critic"},
    "expo": {"velocity", "critic"},
    "pa-rl": {"critic"},
    "maxentdp": {"velocity", "critic"},
    "dpmd": {"velocity", "critic"},
}


def random_pretrained_flow() -> Pretrained:
    """An untrained flow of single actions whose action map reaches far outside [-1, 1]."""
    flow_config = FlowPolicyConfig(hidden=(16,), num_steps=2)
    flow = FlowPolicy(CONTRACT_SPEC.action_dim, flow_config)
    acting = {
        "params": flow.init(jax.random.PRNGKey(0), CONTRACT_SPEC.obs_dim),
        "obs_norm": running_stats_init((CONTRACT_SPEC.obs_dim,)),
        "action_norm": {"center": np.full(2, 0.5), "half_range": np.full(2, 4.0)},
    }
    return Pretrained(
        "flow", ChunkPolicy(flow, 1, 2, 1.0), acting, PretrainConfig(), flow_config, "probe",
        "gymnasium", CONTRACT_SPEC.obs_dim, CONTRACT_SPEC.action_dim,
    )  # fmt: skip


def contract_algo(name: str, config=None, **optional):
    entry = ALGORITHMS[name]
    config = entry.default_config() if config is None else config
    if entry.algorithm.pretrained_policy == "required":
        optional["pretrained"] = random_pretrained_flow()
    return entry.algorithm(config, CONTRACT_SPEC, CONTRACT_ENVS, CONTRACT_STEPS, **optional)


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_algorithm_acts_in_the_unit_box(name):
    algo = contract_algo(name)
    acting = jax.jit(lambda key: algo.acting_params(algo.init(key)))(jax.random.PRNGKey(0))
    # Large observations push untrained networks' outputs (and Gaussian samples) past 1.
    obs = 5.0 * jax.random.normal(jax.random.PRNGKey(1), (256, CONTRACT_SPEC.obs_dim))
    actions, _ = jax.jit(algo.act)(acting, obs, jax.random.PRNGKey(2))
    deterministic = jax.jit(algo.act_deterministic)(acting, obs)
    for a in (actions, deterministic):
        assert a.shape == (256, 2) and float(jnp.abs(a).max()) <= 1.0, name


def nested_fields(config, prefix=""):
    """(dotted name, replace(value) -> config) of every field of a nested dataclass config."""
    for field in fields(config):
        value = getattr(config, field.name)
        if is_dataclass(value):
            for name, setter in nested_fields(value):
                yield (
                    f"{prefix}{field.name}.{name}",
                    lambda v, f=field.name, s=setter: replace(config, **{f: s(v)}),
                )
        else:
            yield f"{prefix}{field.name}", lambda v, f=field.name: replace(config, **{f: v})


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_algorithm_refuses_a_learning_rate_that_is_not_finite(name):
    config = ALGORITHMS[name].default_config()
    rates = [(path, setter) for path, setter in nested_fields(config) if "learning_rate" in path]
    assert rates
    for path, setter in rates:
        for bad in (float("inf"), float("nan"), -1e-3):
            field_name = path.rsplit(".", 1)[-1]
            with pytest.raises(ValueError, match=f"{field_name} must be a finite positive number"):
                contract_algo(name, setter(bad))


ON_POLICY = sorted(n for n in ALGORITHMS if issubclass(ALGORITHMS[n].algorithm, OnPolicyAlgorithm))


@pytest.mark.parametrize("name", ON_POLICY)
def test_every_on_policy_algorithm_refuses_minibatches_that_do_not_divide_the_batch(name):
    config = ALGORITHMS[name].default_config()
    setter = dict(nested_fields(config))
    key = "ppo.num_minibatches" if "ppo.num_minibatches" in setter else "num_minibatches"
    with pytest.raises(ValueError, match=r"num_minibatches \(3\) must divide the batch size"):
        contract_algo(name, setter[key](3))
    contract_algo(name, setter[key](4))  # 128 x 8 = 1024 splits into 4


def test_the_cli_refuses_an_infinite_learning_rate(cli_error, tmp_path):
    base = ["train", "ppo", "--env", "gprl/ContextualTarget-v0", "--total-steps", "4096"]
    out = ["--out", str(tmp_path / "run")]
    assert "learning_rate must be a finite positive number, got inf" in cli_error(
        [*base, "--ppo.learning-rate", "inf", *out]
    )
    assert "num_minibatches (3) must divide" in cli_error(
        [*base, "--ppo.num-minibatches", "3", *out]
    )
    assert not (tmp_path / "run").exists()


def critic_rate_prefix(config) -> str | None:
    """The dotted path ("" or "ppo.") of the config holding critic_learning_rate, if any."""
    for path, _ in nested_fields(config):
        if path.endswith("critic_learning_rate"):
            return path.removesuffix("critic_learning_rate")
    return None


ON_POLICY_ACTOR_CRITICS = [
    n for n in ON_POLICY if critic_rate_prefix(ALGORITHMS[n].default_config()) is not None
]


@pytest.mark.parametrize("name", ON_POLICY_ACTOR_CRITICS)
def test_every_actor_critic_steps_its_critic_at_the_critic_learning_rate(name):
    default = ALGORITHMS[name].default_config()
    prefix = critic_rate_prefix(default)
    setters = dict(nested_fields(default))
    policy_rate = functools.reduce(getattr, f"{prefix}learning_rate".split("."), default)
    algo = contract_algo(name, setters[f"{prefix}critic_learning_rate"](10 * policy_rate))
    params = algo.init(jax.random.PRNGKey(0))["params"]
    # Adam's first step from constant-sign gradients moves every weight by its step size.
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = algo.optimizer.update(grads, algo.optimizer.init(params), params)
    steps = {
        role: np.concatenate([np.abs(np.ravel(u)) for u in jax.tree.leaves(tree)])
        for role, tree in updates.items()
    }
    assert "critic" in steps and len(steps) > 1, sorted(steps)
    for role, step in steps.items():
        expected = 10 * policy_rate if role == "critic" else policy_rate
        np.testing.assert_allclose(step, expected, rtol=0.02, err_msg=role)


class UserTorso(nn.Module):
    """A user's torso for any role: features from whatever inputs it is called with."""

    @nn.compact
    def __call__(self, *inputs):
        inputs = [x if x.ndim == inputs[0].ndim else x[..., None] for x in inputs]
        return nn.tanh(nn.Dense(8)(jnp.concatenate(inputs, axis=-1)))


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
@pytest.mark.parametrize("role", ["actor", "critic", "velocity"])
def test_every_algorithm_uses_or_refuses_each_custom_network(name, role):
    networks = CustomNetworks(**{role: UserTorso()})
    if role not in NETWORKS_USED[name]:
        with pytest.raises(ValueError, match=f"has no {role} network to replace"):
            contract_algo(name, networks=networks)
        return
    algo = contract_algo(name, networks=networks)
    state = jax.eval_shape(algo.init, jax.random.PRNGKey(0))
    paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(state)]
    assert any("'torso'" in path for path in paths), name
