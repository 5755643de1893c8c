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
from gprl.dataset_writer import write_dataset
from gprl.datasets import Episode
from gprl.envs import EnvError, make_env
from gprl.envs.chunked import Chunking, chunked_spec
from gprl.envs.diagnostics import POINT_GOALS
from gprl.policies import POLICIES
from gprl.pretrain import PretrainConfig, PretrainRun, load_pretrained, pretrain
from gprl.pretrained import Pretrained, build_policy
from gprl.rl_math import running_stats_init
from gprl.trainer import RunConfig, boundary_seed, train
from gprl.types import EnvSpec

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

CHUNK_SPEC = EnvSpec("probe", 3, 2, -np.ones(2, np.float32), np.ones(2, np.float32), 30)
# gorl-reference is GoRL's class under other defaults; pa-rl's chunked bases and its warm-up
# acting with the base's own chunk are tested in tests/test_parl.py; expo and qc decide by their
# critics among their base's samples from the start (tests/test_expo.py, tests/test_qc.py).
CHUNK_FINE_TUNERS = sorted(
    name
    for name, entry in ALGORITHMS.items()
    if entry.algorithm.fine_tunes_chunks and name not in ("gorl-reference", "pa-rl", "expo", "qc")
)
BASE_KINDS = {"ppo": "gaussian", "dppo": "ddpm"}
"""The pretrain kind each fine-tuner starts from; the rest fine-tune flows."""
RANDOM_CHUNKS = PretrainConfig(chunk_length=3, execute_steps=2, obs_history=2)
SMALL_POLICIES = {
    "flow": {"hidden": (16,), "num_steps": 3},
    "ddpm": {"hidden": (16,), "num_train_steps": 10, "num_steps": 10},
    "gaussian": {"hidden": (16,)},
}


def random_chunked_policy(kind: str, config=RANDOM_CHUNKS) -> Pretrained:
    """An untrained policy of chunks (by default of 3 actions, 2 executed, on 2 observations),
    whose observation statistics and action map change its inputs and outputs."""
    policy_config = replace(POLICIES[kind].default_config, **SMALL_POLICIES[kind])
    spec = CHUNK_SPEC
    policy, _ = build_policy(kind, config, policy_config, spec.obs_dim, spec.action_dim)
    obs_norm = running_stats_init((spec.obs_dim,)) | {"mean": jnp.array([0.5, -1.0, 0.0])}
    acting = {
        "params": policy.policy.init(jax.random.PRNGKey(0), config.obs_history * spec.obs_dim),
        "obs_norm": obs_norm,
        "action_norm": {"center": jnp.full(2, 0.2), "half_range": jnp.full(2, 0.5)},
    }
    return Pretrained(
        kind, policy, acting, config, policy_config, "probe", "gymnasium", spec.obs_dim,
        spec.action_dim,
    )  # fmt: skip


def on_random_chunked_policy(algorithm, kind: str, config):
    """algorithm (a class) on an untrained policy of chunks of 3 actions (2 executed) on 2
    observations, with action and observation maps, seen as the run sees it; and that policy."""
    pretrained = random_chunked_policy(kind)
    chunking = initial_policy.chunking_of(pretrained.config, 0.9)
    spec = chunked_spec(CHUNK_SPEC, chunking)
    config = algorithm.per_decision_config(config, chunking.execute_steps)
    flat = initial_policy.flat_chunk_policy(pretrained)
    return algorithm(config, spec, 4, 20_000, pretrained=flat), pretrained


@pytest.mark.parametrize("name", CHUNK_FINE_TUNERS)
def test_every_chunk_fine_tuner_decides_the_pretrained_chunk_first(name):
    entry = ALGORITHMS[name]
    assert set(CHUNK_FINE_TUNERS) >= {"reinflow", "dppo", "flow-sde", "gorl", "dsrl", "ppo"}
    pretrained = random_chunked_policy(BASE_KINDS.get(name, "flow"))
    chunking = initial_policy.chunking_of(pretrained.config, 0.9)
    config = entry.default_config()
    if "gorl" in name:  # its deterministic latent is then exactly the prior's mean
        config = replace(config, encoder_starts_at_prior=True)
    config = entry.algorithm.per_decision_config(config, chunking.execute_steps)
    # The bootstrap after a decision spans its 2 env steps.
    gamma = entry.algorithm.step_discount(config)
    assert gamma == pytest.approx(entry.algorithm.step_discount(entry.default_config()) ** 2)
    assert gamma < 1
    spec = chunked_spec(CHUNK_SPEC, chunking)
    flat = initial_policy.flat_chunk_policy(pretrained)
    algo = entry.algorithm(config, spec, 4, 20_000, pretrained=flat)
    assert (spec.obs_dim, spec.action_dim) == (6, 6)
    acting = algo.acting_params(algo.init(jax.random.PRNGKey(1)))
    histories = jax.random.normal(jax.random.PRNGKey(2), (8, 6))
    # The pretrained policy's chunk at zero noise, action map included, flattened.
    noise = jnp.zeros((8, pretrained.policy.noise_dim))
    chunk = pretrained.policy.plan_from_noise(pretrained.acting, histories, noise)
    decided = algo.act_deterministic(acting, histories)
    np.testing.assert_allclose(np.asarray(decided), np.asarray(chunk).reshape(8, 6), atol=1e-5)
    sampled, _ = algo.act(acting, histories, jax.random.PRNGKey(3))
    assert sampled.shape == (8, 6) and float(jnp.abs(sampled).max()) <= 1.0
    assert float(jnp.abs(sampled - decided).max()) > 1e-3  # it explores


