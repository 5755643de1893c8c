"""Mode coverage of sampled actions on the multimodal diagnostics, action plots, and
`gprl eval --plot-actions`."""

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gprl import cli
from gprl.action_plots import coverage_lines, plot_actions
from gprl.envs import make_env
from gprl.envs.diagnostics import (
    MODE_CONTEXT_SHIFT,
    MODE_HALF_REWARD_RADIUS,
    OPTIMAL_MODES,
    bimodal_modes,
    four_mode_modes,
    mode_coverage,
    point_goal_headings,
)
from gprl.envs.outcomes import point_goal_fractions

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def on_modes(modes: np.ndarray, counts: list[int], spread: float = 0.02, seed: int = 0):
    """Samples (sum(counts), action_dim): counts[k] of them jittered around mode k."""
    rng = np.random.default_rng(seed)
    chosen = np.repeat(np.arange(len(modes)), counts)
    return modes[chosen] + rng.uniform(-spread, spread, (len(chosen), modes.shape[-1]))


# Mode coverage on hand-made samples.


def test_samples_all_on_one_mode_cover_only_that_mode():
    modes = bimodal_modes(np.array([0.5, -0.2]))[:, None]
    coverage = mode_coverage(on_modes(modes, [200, 0]), modes, MODE_HALF_REWARD_RADIUS)
    np.testing.assert_allclose(coverage.mode_shares, [1.0, 0.0])
    assert coverage.none_share == 0.0 and coverage.minority_share == 0.0


def test_an_even_mixture_covers_both_modes_equally():
    modes = bimodal_modes(np.array([-0.7, 0.3]))[:, None]
    rng = np.random.default_rng(1)
    samples = modes[rng.integers(0, 2, 4000)] + rng.normal(0.0, 0.01, (4000, 1))
    coverage = mode_coverage(samples, modes, MODE_HALF_REWARD_RADIUS)
    np.testing.assert_allclose(coverage.mode_shares, [0.5, 0.5], atol=0.03)
    assert coverage.minority_share == pytest.approx(0.5, abs=0.03)
    assert coverage.none_share == 0.0


def test_samples_between_the_modes_count_on_no_mode():
    modes = bimodal_modes(np.zeros(2))[:, None]
    samples = np.concatenate([np.full((30, 1), modes.mean()), on_modes(modes, [50, 20])])
    coverage = mode_coverage(samples, modes, MODE_HALF_REWARD_RADIUS)
    np.testing.assert_allclose(coverage.mode_shares, [0.5, 0.2])
    assert coverage.none_share == pytest.approx(0.3)
    assert coverage.minority_share == pytest.approx(0.2)


