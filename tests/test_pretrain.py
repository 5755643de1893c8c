"""Imitation pretraining on probe tasks whose demonstrations are known: multimodality, every
policy kind, one-step sampling, action chunks, exact resumption."""

import csv
import json
import shutil
from dataclasses import replace

import gymnasium as gym
import jax
import numpy as np
import pytest
from flax import serialization

from gprl.checkpoint import CheckpointError, read_meta
from gprl.cli import main
from gprl.collect import CollectArgs, collect
from gprl.dataset_writer import write_dataset
from gprl.datasets import DatasetError, Episode, load_demonstrations
from gprl.envs import make_env
from gprl.envs.diagnostics import (
    POINT_GOALS,
    bimodal_modes,
    contextual_target_optimum,
)
from gprl.evaluation import ActionQueue
from gprl.initial_policy import load_initial_policy
from gprl.policies import POLICIES
from gprl.pretrain import (
    PretrainConfig,
    PretrainRun,
    chunk_targets,
    evaluate_run,
    load_pretrained,
    pretrain,
)
from gprl.trainer import boundary_seed

SMALL = (64, 64)
FAST = PretrainConfig(learning_rate=1e-3, log_every=500)
CUE_RECALL = "gprl-test/CueRecall-v0"


class CueRecallEnv(gym.Env):
    """Two steps: the first observation shows a cue c = +-1, the second hides it, and only the
    second step is rewarded, -(a - 0.8 c)^2. A policy that sees one observation earns about
    -0.64 (its best action is 0); one that also sees the previous observation earns 0."""

    def __init__(self):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._cue, self._steps = float(self.np_random.choice([-1.0, 1.0])), 0
        return np.array([self._cue, 0.0], np.float32), {}

    def step(self, action):
        self._steps += 1
        hidden = np.array([0.0, 1.0], np.float32)
        if self._steps == 1:
            return hidden, 0.0, False, False, {}
        return hidden, -float((action[0] - 0.8 * self._cue) ** 2), True, False, {}


if CUE_RECALL not in gym.registry:
    gym.register(CUE_RECALL, entry_point=f"{__name__}:CueRecallEnv", max_episode_steps=2)


@pytest.fixture(autouse=True)
def minari_root(tmp_path_factory, monkeypatch):
    root = tmp_path_factory.mktemp("datasets")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


def record(env_id, dataset_id, expert, episodes, seed=0):
    """Write `episodes` episodes of expert(obs, rng, episode_state) as a Minari dataset."""
    rng = np.random.default_rng(seed)
    env = make_env(env_id, 1, seed, backend="gymnasium")
    recorded = []
    obs = env.reset(seed)
    for _ in range(episodes):
        episode_state = {}
        observations, actions, rewards, terminated, truncated = [obs[0]], [], [], [], []
        while True:
            action = np.clip(expert(obs[0], rng, episode_state), -1, 1).astype(np.float32)
            step = env.step(action[None])
            actions.append(action)
            rewards.append(step.reward[0])
            terminated.append(step.terminated[0])
            truncated.append(step.truncated[0])
            if step.terminated[0] or step.truncated[0]:
                observations.append(step.final_obs[0])
                break
            observations.append(step.obs[0])
            obs = step.obs
        obs = step.obs
        recorded.append(
            Episode(
                np.stack(observations),
                np.stack(actions),
                np.array(rewards),
                np.array(terminated),
                np.array(truncated),
            )
        )
    write_dataset(dataset_id, recorded, env.spec, "scripted expert", "scripted")
    env.close()
    return dataset_id


def bimodal_expert(obs, rng, _):
    return bimodal_modes(obs)[rng.integers(2)][None] + 0.02 * rng.normal()


def contextual_expert(obs, rng, _):
    return contextual_target_optimum(obs) + 0.02 * rng.normal(size=2)


def two_goal_expert(obs, rng, episode_state):
    """Full speed toward a goal drawn once per episode."""
    goal = episode_state.setdefault("goal", POINT_GOALS[rng.integers(2)])
    return (goal - obs[:2]) / 0.1


def cue_expert(obs, rng, episode_state):
    return 0.8 * episode_state.setdefault("cue", obs[:1]) + 0.02 * rng.normal(size=1)


def small(kind, **overrides):
    return replace(POLICIES[kind].default_config, **({"hidden": SMALL} | overrides))


def run_options(tmp_path, dataset, name, **overrides):
    fields = dict(
        dataset=dataset,
        steps=2000,
        out=tmp_path / name,
        progress=False,
        eval_every=0,
        eval_episodes=32,
    )
    return PretrainRun(**(fields | overrides))


def rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def sampled_actions(run_dir, obs, num_steps=None, seed=0):
    pretrained = load_pretrained(run_dir)
    key = jax.random.PRNGKey(seed)
    chunk = pretrained.policy.plan(pretrained.acting, obs, key, num_steps)
    return np.asarray(chunk)[:, 0]


def mode_shares(actions, contexts):
    """(share of actions within 0.15 of a mode, share of those on the lower mode)."""
    distance = np.abs(actions[:, :1] - bimodal_modes(contexts))
    near = distance.min(axis=1) < 0.15
    lower = (distance.argmin(axis=1)[near] == 0).mean() if near.any() else float("nan")
    return near.mean(), lower


@pytest.fixture(scope="module")
def bimodal_runs(tmp_path_factory):
    """Gaussian, flow and the one-step policies fitted to demonstrations that pick either
    optimum of BimodalBandit at random."""
    root = tmp_path_factory.mktemp("bimodal")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MINARI_DATASETS_PATH", str(root / "datasets"))
        dataset = record("gprl/BimodalBandit-v0", "probe/bimodal-v0", bimodal_expert, 1000)
        runs = {}
        for kind, steps in (
            ("gaussian", 500),
            ("flow", 2000),
            ("meanflow", 4000),  # 2500 left 0.65 of its one-step samples near a mode
            ("shortcut", 2500),
        ):
            options = run_options(root, dataset, kind, steps=steps)
            runs[kind] = pretrain(kind, options, FAST, small(kind, hidden=(128, 128)))
    return runs


def test_flow_bc_reproduces_both_modes_where_gaussian_bc_does_not(bimodal_runs):
    contexts = np.random.default_rng(1).uniform(-1, 1, (2000, 2)).astype(np.float32)
    near, lower = mode_shares(sampled_actions(bimodal_runs["flow"], contexts), contexts)
    assert near > 0.85 and 0.3 < lower < 0.7
    gaussian_near, _ = mode_shares(sampled_actions(bimodal_runs["gaussian"], contexts), contexts)
    assert gaussian_near < 0.1  # its mean sits between the modes
    assert float(rows(bimodal_runs["flow"])[-1]["eval_return"]) > 0.8
    assert float(rows(bimodal_runs["gaussian"])[-1]["eval_return"]) < 0.1


@pytest.mark.parametrize("kind", ["meanflow", "shortcut"])
def test_one_step_sampling_matches_the_multi_step_policy(bimodal_runs, kind):
    # The one-step map has to split the noise between the modes: a plain flow's single Euler
    # step lands between them (checked below), 10 steps do not.
    contexts = np.random.default_rng(2).uniform(-1, 1, (2000, 2)).astype(np.float32)
    one_step = sampled_actions(bimodal_runs[kind], contexts, num_steps=1)
    ten_steps = sampled_actions(bimodal_runs[kind], contexts, num_steps=10)
    # Stated tolerance: a median gap of 0.15 between paired samples (the modes are 1.2 apart).
    assert np.median(np.abs(one_step - ten_steps)) < 0.15
    near, lower = mode_shares(one_step, contexts)
    assert near > 0.65 and 0.3 < lower < 0.7
    flow_one = sampled_actions(bimodal_runs["flow"], contexts, num_steps=1)
    flow_ten = sampled_actions(bimodal_runs["flow"], contexts, num_steps=10)
    assert np.median(np.abs(flow_one - flow_ten)) > 0.3


@pytest.fixture(scope="module")
def contextual_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("contextual")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MINARI_DATASETS_PATH", str(root))
        record("gprl/ContextualTarget-v0", "probe/contextual-v0", contextual_expert, 1000)
    return root


@pytest.mark.parametrize("kind", list(POLICIES))
def test_each_kind_reaches_low_loss_and_acts_correctly(
    tmp_path, monkeypatch, contextual_dataset, kind
):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(contextual_dataset))
    run_dir = pretrain(kind, run_options(tmp_path, "probe/contextual-v0", kind), FAST, small(kind))
    logged = rows(run_dir)
    assert float(logged[-1]["val_loss"]) < 0.5 * float(logged[0]["val_loss_at_init"])
    # The best constant action earns about -0.46; the demonstrations about -0.001.
    assert float(logged[-1]["eval_return"]) > -0.02
    contexts = np.random.default_rng(3).uniform(-1, 1, (500, 3)).astype(np.float32)
    error = np.abs(sampled_actions(run_dir, contexts) - contextual_target_optimum(contexts))
    assert error.mean() < 0.08


