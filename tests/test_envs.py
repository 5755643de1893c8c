"""Behaviour of gprl.envs: diagnostic tasks, VecEnv autoreset, action scaling, errors, seeding,
and envs from gymnasium.Env instances, factories and JAX task objects."""

import json
import sys
from typing import ClassVar

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnasium.envs.classic_control.pendulum import PendulumEnv

from gprl.envs import EnvError, can_reopen, env_source_name, make_env, probe_spec
from gprl.envs.diagnostics import (
    POINT_GOAL_BONUS,
    POINT_HORIZON,
    POINT_SHAPING,
    PROBE_HORIZON,
    bimodal_modes,
    contextual_target_optimum,
)
from gprl.types import EnvSpec

# Actions that reached the test envs below, in the env's own units (after VecEnv's rescaling).
RECEIVED_ACTIONS: list[np.ndarray] = []


class RecordActions(gym.Wrapper):
    def step(self, action):
        RECEIVED_ACTIONS.append(np.array(action))
        return self.env.step(action)


class ProbeEnv(gym.Env):
    """Configurable action bounds; terminates after `terminate_after` steps; rendering fails."""

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(self, action_low, action_high, terminate_after=None, render_mode=None):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(1,), dtype=np.float32)
        self.action_space = gym.spaces.Box(
            np.array(action_low, dtype=np.float32), np.array(action_high, dtype=np.float32)
        )
        self.render_mode = render_mode
        self.terminate_after = terminate_after
        self.steps = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.steps = 0
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action):
        self.steps += 1
        terminated = self.steps == self.terminate_after
        return np.full(1, self.steps, dtype=np.float32), 0.0, terminated, False, {}

    def render(self):
        raise RuntimeError("no OpenGL context\nsecond line of detail")


def make_recorded_pendulum(**kwargs):
    return RecordActions(PendulumEnv(**kwargs))


def make_recorded_probe(**kwargs):
    return RecordActions(ProbeEnv(**kwargs))


TEST_ENVS = {
    "gprl_test/RecordedPendulum-v1": dict(
        entry_point=make_recorded_pendulum, max_episode_steps=200
    ),
    "gprl_test/AsymmetricProbe-v0": dict(
        entry_point=make_recorded_probe,
        kwargs=dict(action_low=[0.0, -3.0], action_high=[1.0, 1.0]),
    ),
    "gprl_test/UnitProbe-v0": dict(
        entry_point=make_recorded_probe, kwargs=dict(action_low=[-1.0], action_high=[1.0])
    ),
    # Terminates on the very step its time limit hits.
    "gprl_test/TerminateAtLimit-v0": dict(
        entry_point=ProbeEnv,
        kwargs=dict(action_low=[-1.0], action_high=[1.0], terminate_after=3),
        max_episode_steps=3,
    ),
    "gprl_test/UnboundedProbe-v0": dict(
        entry_point=ProbeEnv, kwargs=dict(action_low=[-np.inf], action_high=[np.inf])
    ),
}
for test_env_id, registration in TEST_ENVS.items():
    if test_env_id not in gym.registry:
        gym.register(id=test_env_id, **registration)


def run_episode(env, policy):
    """Roll out one episode of a single Gymnasium env; returns (return, length, last step flags)."""
    obs, _ = env.reset(seed=0)
    total, length = 0.0, 0
    while True:
        obs, reward, terminated, truncated, _ = env.step(policy(obs))
        total += reward
        length += 1
        if terminated or truncated:
            return total, length, terminated, truncated


# Diagnostic tasks, used directly through Gymnasium.


def test_bimodal_bandit_rewards_both_modes_and_punishes_their_average():
    env = gym.make("gprl/BimodalBandit-v0")
    for seed in range(20):
        context, _ = env.reset(seed=seed)
        modes = bimodal_modes(context)
        assert modes[1] - modes[0] >= 1.0
        for mode in modes:
            env.reset(seed=seed)
            _, reward, terminated, truncated, _ = env.step(np.array([mode], dtype=np.float32))
            assert reward == pytest.approx(1.0)
            assert terminated and not truncated
        env.reset(seed=seed)
        _, reward, _, _, _ = env.step(np.array([modes.mean()], dtype=np.float32))
        assert reward < 1e-7


def test_bimodal_modes_accepts_a_batch_of_contexts():
    contexts = np.random.default_rng(0).uniform(-1, 1, (5, 2))
    batched = bimodal_modes(contexts)
    assert batched.shape == (5, 2)
    np.testing.assert_allclose(batched[3], bimodal_modes(contexts[3]))