def test_coverage_is_per_observation_so_alternating_modes_across_states_is_not_multimodal():
    # A unimodal policy that reads the context: mode 0 at one state, mode 1 at the other.
    contexts = np.array([[0.4, 0.0], [-0.4, 0.0]])
    modes = OPTIMAL_MODES["gprl/BimodalBandit-v0"].of(contexts)
    samples = np.stack([on_modes(modes[0], [100, 0]), on_modes(modes[1], [0, 100])])
    coverage = mode_coverage(samples, modes, MODE_HALF_REWARD_RADIUS)
    np.testing.assert_allclose(coverage.mode_shares, [[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(coverage.minority_share, [0.0, 0.0])


def test_four_modes_split_evenly_leave_three_quarters_off_the_dominant_one():
    modes = four_mode_modes(np.array([0.9, -0.3]))
    coverage = mode_coverage(on_modes(modes, [25, 25, 25, 25]), modes, MODE_HALF_REWARD_RADIUS)
    np.testing.assert_allclose(coverage.mode_shares, [0.25] * 4)
    assert coverage.minority_share == pytest.approx(0.75)
    assert coverage.modes_kept(0.1) == 4
    two_modes = mode_coverage(on_modes(modes, [60, 0, 40, 0]), modes, MODE_HALF_REWARD_RADIUS)
    assert two_modes.modes_kept(0.1) == 2 and two_modes.minority_share == pytest.approx(0.4)


# The diagnostics' optimal modes.


def test_every_optimal_mode_earns_the_optimal_reward_and_their_average_nothing():
    for env_id in ("gprl/BimodalBandit-v0", "gprl/FourModeBandit-v0"):
        env = gym.make(env_id)
        for seed in range(10):
            context, _ = env.reset(seed=seed)
            modes = OPTIMAL_MODES[env_id].of(context)
            for mode in modes:
                env.reset(seed=seed)
                assert env.step(mode.astype(np.float32))[1] == pytest.approx(1.0)
            env.reset(seed=seed)
            assert env.step(modes[:2].mean(0).astype(np.float32))[1] < 1e-5


def test_four_mode_bandit_renders_and_its_modes_accept_a_batch():
    env = gym.make("gprl/FourModeBandit-v0", render_mode="rgb_array")
    env.reset(seed=0)
    _, reward, terminated, truncated, _ = env.step(np.zeros(2, np.float32))
    assert reward < 1e-6 and terminated and not truncated
    assert env.render().shape == (64, 64, 3)
    contexts = np.random.default_rng(0).uniform(-1, 1, (5, 2))
    np.testing.assert_allclose(four_mode_modes(contexts)[3], four_mode_modes(contexts[3]))


def test_two_goal_point_headings_point_at_full_speed_to_each_goal():
    with make_env("gprl/TwoGoalPoint-v0", 8, seed=0) as env:
        headings = point_goal_headings(env.reset(seed=0))
    assert headings.shape == (8, 2, 2)
    np.testing.assert_allclose(headings[:, 0], [[1.0, 0.0]] * 8, atol=0.03)
    np.testing.assert_allclose(headings[:, 1], [[-1.0, 0.0]] * 8, atol=0.03)
    # Heading to a goal at full speed reaches it; that is what the heading mode stands for.
    env = gym.make("gprl/TwoGoalPoint-v0")
    obs, _ = env.reset(seed=3)
    for _ in range(7):
        obs, _, terminated, _, _ = env.step(point_goal_headings(obs)[1].astype(np.float32))
        if terminated:
            break
    assert terminated and obs[0] < 0


# Where TwoGoalPoint's stochastic episodes end.


def spread_then_plus_x(observations, key):
    """A uniform first action, then full speed towards the +x goal: its first actions split
    between the goals' headings while every episode ends at +x."""
    first = observations[:, 2:3] == 0
    uniform = jax.random.uniform(key, (observations.shape[0], 2), minval=-1.0, maxval=1.0)
    direction = jnp.asarray([0.7, 0.0]) - observations[:, :2]
    heading = direction / jnp.abs(direction).max(axis=-1, keepdims=True)
    return jnp.where(first, uniform, heading)


def choose_then_follow(observations, key):
    """Full speed along +x or -x, chosen at random on the first step, then towards the goal on
    the side the point is on."""
    first = observations[:, 2:3] == 0
    side = jnp.where(jax.random.uniform(key, (observations.shape[0], 1)) < 0.5, 1.0, -1.0)
    follow = jnp.where(observations[:, :1] >= 0, 1.0, -1.0)
    heading = jnp.where(first, side, follow)
    return jnp.concatenate([heading, jnp.zeros_like(heading)], axis=-1)


class Sampler:
    def __init__(self, policy):
        self.policy = policy

    def act(self, acting, obs, key):
        return self.policy(obs, key), {}


def test_point_goal_fractions_count_where_episodes_end_not_where_they_head_first():
    keys = iter(jax.random.split(jax.random.PRNGKey(0), 100))
    spread = point_goal_fractions(lambda obs: spread_then_plus_x(obs, next(keys)), rollouts=500)
    assert spread == (1.0, 0.0, 0.0)
    split = point_goal_fractions(lambda obs: choose_then_follow(obs, next(keys)), rollouts=2000)
    assert split.plus_x == pytest.approx(0.5, abs=0.04) and split.neither == 0.0
    standing = point_goal_fractions(lambda obs: np.zeros((len(obs), 2)), rollouts=10)
    assert standing == (0.0, 0.0, 1.0)


def test_plot_of_two_goal_point_prints_where_its_episodes_end(tmp_path):
    with make_env("gprl/TwoGoalPoint-v0", 1) as env:
        spread = plot_actions(Sampler(spread_then_plus_x), None, env, tmp_path / "a.png", seed=1)
        split = plot_actions(Sampler(choose_then_follow), None, env, tmp_path / "b.png", seed=1)
    # The first actions of the first policy cover both headings; its episodes do not.
    assert np.all(spread.coverage.minority_share > 0.1)
    assert coverage_lines(spread)[-1] == (
        "1000 stochastic episodes end: plus_x 1.00, minus_x 0.00, neither 0.00"
    )
    assert split.episodes["plus_x"] == pytest.approx(0.5, abs=0.05)
    assert split.episodes["minus_x"] == pytest.approx(0.5, abs=0.05)


# Action plots through the algorithm contract.


class FourModeMixture:
    """A stand-in algorithm for FourModeBandit: an even mixture over its first `kept` modes."""

    def __init__(self, kept: int):
        self.kept = kept

    def act(self, acting, obs, key):
        # four_mode_modes in jax.numpy: act runs under jit.
        corners = jnp.asarray(four_mode_modes(np.zeros(2)))
        modes = MODE_CONTEXT_SHIFT * obs[:, None, :] + corners
        choice = jax.random.randint(key, (obs.shape[0],), 0, self.kept)
        return modes[jnp.arange(obs.shape[0]), choice], {}


class NoisyZero:
    def act(self, acting, obs, key):
        return 0.1 * jax.random.normal(key, (obs.shape[0], 2)), {}


def test_plot_shows_the_coverage_of_a_two_dimensional_mixture(tmp_path):
    algo = FourModeMixture(kept=2)
    with make_env("gprl/FourModeBandit-v0", 1) as env:
        plot = plot_actions(algo, None, env, tmp_path / "actions.png", samples=400, seed=5)
    assert plot.path.read_bytes().startswith(PNG_SIGNATURE)
    assert plot.observations.shape == (4, 2)
    np.testing.assert_allclose(plot.coverage.mode_shares[:, 2:], 0.0)
    np.testing.assert_allclose(plot.coverage.mode_shares[:, :2], 0.5, atol=0.08)
    lines = coverage_lines(plot)
    assert len(lines) == 4 and all("mode shares" in line for line in lines)


def test_plot_of_a_task_without_known_modes_has_no_coverage(tmp_path):
    with make_env("gprl/ContextualTarget-v0", 1) as env:
        plot = plot_actions(NoisyZero(), None, env, tmp_path / "actions.png", samples=50)
    assert plot.path.stat().st_size > 0
    assert plot.coverage is None and coverage_lines(plot) == []


# `gprl eval --plot-actions` on a trained run.


def test_cli_plots_the_actions_of_a_trained_run_and_prints_their_coverage(tmp_path, capsys):
    # In this process (cli.main, the code behind `gprl`): a fresh interpreter per command would
    # add its JAX import and compilations to the suite's time and test nothing more.
    out = tmp_path / "bandit-ppo"
    train = ["train", "ppo", "--env", "gprl/BimodalBandit-v0", "--total-steps", "4096"]
    train += ["--num-envs", "4", "--ppo.rollout-steps", "32", "--eval-every", "0"]
    cli.main([*train, "--out", str(out), "--no-progress"])
    trained = capsys.readouterr().out
    png = out / "plots" / "actions.png"
    # `gprl train` draws the plot by itself on a task whose modes are known, as eval does.
    assert png.read_bytes().startswith(PNG_SIGNATURE) and f"action plot: {png}" in trained
    png.unlink()
    cli.main(["eval", str(out), "--episodes", "2", "--plot-actions"])
    stdout = capsys.readouterr().out
    assert trained.splitlines()[-4:] == stdout.splitlines()[-4:]
    assert png.read_bytes().startswith(PNG_SIGNATURE) and png.stat().st_size > 10_000
    assert f"action plot: {png}" in stdout
    coverage = [line for line in stdout.splitlines() if line.startswith("observation")]
    assert len(coverage) == 4
    for line in coverage:
        shares = [float(x) for x in line.split("mode shares ")[1].split(",")[0].split()]
        none = float(line.rsplit("on no mode ", 1)[1])
        assert len(shares) == 2 and sum(shares) + none == pytest.approx(1.0, abs=0.011)


def test_cli_plot_actions_of_a_missing_run_is_a_one_line_error(tmp_path, cli_error):
    assert "no checkpoint" in cli_error(["eval", str(tmp_path / "nothing"), "--plot-actions"])
    assert not (tmp_path / "nothing").exists()
