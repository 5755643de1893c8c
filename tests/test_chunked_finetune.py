"""Fine-tuning policies of action chunks: envs that execute a chunk as one decision, on Gymnasium
and JAX (a tiny env whose rewards are its actions, so every sum is known), collectors that count
env steps and raw returns, runs that do not fit them refused in one line, and ReinFlow
fine-tuning a chunked flow with an observation history from its pretrain run (its first
evaluation, env-step count, exact resumption and `gprl eval`; -m slow)."""

import csv
from dataclasses import replace

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gprl import initial_policy
from gprl.algos import ALGORITHMS
from gprl.cli import main
from gprl.collectors import EpisodeStats, HostCollector
from gprl.datasets import Episode, write_dataset
from gprl.envs import EnvError, make_env
from gprl.envs.chunked import Chunking
from gprl.envs.diagnostics import POINT_GOALS
from gprl.policies import POLICIES
from gprl.pretrain import PretrainConfig, PretrainRun, load_pretrained, pretrain
from gprl.trainer import RunConfig, boundary_seed, train

ENDS_AT = 5
SUCCEEDS_AT = 2


class ActionEcho(gym.Env):
    """Rewards are the env actions themselves (bounds [-2, 2]); the observation is (steps so
    far, last action); the episode terminates after ENDS_AT steps and succeeds at step
    SUCCEEDS_AT only."""

    def __init__(self):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.steps = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.steps += 1
        obs = np.array([self.steps, action[0]], np.float32)
        info = {"success": self.steps == SUCCEEDS_AT}
        return obs, float(action[0]), self.steps == ENDS_AT, False, info


def test_a_decision_executes_part_of_a_chunk_and_stops_where_the_episode_ends():
    chunking = Chunking(chunk_length=4, execute_steps=3, obs_history=2, discount=0.5)
    env = make_env(ActionEcho, 1, 0, backend="gymnasium", chunking=chunking)
    assert (env.spec.obs_dim, env.spec.action_dim) == (4, 4)
    assert env.spec.action_high.tolist() == [2.0] * 4
    # The first observation repeated: the history at an episode's start.
    assert env.reset(0).tolist() == [[0, 0, 0, 0]]
    # [-1, 1] actions mapped onto [-2, 2] one by one; the fourth is never executed.
    step = env.step(np.array([[0.5, -0.5, 0.25, 1.0]]))
    assert step.env_steps.tolist() == [3]
    assert step.reward.tolist() == [0.5]  # 1 - 1 + 0.5, raw
    assert step.discounted_reward.tolist() == [1 - 0.5 + 0.25 * 0.5]
    assert step.success.tolist() == [True]  # step 2 of the 3 succeeded
    assert step.obs.tolist() == [[2, -1, 3, 0.5]]  # the last two observations, oldest first
    assert not step.terminated[0]
    # The episode ends at step 5, the second action of this chunk: the third is dropped, and
    # the next decision starts the next episode.
    step = env.step(np.array([[0.25, 0.5, 1.0, 1.0]]))
    assert step.env_steps.tolist() == [2]
    assert step.terminated.tolist() == [True]
    assert step.discounted_reward.tolist() == [0.5 + 0.5 * 1.0]
    assert step.success.tolist() == [False]
    assert step.final_obs.tolist() == [[4, 0.5, 5, 1.0]]
    assert step.obs.tolist() == [[0, 0, 0, 0]]
    step = env.step(np.array([[0.5, 0.5, 0.5, 0.5]]))
    assert step.obs.tolist() == [[2, 1, 3, 1]]  # steps 1-3 of the new episode
    env.close()


def test_collected_chunks_count_env_steps_raw_returns_and_learn_the_discounted_reward():
    chunking = Chunking(chunk_length=2, execute_steps=2, discount=0.5)
    env = make_env(ActionEcho, 2, 0, backend="gymnasium", chunking=chunking)

    def act(acting, obs, key):
        return jnp.full((obs.shape[0], 2), 0.5), {}  # env actions of 1: a reward of 1 a step

    collector = HostCollector(env, act)
    collector.reset(0)
    batch, _, episodes = collector.collect(None, jax.random.PRNGKey(0), 3)
    # Episodes of 5 steps: decisions of 2, 2 and 1 env steps (the episode ends at its first).
    assert batch.reward.tolist() == [[1.5, 1.5], [1.5, 1.5], [1.0, 1.0]]
    assert episodes == EpisodeStats(count=2, return_sum=10.0, length_sum=10.0, env_steps=10)
    env.close()