def test_two_goal_point_reaches_either_goal_quickly_and_averaging_fails():
    env = gym.make("gprl/TwoGoalPoint-v0")
    best_possible = POINT_GOAL_BONUS + POINT_SHAPING * 0.72
    for heading in (+1.0, -1.0):
        episode_return, length, terminated, truncated = run_episode(
            env, lambda obs, heading=heading: np.array([heading, 0.0], dtype=np.float32)
        )
        # Six steps of 0.1 cover the 0.6 to the goal's edge, seven if the start noise falls short.
        assert length in (6, 7) and terminated and not truncated
        assert 1.05 <= episode_return <= best_possible

    # The mean of the two optimal headings is standing still.
    episode_return, length, terminated, truncated = run_episode(
        env, lambda obs: np.zeros(2, dtype=np.float32)
    )
    assert (length, terminated, truncated) == (POINT_HORIZON, False, True)
    assert episode_return == pytest.approx(0.0, abs=1e-12)


def test_two_goal_point_observes_position_and_elapsed_time():
    env = gym.make("gprl/TwoGoalPoint-v0")
    obs, _ = env.reset(seed=1)
    assert np.all(np.abs(obs[:2]) <= 0.01) and obs[2] == 0.0
    obs, *_ = env.step(np.array([0.0, 1.0], dtype=np.float32))
    obs, *_ = env.step(np.array([0.0, 1.0], dtype=np.float32))
    assert obs[1] == pytest.approx(0.2, abs=0.011)
    assert obs[2] == pytest.approx(2 / POINT_HORIZON)


def test_contextual_target_optimum_scores_zero_and_depends_on_the_context():
    env = gym.make("gprl/ContextualTarget-v0")
    constant_action_rewards = []
    for seed in range(20):
        context, _ = env.reset(seed=seed)
        _, reward, terminated, _, _ = env.step(contextual_target_optimum(context))
        assert reward == pytest.approx(0.0, abs=1e-12)
        assert terminated
        env.reset(seed=seed)
        constant_action_rewards.append(env.step(np.zeros(2, dtype=np.float32))[1])
    assert np.mean(constant_action_rewards) < -0.1


def test_truncation_probe_pays_one_per_step_and_is_truncated_at_the_limit():
    env = gym.make("gprl/TruncationProbe-v0")
    episode_return, length, terminated, truncated = run_episode(
        env, lambda obs: np.zeros(1, dtype=np.float32)
    )
    assert (episode_return, length, terminated, truncated) == (10.0, PROBE_HORIZON, False, True)


@pytest.mark.parametrize(
    "env_id",
    [
        "gprl/BimodalBandit-v0",
        "gprl/TwoGoalPoint-v0",
        "gprl/ContextualTarget-v0",
        "gprl/TruncationProbe-v0",
    ],
)
def test_diagnostic_envs_are_reproducible_and_render(env_id):
    def trajectory(seed):
        env = gym.make(env_id, render_mode="rgb_array")
        observations = [env.reset(seed=seed)[0]]
        actions = np.random.default_rng(0).uniform(-1, 1, (30, *env.action_space.shape))
        for action in actions.astype(np.float32):
            obs, _, terminated, truncated, _ = env.step(action)
            observations.append(obs)
            if terminated or truncated:
                observations.append(env.reset()[0])
        frame = env.render()
        assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
        assert frame.min() < frame.max()
        return np.stack(observations)

    np.testing.assert_array_equal(trajectory(seed=4), trajectory(seed=4))
    if env_id != "gprl/TruncationProbe-v0":
        assert not np.array_equal(trajectory(seed=4), trajectory(seed=5))


# VecEnv.


def test_vec_env_truncation_keeps_final_obs_and_resets():
    with make_env("gprl/TruncationProbe-v0", num_envs=3) as env:
        assert env.spec.max_episode_steps == PROBE_HORIZON
        reset_obs = env.reset(seed=0)
        actions = np.zeros((3, 1), dtype=np.float32)
        for _ in range(PROBE_HORIZON - 1):
            step = env.step(actions)
            assert not step.truncated.any() and not step.terminated.any()
        step = env.step(actions)
        assert step.truncated.all() and not step.terminated.any()
        np.testing.assert_array_equal(step.final_obs, np.ones((3, 1), dtype=np.float32))
        np.testing.assert_array_equal(step.obs, reset_obs)
        np.testing.assert_array_equal(step.reward, np.ones(3, dtype=np.float32))
        # The next episode runs its full length again.
        assert not env.step(actions).truncated.any()


