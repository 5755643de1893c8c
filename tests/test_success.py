"""Success rates: evaluators, metrics.csv, resume, `gprl eval`, the learning curve, and the
sparse-reward and end-on-success run options (on gprl/PointReach-v0 and a tiny test env)."""

import csv
import json

import gymnasium as gym
import jax.numpy as jnp
import numpy as np
import pytest
from gymnasium import spaces

from gprl import cli
from gprl.algos import PPOConfig
from gprl.datasets import load_demonstrations
from gprl.envs import EnvError, make_env
from gprl.envs.diagnostics import REACH_HORIZON, REACH_STEP_SIZE, point_reach_expert
from gprl.evaluation import ChunkedHostEvaluator, HostEvaluator
from gprl.logger import plot_learning_curve
from gprl.sweep import check_envs, parse_spec
from gprl.trainer import RunConfig

REACH = "gprl/PointReach-v0"
SUCCEEDS_AT = 3
QUICK_SUCCESS = "gprl_test/SucceedsAtStep3-v0"
FAST_PPO = PPOConfig(rollout_steps=32, num_minibatches=4)


def jax_expert(acting, obs):
    """point_reach_expert in jax, as an algorithm's act_deterministic(acting, obs)."""
    return jnp.clip((obs[:, 2:] - obs[:, :2]) / REACH_STEP_SIZE, -1.0, 1.0)


def test_success_rate_is_the_share_of_episodes_with_a_successful_step():
    env = make_env(REACH, 8, seed=5)
    goal_right = env.restart(5)[:, 2] > 0  # the goal stays put, so this holds all episode
    assert 0 < goal_right.sum() < 8
    # The expert always succeeds, standing still never (goals start >= 0.5 away), and the expert
    # acting only where the goal is on the right succeeds exactly there.
    for policy, expected in [
        (jax_expert, 1.0),
        (lambda acting, obs: jnp.zeros((obs.shape[0], 2)), 0.0),
        (lambda acting, obs: jax_expert(acting, obs) * (obs[:, 2:3] > 0), goal_right.mean()),
    ]:
        assert HostEvaluator(env, policy, 5).evaluate(None)["eval_success_rate"] == expected
    # Chunked policies go through the same path: a chunk of 2 expert-sized steps.
    chunked = ChunkedHostEvaluator(
        env, lambda acting, obs, key: jnp.stack([jax_expert(None, obs)] * 2, axis=1), 5, 1
    )
    assert chunked.evaluate(None)["eval_success_rate"] == 1.0
    with make_env("gprl/TwoGoalPoint-v0", 2) as no_success:
        result = HostEvaluator(no_success, lambda a, obs: jnp.zeros((2, 2)), 0).evaluate(None)
    assert "eval_success_rate" not in result


def test_sparse_reward_counts_successful_steps_and_end_on_success_stops_at_the_first():
    def evaluate(**options):
        with make_env(REACH, 6, seed=2, **options) as env:
            return HostEvaluator(env, jax_expert, 2).evaluate(None)

    ended = evaluate(sparse_reward=True, end_on_success=True)
    assert ended["eval_return"] == ended["eval_success_rate"] == 1.0
    assert ended["eval_length"] < REACH_HORIZON
    # The expert stays on the goal once there: every step from the first success on counts.
    counted = evaluate(sparse_reward=True)
    assert counted["eval_length"] == REACH_HORIZON
    assert counted["eval_return"] == pytest.approx(REACH_HORIZON + 1 - ended["eval_length"])
    assert evaluate()["eval_return"] < 0  # dense: minus the distance to the goal


def test_point_reach_expert_is_a_plain_batch_function():
    obs = np.array([[0.0, 0.0, 0.05, -1.0], [0.5, 0.5, 0.5, 0.5]], np.float32)
    np.testing.assert_allclose(point_reach_expert(obs), [[1 / 3, -1.0], [0.0, 0.0]], atol=1e-6)


