"""`gprl collect --policy module:attr`: a user's Python policy recorded exactly, with the envs'
infos, seeded noise, per-episode success and --only-successful; bad policies refused in one line."""

import textwrap
from typing import Any, ClassVar

import gymnasium as gym
import minari
import numpy as np
import pytest

from gprl.cli import main
from gprl.collect import CollectArgs, collect
from gprl.datasets import dataset_path, load_demonstrations
from gprl.envs import make_env
from gprl.envs.diagnostics import point_reach_expert
from gprl.envs.info_vector import InfoVecEnv

pytestmark = pytest.mark.usefixtures("minari_root")

COIN = "test_collect/HiddenCoin-v0"


class HiddenCoinEnv(gym.Env):
    """Each episode hides a coin (0 or 1) that only info["coin"] shows, and lasts 1 to 5 steps
    (drawn at reset). The observation is (steps so far, a tag drawn at reset). A step's second
    action component names the coin: 1 above 0.5, 0 below -0.5, none between; the last step
    reports success iff every step named it. The reward is the first action component, bounded
    by [0, 4]."""

    observation_space = gym.spaces.Box(0.0, 5.0, (2,), np.float32)
    action_space = gym.spaces.Box(np.float32([0.0, -1.0]), np.float32([4.0, 1.0]))
    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._coin = int(self.np_random.integers(2))
        self._length = int(self.np_random.integers(1, 6))
        self._tag = float(self.np_random.random())
        self._steps, self._named = 0, True
        return self._obs(), {"coin": self._coin, "success": False}

    def step(self, action):
        self._steps += 1
        self._named &= action[1] > 0.5 if self._coin else action[1] < -0.5
        done = self._steps == self._length
        info = {"coin": self._coin, "success": done and self._named}
        return self._obs(), float(action[0]), done, False, info

    def _obs(self):
        return np.array([self._steps, self._tag], np.float32)


# By name: Minari stores the env spec as JSON.
gym.register(COIN, entry_point=f"{__name__}:HiddenCoinEnv")

POLICIES = """
import numpy as np

def oracle(obs, info, episode_start):
    assert (episode_start == (obs[:, 0] == 0)).all(), "episode starts out of step"
    coin = np.array([i["coin"] for i in info])
    return np.stack([2.5 * obs[:, 0], np.where(coin == 1, 1.0, -1.0)], axis=1)

class Oracle:
    def get_action(self, obs, info):
        return np.array([2.5 * obs[0], 1.0 if info["coin"] else -1.0])

def make_guess():
    return lambda obs: np.stack([np.full(len(obs), 2.0), np.ones(len(obs))], axis=1)

def never(obs):
    return np.zeros((len(obs), 2))

def nan(obs):
    return np.full((len(obs), 2), np.nan)

def one_action(obs):
    return np.zeros(2)

def broken(obs):
    raise KeyError("privileged/goal")

NOT_CALLABLE = 3
"""


@pytest.fixture
def policies(tmp_path, monkeypatch, request):
    """The module name of POLICIES, written to the current directory (a fresh name per test:
    modules stay imported)."""
    name = f"experts_{request.node.name.replace('[', '_').replace(']', '').replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(POLICIES))
    monkeypatch.chdir(tmp_path)
    return name


def coin_args(policy, out, **options):
    return CollectArgs(out=out, policy=policy, env=COIN, num_envs=3, **options)


def test_a_python_policy_acting_on_infos_is_recorded_exactly_in_env_units(policies):
    result = collect(coin_args(f"{policies}:oracle", "coin/oracle-v0", episodes=7))
    demos = load_demonstrations("coin/oracle-v0")
    episodes = list(minari.load_dataset("coin/oracle-v0").iterate_episodes())
    actions = np.concatenate([episode.actions for episode in episodes])
    # The oracle's actions (2.5 x the step count, clipped to the bound 4) as the env took them.
    coin_sign = actions[:, 1]
    expected = np.stack([np.minimum(2.5 * demos.obs[:, 0], 4.0), coin_sign], axis=1)
    np.testing.assert_array_equal(actions, expected)
    assert set(np.unique(coin_sign)) == {-1.0, 1.0} and (actions[:, 0] == 4.0).any()
    # Every episode named its hidden coin: the infos came with their observations.
    assert demos.episode_successes.tolist() == [True] * 7 and result.success_rate == 1.0
    assert [e.infos["success"][-1] for e in episodes] == [True] * 7
    np.testing.assert_allclose(demos.episode_returns, [e.actions[:, 0].sum() for e in episodes])