def test_vec_env_one_step_episodes_report_the_pre_reset_context():
    with make_env("gprl/BimodalBandit-v0", num_envs=4) as env:
        obs = env.reset(seed=0)
        for _ in range(5):
            actions = bimodal_modes(obs)[:, 1:]  # upper mode; bounds are [-1, 1], so no rescaling
            step = env.step(actions)
            assert step.terminated.all() and not step.truncated.any()
            np.testing.assert_allclose(step.reward, 1.0)
            np.testing.assert_array_equal(step.final_obs, obs)
            assert not np.any(step.obs == obs)
            obs = step.obs


def test_vec_env_reports_terminated_not_truncated_when_both_happen():
    with make_env("gprl_test/TerminateAtLimit-v0", num_envs=2) as env:
        env.reset(seed=0)
        for _ in range(2):
            env.step(np.zeros((2, 1)))
        step = env.step(np.zeros((2, 1)))
        assert step.terminated.all() and not step.truncated.any()
        np.testing.assert_array_equal(step.final_obs, np.full((2, 1), 3.0))
        np.testing.assert_array_equal(step.obs, np.zeros((2, 1)))


def test_vec_env_rescales_and_clips_actions_to_pendulum_bounds():
    with make_env("gprl_test/RecordedPendulum-v1") as env:
        np.testing.assert_array_equal(env.spec.action_low, [-2.0])
        np.testing.assert_array_equal(env.spec.action_high, [2.0])
        RECEIVED_ACTIONS.clear()
        for action in (1.0, -1.0, 0.25, 7.0, -3.0, np.inf):
            env.step(np.array([[action]], dtype=np.float32))
        received = np.concatenate(RECEIVED_ACTIONS)
        np.testing.assert_array_equal(received, [2.0, -2.0, 0.5, 2.0, -2.0, 2.0])
        assert received.dtype == np.float32


def test_vec_env_maps_actions_affinely_onto_asymmetric_bounds():
    with make_env("gprl_test/AsymmetricProbe-v0", num_envs=3) as env:
        RECEIVED_ACTIONS.clear()
        env.step(np.array([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]]))
        np.testing.assert_allclose(RECEIVED_ACTIONS, [[0.0, -3.0], [1.0, 1.0], [0.5, -1.0]])


def test_vec_env_clips_actions_for_envs_already_bounded_by_one():
    with make_env("gprl_test/UnitProbe-v0", num_envs=3) as env:
        RECEIVED_ACTIONS.clear()
        env.step(np.array([[3.0], [-0.5], [-np.inf]]))
        np.testing.assert_array_equal(RECEIVED_ACTIONS, [[1.0], [-0.5], [-1.0]])


def test_vec_env_observations_are_fresh_float32_arrays():
    with make_env("gprl/TwoGoalPoint-v0", num_envs=2) as env:
        obs = env.reset(seed=0)
        first = env.step(np.ones((2, 2))).obs
        snapshot = first.copy()
        env.step(np.ones((2, 2)))
        np.testing.assert_array_equal(first, snapshot)
        assert obs.dtype == first.dtype == np.float32


def test_vec_env_renders_env_zero_only_when_asked():
    with make_env("gprl/TwoGoalPoint-v0", num_envs=2, render=True) as env:
        before = env.render()
        env.step(np.ones((2, 2)))
        after = env.render()
        assert before.shape == (64, 64, 3) and before.dtype == np.uint8
        assert not np.array_equal(before, after)
    with make_env("gprl/TwoGoalPoint-v0") as env:
        assert env.render() is None


def test_vec_env_render_failure_is_a_one_line_env_error():
    with (
        make_env("gprl_test/AsymmetricProbe-v0", render=True) as env,
        pytest.raises(EnvError, match="MUJOCO_GL") as excinfo,
    ):
        env.render()
    assert "no OpenGL context" in str(excinfo.value) and "\n" not in str(excinfo.value)