class ActionEchoTask:
    """ActionEcho as a JAX task (no success to report)."""

    obs_dim, action_low, action_high, max_episode_steps = 2, (-2.0,), (2.0,), None

    def reset(self, key):
        return jnp.zeros((), jnp.int32), jnp.zeros(2, jnp.float32)

    def step(self, steps, action):
        steps = steps + 1
        obs = jnp.stack([steps.astype(jnp.float32), action[0]])
        return steps, obs, action[0], steps == ENDS_AT


def test_a_jax_task_executes_chunks_as_the_gymnasium_wrapper_does():
    chunking = Chunking(chunk_length=4, execute_steps=3, obs_history=2, discount=0.5)
    env = make_env(ActionEchoTask(), 1, backend="jax", chunking=chunking)
    assert (env.spec.obs_dim, env.spec.action_dim) == (4, 4)
    state, obs = env.reset(jax.random.PRNGKey(0))
    assert obs.tolist() == [[0, 0, 0, 0]]
    step = jax.jit(env.step)
    state, first = step(state, jnp.array([[0.5, -0.5, 0.25, 1.0]]))
    state, ending = step(state, jnp.array([[0.25, 0.5, 1.0, 1.0]]))
    state, next_episode = step(state, jnp.array([[0.5, 0.5, 0.5, 0.5]]))
    assert (first.env_steps.tolist(), first.reward.tolist()) == ([3], [0.5])
    assert first.discounted_reward.tolist() == [1 - 0.5 + 0.25 * 0.5]
    assert first.obs.tolist() == [[2, -1, 3, 0.5]]
    # Terminated at the second action: the third is masked out, the next episode starts.
    assert (ending.env_steps.tolist(), ending.terminated.tolist()) == ([2], [True])
    assert ending.discounted_reward.tolist() == [0.5 + 0.5 * 1.0]
    assert ending.final_obs.tolist() == [[4, 0.5, 5, 1.0]]
    assert next_episode.obs.tolist() == [[2, 1, 3, 1]]


def test_chunked_envs_that_do_not_fit_are_refused_in_one_line():
    # TwoGoalPoint truncates at 25 steps: chunks of 4 executed actions would cut one.
    with pytest.raises(EnvError, match="truncates episodes at 25 steps, not a multiple of"):
        make_env("gprl/TwoGoalPoint-v0", 1, backend="gymnasium", chunking=Chunking(4, 4))
    with pytest.raises(EnvError, match="truncates episodes at 25 steps"):
        make_env("gprl/TwoGoalPoint-v0", 1, backend="jax", chunking=Chunking(3, 3))
    with pytest.raises(EnvError, match="envpool cannot execute action chunks"):
        make_env("Hopper-v5", 1, backend="envpool", chunking=Chunking(5, 5))
    with pytest.raises(EnvError, match="not execute_steps=3"):
        Chunking(chunk_length=2, execute_steps=3)


# ----- fine-tuning a chunked pretrain run ----------------------------------------------------

TWO_GOAL = "gprl/TwoGoalPoint-v0"
# A pretrain run evaluates with this seed; a training run with seed 0 too.
EVAL_SEED = boundary_seed(0, 2**31 - 1)
EVAL_EPISODES = 8
# Chunks of 6 actions, 5 executed (TwoGoalPoint's 25-step limit is a multiple), conditioned on
# 2 observations; zero noise, so that the pretrain run evaluates the fine-tuner's policy.
CHUNKED = PretrainConfig(
    log_every=100, noise_scale=0.0, chunk_length=6, execute_steps=5, obs_history=2
)


def record_two_goal(dataset_id: str, episodes: int):
    """Episodes of full speed toward a goal drawn once per episode."""
    rng = np.random.default_rng(0)
    env = make_env(TWO_GOAL, 1, 0, backend="gymnasium")
    obs, recorded = env.reset(0), []
    for _ in range(episodes):
        goal = POINT_GOALS[rng.integers(2)]
        observations, actions, rewards, ends = [obs[0]], [], [], []
        while not ends or not any(ends[-1]):
            action = np.clip((goal - obs[0, :2]) / 0.1, -1, 1).astype(np.float32)
            step = env.step(action[None])
            actions.append(action)
            rewards.append(step.reward[0])
            ends.append((step.terminated[0], step.truncated[0]))
            observations.append(step.final_obs[0])
            obs = step.obs
        terminated, truncated = np.array(ends).T
        recorded.append(
            Episode(
                np.stack(observations), np.stack(actions), np.array(rewards), terminated, truncated
            )
        )
    write_dataset(dataset_id, recorded, env.spec, "scripted", "scripted")
    env.close()
    return dataset_id