def test_an_object_with_get_action_is_applied_to_each_env(policies):
    collect(coin_args(f"{policies}:oracle", "coin/batch-v0", episodes=5))
    collect(coin_args(f"{policies}:Oracle", "coin/per-env-v0", episodes=5))
    batch, per_env = load_demonstrations("coin/batch-v0"), load_demonstrations("coin/per-env-v0")
    np.testing.assert_array_equal(per_env.actions, batch.actions)
    np.testing.assert_array_equal(per_env.obs, batch.obs)


def test_action_noise_is_seeded_clipped_and_recorded(policies):
    for out, seed in (("coin/noisy-a-v0", 1), ("coin/noisy-b-v0", 1), ("coin/noisy-c-v0", 2)):
        collect(coin_args(f"{policies}:make_guess", out, episodes=6, action_noise=0.5, seed=seed))
    a, b, c = (load_demonstrations(f"coin/noisy-{x}-v0") for x in "abc")
    np.testing.assert_array_equal(a.actions, b.actions)
    assert a.actions.shape != c.actions.shape or not np.array_equal(a.actions, c.actions)
    assert np.abs(a.actions).max() <= 1.0 and np.abs(a.actions - [0.0, 1.0]).max() > 0.1
    metadata = minari.load_dataset("coin/noisy-a-v0").storage.metadata["gprl_collect"]
    assert (metadata["action_noise"], metadata["seed"]) == (0.5, 1)
    assert metadata["episode_return"] == pytest.approx(a.episode_returns.tolist())


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_only_successful_keeps_the_first_successful_attempts_in_order(policies, seed):
    guess = f"{policies}:make_guess"  # succeeds where the hidden coin is 1
    kept = collect(coin_args(guess, "coin/kept-v0", episodes=4, only_successful=True, seed=seed))
    assert kept.episodes == 4 and kept.attempted > 4
    assert kept.success_rate == pytest.approx(4 / kept.attempted)
    # The same attempts recorded without filtering: the kept ones are their successes, in order
    # (also where a later attempt succeeded before an earlier one had finished).
    every = collect(coin_args(guess, "coin/all-v0", episodes=kept.attempted, seed=seed))
    everything = load_demonstrations("coin/all-v0")
    successes = everything.episode_successes
    assert successes[-1] and successes.sum() == 4 and every.success_rate == kept.success_rate
    starts = np.r_[0, np.cumsum(everything.episode_lengths)]
    steps = [np.arange(starts[i], starts[i + 1]) for i in np.flatnonzero(successes)]
    demos = load_demonstrations("coin/kept-v0")
    np.testing.assert_array_equal(demos.obs, everything.obs[np.concatenate(steps)])
    assert demos.episode_successes.all()
    metadata = minari.load_dataset("coin/kept-v0").storage.metadata["gprl_collect"]
    assert metadata["only_successful"] and metadata["episodes_attempted"] == kept.attempted


def test_the_envs_step_as_gprls_own_and_keep_their_infos():
    reference = make_env("gprl/PointReach-v0", 3, 7, backend="gymnasium")
    env = InfoVecEnv("gprl/PointReach-v0", 3, 7)
    obs = env.reset(7)
    np.testing.assert_array_equal(obs, reference.reset(7))
    rng = np.random.default_rng(0)
    for _ in range(60):  # across the 25-step time limit twice
        action = np.where(
            rng.random((3, 1)) < 0.5, point_reach_expert(obs), rng.uniform(-1, 1, (3, 2))
        )
        step, expected = env.step(action), reference.step(action)
        for name, value in expected._asdict().items():
            np.testing.assert_array_equal(getattr(step, name), value, err_msg=name)
        # Where an episode ended, the info is the next episode's first (nothing reached yet).
        ended = step.truncated | step.terminated
        reached = np.where(ended, False, step.success)
        assert [info["success"] for info in env.infos] == reached.astype(float).tolist()
        obs = step.obs
    assert env.spec == reference.spec and env.spec.reports_success
    env.close()
    reference.close()