@pytest.mark.parametrize("backend", ["gymnasium", "envpool"])
@pytest.mark.parametrize(
    ("env_id", "obs_dim", "action_dim", "max_episode_steps"),
    [
        ("Hopper-v5", 11, 3, 1000),
        ("dm_control/cheetah-run-v0", 17, 6, 1000),
        ("dm_control/hopper-stand-v0", 15, 4, 1000),
        ("dmc:finger-turn_hard", 12, 2, 1000),  # includes a scalar observation
    ],
)
def test_spec_dimensions(env_id, obs_dim, action_dim, max_episode_steps, backend):
    with make_env(env_id, num_envs=2, backend=backend) as env:
        assert (env.spec.obs_dim, env.spec.action_dim) == (obs_dim, action_dim)
        assert env.spec.max_episode_steps == max_episode_steps
        obs = env.reset(seed=0)
        assert obs.shape == (2, obs_dim) and obs.dtype == np.float32
        step = env.step(np.zeros((2, action_dim)))
        assert step.obs.shape == step.final_obs.shape == (2, obs_dim)
        assert step.reward.shape == (2,) and step.reward.dtype == np.float32


def test_dict_observations_are_flattened_in_sorted_key_order():
    with make_env("dmc:hopper-stand", backend="gymnasium") as env:
        assert env.spec.env_id == "dm_control/hopper-stand-v0"
        flat_obs = env.reset(seed=7)[0]
    # make_env has registered the dm_control ids with Gymnasium.
    raw_obs, _ = gym.make("dm_control/hopper-stand-v0").reset(seed=7)
    expected = np.concatenate([raw_obs["position"], raw_obs["touch"], raw_obs["velocity"]])
    np.testing.assert_array_equal(flat_obs, expected.astype(np.float32))


@pytest.mark.parametrize("backend", ["gymnasium", "envpool"])
def test_dm_control_time_limit_is_a_truncation_with_final_obs(backend):
    with make_env("dm_control/cheetah-run-v0", backend=backend) as env:
        env.reset(seed=0)
        actions = np.zeros((1, env.spec.action_dim))
        for _ in range(env.spec.max_episode_steps - 1):
            assert not env.step(actions).truncated[0]
        step = env.step(actions)
        assert step.truncated[0] and not step.terminated[0]
        assert not np.array_equal(step.final_obs, step.obs)
        assert not env.step(actions).truncated[0]


@pytest.mark.parametrize("backend", ["gymnasium", "envpool"])
def test_same_seed_gives_identical_hopper_trajectories(backend):
    actions = np.random.default_rng(0).uniform(-1, 1, (200, 2, 3))

    def trajectory():
        with make_env("Hopper-v5", num_envs=2, backend=backend) as env:
            observations = [env.reset(seed=3)]
            rewards = []
            for action in actions:
                step = env.step(action)
                observations.append(step.obs)
                rewards.append(step.reward)
            return np.stack(observations), np.stack(rewards)

    first_obs, first_rewards = trajectory()
    second_obs, second_rewards = trajectory()
    np.testing.assert_array_equal(first_obs, second_obs)
    np.testing.assert_array_equal(first_rewards, second_rewards)
    # Env i is seeded with seed + i, so the two copies differ.
    assert not np.array_equal(first_obs[0, 0], first_obs[0, 1])


# User envs: Gymnasium's module:EnvId form, constructors without render_mode, failures.

PLUGIN_MODULE = "gprl_test_plugin_envs"
PLUGIN_IDS = ("GprlPlugin/NoRenderMode-v0", "GprlPlugin/BrokenInit-v0", "GprlPlugin/BrokenReset-v0")
PLUGIN_SOURCE = '''
import gymnasium as gym
import numpy as np


class NoRenderModeEnv(gym.Env):
    """Like many hand-written envs, its constructor takes no render_mode."""

    def __init__(self):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.ones(2, np.float32), 1.0, False, False, {}


class BrokenInitEnv(NoRenderModeEnv):
    def __init__(self):
        raise FileNotFoundError("robot.xml not found\\nsearched: assets/")


class BrokenResetEnv(NoRenderModeEnv):
    def reset(self, *, seed=None, options=None):
        raise RuntimeError("simulator crashed\\nstack dump follows")


gym.register("GprlPlugin/NoRenderMode-v0", entry_point=NoRenderModeEnv)
gym.register("GprlPlugin/BrokenInit-v0", entry_point=BrokenInitEnv)
gym.register("GprlPlugin/BrokenReset-v0", entry_point=BrokenResetEnv)
'''


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    """A module that registers its envs when imported, not yet imported nor registered."""
    (tmp_path / f"{PLUGIN_MODULE}.py").write_text(PLUGIN_SOURCE)
    (tmp_path / "gprl_test_broken_plugin.py").write_text("raise ImportError('needs torch')\n")
    monkeypatch.syspath_prepend(tmp_path)
    monkeypatch.delitem(sys.modules, PLUGIN_MODULE, raising=False)
    for env_id in PLUGIN_IDS:
        monkeypatch.delitem(gym.registry, env_id, raising=False)
    return PLUGIN_MODULE


