"""The envpool backend behaves like the Gymnasium path: same observations, dynamics, rewards,
episode ends, action scaling and seeding; plus the choice between the two backends."""

import math

import envpool
import numpy as np
import pytest

from gprl.envs import EnvError, EnvpoolVecEnv, VecEnv, make_env, probe_spec, resolve_env
from gprl.envs.envpool_backend import envpool_task_id

GORL_TASKS = [
    "cheetah-run",
    "finger-spin",
    "finger-turn_hard",
    "fish-swim",
    "hopper-stand",
    "walker-walk",
]
HOPPER_INIT_Z = 1.25
HOPPER_RESET_NOISE = 0.005


def fixed_policy(spec):
    """A fixed linear function of the observation plus seeded noise: the same on both backends,
    and noisy enough that episodes spread over many states."""
    weights = np.random.default_rng(1).normal(0.0, 0.3, (spec.obs_dim, spec.action_dim))
    noise = np.random.default_rng(2)
    return lambda obs: np.tanh(obs @ weights) + noise.normal(0.0, 0.3, (len(obs), spec.action_dim))


def rollout(env, policy, seed, num_steps):
    """Returns of the episodes that ended, their lengths, and every observation acted on."""
    obs = env.reset(seed)
    running_return = np.zeros(env.num_envs)
    running_length = np.zeros(env.num_envs, np.int64)
    returns, lengths, observations = [], [], []
    for _ in range(num_steps):
        observations.append(obs)
        step = env.step(policy(obs))
        running_return += step.reward
        running_length += 1
        ended = step.terminated | step.truncated
        returns.extend(running_return[ended])
        lengths.extend(running_length[ended])
        running_return[ended], running_length[ended] = 0.0, 0
        obs = step.obs
    return np.array(returns), np.array(lengths), np.concatenate(observations)


def assert_means_agree(first, second, what):
    # The backends draw initial states from different generators (envpool's C++ one, NumPy's),
    # so only distributions can agree: means within four standard errors of their difference
    # (by chance, a failure for one seed in ~15,000). Hundreds of Hopper-v5 episodes make that
    # tight; hopper-stand's 16 only catch gross differences, so its dynamics are also checked
    # exactly against dm_control.
    standard_error = math.sqrt(first.var() / len(first) + second.var() / len(second))
    assert abs(first.mean() - second.mean()) <= 4 * standard_error, (
        f"{what}: {first.mean():.3f} vs {second.mean():.3f}, standard error {standard_error:.3f}"
    )


# Choosing a backend.


def test_auto_uses_envpool_where_it_has_the_task_and_nothing_is_rendered():
    for env_id in ("dmc:hopper-stand", "dm_control/hopper-stand-v0", "Hopper-v5"):
        assert resolve_env(env_id, "auto").backend == "envpool"
        assert resolve_env(env_id, "auto", render=True).backend == "gymnasium"
        assert resolve_env(env_id, "gymnasium").backend == "gymnasium"
    assert resolve_env("gprl/TwoGoalPoint-v0", "auto").backend == "gymnasium"
    # A task envpool lacks goes to Gymnasium, which names it (with close matches) if unknown.
    assert resolve_env("dmc:cheetah-run_backwards", "auto").backend == "gymnasium"

    with make_env("dmc:hopper-stand", num_envs=2) as env:
        assert isinstance(env, EnvpoolVecEnv)
        assert env.render() is None
    with make_env("gprl/TwoGoalPoint-v0") as env:
        assert isinstance(env, VecEnv)


def test_auto_keeps_tasks_whose_envpool_port_differs_on_gymnasium():
    for task in ("finger-spin", "finger-turn_hard", "fish-swim"):
        assert resolve_env(f"dmc:{task}", "auto").backend == "gymnasium"
        assert resolve_env(f"dmc:{task}", "envpool").backend == "envpool"  # still the user's choice
    for task in ("cheetah-run", "hopper-hop", "walker-walk"):
        assert resolve_env(f"dmc:{task}", "auto").backend == "envpool"


