"""JAX-native envs: agreement with the numpy diagnostic tasks, time limits, same-step autoreset,
determinism, retrace-free scans, errors, and a MuJoCo Playground smoke test."""

import sys
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from gprl.envs import EnvError
from gprl.envs.diagnostics import DIAGNOSTIC_ENVS, POINT_GOALS, POINT_HORIZON, PROBE_HORIZON
from gprl.envs.jax_envs import JaxVecEnv, make_jax_env
from gprl.types import EnvSpec, StepResult

DIAGNOSTIC_IDS = list(DIAGNOSTIC_ENVS)


@partial(jax.jit, static_argnums=0)
def rollout(env: JaxVecEnv, key: jax.Array, actions: jax.Array) -> StepResult:
    """Reset, then step through actions (T, N, action_dim); returns the stacked StepResults."""
    env_state, _ = env.reset(key)
    return lax.scan(env.step, env_state, actions)[1]


def constant_actions(env: JaxVecEnv, steps: int, action) -> jax.Array:
    shape = (steps, env.num_envs, env.spec.action_dim)
    return jnp.broadcast_to(jnp.asarray(action, dtype=jnp.float32), shape)


def numpy_step(env_id: str, task_state, steps: int, action: np.ndarray):
    """Step the numpy env from the same state as one JAX env: (obs, reward, terminated)."""
    numpy_env = DIAGNOSTIC_ENVS[env_id][0]()
    if env_id in ("gprl/BimodalBandit-v0", "gprl/ContextualTarget-v0"):
        numpy_env._context = np.asarray(task_state)
    elif env_id == "gprl/TwoGoalPoint-v0":
        numpy_env._position = np.asarray(task_state.position, dtype=np.float64)
        numpy_env._goal_distance = numpy_env._nearest_goal_distance()
        numpy_env._steps = steps
    else:
        numpy_env._steps = steps
    obs, reward, terminated, _, _ = numpy_env.step(action)
    return obs, reward, terminated


@pytest.mark.parametrize("env_id", DIAGNOSTIC_IDS)
def test_spec_and_reset_match_the_numpy_env(env_id):
    numpy_env = DIAGNOSTIC_ENVS[env_id][0]()
    env = make_jax_env(env_id, 16)
    assert env.spec.obs_dim == numpy_env.observation_space.shape[0]
    assert env.spec.action_dim == numpy_env.action_space.shape[0]
    np.testing.assert_array_equal(env.spec.action_low, numpy_env.action_space.low)
    np.testing.assert_array_equal(env.spec.action_high, numpy_env.action_space.high)
    assert env.spec.max_episode_steps == DIAGNOSTIC_ENVS[env_id][1]

    _, obs = jax.jit(env.reset)(jax.random.key(0))
    assert obs.shape == (16, env.spec.obs_dim) and obs.dtype == jnp.float32
    for row in np.asarray(obs):
        assert numpy_env.observation_space.contains(row)