def test_module_colon_id_imports_the_registering_module(plugin_module):
    env_id = f"{plugin_module}:GprlPlugin/NoRenderMode-v0"
    with make_env(env_id, num_envs=2) as env:
        # The full form names the env in a fresh process too.
        assert env.spec.env_id == env_id
        np.testing.assert_array_equal(env.step(np.zeros((2, 1))).obs, np.ones((2, 2)))
    assert plugin_module in sys.modules


def test_env_without_a_render_mode_argument_is_made_without_one(plugin_module):
    with make_env(f"{plugin_module}:GprlPlugin/NoRenderMode-v0") as env:
        assert env.render() is None
    # Now registered, the bare id works as well.
    with make_env("GprlPlugin/NoRenderMode-v0", num_envs=3) as env:
        assert env.reset(seed=1).shape == (3, 2)


@pytest.mark.parametrize(
    ("env_id", "expected"),
    [
        ("GprlPlugin/BrokenInit-v0", "cannot make .*BrokenInit-v0: FileNotFoundError: robot.xml"),
        ("GprlPlugin/BrokenReset-v0", "cannot reset .*BrokenReset-v0: RuntimeError: simulator"),
    ],
)
def test_user_env_failures_are_one_line_env_errors(plugin_module, env_id, expected):
    with pytest.raises(EnvError, match=expected) as excinfo:
        make_env(f"{plugin_module}:{env_id}")
    assert "\n" not in str(excinfo.value)


@pytest.mark.parametrize(
    ("module", "reason"),
    [("gprl_test_no_such_module", "ModuleNotFoundError"), ("gprl_test_broken_plugin", "torch")],
)
def test_module_import_failures_name_the_module_in_one_line(plugin_module, module, reason):
    with pytest.raises(EnvError, match=f"cannot import module '{module}'.*{reason}") as excinfo:
        make_env(f"{module}:Anything-v0")
    assert "\n" not in str(excinfo.value)


# Errors.


def test_unknown_id_is_named_with_close_matches():
    with pytest.raises(EnvError, match="unknown") as excinfo:
        make_env("Hoper-v5")
    assert "Hoper-v5" in str(excinfo.value) and "'Hopper-v5'" in str(excinfo.value)


def test_discrete_action_space_is_rejected():
    with pytest.raises(EnvError, match=r"continuous \(Box\).*CartPole-v1 has Discrete\(2\)"):
        make_env("CartPole-v1")


def test_unbounded_action_space_is_rejected():
    with pytest.raises(EnvError, match="bounded"):
        make_env("gprl_test/UnboundedProbe-v0")


def test_num_envs_must_be_positive():
    with pytest.raises(EnvError, match="num_envs"):
        make_env("gprl/BimodalBandit-v0", num_envs=0)


def test_bad_actions_are_rejected():
    with make_env("gprl/TwoGoalPoint-v0", num_envs=3) as env:
        with pytest.raises(EnvError, match=r"\(3, 2\).*got \(2, 3\)"):
            env.step(np.zeros((2, 3)))
        with pytest.raises(EnvError, match=r"got \(2,\)"):
            env.step(np.zeros(2))
        nan_actions = np.zeros((3, 2))
        nan_actions[1, 0] = np.nan
        with pytest.raises(EnvError, match="NaN"):
            env.step(nan_actions)


# Env sources: gymnasium.Env instances, factories and JAX task objects, and the spec records.

GOAL = 5.0