def test_envpool_finger_spin_pays_no_reward_where_dm_control_does():
    # Why finger tasks stay on Gymnasium under "auto": envpool's finger never spins the spinner
    # past the rewarded velocity under random actions, dm_control's does.
    rewarded = {}
    for backend in ("gymnasium", "envpool"):
        with make_env("dmc:finger-spin", num_envs=16, seed=0, backend=backend) as env:
            rng = np.random.default_rng(0)
            steps = [env.step(rng.uniform(-1, 1, (16, 2)).astype(np.float32)) for _ in range(1000)]
            rewarded[backend] = sum(int((step.reward > 0).sum()) for step in steps)
    assert rewarded["gymnasium"] > 5 and rewarded["envpool"] == 0


def test_gymnasium_renders_when_auto_is_asked_to_render():
    with make_env("gprl/TwoGoalPoint-v0", render=True) as env:
        assert isinstance(env, VecEnv) and env.render() is not None


@pytest.mark.parametrize(
    ("env_id", "task_id"),
    [
        ("dmc:hopper-stand", "HopperStand-v1"),
        ("dm_control/finger-turn_hard-v0", "FingerTurnHard-v1"),
        ("dmc:humanoid_CMU-run", "HumanoidCMURun-v1"),
        ("Walker2d-v5", "Walker2d-v5"),
        ("Hopper-v4", "Hopper-v4"),
        ("Hopper-v3", None),  # Gymnasium builds v3 only with the retired mujoco-py
        ("CartPole-v1", None),  # envpool has one, but gprl never routes non-MuJoCo tasks to it
        ("gprl/TwoGoalPoint-v0", None),
    ],
)
def test_envpool_task_ids(env_id, task_id):
    assert envpool_task_id(env_id) == task_id
    if task_id is not None:
        assert task_id in envpool.list_all_envs()


@pytest.mark.parametrize(
    ("env_id", "named"),
    [
        ("gprl/TwoGoalPoint-v0", "gprl/TwoGoalPoint-v0"),
        ("dmc:hopper-somersault", "HopperSomersault-v1"),
    ],
)
def test_envpool_backend_names_a_task_it_lacks_in_one_line(env_id, named):
    with pytest.raises(EnvError, match="envpool") as excinfo:
        make_env(env_id, backend="envpool")
    assert named in str(excinfo.value) and "\n" not in str(excinfo.value)


def test_envpool_backend_refuses_to_render_and_unknown_backends_are_named():
    with pytest.raises(EnvError, match="render"):
        make_env("Hopper-v5", render=True, backend="envpool")
    with pytest.raises(EnvError, match=r"'brax'.*auto, gymnasium, envpool"):
        make_env("Hopper-v5", backend="brax")


# Same task on both backends.


@pytest.mark.parametrize("task", GORL_TASKS)
def test_gorl_tasks_have_the_same_spec_on_both_backends(task):
    with (
        make_env(f"dmc:{task}", backend="gymnasium") as gymnasium_env,
        make_env(f"dmc:{task}", backend="envpool") as envpool_env,
    ):
        ours, theirs = envpool_env.spec, gymnasium_env.spec
        assert ours.env_id == theirs.env_id == f"dm_control/{task}-v0"
        assert (ours.obs_dim, ours.action_dim) == (theirs.obs_dim, theirs.action_dim)
        assert ours.max_episode_steps == theirs.max_episode_steps == 1000
        np.testing.assert_array_equal(ours.action_low, theirs.action_low)
        np.testing.assert_array_equal(ours.action_high, theirs.action_high)
        step = envpool_env.step(np.zeros((1, ours.action_dim)))
        assert step.obs.shape == (1, ours.obs_dim) and step.obs.dtype == np.float32