@pytest.fixture(scope="module")
def chunked_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("chunked")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MINARI_DATASETS_PATH", str(root / "datasets"))
        dataset = record_two_goal("probe/two-goal-chunks-v0", 40)
        # Its one evaluation (at the end) is over the episodes a fine-tuning run evaluates.
        options = PretrainRun(
            dataset=dataset,
            steps=100,
            out=root / "flow",
            progress=False,
            eval_every=0,
            eval_episodes=EVAL_EPISODES,
        )
        flow = replace(POLICIES["flow"].default_config, hidden=(32, 32), num_steps=3)
        return pretrain("flow", options, CHUNKED, flow)


def fine_tuning(init, out, **overrides):
    config = replace(ALGORITHMS["reinflow"].config(), rollout_steps=8, num_minibatches=2)
    fields = dict(
        env=TWO_GOAL,
        env_backend="gymnasium",
        total_steps=480,
        num_envs=4,
        out=out,
        progress=False,
        eval_every=160,
        eval_episodes=EVAL_EPISODES,
        checkpoint_every=160,
        init=init,
    )
    return RunConfig(**(fields | overrides)), config


def metrics(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_reinflow_fine_tunes_a_chunked_flow_counting_env_steps(chunked_run, tmp_path):
    rows = metrics(train("reinflow", *fine_tuning(chunked_run, tmp_path / "reinflow")))
    # Its first evaluation is the pretrained policy's, executed as the pretrain run executes it
    # (same seed and episodes), episode lengths in env steps.
    pretrained = metrics(chunked_run)[-1]
    assert float(rows[0]["eval_return"]) == pytest.approx(float(pretrained["eval_return"]), 1e-5)
    assert rows[0]["eval_length"] == pretrained["eval_length"]
    # 480 env steps are 96 decisions of 5 env steps: 3 updates on 8 x 4 decisions. Episodes
    # that reach a goal end inside a chunk, so the run counts fewer than 5 per decision.
    updates = [r for r in rows if r["iteration"] != "0"]
    assert len(updates) == 3
    assert 96 < int(updates[-1]["env_steps"]) < 480
    assert max(float(r["train_length"]) for r in updates) > 5


@pytest.mark.slow
def test_chunked_fine_tuning_resumes_exactly(chunked_run, tmp_path, resume_check, capsys):
    run, config = fine_tuning(chunked_run, tmp_path / "interrupted")
    checked = resume_check.train("reinflow", run, config, stop_at=2)
    # `gprl eval` executes the fine-tuned policy's chunks as the run did: its last evaluation.
    eval_options = ["--episodes", str(EVAL_EPISODES), "--seed", str(EVAL_SEED)]
    main(["eval", str(checked.reference), *eval_options])
    printed = float(capsys.readouterr().out.split("return ")[1].split()[0])
    assert printed == pytest.approx(float(checked.rows[-1]["eval_return"]), abs=1e-3)


@pytest.mark.slow
def test_chunked_init_that_does_not_fit_is_refused_in_one_line(
    chunked_run, tmp_path, cli_error, monkeypatch
):
    out = tmp_path / "refused"
    argv = ["train", "gorl", "--env", TWO_GOAL, "--init", str(chunked_run), "--out", str(out)]
    # The other fine-tuners keep refusing chunked policies.
    message = "fine-tuning supports only policies of one observation"
    assert message in cli_error([*argv, "--env-backend", "gymnasium"])
    # The same policy executing 4 actions per chunk: a truncation at step 25 would cut one.
    pretrained = load_pretrained(chunked_run)
    misfit = pretrained._replace(config=replace(pretrained.config, execute_steps=4))
    monkeypatch.setattr(initial_policy, "load_pretrained", lambda _: misfit)
    argv[1] = "reinflow"
    message = "truncates episodes at 25 steps, not a multiple of the 4 executed actions"
    assert message in cli_error([*argv, "--env-backend", "gymnasium"])
    assert not out.exists()