class Accumulator(gym.Env):
    """Observes (in float64) the running total of the actions it received, in its own units
    [0, 4]; rewards each action as received, so the rescaling shows; terminates at GOAL."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float64)
    action_space = gym.spaces.Box(0.0, 4.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.total = 0.0
        return np.zeros(1), {}

    def step(self, action):
        self.total += float(action[0])
        return np.array([self.total]), float(action[0]), self.total >= GOAL, False, {}


class JaxAccumulator:
    """Accumulator as a JAX task object, declaring its sizes and time limit."""

    obs_dim = 1
    action_low = (0.0,)
    action_high = (4.0,)
    max_episode_steps = 3

    def reset(self, key):
        return jnp.zeros(()), jnp.zeros(1)

    def step(self, total, action):
        total = total + action[0]
        return total, total[None], action[0], total >= GOAL


def make_accumulator():
    return gym.wrappers.TimeLimit(Accumulator(), max_episode_steps=3)


SOURCES = {
    "instance": make_accumulator,
    "factory": lambda: make_accumulator,
    "jax task": JaxAccumulator,
}


@pytest.mark.parametrize("kind", SOURCES)
def test_instances_factories_and_jax_tasks_train_and_evaluate_like_ids(kind):
    from gprl.backends import make_collector, make_evaluator, open_environments

    envs = open_environments(SOURCES[kind](), "auto", 2, 3, seed=0, eval_seed=1)
    assert envs.backend == ("jax" if kind == "jax task" else "gymnasium")
    assert (envs.spec.obs_dim, envs.spec.action_dim, envs.spec.max_episode_steps) == (1, 1, 3)

    # Env 0 acts -0.5 (1 in its own units): truncated at the time limit, 3 steps. Env 1 acts
    # 0.5 (3): terminated on its second step, and the same step starts the next episode.
    def act(acting, obs, key):
        return jnp.broadcast_to(acting, obs.shape), {}

    collector = make_collector(envs, act)
    collector.reset(0)
    train_step = collector.make_train_step(
        lambda state: state[0], lambda state, batch, key: ((state[0], batch), {}), 4
    )
    state, key = (jnp.array([[-0.5], [0.5]]), None), jax.random.key(0)
    state, key, *_ = train_step(state, key)
    batch = jax.tree.map(np.asarray, state[1])
    assert batch.obs.dtype == batch.next_obs.dtype == np.float32
    np.testing.assert_array_equal(batch.reward, [[1, 3], [1, 3], [1, 3], [1, 3]])
    np.testing.assert_array_equal(batch.terminated.T, [[0, 0, 0, 0], [0, 1, 0, 1]])
    np.testing.assert_array_equal(batch.truncated.T, [[0, 0, 1, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(batch.next_obs[..., 0].T, [[1, 2, 3, 1], [3, 6, 3, 6]])
    np.testing.assert_array_equal(batch.obs[..., 0].T, [[0, 1, 2, 0], [0, 3, 0, 3]])

    evaluator = make_evaluator(envs, lambda acting, obs: jnp.full(obs.shape, 0.5), seed=1)
    result = evaluator.evaluate(None)
    assert (result["eval_return"], result["eval_length"]) == (6.0, 2.0)
    # Evaluating ran envs of its own (copies of an instance): env 0's episode goes on.
    state, *_ = train_step(state, key)
    np.testing.assert_array_equal(state[1].next_obs[:, 0, 0], [2, 3, 1, 2])
    envs.close()


@pytest.mark.parametrize("kind", SOURCES)
def test_probe_spec_is_the_spec_of_the_opened_envs(kind):
    from gprl.backends import open_environments

    source = SOURCES[kind]()
    probed = probe_spec(source)
    envs = open_environments(source, "auto", 2, 1, 0, 1)
    assert probed == envs.spec and probed.env_id.startswith("python:")
    envs.close()
    assert probe_spec("dmc:cartpole-swingup", "gymnasium") == make_env("dmc:cartpole-swingup").spec


def test_probe_spec_inspects_an_instance_without_stepping_or_closing_it():
    instance = make_accumulator()
    instance.reset()
    instance.step(np.array([2.0], np.float32))
    assert probe_spec(instance).max_episode_steps == 3
    assert instance.step(np.array([2.0], np.float32))[0][0] == 4.0  # the episode went on


def test_an_instance_seeds_and_steps_like_the_id_it_was_made_from():
    actions = np.random.default_rng(0).uniform(-1.5, 1.5, (5, 3, 1))
    rollouts = []
    for source in ("Pendulum-v1", gym.make("Pendulum-v1"), lambda: gym.make("Pendulum-v1")):
        with make_env(source, num_envs=3, seed=5) as env:
            assert env.spec.env_id == "Pendulum-v1"
            rollouts.append([env.reset(seed=5)] + [env.step(a).obs for a in actions])
    np.testing.assert_array_equal(rollouts[0], rollouts[1])
    np.testing.assert_array_equal(rollouts[0], rollouts[2])


class Uncopyable(Accumulator):
    def __deepcopy__(self, memo):
        raise TypeError("cannot pickle '_thread.lock' object\nmore detail")


def test_an_instance_that_cannot_be_copied_asks_for_a_factory_in_one_line():
    with make_env(Uncopyable(), num_envs=1) as env:  # one env needs no copy
        assert env.step(np.ones((1, 1))).reward[0] == 4.0
    with pytest.raises(EnvError, match=r"cannot copy .*Uncopyable.*TypeError.*factory") as error:
        make_env(Uncopyable(), num_envs=2)
    assert "\n" not in str(error.value)
    with make_env(Uncopyable, num_envs=2) as env:  # the class itself is a factory
        assert env.num_envs == 2


@pytest.mark.parametrize(
    ("source", "backend", "expected"),
    [
        (lambda: gym.make("CartPole-v1"), "auto", r"continuous \(Box\).*Discrete\(2\)"),
        (gym.make("CartPole-v1"), "auto", r"continuous \(Box\).*Discrete\(2\)"),
        (lambda: "Pendulum-v1", "auto", "must return a gymnasium.Env, not str"),
        (Accumulator(), "envpool", "gymnasium.Env, which runs on backend 'gymnasium'"),
        (JaxAccumulator(), "gymnasium", "JAX task, which runs on backend 'jax'"),
        (gym.make_vec("Pendulum-v1", 2), "auto", "vectorises envs itself"),
        (3, "auto", "an env must be an id, a gymnasium.Env"),
        ("python:my_module.MyEnv", "auto", "names a Python env object.*pass the object"),
    ],
)
def test_unusable_sources_are_refused_in_one_line(source, backend, expected):
    with pytest.raises(EnvError, match=expected) as error:
        make_env(source, backend=backend)
    assert "\n" not in str(error.value)


def test_source_names_say_whether_a_run_can_open_its_env_again():
    reopenable = {
        "dmc:hopper-stand": "dm_control/hopper-stand-v0",
        gym.make("Pendulum-v1"): "Pendulum-v1",
        gym.make("Pendulum-v1", render_mode="rgb_array"): "Pendulum-v1",
    }
    for source, name in reopenable.items():
        assert env_source_name(source) == name and can_reopen(name)
    pendulum = "python:gymnasium.envs.classic_control.pendulum.PendulumEnv"
    changed = [
        gym.make("Pendulum-v1", g=3.0),
        gym.wrappers.ClipReward(gym.make("Pendulum-v1"), -1.0, 1.0),
        PendulumEnv(),
    ]
    for source in changed:
        assert env_source_name(source) == pendulum and not can_reopen(pendulum)
    assert env_source_name(make_accumulator).endswith(".make_accumulator")
    assert env_source_name(JaxAccumulator()).endswith(".JaxAccumulator")
    assert not can_reopen(env_source_name(make_accumulator))


def test_env_spec_records_round_trip_through_json_exactly():
    spec = make_env("gprl_test/AsymmetricProbe-v0").spec
    spec = EnvSpec(**{**vars(spec), "action_low": np.array([0.1, -3.3], np.float32)})
    restored = EnvSpec.from_record(json.loads(json.dumps(spec.to_record())))
    assert restored == spec
    assert restored.action_low.dtype == np.float32
    np.testing.assert_array_equal(restored.action_low, spec.action_low)
    assert restored != EnvSpec(**{**vars(spec), "max_episode_steps": 7})


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"obs_dim": "3"}, "obs_dim and action_dim"),
        ({"action_low": [0.0]}, "action_low must be a list of action_dim numbers"),
        ({"max_episode_steps": 0}, "max_episode_steps"),
        ({"env_id": None}, "env_id"),
    ],
)
def test_malformed_env_spec_records_are_refused_in_one_line(change, problem):
    record = {**make_env("gprl_test/AsymmetricProbe-v0").spec.to_record(), **change}
    with pytest.raises(ValueError, match=problem) as error:
        EnvSpec.from_record(record)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="missing obs_dim"):
        EnvSpec.from_record({key: value for key, value in record.items() if key != "obs_dim"})


# Success: the flag from Gymnasium infos, spec.reports_success, sparse_reward, end_on_success.


class SucceedsFromStep(gym.Env):
    """Observes its step count; reports success (under `key`) from step `success_from` on,
    rewards 0.5 a step and never ends on its own."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self, key="success", success_from=3):
        self.key, self.success_from, self.steps = key, success_from, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.steps = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.steps += 1
        info = {self.key: float(self.steps >= self.success_from), "unused": "dropped"}
        return np.full(1, self.steps, np.float32), 0.5, False, False, info