def test_a_base_of_another_kind_is_refused_in_one_line():
    flat = initial_policy.flat_chunk_policy(random_chunked_policy("flow"))
    ppo = ALGORITHMS["ppo"]
    with pytest.raises(ValueError, match="ppo fine-tunes 'gaussian' pretrain runs; --init holds"):
        ppo.algorithm(ppo.default_config(), CHUNK_SPEC, 4, 20_000, pretrained=flat)
    gaussian = initial_policy.flat_chunk_policy(random_chunked_policy("gaussian"))
    reinflow = ALGORITHMS["reinflow"]
    with pytest.raises(ValueError, match="fine-tunes 'flow' pretrain runs"):
        reinflow.algorithm(reinflow.default_config(), CHUNK_SPEC, 4, 20_000, pretrained=gaussian)


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
def chunked_runs(tmp_path_factory):
    """A flow and a Gaussian pretrain run of CHUNKED on the same demonstrations."""
    root = tmp_path_factory.mktemp("chunked")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MINARI_DATASETS_PATH", str(root / "datasets"))
        dataset = record_two_goal("probe/two-goal-chunks-v0", 40)
        runs = {}
        for kind, policy in [
            ("flow", {"hidden": (32, 32), "num_steps": 3}),
            ("gaussian", {"hidden": (32, 32)}),
        ]:
            # Its one evaluation (at the end) is over the episodes a fine-tuning run evaluates.
            options = PretrainRun(
                dataset=dataset,
                steps=100,
                out=root / kind,
                progress=False,
                eval_every=0,
                eval_episodes=EVAL_EPISODES,
            )
            policy_config = replace(POLICIES[kind].default_config, **policy)
            runs[kind] = pretrain(kind, options, CHUNKED, policy_config)
        return runs


@pytest.fixture(scope="module")
def chunked_run(chunked_runs):
    return chunked_runs["flow"]


SMALL_RUNS = {
    "reinflow": {"rollout_steps": 8, "num_minibatches": 2},
    "flow-sde": {"rollout_steps": 8, "num_minibatches": 2},
    "dppo-flow": {"rollout_steps": 8, "num_minibatches": 2},
    "ppo": {"rollout_steps": 8, "num_minibatches": 2},
    "gorl": {
        "num_stages": 2,
        "stage_weights": (1.0, 1.0),
        "decoder_train_steps": 200,
        "decoder_min_samples": 64,
    },
    # Env-step clocks, counted in decisions of 5 env steps by the run.
    "dsrl": {"learning_starts": 80, "update_every": 40, "steps_per_iteration": 160},
}


def fine_tuning(init, out, name="reinflow", **overrides):
    config = replace(ALGORITHMS[name].config(), **SMALL_RUNS[name])
    if name == "gorl":
        config = replace(config, ppo=replace(config.ppo, rollout_steps=8, num_minibatches=2))
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
@pytest.mark.parametrize("name", ["dppo-flow", "dsrl", "flow-sde", "gorl", "ppo"])
def test_every_fine_tuner_starts_a_chunked_run_from_its_pretrained_policy(
    name, chunked_runs, tmp_path
):
    init = chunked_runs["gaussian" if name == "ppo" else "flow"]
    total = 1600 if name == "gorl" else 480
    run, config = fine_tuning(init, tmp_path / name, name, total_steps=total)
    rows = metrics(train(name, run, config))
    pretrained = metrics(init)[-1]
    assert float(rows[0]["eval_return"]) == pytest.approx(float(pretrained["eval_return"]), 1e-5)
    assert rows[0]["eval_length"] == pretrained["eval_length"]
    last = int(rows[-1]["env_steps"])
    assert total // 5 < last <= total and np.isfinite(float(rows[-1]["eval_return"]))


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
    argv = ["train", "reinflow", "--env", TWO_GOAL, "--init", str(chunked_run)]
    argv += ["--out", str(out)]
    # The same policy executing 4 actions per chunk: a truncation at step 25 would cut one.
    pretrained = load_pretrained(chunked_run)
    misfit = pretrained._replace(config=replace(pretrained.config, execute_steps=4))
    monkeypatch.setattr(initial_policy, "load_pretrained", lambda _: misfit)
    message = "truncates episodes at 25 steps, not a multiple of the 4 executed actions"
    assert message in cli_error([*argv, "--env-backend", "gymnasium"])
    assert not out.exists()