def _finger_hinge_angle(physics, tip_position):
    """The spinner's hinge angle, which finger observations give only as its tip's position."""

    def tip_at(angle):
        with physics.reset_context():
            physics.named.data.qpos["hinge"] = angle
        return physics.bounded_position()[2:]

    start = tip_at(0.0)
    turn = math.atan2(tip_position[1], tip_position[0]) - math.atan2(start[1], start[0])
    return min((turn, -turn), key=lambda angle: np.abs(tip_at(angle) - tip_position).max())


def _set_dm_control_state(domain, physics, obs):
    """Puts dm_control's physics into the state an envpool observation describes."""
    hinge = _finger_hinge_angle(physics, obs["position"][2:]) if domain == "finger" else None
    with physics.reset_context():
        if domain == "finger":
            physics.named.data.qpos[["proximal", "distal", "hinge"]] = [*obs["position"][:2], hinge]
        else:  # hopper and cheetah observe every coordinate but the horizontal position
            physics.data.qpos[1:] = obs["position"]
        physics.data.qvel[:] = obs["velocity"]


@pytest.mark.parametrize(
    ("task", "num_steps"),
    [
        ("hopper-stand", 40),
        ("cheetah-run", 40),
        # Finger contacts differ: envpool 1.2.5 bundles MuJoCo 3.6, not the 3.17 dm_control
        # runs on here, and finger's elliptic friction cones diverge at the first touch.
        ("finger-spin", 15),
    ],
)
def test_observations_and_dynamics_match_dm_control_from_the_same_state(task, num_steps):
    """Started from envpool's reset states, dm_control yields the same flat observations, so
    dimension i means the same quantity on both backends (the Gymnasium path flattens
    dm_control's observations in sorted key order, see test_envs.py)."""
    # Imported here, after gprl chose a headless GL backend: dm_control fixes it on import.
    from dm_control import suite

    domain, task_name = task.split("-")
    actions = np.random.default_rng(0).uniform(-1, 1, (num_steps, 4, 6))
    with make_env(f"dmc:{task}", num_envs=4, seed=0, backend="envpool") as env:
        actions = actions[..., : env.spec.action_dim]
        trajectory = [env.reset(seed=0)]
        trajectory += [env.step(action).obs for action in actions]
    trajectory = np.stack(trajectory, axis=1)

    dm_env = suite.load(domain, task_name)
    dm_env.reset()
    keys = sorted(dm_env.observation_spec())
    sizes = [math.prod(dm_env.observation_spec()[key].shape) for key in keys]
    for index in range(4):
        parts = np.split(trajectory[index, 0].astype(np.float64), np.cumsum(sizes)[:-1])
        obs = dict(zip(keys, parts, strict=True))
        _set_dm_control_state(domain, dm_env.physics, obs)
        observations = [dm_env.task.get_observation(dm_env.physics)]
        observations += [dm_env.step(action[index]).observation for action in actions]
        flat = np.array([np.concatenate([np.ravel(o[key]) for key in keys]) for o in observations])
        np.testing.assert_allclose(trajectory[index], flat, atol=1e-4, err_msg=f"env {index}")


def test_fixed_policy_scores_the_same_on_both_backends_of_hopper_stand():
    """hopper-stand returns with a fixed policy agree in mean (see assert_means_agree)."""
    results = {}
    for backend in ("gymnasium", "envpool"):
        with make_env("dmc:hopper-stand", num_envs=16, backend=backend) as env:
            policy = fixed_policy(env.spec)
            results[backend] = rollout(env, policy, seed=0, num_steps=1000)
    (gym_returns, gym_lengths, _), (pool_returns, pool_lengths, _) = results.values()
    assert len(gym_returns) == len(pool_returns) == 16
    assert np.all(gym_lengths == 1000) and np.all(pool_lengths == 1000)
    assert_means_agree(gym_returns, pool_returns, "hopper-stand return")