REFUSED = {
    "no-module": ("no_such_module_here:act", "cannot import no_such_module_here"),
    "no-attribute": ("{m}:oracel", "has no 'oracel'; did you mean 'oracle'"),
    "not-callable": ("{m}:NOT_CALLABLE", "is a int, not a policy"),
    "wrong-shape": ("{m}:one_action", "returned actions of shape (2,) for 2 observations"),
    "non-finite": ("{m}:nan", "returned non-finite actions"),
    "raises": ("{m}:broken", "failed: KeyError: 'privileged/goal'"),
    "never-succeeds": ("{m}:never", "0 of 5 episodes of test_collect/HiddenCoin-v0 succeeded"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_bad_policies_are_refused_in_one_line_and_write_nothing(policies, cli_error, case):
    policy, message = REFUSED[case]
    argv = ["collect", "--policy", policy.format(m=policies), "--env", COIN, "--num-envs", "3"]
    options = ["--only-successful", "--max-attempts", "5"] if case == "never-succeeds" else []
    error = cli_error([*argv, "--episodes", "2", "--out", "coin/refused-v0", *options])
    assert message in error, error
    assert not dataset_path("coin/refused-v0").exists()


def test_only_successful_needs_an_env_that_reports_success(policies, cli_error):
    collect(coin_args(f"{policies}:oracle", "coin/kept-v0", episodes=1))
    argv = ["collect", "--policy", "numpy:zeros_like", "--env", "gprl/ContextualTarget-v0"]
    error = cli_error([*argv, "--out", "coin/kept-v0", "--only-successful"])
    assert "already exists" in error  # the existing dataset is checked first, and kept
    error = cli_error([*argv, "--out", "coin/other-v0", "--only-successful"])
    assert "gprl/ContextualTarget-v0 never reports success" in error
    assert load_demonstrations("coin/kept-v0").episode_successes.tolist() == [True]


def test_collect_from_a_python_policy_on_the_command_line(policies, capsys):
    main(
        [
            "collect",
            "--policy",
            "gprl.envs.diagnostics:point_reach_expert",
            "--env",
            "gprl/PointReach-v0",
            "--episodes",
            "3",
            "--out",
            "reach/expert-v0",
        ]
    )
    printed = capsys.readouterr().out
    assert "wrote dataset reach/expert-v0: 3 episodes, 75 steps" in printed
    assert "kept 3 of 3 attempted (success rate 1.00)" in printed
    demos = load_demonstrations("reach/expert-v0")
    np.testing.assert_allclose(demos.actions, point_reach_expert(demos.obs), atol=1e-6)


class ScriptedRun:
    """Stands in for a run directory's policy (gprl.collect._RunActor): PointReach's expert."""

    env_id, backend = "gprl/PointReach-v0", "auto"
    description, source = "scripted run", "deterministic policy of a scripted run"

    def __init__(self, run_dir, stochastic, num_envs, key):
        self.env_options = {}

    def __call__(self, obs):
        return point_reach_expert(obs)

    def episode_ended(self, ended):
        pass


def test_a_run_directory_gets_the_same_success_bookkeeping(tmp_path, monkeypatch):
    monkeypatch.setattr("gprl.collect._RunActor", ScriptedRun)
    noisy = {"episodes": 3, "num_envs": 2, "action_noise": 3.0, "only_successful": True}
    from_run = collect(CollectArgs(tmp_path, "reach/run-v0", **noisy))
    from_python = collect(
        CollectArgs(
            out="reach/python-v0",
            policy=f"{point_reach_expert.__module__}:point_reach_expert",
            env="gprl/PointReach-v0",
            **noisy,
        )
    )
    assert from_run.attempted > 3 and from_run.success_rate == pytest.approx(3 / from_run.attempted)
    run, python = load_demonstrations("reach/run-v0"), load_demonstrations("reach/python-v0")
    assert run.episode_successes.tolist() == [True] * 3
    # gprl's own envs and the Python policy's info-keeping ones step alike.
    np.testing.assert_array_equal(run.obs, python.obs)
    np.testing.assert_array_equal(run.actions, python.actions)
    assert from_python.attempted == from_run.attempted
