"""MaxEntDP: its noise target is the Boltzmann posterior and splits evenly over equal optima,
its particles stay in the action box, its max backup finds the best action, bad input, exact
resume, and (-m slow) a trained policy that keeps all four optima of FourModeBandit."""

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_fql import read_rows

from gprl.action_plots import coverage_at
from gprl.algos import MaxEntDP, MaxEntDPConfig
from gprl.algos.maxentdp import box_posterior_noise
from gprl.envs.diagnostics import FOUR_MODE_OFFSET, MODE_CONTEXT_SHIFT, MODE_WIDTH
from gprl.policies import DDPMPolicyConfig
from gprl.trainer import RunConfig, load_run, train
from gprl.types import EnvSpec

FOUR_MODE = "gprl/FourModeBandit-v0"
SPEC = EnvSpec(FOUR_MODE, 2, 2, -np.ones(2, np.float32), np.ones(2, np.float32), 1)
FAST = MaxEntDPConfig(
    policy=DDPMPolicyConfig(hidden=(64, 64), activation="relu", num_train_steps=10, num_steps=10),
    batch_size=128,
    num_particles=16,
    learning_starts=64,
    update_every=16,
    steps_per_iteration=64,
    learning_rate=1e-3,
)


class ExactRewardMaxEntDP(MaxEntDP):
    """Its critics replaced by FourModeBandit's reward, so that its noise target is known."""

    def _q(self, critic, obs, action):
        corners = FOUR_MODE_OFFSET * jnp.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], jnp.float32)
        modes = MODE_CONTEXT_SHIFT * obs[..., None, :] + corners
        squared = jnp.sum((action[..., None, :] - modes) ** 2, axis=-1).min(-1)
        return jnp.exp(-squared / (2 * MODE_WIDTH**2))


def clean_estimates(algo, noisy, alpha_bar, alpha, keys):
    """Tweedie's posterior mean of the clean action from the noise target, one per key."""
    obs = jnp.zeros((len(keys), 2))
    noisy = jnp.broadcast_to(jnp.asarray(noisy, jnp.float32), (len(keys), 2))
    alpha_bar = jnp.full((len(keys), 1), alpha_bar)

    def estimate(key, x, o, a):
        target, _ = algo.noise_target(None, o[None], x[None], a[None], alpha, key)
        return (x - jnp.sqrt(1 - a) * target[0]) / jnp.sqrt(a)

    return np.asarray(jax.jit(jax.vmap(estimate))(keys, noisy, obs, alpha_bar))


def test_the_noise_target_is_the_boltzmann_posterior_and_prefers_no_optimum():
    algo = ExactRewardMaxEntDP(replace(FAST, num_particles=64), SPEC, 1, total_steps=1024)
    keys = jax.random.split(jax.random.PRNGKey(0), 1000)
    # Near the clean end, a noisy action beside an optimum is denoised onto it (the buffer's
    # noise alone, unweighted, would leave it 0.1 away).
    near = clean_estimates(algo, [0.4, 0.45], 0.99, 0.01, keys[:16])
    assert np.abs(near.mean(0) - 0.5).max() < 0.02 and np.abs(near - 0.5).max() < 0.05
    # At the noisiest step the posterior is the Boltzmann policy itself: from any noisy action
    # the estimates split evenly over the four optima.
    far = clean_estimates(algo, [0.3, -0.8], float(algo.flow.alpha_bars[-1]), 0.01, keys)
    coverage = coverage_at(FOUR_MODE, np.zeros((1, 2)), far[None])
    # (Where none of the particles falls near an optimum the estimate misses them all.)
    assert coverage.none_share[0] < 0.2
    assert coverage.mode_shares.min() > 0.18


def test_noise_particles_are_posterior_draws_inside_the_action_box():
    # Noisy actions far outside the box, where truncated_normal alone returns NaN.
    noisy = jnp.array([[0.3, -0.2], [40.0, -40.0], [0.99, 0.0]])
    alpha_bar = jnp.array([[0.999, 0.999], [0.99, 0.99], [0.01, 0.01]])
    noise, centre, scale = box_posterior_noise(jax.random.PRNGKey(0), noisy, alpha_bar, 4096)
    particles = np.asarray(centre + scale * noise)
    assert np.isfinite(particles).all() and np.abs(particles).max() <= 1.0 + 1e-5
    # Near the clean end the posterior is narrow around x / sqrt(abar); at the noisy end it
    # covers the box.
    assert np.abs(particles[0].mean(0) - np.asarray(noisy[0] / jnp.sqrt(0.999))).max() < 0.005
    assert particles[0].std(0).max() < 0.04
    assert particles[2].std(0).min() > 0.5