class SucceedsAtStep3(gym.Env):
    """Reward -1 per step; reports success from its third step on, never ends by itself."""

    def __init__(self):
        self.observation_space = spaces.Box(0.0, 10.0, shape=(1,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self._steps = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._steps = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self._steps += 1
        success = float(self._steps >= SUCCEEDS_AT)
        return np.full(1, self._steps, np.float32), -1.0, False, False, {"success": success}


@pytest.fixture(scope="module", autouse=True)
def quick_success_env():
    gym.register(QUICK_SUCCESS, entry_point=SucceedsAtStep3, max_episode_steps=10)
    yield
    del gym.registry[QUICK_SUCCESS]


def read_rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_success_options_apply_to_training_evaluation_and_collection_and_survive_resume(
    tmp_path, resume_check, capsys, minari_root
):
    run = RunConfig(
        env=QUICK_SUCCESS,
        total_steps=512,
        num_envs=4,
        out=tmp_path / "interrupted",
        progress=False,
        eval_every=256,
        checkpoint_every=128,
        sparse_reward=True,
        end_on_success=True,
    )
    # Resuming without the options would give dense returns (-3) and the rows would differ.
    resumed = resume_check.train("ppo", run, FAST_PPO, 3)
    saved = json.loads((resumed.resumed / "config.json").read_text())["run"]
    assert (saved["sparse_reward"], saved["end_on_success"], saved["eval_episodes"]) == (
        True,
        True,
        50,
    )
    # Every episode, in training and evaluation, ends at step 3 with one rewarded step.
    assert {(r["train_length"], r["train_return"]) for r in resumed.rows} == {("3.0", "1.0")}
    evaluations = [r for r in resumed.rows if r["eval_return"]]
    assert len(evaluations) >= 2
    assert {(r["eval_length"], r["eval_return"], r["eval_success_rate"]) for r in evaluations} == {
        ("3.0", "1.0", "1.0")
    }
    capsys.readouterr()
    cli.main(["eval", str(resumed.resumed)])
    printed = capsys.readouterr().out
    assert "return 1.000 +- 0.000 over 50 episodes (mean length 3)" in printed
    assert "success rate 1.000 (50 of 50 episodes)" in printed
    # Its demonstrations are recorded in the task it was trained on (an env registered with a
    # class, which Gymnasium cannot serialise: the dataset names it by import path).
    cli.main(["collect", str(resumed.resumed), "--out", "probe/sparse-v0", "--episodes", "4"])
    recorded = load_demonstrations("probe/sparse-v0")
    assert recorded.env_id == QUICK_SUCCESS
    assert recorded.episode_lengths.tolist() == [3] * 4
    assert recorded.episode_returns.tolist() == [1.0] * 4


@pytest.mark.parametrize("flag", ["--sparse-reward", "--end-on-success"])
def test_success_options_on_an_env_without_success_are_refused_before_writing(
    tmp_path, cli_error, flag
):
    # The refusal comes from make_env: the command-line flag reached the run's envs.
    out = tmp_path / "run"
    refused = cli_error(["train", "ppo", "--env", "gprl/TwoGoalPoint-v0", flag, "--out", str(out)])
    assert "gprl/TwoGoalPoint-v0 never reports success" in refused
    assert not out.exists()


def test_sweeps_accept_the_options_and_fill_in_eval_episodes_per_env(tmp_path):
    spec = {
        "algorithms": ["ppo"],
        "envs": [REACH, "gprl/TwoGoalPoint-v0"],
        "seeds": [0],
        "total_steps": 2048,
        "out": str(tmp_path),
        "settings": {"end_on_success": True},
        "grid": {"sparse_reward": [False, True]},
    }
    with pytest.raises(EnvError, match="TwoGoalPoint-v0 never reports success"):
        check_envs(parse_spec(spec))
    spec["envs"] = [REACH]
    sweep = parse_spec(spec)
    assert [c.run.sparse_reward for c in sweep.cells] == [False, True]
    check_envs(sweep)
    assert {c.run.eval_episodes for c in sweep.cells} == {50}
    plain = parse_spec(spec | {"envs": ["gprl/TwoGoalPoint-v0"], "settings": {}, "grid": {}})
    check_envs(plain)
    assert plain.cells[0].run.eval_episodes == 10


def test_learning_curve_gets_a_success_rate_panel_only_with_success_rates(tmp_path):
    import matplotlib.image

    rows = [{"env_steps": s, "eval_return": -1.0, "eval_success_rate": s / 4} for s in (1, 2, 4)]
    heights = {}
    for name, rows_drawn in [
        ("with", rows),
        ("without", [r | {"eval_success_rate": ""} for r in rows]),
    ]:
        path = plot_learning_curve(rows_drawn, tmp_path / f"{name}.png", "title")
        heights[name] = matplotlib.image.imread(path).shape[0]
    assert heights["with"] > 1.5 * heights["without"]