@pytest.mark.parametrize("env_id", DIAGNOSTIC_IDS)
def test_step_matches_the_numpy_env(env_id):
    num_envs = 64
    env = make_jax_env(env_id, num_envs)
    state_key, action_key = jax.random.split(jax.random.key(1))
    env_state, _ = env.reset(state_key)
    limit = env.spec.max_episode_steps or 1
    # A quarter of the envs take the last step before the time limit.
    steps = jax.random.randint(state_key, (num_envs,), 0, limit).at[::4].set(limit - 1)
    if env_id == "gprl/TwoGoalPoint-v0":
        # Anywhere in the arena, and half near a goal, so that walls and goals are reached.
        position = jax.random.uniform(state_key, (num_envs, 2), minval=-1.0, maxval=1.0)
        near_goal = POINT_GOALS[np.arange(num_envs) % 2] + 0.2 * position
        position = jnp.where(jnp.arange(num_envs)[:, None] % 4 < 2, position, near_goal)
        task_state = env_state.task_state._replace(position=position, steps=steps)
        env_state = env_state._replace(task_state=task_state)
    env_state = env_state._replace(steps=steps)
    # Beyond [-1, 1] too, to check that both versions clip.
    action = jax.random.uniform(
        action_key, (num_envs, env.spec.action_dim), minval=-1.5, maxval=1.5
    )

    _, result = jax.jit(env.step)(env_state, action)

    assert result.reward.dtype == jnp.float32
    assert result.terminated.dtype == jnp.bool_ and result.truncated.dtype == jnp.bool_
    for index in range(num_envs):
        task_state = jax.tree.map(lambda leaf, i=index: leaf[i], env_state.task_state)
        obs, reward, terminated = numpy_step(
            env_id, task_state, int(steps[index]), np.asarray(action[index])
        )
        np.testing.assert_allclose(result.final_obs[index], obs, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(result.reward[index], reward, rtol=1e-5, atol=1e-6)
        assert bool(result.terminated[index]) == terminated
        hits_limit = env.spec.max_episode_steps == int(steps[index]) + 1
        assert bool(result.truncated[index]) == (hits_limit and not terminated)
    if env_id == "gprl/TwoGoalPoint-v0":
        assert result.terminated.any() and not result.terminated.all()
        assert result.truncated.any()


def test_two_goal_point_truncates_at_its_horizon_and_starts_over():
    env = make_jax_env("gprl/TwoGoalPoint-v0", 8)
    result = rollout(env, jax.random.key(0), constant_actions(env, 60, [0.0, 0.0]))

    truncated_steps = np.flatnonzero(np.asarray(result.truncated).all(axis=1)) + 1
    np.testing.assert_array_equal(truncated_steps, [POINT_HORIZON, 2 * POINT_HORIZON])
    assert not result.terminated.any()
    assert result.truncated.sum() == 2 * 8
    last = POINT_HORIZON - 1
    # The episode's last observation shows the full time; the next episode's first shows zero.
    np.testing.assert_allclose(result.final_obs[last, :, 2], 1.0)
    np.testing.assert_allclose(result.obs[last, :, 2], 0.0)
    # Standing still, the final position is the start position of the truncated episode.
    np.testing.assert_allclose(result.final_obs[last, :, :2], result.obs[0, :, :2])
    np.testing.assert_array_equal(result.obs[:last], result.final_obs[:last])


def test_reaching_a_goal_terminates_and_resets_in_the_same_step():
    env = make_jax_env("gprl/TwoGoalPoint-v0", 4)
    result = rollout(env, jax.random.key(0), constant_actions(env, 10, [1.0, 0.0]))

    ended = np.asarray(result.terminated)
    first_end = ended.argmax(axis=0)
    assert ended.any(axis=0).all() and set(first_end) <= {5, 6}  # 6 or 7 steps at full speed
    assert not result.truncated.any()
    for env_index, step in enumerate(first_end):
        assert result.reward[step, env_index] > 1.0  # the goal bonus plus shaping
        assert result.final_obs[step, env_index, 0] >= 0.6
        np.testing.assert_allclose(result.obs[step, env_index], [0.0, 0.0, 0.0], atol=0.011)


def test_one_step_tasks_start_a_new_context_every_step():
    env = make_jax_env("gprl/BimodalBandit-v0", 4)
    env_state, obs = env.reset(jax.random.key(0))
    for _ in range(3):
        env_state, result = env.step(env_state, jnp.zeros((4, 1)))
        assert result.terminated.all() and not result.truncated.any()
        np.testing.assert_array_equal(result.final_obs, obs)
        assert not np.isclose(result.obs, obs).any()
        obs = result.obs


def test_truncation_probe_truncates_every_ten_steps_and_the_limit_can_be_overridden():
    env = make_jax_env("gprl/TruncationProbe-v0", 3)
    result = rollout(env, jax.random.key(0), constant_actions(env, 25, [0.0]))
    assert (result.reward == 1.0).all() and not result.terminated.any()
    np.testing.assert_array_equal(
        np.flatnonzero(np.asarray(result.truncated).all(axis=1)) + 1,
        [PROBE_HORIZON, 2 * PROBE_HORIZON],
    )

    short = make_jax_env("gprl/TruncationProbe-v0", 3, max_episode_steps=3)
    assert short.spec.max_episode_steps == 3
    result = rollout(short, jax.random.key(0), constant_actions(short, 7, [0.0]))
    np.testing.assert_array_equal(np.asarray(result.truncated).all(axis=1), [0, 0, 1, 0, 0, 1, 0])


@pytest.mark.parametrize("env_id", DIAGNOSTIC_IDS)
def test_same_key_gives_the_same_rollout(env_id):
    env = make_jax_env(env_id, 8)
    actions = jax.random.uniform(jax.random.key(5), (30, 8, env.spec.action_dim), minval=-1.0)
    first, again, other = (rollout(env, jax.random.key(seed), actions) for seed in (0, 0, 1))
    jax.tree.map(np.testing.assert_array_equal, first, again)
    if env_id != "gprl/TruncationProbe-v0":  # the probe has no randomness at all
        assert not np.array_equal(first.obs, other.obs)


@pytest.mark.parametrize("env_id", DIAGNOSTIC_IDS)
def test_scan_carries_the_env_state_without_retracing(env_id):
    env = make_jax_env(env_id, 16)
    reset_state, _ = jax.eval_shape(env.reset, jax.random.key(0))
    actions = jnp.zeros((16, env.spec.action_dim))
    step_state, _ = jax.eval_shape(env.step, reset_state, actions)
    # Equal avals include weak types, which would retrace a jitted function taking the state.
    assert jax.tree.structure(step_state) == jax.tree.structure(reset_state)
    assert jax.tree.leaves(step_state) == jax.tree.leaves(reset_state)

    traces = []

    @jax.jit
    def collect(env_state, key):
        traces.append(1)

        def step(env_state, step_key):
            action = jax.random.uniform(step_key, actions.shape, minval=-1.0)
            return env.step(env_state, action)

        return lax.scan(step, env_state, jax.random.split(key, 100))

    env_state, _ = env.reset(jax.random.key(0))
    env_state, results = collect(env_state, jax.random.key(1))
    env_state, results = collect(env_state, jax.random.key(2))
    assert len(traces) == 1
    assert results.obs.shape == (100, 16, env.spec.obs_dim)
    assert np.isfinite(results.reward).all()


def test_actions_are_clipped_then_scaled_to_the_true_bounds():
    class EchoAction:
        """Observes the action it received, in the task's own units."""

        reset_is_expensive = False

        def reset(self, key):
            return (), jnp.zeros(2)

        def step(self, state, action):
            return (), action, jnp.float32(0.0), jnp.array(False)

    bounds = np.array([0.0, -2.0], np.float32), np.array([4.0, 2.0], np.float32)
    spec = EnvSpec("echo", obs_dim=2, action_dim=2, action_low=bounds[0], action_high=bounds[1],
                   max_episode_steps=None)  # fmt: skip
    env = JaxVecEnv(EchoAction(), spec, num_envs=3)
    env_state, _ = env.reset(jax.random.key(0))
    _, result = env.step(env_state, jnp.array([[-1.0, -1.0], [0.5, 0.0], [3.0, -7.0]]))
    np.testing.assert_allclose(result.obs, [[0.0, -2.0], [3.0, 0.0], [4.0, -2.0]])


def test_bad_ids_and_sizes_raise_one_line_env_errors():
    with pytest.raises(EnvError, match="did you mean 'gprl/TwoGoalPoint-v0'") as error:
        make_jax_env("gprl/TwoGoalPoint-v1", 4)
    assert "\n" not in str(error.value)
    with pytest.raises(EnvError, match="playground:<DM Control suite name>"):
        make_jax_env("Hopper-v5", 4)
    with pytest.raises(EnvError, match="num_envs"):
        make_jax_env("gprl/BimodalBandit-v0", 0)
    with pytest.raises(EnvError, match="max_episode_steps"):
        make_jax_env("gprl/TruncationProbe-v0", 2, max_episode_steps=0)


class DeclaredTask:
    """A user's JAX task declaring its sizes: its obs is the action it received, and episodes
    end only at the time limit."""

    obs_dim = 2
    action_low = (0.0, -2.0)
    action_high = (4.0, 2.0)
    max_episode_steps = 2

    def reset(self, key):
        return (), jax.random.uniform(key, (2,))

    def step(self, state, action):
        return (), action, jnp.float32(1.0), jnp.array(False)


def test_a_task_object_runs_as_its_declarations_say():
    env = make_jax_env(DeclaredTask(), 3)
    assert env.spec.env_id.endswith(".DeclaredTask")
    assert (env.spec.obs_dim, env.spec.action_dim, env.spec.max_episode_steps) == (2, 2, 2)
    actions = jnp.broadcast_to(jnp.array([0.5, -1.0]), (2, 3, 2))
    result = rollout(env, jax.random.key(0), actions)
    np.testing.assert_allclose(result.final_obs, np.broadcast_to([3.0, -2.0], (2, 3, 2)))
    np.testing.assert_array_equal(result.truncated.any(axis=1), [False, True])


@pytest.mark.parametrize(
    ("declarations", "problem"),
    [
        ({"obs_dim": None}, "must declare obs_dim as a positive int, got None"),
        ({"obs_dim": 3}, r"shapes .*\(2,\).* where obs_dim=3"),
        ({"action_low": (0.0,)}, "action_low <= action_high of one length"),
        ({"action_high": (4.0, np.inf)}, "action_high as a 1-D sequence of finite floats"),
        ({"max_episode_steps": 2.5}, "max_episode_steps as a positive int or None"),
        ({"step": lambda self, state, action: 1 / 0}, "cannot trace .*ZeroDivisionError"),
    ],
)
def test_a_malformed_task_object_is_refused_in_one_line(declarations, problem):
    task = type("MalformedTask", (DeclaredTask,), declarations)()
    with pytest.raises(EnvError, match=problem) as error:
        make_jax_env(task, 2)
    assert "\n" not in str(error.value)


def test_missing_playground_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "mujoco_playground", None)  # makes the import fail
    with pytest.raises(EnvError, match=r"pip install 'gprl\[playground\]'") as error:
        make_jax_env("playground:CheetahRun", 2)
    assert "\n" not in str(error.value)