def succeeds_from_step(key="success", limit=None):
    return lambda: gym.wrappers.TimeLimit(SucceedsFromStep(key), max_episode_steps=limit or 50)


def rollout(env, steps):
    return [env.step(np.zeros((env.num_envs, 1), np.float32)) for _ in range(steps)]


@pytest.mark.parametrize("key", ["success", "is_success"])
def test_success_is_read_from_the_infos_of_every_step_including_an_episodes_last(key):
    # The limit of 3 ends each episode on its first successful step: its info is the final one.
    with make_env(succeeds_from_step(key, limit=3), num_envs=2) as env:
        assert env.spec.reports_success
        steps = rollout(env, 4)
    assert [step.success.tolist() for step in steps] == [[False] * 2] * 2 + [[True] * 2] + [
        [False] * 2
    ]
    assert steps[2].truncated.all() and all(step.reward.tolist() == [0.5, 0.5] for step in steps)


def test_envs_without_success_in_their_infos_report_none():
    with make_env("Pendulum-v1", num_envs=2) as env:
        assert not env.spec.reports_success
        assert not any(step.success.any() for step in rollout(env, 3))
        assert rollout(env, 1)[0].success.dtype == bool


def test_sparse_reward_pays_exactly_one_on_success_and_zero_otherwise():
    with make_env(succeeds_from_step(), num_envs=2, sparse_reward=True) as env:
        steps = rollout(env, 4)
    assert [step.reward.tolist() for step in steps] == [[0.0] * 2] * 2 + [[1.0] * 2] * 2
    assert not any(step.terminated.any() for step in steps)  # episodes go on after success


