"""FPO's two-goal GridWorld (gprl/TwoGoalGrid-v0) and the goal-split diagnostic."""

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gprl.envs  # noqa: F401  (registers the env ids)
from gprl.action_plots import episode_outcomes
from gprl.envs import EnvError, make_env
from gprl.envs.gridworld import GRID_EQUIDISTANT_START, goal_fractions

GRID_ID = "gprl/TwoGoalGrid-v0"
DOWN, UP, STAY = (0.0, -1.0), (0.0, 1.0), (0.0, 0.0)


def started(start):
    env = gym.make(GRID_ID, render_mode="rgb_array")
    obs, _ = env.reset(seed=0, options={"start": start})
    return env, obs


def test_actions_round_to_single_cell_moves_and_stay_on_the_grid():
    env, _ = started((12, 12))
    moves = [((0.6, -0.4), (13, 12)), ((0.49, 0.51), (13, 13)), ((-3.0, 0.2), (12, 13))]
    for action, cell in moves:
        obs, reward, terminated, truncated, _ = env.step(np.array(action, np.float32))
        np.testing.assert_allclose(obs, (np.array(cell) - 12) / 12)
        assert (reward, terminated, truncated) == (0.0, False, False)
    env, _ = started((0, 2))
    obs, *_ = env.step(np.array([-1.0, 0.0], np.float32))
    np.testing.assert_allclose(obs, (np.array([0, 2]) - 12) / 12)


def test_observations_scale_cells_to_the_unit_box():
    corners = {(0, 2): (-1.0, -10 / 12), (24, 22): (1.0, 10 / 12), (12, 12): (0.0, 0.0)}
    for cell, expected in corners.items():
        _, obs = started(cell)
        assert obs.dtype == np.float32
        np.testing.assert_allclose(obs, expected, atol=1e-6)


@pytest.mark.parametrize("action, goal, steps", [(DOWN, "bottom", 11), (UP, "top", 11)])
def test_either_goal_band_pays_twenty_and_ends_the_episode(action, goal, steps):
    env, _ = started(GRID_EQUIDISTANT_START)
    rewards = []
    for _ in range(steps):
        _, reward, terminated, truncated, info = env.step(np.array(action, np.float32))
        rewards.append(reward)
    assert rewards == [0.0] * (steps - 1) + [20.0]
    assert terminated and not truncated and info["goal"] == goal


def test_episodes_without_a_goal_are_truncated_after_100_steps():
    env, _ = started((12, 12))
    for step in range(1, 101):
        _, reward, terminated, truncated, _ = env.step(np.array(STAY, np.float32))
        assert reward == 0.0 and not terminated and truncated == (step == 100)


def test_random_starts_cover_the_non_goal_cells_only():
    env = gym.make(GRID_ID)
    env.reset(seed=0)
    cells = {tuple(np.rint(env.reset()[0] * 12 + 12).astype(int)) for _ in range(3000)}
    assert {row for _, row in cells} == set(range(2, 23))
    assert {column for column, _ in cells} == set(range(25))


@pytest.mark.parametrize("start", [(3, 1), (3, 23), (25, 5), (2.5, 5), (1, 2, 3)])
def test_bad_starts_are_one_line_env_errors(start):
    env = gym.make(GRID_ID)
    with pytest.raises(EnvError, match="TwoGoalGrid start") as caught:
        env.reset(options={"start": start})
    assert "\n" not in str(caught.value)


def test_render_draws_the_goal_bands_and_the_agent_where_it_is():
    env, _ = started((0, 12))
    frame = env.render()
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
    assert (frame[0] == frame[-1]).all() and not (frame[0] == 255).all()
    agent_columns = np.nonzero((frame != frame[:, -1:]).any(axis=(0, 2)))[0]
    env.step(np.array((1.0, 0.0), np.float32))
    moved_columns = np.nonzero((env.render() != frame[:, -1:]).any(axis=(0, 2)))[0]
    assert agent_columns.max() < 4 and moved_columns.min() > agent_columns.min()


def test_the_grid_trains_through_make_env_with_its_time_limit():
    with make_env(GRID_ID, num_envs=2) as env:
        assert (env.spec.obs_dim, env.spec.action_dim, env.spec.max_episode_steps) == (2, 2, 100)


def test_goal_fractions_count_where_a_scripted_policy_sends_each_rollout():
    def one_in_four_down(obs):
        # Rollouts run side by side and all end together here, so the batch order is stable.
        return np.where((np.arange(len(obs)) % 4 == 0)[:, None], DOWN, UP)

    assert goal_fractions(one_in_four_down, rollouts=400) == (0.25, 0.75, 0.0)
    assert goal_fractions(lambda obs: np.zeros_like(obs), rollouts=10) == (0.0, 0.0, 1.0)
    # Off the equidistant row the down-goers take longer; a policy that chooses on its first
    # step (x moves left for down) and then follows x still splits 1:3.
    rng = np.random.default_rng(0)

    def choose_then_follow(obs):
        first = np.isclose(obs[:, 0], (11 - 12) / 12)
        chosen = np.where((rng.uniform(size=len(obs)) < 0.25)[:, None], (-1.0, -1.0), (1.0, 1.0))
        follow = np.where((obs[:, 0] < (11 - 12) / 12)[:, None], DOWN, UP)
        return np.where(first[:, None], chosen, follow)

    shares = goal_fractions(choose_then_follow, start=(11, 13), rollouts=2000)
    assert shares.bottom == pytest.approx(0.25, abs=0.03) and shares.neither == 0.0
    assert shares.bottom + shares.top == 1.0


class DownOrUp:
    """A stand-in algorithm: each step, down with probability 1/4, else up (jax, under jit)."""

    traces = 0

    def act(self, acting, obs, key):
        self.traces += 1  # runs once per compilation of the jitted act
        down = jax.random.uniform(key, (obs.shape[0], 1)) < 0.25
        return jnp.where(down, jnp.asarray(DOWN), jnp.asarray(UP)), {}


def test_episode_outcomes_of_an_algorithm_on_the_grid_compile_its_act_once():
    algo = DownOrUp()
    shares = episode_outcomes(GRID_ID, algo.act, None, seed=3)
    assert shares["bottom"] + shares["top"] + shares["neither"] == pytest.approx(1.0)
    assert shares["top"] > 0.9 and shares["bottom"] < 0.05
    # Finished rollouts drop out of the batches; padding keeps the shape, and so one compilation.
    assert algo.traces == 1
