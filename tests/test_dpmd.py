"""DPMD: the flow policy learns the Boltzmann policy of a known Q and keeps both equally good
modes, its temperature holds the target effective sample size, bad input, exact resume, and
(slow) both modes kept when the critics are learnt too."""

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_fql import read_rows

from gprl.algos import DPMD, DPMDConfig
from gprl.envs.diagnostics import OPTIMAL_MODES, bimodal_modes, mode_coverage
from gprl.policies import FlowPolicyConfig
from gprl.trainer import RunConfig, load_run, train
from gprl.types import EnvSpec, Transition

BANDIT = "gprl/BimodalBandit-v0"
SPEC = EnvSpec(BANDIT, 2, 1, -np.ones(1, np.float32), np.ones(1, np.float32), 1)
SMALL = (64, 64)
FAST = DPMDConfig(
    flow=FlowPolicyConfig(hidden=SMALL, activation="relu", num_steps=6),
    critic_hidden=SMALL,
    num_candidates=32,
    batch_size=128,
    learning_starts=256,
    update_every=32,
    steps_per_iteration=256,
    learning_rate=1e-3,
)


def bandit_reward(obs, action):
    """BimodalBandit's reward: a Gaussian bump of width 0.1 on each of its two modes."""
    shift = 0.1 * obs[..., 0]
    distance = jnp.minimum(
        jnp.abs(action[..., 0] - shift + 0.6), jnp.abs(action[..., 0] - shift - 0.6)
    )
    return jnp.exp(-(distance**2) / 0.02)


def bandit_batch(key, size):
    obs = jax.random.uniform(key, (size, 2), minval=-1.0)
    zeros = jnp.zeros(size)
    return Transition(obs, jnp.zeros((size, 1)), zeros, zeros, zeros, obs, {})


def test_the_flow_learns_the_boltzmann_policy_of_a_known_q_with_both_modes():
    # The critics' values replaced by the true reward: what the policy's update alone makes of
    # two equally good modes. The temperature starts far too high (weights nearly uniform).
    config = replace(FAST, initial_alpha=1.0, alpha_learning_rate=0.05)
    algo = DPMD(config, SPEC, num_envs=1, total_steps=1024)
    algo._q = lambda critic, obs, action: bandit_reward(obs, action)

    def step(state, key):
        batch_key, update_key = jax.random.split(key)
        state, info = algo.update(state, bandit_batch(batch_key, 128), update_key)
        return state, info["policy/effective_share"]

    keys = jax.random.split(jax.random.PRNGKey(1), 1200)
    state, shares = jax.jit(lambda s: jax.lax.scan(step, s, keys))(algo.init(jax.random.PRNGKey(0)))
    assert float(jnp.exp(state["params"]["log_alpha"])) < 0.3
    assert abs(float(shares[-50:].mean()) - config.target_effective_share) < 0.03

    contexts = np.random.default_rng(2).uniform(-1, 1, (32, 2)).astype(np.float32)
    repeated = np.repeat(contexts, 256, axis=0)
    actions, _ = jax.jit(algo.act)(algo.acting_params(state), repeated, jax.random.PRNGKey(3))
    coverage = mode_coverage(
        np.asarray(actions).reshape(32, 256, 1),
        bimodal_modes(contexts)[..., None],
        OPTIMAL_MODES[BANDIT].radius,
    )
    shares = coverage.mode_shares.mean(0)
    assert shares.min() > 0.3 and coverage.none_share.mean() < 0.3, shares


def test_cli_rejects_bad_dpmd_input_in_one_line(tmp_path, cli_error):
    base = ["train", "dpmd", "--env", BANDIT, "--out", str(tmp_path / "bad")]
    for args, message in [
        (["--dpmd.num-candidates", "1"], "num_candidates must be at least 2, got 1"),
        (["--dpmd.backup-samples", "-2"], "backup_samples must be 0 or more, got -2"),
        (["--dpmd.initial-alpha", "0"], "initial_alpha must be positive, got 0.0"),
        (
            ["--dpmd.target-effective-share", "0.01"],
            "target_effective_share must lie strictly between 1 / num_candidates (0.015625)",
        ),
        (["--dpmd.alpha-learning-rate", "-1"], "alpha_learning_rate"),
    ]:
        assert message in cli_error([*base, *args]), args
    assert not (tmp_path / "bad").exists()


def bandit_run(tmp_path, name, **overrides) -> RunConfig:
    fields = dict(env=BANDIT, total_steps=1024, seed=0, eval_episodes=8, progress=False)
    return RunConfig(**(fields | {"out": tmp_path / name} | overrides))


@pytest.mark.slow
def test_an_interrupted_dpmd_run_resumes_exactly(tmp_path, resume_check):
    run = bandit_run(tmp_path, "interrupted", eval_every=512, checkpoint_every=512)
    checked = resume_check.train("dpmd", run, FAST, 2)
    assert len(checked.rows) == 4 and checked.rows[-1]["policy/loss"]


# -m slow: a run with learnt critics (compiling it costs ~20 s on the shared 2-core machine).
@pytest.mark.slow
def test_learnt_critics_keep_both_bandit_modes(tmp_path):
    config = replace(FAST, learning_starts=1024)
    run_dir = train("dpmd", bandit_run(tmp_path, "learnt", total_steps=4096), config)
    assert float(read_rows(run_dir)[-1]["eval_return"]) > 0.95
    algo, state, _ = load_run(run_dir)
    contexts = np.random.default_rng(2).uniform(-1, 1, (32, 2)).astype(np.float32)
    actions, _ = jax.jit(algo.act)(
        algo.acting_params(state), np.repeat(contexts, 256, axis=0), jax.random.PRNGKey(3)
    )
    coverage = mode_coverage(
        np.asarray(actions).reshape(32, 256, 1),
        bimodal_modes(contexts)[..., None],
        OPTIMAL_MODES[BANDIT].radius,
    )
    assert coverage.mode_shares.mean(0).min() > 0.2, coverage.mode_shares.mean(0)