def test_chunked_flow_policy_reaches_a_goal_executing_part_of_each_chunk(tmp_path):
    dataset = record("gprl/TwoGoalPoint-v0", "probe/two-goal-v0", two_goal_expert, 200)
    demos = load_demonstrations(dataset)
    config = replace(FAST, chunk_length=4, execute_steps=2)
    options = run_options(tmp_path, dataset, "chunked", steps=4000)
    run_dir = pretrain("flow", options, config, small("flow"))
    assert float(rows(run_dir)[-1]["eval_return"]) > 0.95 * demos.episode_returns.mean()
    # Collecting with it replans each env on its own as its episodes end.
    collected = collect(CollectArgs(run_dir, "probe/two-goal-bc-v0", episodes=24, num_envs=8))
    assert collected.mean_return > 0.95 * demos.episode_returns.mean()


def test_action_queue_replans_every_execute_steps_and_after_an_episode_ends():
    plans = []

    def plan(obs, key):
        plans.append(obs.copy())
        # Chunk k of env i holds actions 100 k + 10 i + j, j = 0..3.
        k = len(plans) - 1
        return (100 * k + 10 * np.arange(2)[:, None] + np.arange(4)[None])[..., None]

    queue = ActionQueue(plan, 2, 3, jax.random.PRNGKey(0))
    obs = np.zeros((2, 1))
    executed = [queue(obs)[:, 0].tolist() for _ in range(2)]
    queue.episode_ended(np.array([False, True]))
    executed += [queue(obs)[:, 0].tolist() for _ in range(3)]
    # Env 0 runs actions 0, 1, 2 of chunk 0, then replans; env 1 replans after its episode.
    assert executed == [[0, 10], [1, 11], [2, 110], [200, 111], [201, 112]]
    assert len(plans) == 3


def test_chunks_repeat_the_last_action_at_episode_ends():
    actions = np.arange(5, dtype=np.float32)[:, None]
    chunks = chunk_targets(actions, np.array([3, 2]), 3)[..., 0]
    assert chunks.tolist() == [[0, 1, 2], [1, 2, 2], [2, 2, 2], [3, 4, 4], [4, 4, 4]]


def test_interrupted_pretraining_resumes_exactly_and_eval_reloads_it(
    tmp_path, contextual_dataset, monkeypatch, resume_check
):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(contextual_dataset))
    dataset = "probe/contextual-v0"
    interrupted = run_options(
        tmp_path, dataset, "interrupted", eval_every=1000, eval_episodes=8, checkpoint_every=1000
    )

    def checkpointed_at_1000_steps(run_dir):
        assert read_meta(run_dir)["progress"]["grad_steps"] == 1000

    checked = resume_check.pretrain(
        "flow", interrupted, FAST, small("flow"), 3, checkpointed_at_1000_steps
    )
    reference = checked.reference
    # The checkpoint rebuilds the policy on its own: the same evaluation as in training.
    final = rows(reference)[-1]
    _, result = evaluate_run(reference, 8, boundary_seed(0, 2**31 - 1))
    assert result["eval_return"] == pytest.approx(float(final["eval_return"]), abs=1e-6)

    with pytest.raises(CheckpointError, match="not 'gaussian'"):
        pretrain("gaussian", PretrainRun(resume=interrupted.out, progress=False), FAST)
    with pytest.raises(CheckpointError, match="--steps"):
        pretrain("flow", PretrainRun(resume=interrupted.out, steps=5000, progress=False), FAST)
    config = json.loads((interrupted.out / "config.json").read_text())
    assert config["dataset"]["id"] == dataset and config["env"]["obs_dim"] == 3


def test_eval_noise_scale_acts_as_a_run_saved_with_that_scale(
    tmp_path, contextual_dataset, monkeypatch, capsys, cli_error
):
    # The noise scale only chooses how the fitted policy acts: two runs that differ in it alone
    # hold the same weights, so evaluating one at the other's scale is the other's evaluation.
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(contextual_dataset))
    dataset, seed = "probe/contextual-v0", 7
    sampled = pretrain(
        "flow", run_options(tmp_path, dataset, "sampled", steps=500), FAST, small("flow")
    )
    zero = replace(FAST, noise_scale=0.0)
    planned = pretrain(
        "flow", run_options(tmp_path, dataset, "planned", steps=500), zero, small("flow")
    )
    _, reference = evaluate_run(planned, 8, seed)
    _, at_zero = evaluate_run(sampled, 8, seed, noise_scale=0.0)
    _, at_one = evaluate_run(sampled, 8, seed)
    assert at_zero["eval_return"] == pytest.approx(reference["eval_return"], abs=1e-6)
    assert abs(at_one["eval_return"] - reference["eval_return"]) > 1e-4

    main(["eval", str(sampled), "--noise-scale", "0", "--episodes", "8", "--seed", str(seed)])
    printed = capsys.readouterr().out
    assert float(printed.split("return ")[1].split()[0]) == pytest.approx(
        reference["eval_return"], abs=1e-3
    )
    assert "acting from zero noise" in printed
    refused = cli_error(["eval", str(sampled), "--noise-scale", "-1"])
    assert refused == "gprl: error: --noise-scale must be a non-negative number, got -1.0"