def test_cli_rejects_bad_maxentdp_input_in_one_line(tmp_path, cli_error):
    base = ["train", "maxentdp", "--env", FOUR_MODE, "--out", str(tmp_path / "bad")]
    for args, message in [
        (["--maxentdp.num-particles", "0"], "num_particles must be at least 1, got 0"),
        (["--maxentdp.backup-samples", "-1"], "backup_samples must be 0 or more, got -1"),
        (["--maxentdp.entropy-samples", "1"], "entropy_samples must be at least 2, got 1"),
        (["--maxentdp.alpha-range", "0.5", "1"], "alpha_range must be positive and hold"),
        (["--maxentdp.policy.num-steps", "30"], "num_steps (30) cannot exceed"),
        (["--init", str(tmp_path)], "maxentdp cannot start from a pretrained policy"),
    ]:
        assert message in cli_error([*base, *args]), args
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_an_interrupted_maxentdp_run_resumes_exactly(tmp_path, resume_check):
    run = RunConfig(
        env="gprl/TwoGoalPoint-v0",
        env_backend="jax",
        total_steps=512,
        num_envs=4,
        out=tmp_path / "interrupted",
        progress=False,
        eval_every=256,
        eval_episodes=4,
        checkpoint_every=192,
    )
    config = replace(FAST, learning_starts=128)
    checked = resume_check.train("maxentdp", run, config, 5)
    assert len(checked.rows) == 8 and checked.rows[-1]["policy/alpha"]


# -m slow: a few minutes of training on the shared 2-core machine.
@pytest.mark.slow
def test_trained_on_four_mode_bandit_the_policy_keeps_every_optimum(tmp_path):
    run = RunConfig(
        env=FOUR_MODE,
        total_steps=12_000,
        num_envs=16,
        out=tmp_path / "run",
        progress=False,
        eval_every=0,
        eval_episodes=64,
    )
    run_dir = train("maxentdp", run, replace(FAST, learning_starts=1024))
    assert float(read_rows(run_dir)[-1]["eval_return"]) > 0.95  # optimal 1
    algo, state, _ = load_run(run_dir)
    contexts = np.random.default_rng(2).uniform(-1, 1, (4, 2)).astype(np.float32)
    actions, _ = jax.jit(algo.act)(
        algo.acting_params(state), np.repeat(contexts, 500, 0), jax.random.PRNGKey(3)
    )
    coverage = coverage_at(FOUR_MODE, contexts, np.asarray(actions).reshape(4, 500, 2))
    # A policy that commits to one optimum leaves the other three none (0.25 each when even).
    assert coverage.mode_shares.mean(0).min() > 0.1 and coverage.none_share.mean() < 0.5


BEST_ACTION = jnp.array([0.6, -0.3])


class KnownCriticMaxEntDP(MaxEntDP):
    """Its critics replaced by -|a - BEST_ACTION|^2: max over actions 0."""

    def _q(self, critic, obs, action):
        return -jnp.sum((action - BEST_ACTION) ** 2, axis=-1)


def test_the_max_backup_finds_the_best_action_that_the_policy_does_not_sample():
    next_obs = jax.random.normal(jax.random.PRNGKey(1), (256, 2))
    values = {}
    for count in (0, 32):
        algo = KnownCriticMaxEntDP(replace(FAST, backup_samples=count), SPEC, 1, total_steps=1024)
        state = algo.init(jax.random.PRNGKey(0))
        values[count] = np.asarray(algo._next_q(state, next_obs, jax.random.PRNGKey(2)))
    # One sample of the untrained policy lands anywhere; the best of 64 candidates lies within
    # a few hundredths of the optimum's value, never above it.
    assert values[0].mean() < -0.3
    assert values[32].mean() > -0.05 and values[32].max() <= 0.0