def test_end_on_success_terminates_on_the_successful_step_and_starts_over():
    with make_env(succeeds_from_step(limit=3), num_envs=2, end_on_success=True) as env:
        steps = rollout(env, 4)
    ended = steps[2]
    assert ended.terminated.all() and not ended.truncated.any()  # not truncated at the limit
    np.testing.assert_array_equal(ended.final_obs, np.full((2, 1), 3.0))  # the successful step
    np.testing.assert_array_equal(ended.obs, np.zeros((2, 1)))  # the next episode's start
    assert ended.reward.tolist() == [0.5, 0.5]  # the env's own reward without sparse_reward
    assert not steps[1].terminated.any() and not steps[3].terminated.any()
    np.testing.assert_array_equal(steps[3].obs, np.ones((2, 1)))


@pytest.mark.parametrize(
    ("source", "backend", "options"),
    [
        ("Pendulum-v1", "gymnasium", {"sparse_reward": True}),
        (lambda: SucceedsFromStep(key="done"), "auto", {"end_on_success": True}),
        ("gprl/BimodalBandit-v0", "jax", {"sparse_reward": True, "end_on_success": True}),
    ],
)
def test_success_options_on_envs_that_never_report_success_are_refused_in_one_line(
    source, backend, options
):
    with pytest.raises(EnvError, match=r"never reports success.*cannot be used") as error:
        make_env(source, backend=backend, **options)
    assert "\n" not in str(error.value)
    assert all(option in str(error.value) for option in options)


def test_probe_spec_learns_whether_an_instance_reports_success_without_disturbing_it():
    instance = gym.wrappers.TimeLimit(SucceedsFromStep(), max_episode_steps=50)
    instance.reset()
    for _ in range(2):
        instance.step(np.zeros(1, np.float32))
    assert probe_spec(instance).reports_success
    assert probe_spec(succeeds_from_step()).reports_success
    assert not probe_spec(make_accumulator()).reports_success
    assert instance.step(np.zeros(1, np.float32))[0][0] == 3.0  # the episode went on


def test_env_spec_records_carry_reports_success_and_older_records_read_as_false():
    spec = make_env(succeeds_from_step()).spec
    assert EnvSpec.from_record(json.loads(json.dumps(spec.to_record()))) == spec
    older = {key: value for key, value in spec.to_record().items() if key != "reports_success"}
    assert not EnvSpec.from_record(older).reports_success
    with pytest.raises(ValueError, match="reports_success is not a boolean"):
        EnvSpec.from_record({**spec.to_record(), "reports_success": "yes"})