def test_resume_refuses_a_dataset_that_changed(tmp_path, monkeypatch):
    dataset = record("gprl/ContextualTarget-v0", "probe/changing-v0", contextual_expert, 50)
    options = run_options(tmp_path, dataset, "run", steps=500, eval_episodes=2)
    pretrain("gaussian", options, FAST, small("gaussian"))
    from gprl.datasets import dataset_path

    shutil.rmtree(dataset_path(dataset))
    record("gprl/ContextualTarget-v0", dataset, contextual_expert, 50, seed=1)
    with pytest.raises(DatasetError, match="changed since"):
        pretrain("gaussian", PretrainRun(resume=options.out, progress=False), FAST)


@pytest.fixture(scope="module")
def cue_runs(tmp_path_factory):
    """Gaussian BC on CueRecall seeing the last observation (1, and no moving average of the
    weights, as runs before it) or the last two (2, with the average, as by default)."""
    root = tmp_path_factory.mktemp("cue")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MINARI_DATASETS_PATH", str(root / "datasets"))
        dataset = record(CUE_RECALL, "probe/cue-v0", cue_expert, 200)
        runs = {}
        for history, ema_decay in ((1, None), (2, FAST.ema_decay)):
            config = replace(FAST, obs_history=history, ema_decay=ema_decay)
            options = run_options(root, dataset, f"history-{history}", steps=1000)
            runs[history] = pretrain("gaussian", options, config, small("gaussian"))
        yield runs


def test_observation_history_recalls_what_one_observation_cannot(cue_runs, tmp_path):
    assert float(rows(cue_runs[1])[-1]["eval_return"]) < -0.4
    assert float(rows(cue_runs[2])[-1]["eval_return"]) > -0.05
    # Collecting keeps each env's history across its episodes.
    collected = collect(CollectArgs(cue_runs[2], "probe/cue-bc-v0", episodes=12, num_envs=4))
    assert collected.mean_return > -0.05
    spec = make_env(CUE_RECALL, 1, 0).spec
    with pytest.raises(CheckpointError, match="--obs-history"):
        load_initial_policy("dppo", "required", cue_runs[2], CUE_RECALL, spec)


def test_the_kept_policy_is_the_moving_average_and_runs_without_one_still_load(cue_runs, tmp_path):
    def saved_fit(run_dir):
        payload = (run_dir / "checkpoint" / "state.msgpack").read_bytes()
        return serialization.msgpack_restore(payload)["fit"]

    averaged, acting = saved_fit(cue_runs[2]), load_pretrained(cue_runs[2]).acting["params"]
    jax.tree.map(np.testing.assert_array_equal, acting, averaged["ema_params"])
    leaves = zip(jax.tree.leaves(acting), jax.tree.leaves(averaged["params"]), strict=True)
    assert not all(np.array_equal(kept, latest) for kept, latest in leaves)
    # A run from before the average: no ema_decay in its configs, no average in its state.
    plain = shutil.copytree(cue_runs[1], tmp_path / "plain")
    for path in (plain / "config.json", plain / "checkpoint" / "config.json"):
        saved = json.loads(path.read_text())
        del saved["pretrain_config"]["ema_decay"]
        path.write_text(json.dumps(saved))
    acting = load_pretrained(plain).acting["params"]
    jax.tree.map(np.testing.assert_array_equal, acting, saved_fit(plain)["params"])


def test_an_observation_history_longer_than_an_episode_is_refused(tmp_path):
    dataset = record("gprl/ContextualTarget-v0", "probe/one-step-v0", contextual_expert, 5)
    options = run_options(tmp_path, dataset, "refused", steps=500)
    with pytest.raises(DatasetError, match="needs episodes of at least 2 steps"):
        pretrain("flow", options, replace(FAST, obs_history=2), small("flow"))
    assert not options.out.exists()


def test_action_queue_plans_from_the_last_observations_of_each_episode():
    plans = []

    def plan(obs, key):
        plans.append(obs.tolist())
        return np.zeros((2, 1, 1))

    queue = ActionQueue(plan, 2, 1, jax.random.PRNGKey(0), obs_history=3)
    for step in range(3):
        if step == 2:
            queue.episode_ended(np.array([False, True]))
        queue(np.array([[step], [10 + step]]))
    # Oldest first, an episode's first observation repeated before it.
    assert plans == [
        [[0, 0, 0], [10, 10, 10]],
        [[0, 0, 1], [10, 10, 11]],
        [[0, 1, 2], [12, 12, 12]],
    ]