def test_unknown_playground_task_suggests_close_names():
    pytest.importorskip("mujoco_playground")
    with pytest.raises(EnvError, match="did you mean playground:CheetahRun"):
        make_jax_env("playground:CheetaRun", 2)


def check_playground_smoke(env_id: str):
    """Reset and a 20-step scan with a time limit of 8: shapes, finite rewards, truncation."""
    pytest.importorskip("mujoco_playground")
    env = make_jax_env(env_id, 4, max_episode_steps=8)
    assert env.spec.max_episode_steps == 8
    assert (env.spec.action_low == -1.0).all() and (env.spec.action_high == 1.0).all()
    reset_state, _ = jax.eval_shape(env.reset, jax.random.key(0))
    actions = jax.random.uniform(jax.random.key(1), (20, 4, env.spec.action_dim), minval=-1.0)
    step_state, _ = jax.eval_shape(env.step, reset_state, actions[0])
    assert jax.tree.structure(step_state) == jax.tree.structure(reset_state)
    assert jax.tree.leaves(step_state) == jax.tree.leaves(reset_state)

    result = rollout(env, jax.random.key(0), actions)

    assert result.obs.shape == result.final_obs.shape == (20, 4, env.spec.obs_dim)
    assert result.obs.dtype == jnp.float32 and result.reward.dtype == jnp.float32
    assert np.isfinite(result.reward).all() and np.isfinite(result.obs).all()
    assert not result.terminated.any()
    at_limit = np.isin(np.arange(20), [7, 15])[:, None]
    np.testing.assert_array_equal(result.truncated, np.broadcast_to(at_limit, (20, 4)))
    # At the limit obs starts a new episode; elsewhere it is the final observation.
    assert not np.allclose(result.obs[7], result.final_obs[7])
    np.testing.assert_array_equal(result.obs[:7], result.final_obs[:7])


def test_playground_pendulum_smoke():
    # Pendulum compiles in ~10 s on a 2-core CPU; CheetahRun takes 45-60 s (slow suite below).
    check_playground_smoke("playground:PendulumSwingup")


@pytest.mark.slow
def test_playground_cheetah_run_smoke():
    check_playground_smoke("playground:CheetahRun")


def test_playground_ids_pick_the_device_path_by_default():
    from gprl.backends import resolve_backend

    assert resolve_backend("playground:PendulumSwingup", "auto") == "jax"
    assert resolve_backend("playground:PendulumSwingup", "jax") == "jax"
    with pytest.raises(EnvError, match="JAX environment"):
        resolve_backend("playground:PendulumSwingup", "gymnasium")