def test_fixed_policy_scores_and_observes_the_same_on_both_backends_of_hopper_v5():
    """Hopper-v5 falls within ~40 steps under this policy: ~260 episodes per backend."""
    results = {}
    for backend in ("gymnasium", "envpool"):
        with make_env("Hopper-v5", num_envs=16, backend=backend) as env:
            policy = fixed_policy(env.spec)
            results[backend] = rollout(env, policy, seed=0, num_steps=600)
    (gym_returns, gym_lengths, gym_obs), (pool_returns, pool_lengths, pool_obs) = results.values()
    assert min(len(gym_returns), len(pool_returns)) > 150
    assert_means_agree(gym_returns, pool_returns, "Hopper-v5 return")
    assert_means_agree(gym_lengths, pool_lengths, "Hopper-v5 episode length")
    # Per-dimension means of what the policy saw: a swapped or shifted dimension moves a mean by
    # about a standard deviation, while with hundreds of episodes the two backends' means stayed
    # within 0.07 standard deviations over five seeds. (Standard deviations are left out: the
    # clipped velocities make them heavy-tailed, 5-70% apart between seeds.)
    pooled_std = np.sqrt((gym_obs.var(0) + pool_obs.var(0)) / 2)
    np.testing.assert_array_less(np.abs(gym_obs.mean(0) - pool_obs.mean(0)), 0.15 * pooled_std)


def test_both_host_backends_shape_clip_and_refuse_actions_alike():
    # Both backends build on gprl.envs.common: the same spec from the same task, an action past
    # the bounds steps exactly as the bound does, and bad actions get the same message.
    assert probe_spec("Hopper-v5", "gymnasium") == probe_spec("Hopper-v5", "envpool")
    messages = {}
    for backend in ("gymnasium", "envpool"):
        with make_env("Hopper-v5", num_envs=2, seed=3, backend=backend) as env:
            beyond = [env.step(np.full((2, 3), 5.0)).obs for _ in range(3)]
            env.reset(seed=3)
            at_bound = [env.step(np.ones((2, 3))).obs for _ in range(3)]
            np.testing.assert_array_equal(beyond, at_bound)
            messages[backend] = []
            for bad in (np.zeros((3, 3)), np.full((2, 3), np.nan)):
                with pytest.raises(EnvError) as error:
                    env.step(bad)
                messages[backend].append(str(error.value))
    assert messages["gymnasium"] == messages["envpool"]


# Episode ends, autoreset and seeding.


def test_a_fall_terminates_and_the_same_step_starts_the_next_episode():
    fall, stand = np.ones(3), np.zeros(3)
    with make_env("Hopper-v5", num_envs=2, seed=5, backend="envpool") as env:
        pair_obs = [env.reset(seed=5)]
        for _ in range(200):
            step = env.step(np.stack([fall, stand]))
            pair_obs.append(step.obs)
            if step.terminated[0]:
                break
        assert step.terminated[0] and not step.truncated[0]
        assert not step.terminated[1] and not step.truncated[1]
        # The final observation is unhealthy (fallen or tilted); obs starts a new episode.
        fallen_z, fallen_angle = step.final_obs[0, :2]
        assert fallen_z < 0.7 or abs(fallen_angle) > 0.2
        start = np.zeros(11)
        start[0] = HOPPER_INIT_Z
        np.testing.assert_allclose(step.obs[0], start, atol=HOPPER_RESET_NOISE + 1e-6)
        # The next step is a real one (envpool's own autoreset would spend it, with reward 0).
        next_step = env.step(np.stack([stand, stand]))
        assert next_step.reward[0] > 0.5 and not np.array_equal(next_step.obs[0], step.obs[0])
        pair_obs.append(next_step.obs)

    # Env 1, seeded with 5 + 1, never noticed env 0's reset.
    with make_env("Hopper-v5", num_envs=1, seed=6, backend="envpool") as alone:
        alone_obs = [alone.reset(seed=6)]
        alone_obs += [alone.step(stand[None]).obs for _ in range(len(pair_obs) - 1)]
    np.testing.assert_array_equal(np.stack(pair_obs)[:, 1], np.concatenate(alone_obs))


def test_a_fall_on_the_last_step_is_a_termination_not_a_truncation():
    # envpool itself reports episodes that end at the time limit as truncated even when they
    # fall; with the limit moved to the fall's step, it must still count as a termination.
    fall = np.ones((1, 3))
    with make_env("Hopper-v5", seed=0, backend="envpool") as env:
        fall_step = next(count for count in range(1, 200) if env.step(fall).terminated[0])
        env._max_episode_steps = fall_step  # white-box: no public way to shorten the limit
        env.reset(seed=0)
        for _ in range(fall_step - 1):
            step = env.step(fall)
            assert not (step.terminated[0] or step.truncated[0])
        step = env.step(fall)
        assert step.terminated[0] and not step.truncated[0]


def test_reset_with_a_seed_replays_the_same_episodes():
    actions = np.random.default_rng(0).uniform(-1, 1, (150, 3, 6))
    with make_env("dmc:cheetah-run", num_envs=3, seed=11, backend="envpool") as env:

        def trajectory(seed):
            observations = [env.reset(seed)]
            observations += [env.step(action).obs for action in actions]
            return np.stack(observations)

        first = trajectory(11)
        np.testing.assert_array_equal(first, trajectory(11))
        assert not np.array_equal(first[0], trajectory(12)[0])
    # Env i is seeded with seed + i.
    with make_env("dmc:cheetah-run", num_envs=1, seed=12, backend="envpool") as env:
        np.testing.assert_array_equal(env.reset(seed=12)[0], first[0, 1])


def test_results_are_fresh_arrays_of_the_documented_dtypes():
    with make_env("Hopper-v5", num_envs=2, backend="envpool") as env:
        first = env.step(np.ones((2, 3)))
        snapshot = [np.array(field) for field in first]
        env.step(np.ones((2, 3)))
        for field, kept in zip(first, snapshot, strict=True):
            np.testing.assert_array_equal(field, kept)
        assert first.obs.dtype == first.final_obs.dtype == first.reward.dtype == np.float32
        assert first.terminated.dtype == first.truncated.dtype == bool


# Actions.


def test_actions_are_clipped_and_rescaled_to_the_true_bounds():
    """InvertedPendulum-v5 takes forces in [-3, 3]: our [-1, 1] actions must arrive scaled."""
    normalised = np.array([[1.0 / 3.0], [-1.0], [0.5], [7.0], [-np.inf]])
    raw = np.array([[1.0], [-3.0], [1.5], [3.0], [-3.0]])
    with make_env("InvertedPendulum-v5", num_envs=5, seed=2, backend="envpool") as env:
        np.testing.assert_array_equal(env.spec.action_low, [-3.0])
        np.testing.assert_array_equal(env.spec.action_high, [3.0])
        ours = [env.step(normalised).final_obs for _ in range(3)]
    pool = envpool.make_gymnasium("InvertedPendulum-v5", num_envs=5, seed=2)
    pool.reset()
    # Forces of 3 topple the pole on the third step; the raw pool would spend the fourth on its
    # own autoreset, so the comparison stops there.
    theirs = [pool.step(raw)[0] for _ in range(3)]
    pool.close()
    np.testing.assert_allclose(np.stack(ours), np.stack(theirs), rtol=1e-6, atol=1e-7)


def test_bad_actions_are_rejected_in_one_line():
    with make_env("Hopper-v5", num_envs=2, backend="envpool") as env:
        with pytest.raises(EnvError, match=r"\(2, 3\).*got \(3, 2\)"):
            env.step(np.zeros((3, 2)))
        nan_actions = np.zeros((2, 3))
        nan_actions[1, 2] = np.nan
        with pytest.raises(EnvError, match="NaN"):
            env.step(nan_actions)
