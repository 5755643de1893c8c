"""Q-chunking (QC, QC-FQL): a dataset's steps windowed into decisions as chunked envs execute
them, a probe task that only a chunk planned from the first observation solves, learnt offline
then online, the algorithm's own chunk length against --init, QC on a pretrained chunked policy
of any kind, and exact resume."""

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_chunked_finetune import CHUNK_SPEC, random_chunked_policy
from test_fql import Interrupted, interrupt_at, offline_run, read_rows, rows_without_timing
from test_pretrain import CUE_RECALL

from gprl import initial_policy
from gprl.algos import QC, QCConfig, QCFQLConfig
from gprl.algos.fql import EVALUATION_NOISE_SEED
from gprl.checkpoint import read_meta
from gprl.dataset_writer import write_dataset
from gprl.datasets import DatasetError, Demonstrations, Episode
from gprl.decision_data import as_run_sees, decision_transitions
from gprl.envs.chunked import Chunking, chunked_spec
from gprl.initial_policy import chunk_options, run_chunking
from gprl.networks import CustomNetworks
from gprl.policies import FlowPolicyConfig
from gprl.pretrain import PretrainRun, pretrain
from gprl.pretrained import PretrainConfig
from gprl.trainer import RunConfig, load_run, train
from gprl.types import EnvSpec, Transition

# Two steps: the first observation shows a cue c = +-1, the second hides it, and only the second
# step is rewarded, -(a - 0.8 c)^2, which ends the episode. A chunk of both actions planned from
# the first observation earns 0 with (anything, 0.8 c); a policy of single actions cannot tell c
# at the second step (its best, a = 0, earns -0.64).
CUE = CUE_RECALL
SPEC = EnvSpec(CUE, 2, 1, -np.ones(1, np.float32), np.ones(1, np.float32), 2)
GOOD, BAD = 0.8, -0.8


pytestmark = pytest.mark.usefixtures("minari_root")


def cue_dataset(dataset_id: str, episodes: int = 200, seed: int = 0) -> str:
    """Episodes whose first action is uniform noise and whose second is, half the time, the
    good 0.8 c (reward 0), else its mirror -0.8 c (reward -2.56)."""
    rng = np.random.default_rng(seed)
    recorded = []
    for _ in range(episodes):
        cue = rng.choice([-1.0, 1.0])
        second = cue * (GOOD if rng.random() < 0.5 else BAD)
        recorded.append(
            Episode(
                observations=np.array([[cue, 0.0], [0.0, 1.0], [0.0, 1.0]], np.float32),
                actions=np.array([[rng.uniform(-1, 1)], [second]], np.float32),
                rewards=np.array([0.0, -((second - GOOD * cue) ** 2)]),
                terminations=np.array([False, True]),
                truncations=np.array([False, False]),
            )
        )
    write_dataset(dataset_id, recorded, SPEC, "half good, half mirrored", "scripted")
    return dataset_id


def probe_demonstrations(episodes) -> Demonstrations:
    """Demonstrations of (length, ended by termination) episodes: observation [100 e + p] at
    position p of episode e, action 10 e + p and reward 10^e (p + 1) at its step p."""
    obs, actions, rewards, terminations, truncations, next_obs = ([] for _ in range(6))
    for number, (length, terminates) in enumerate(episodes):
        positions = np.arange(length, dtype=np.float32)
        obs.append(100 * number + positions)
        next_obs.append(100 * number + positions + 1)
        actions.append(10 * number + positions)
        rewards.append(10.0**number * (positions + 1))
        terminations.append(np.arange(length) == length - 1 if terminates else np.zeros(length))
        truncations.append(np.arange(length) == length - 1 if not terminates else np.zeros(length))
    column = [np.concatenate(x).astype(np.float32)[:, None] for x in (obs, actions, next_obs)]
    flags = [np.concatenate(x).astype(bool) for x in (terminations, truncations)]
    return Demonstrations(
        "probe/windows-v0", None, column[0], column[1], np.array([e[0] for e in episodes]),
        np.zeros(len(episodes)), np.concatenate(rewards).astype(np.float32), flags[0], flags[1],
        column[2], -np.ones(1), np.ones(1), "",
    )  # fmt: skip


def test_dataset_steps_are_windowed_into_decisions_as_chunked_envs_execute_them():
    # Episode 0: 5 steps cut by a time limit; episode 1: 3 steps, then terminal; episode 2: one
    # step, cut. Chunks of 3 actions, 2 executed, 2 observations, discount 0.5.
    demos = probe_demonstrations([(5, False), (3, True), (1, False)])
    windows = decision_transitions(demos, Chunking(3, 2, obs_history=2, discount=0.5))
    # Windows start at every step that has 2 steps left or terminates sooner: 0-3 of episode 0
    # (step 4 would run past the time limit), all of episode 1 (steps 5-7), none of episode 2.
    np.testing.assert_array_equal(
        windows["obs"], [[0, 0], [0, 1], [1, 2], [2, 3], [100, 100], [100, 101], [101, 102]]
    )
    # Three actions from each start; past an episode's end its last action is repeated.
    np.testing.assert_array_equal(
        windows["action"],
        [[0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 4], [10, 11, 12], [11, 12, 12], [12, 12, 12]],
    )
    # r_t + 0.5 r_{t+1} over the executed steps; the last window of episode 1 executes one.
    np.testing.assert_array_equal(windows["reward"], [2, 3.5, 5, 6.5, 20, 35, 30])
    np.testing.assert_array_equal(windows["terminated"], [0, 0, 0, 0, 0, 1, 1])
    np.testing.assert_array_equal(windows["truncated"], [0, 0, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(
        windows["next_obs"], [[1, 2], [2, 3], [3, 4], [4, 5], [101, 102], [102, 103], [102, 103]]
    )
    # The discounted return from each start to the termination; none for the episode cut short.
    inf = np.inf
    np.testing.assert_array_equal(windows["return_to_go"], [-inf] * 4 + [27.5, 35, 30])
    unchunked = decision_transitions(demos, None, discount=0.5)["return_to_go"]
    np.testing.assert_array_equal(unchunked, [-inf] * 5 + [27.5, 35, 30, -inf])

    short = probe_demonstrations([(1, False), (1, False)])
    with pytest.raises(DatasetError, match="no episode of 2 steps, the actions a chunk executes"):
        decision_transitions(short, Chunking(3, 2))


def test_recorded_successes_become_the_runs_rewards_and_terminal_steps():
    # Episode 0: 5 steps cut by a time limit, successful at steps 1 and 2; episode 1: 3 steps,
    # then terminal, never successful.
    demos = probe_demonstrations([(5, False), (3, True)])
    with pytest.raises(DatasetError, match="records no success on its steps"):
        as_run_sees(demos, None, sparse_reward=True, end_on_success=False)
    demos = demos._replace(step_successes=np.array([0, 1, 1, 0, 0, 0, 0, 0], bool))
    sparse = as_run_sees(demos, None, sparse_reward=True, end_on_success=False)
    np.testing.assert_array_equal(sparse.rewards, [0, 1, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(sparse.episode_returns, [2, 0])
    np.testing.assert_array_equal(sparse.terminations, demos.terminations)
    # Ending on success: OGBench's single tasks do it by themselves (as FQL's masks).
    ended = as_run_sees(demos, "ogbench:cube-single-play-singletask-task2-v0", False, False)
    np.testing.assert_array_equal(ended.rewards, demos.rewards)
    np.testing.assert_array_equal(ended.transitions()["terminated"], [0, 1, 1, 0, 0, 0, 0, 1])
    # A decision stops at the first terminal step it reaches, mid-episode too (compare the
    # windows of the same episodes in the test above: rewards 2, 3.5, 5 without the successes).
    windows = decision_transitions(ended, Chunking(3, 2, obs_history=1, discount=0.5))
    np.testing.assert_array_equal(windows["reward"], [2, 2, 3, 6.5, 20, 35, 30])
    np.testing.assert_array_equal(windows["terminated"], [1, 1, 1, 0, 0, 1, 1])
    np.testing.assert_array_equal(windows["next_obs"], [[2], [2], [3], [5], [102], [103], [103]])
    # Returns end at the first terminal step too.
    np.testing.assert_array_equal(windows["return_to_go"], [2, 2, 3, -np.inf, 27.5, 35, 30])


def test_an_algorithm_of_its_own_chunk_length_refuses_an_init_that_predicts_other_chunks():
    config = QCConfig(chunk_length=2, gamma=0.9)
    assert run_chunking(QC, config) == Chunking(2, 2, 1, 0.9)
    assert run_chunking(QC, replace(config, chunk_length=1)) is None
    assert run_chunking(QC, config, PretrainConfig(chunk_length=2, execute_steps=2)) == Chunking(
        2, 2, 1, 0.9
    )
    for other in (PretrainConfig(), PretrainConfig(chunk_length=4, execute_steps=2)):
        with pytest.raises(ValueError, match="this method acts in whole chunks of 2"):
            run_chunking(QC, config, other)
    with pytest.raises(ValueError, match="chunk_length must be at least 1, got 0"):
        run_chunking(QC, replace(config, chunk_length=0))


def test_bad_chunked_input_is_refused_in_one_line_with_nothing_written(tmp_path, cli_error):
    short = Episode(np.zeros((2, 2)), np.zeros((1, 1)), np.zeros(1), np.zeros(1), np.ones(1))
    write_dataset("probe/short-v0", [short] * 3, SPEC, "one step each, cut", "scripted")
    out = tmp_path / "run"
    base = ["train", "qc", "--env", CUE, "--qc.chunk-length", "2", "--out", str(out)]
    for extra, message in (
        (["--dataset", "probe/short-v0"], "has no episode of 2 steps, the actions a chunk"),
        (["--qc.num-samples", "0"], "num_samples must be at least 1, got 0"),
        (["--qc.imitate-returns-above", "nan"], "imitate_returns_above must be finite or None"),
        (["--qc.chunk-length", "0"], "chunk_length must be at least 1, got 0"),
        (["--qc.chunk-length", "3"], "truncates episodes at 2 steps, not a multiple of the 3"),
    ):
        assert message in cli_error([*base, *extra])
    assert not out.exists()


SMALL = (64, 64)
# An iteration: 32 env steps, 16 decisions of 4 envs, 8 gradient steps per decision.
FAST = dict(
    chunk_length=2,
    flow=FlowPolicyConfig(hidden=SMALL, num_steps=4),
    critic_hidden=SMALL,
    batch_size=64,
    learning_rate=1e-3,
    update_every=8,
    update_to_data=8,
    steps_per_iteration=32,
    offline_updates=256,
)
FAST_QC = QCConfig(num_samples=8, **FAST)
FAST_QC_FQL = QCFQLConfig(actor_hidden=SMALL, alpha=0.1, **FAST)


def cue_run(tmp_path, name, dataset, **overrides) -> RunConfig:
    fields = dict(env=CUE, total_steps=32, eval_episodes=16)
    return offline_run(tmp_path, name, dataset, **(fields | overrides))


@pytest.mark.parametrize(("algo", "config"), [("qc", FAST_QC), ("qc-fql", FAST_QC_FQL)])
def test_offline_qc_plans_the_chunk_that_only_the_first_observation_reveals(tmp_path, algo, config):
    dataset = cue_dataset(f"probe/cue-{algo}-v0")
    run_dir = train(algo, cue_run(tmp_path, algo, dataset), config)
    rows = read_rows(run_dir)
    offline = [r for r in rows if int(r["env_steps"]) == 0]
    # 256 gradient steps in iterations of 16 decisions x 8, before the first env step.
    assert len(offline) == 2 and offline[-1]["offline_updates"] == "256"
    # Optimal 0; the dataset's chunks earn -1.28 on average, their mean chunk -0.64.
    assert float(offline[-1]["eval_return"]) > -0.1
    # Online: env steps counted, two per decision.
    assert rows[-1]["env_steps"] == "32" and float(rows[-1]["eval_return"]) > -0.1
    # `gprl eval` opens the run's envs as it trained: chunks of 2 executed whole.
    assert chunk_options(run_dir)["chunking"] == Chunking(2, 2, 1, config.gamma)


def test_a_flow_imitating_only_returns_above_a_threshold_plans_the_good_chunks(tmp_path):
    # The dataset's episodes with the mirrored second action return -2.56 gamma at their first
    # step: above -1 are only the good ones. One sample per decision, so QC acts with its BC
    # flow alone; imitating every episode, 0.22 of its chunks were good here.
    config = replace(FAST_QC, num_samples=1, imitate_returns_above=-1.0)
    run_dir = train("qc", cue_run(tmp_path, "filtered", cue_dataset("probe/cue-filter-v0")), config)
    offline = [r for r in read_rows(run_dir) if int(r["env_steps"]) == 0]
    assert abs(float(offline[-1]["flow/imitated_share"]) - 0.5) < 0.1
    algo, state, _ = load_run(run_dir)
    cues = np.repeat([[1.0, 0.0], [-1.0, 0.0]], 256, axis=0).astype(np.float32)
    chunks, _ = algo.act(algo.acting_params(state), jnp.asarray(cues), jax.random.PRNGKey(0))
    second = np.asarray(chunks).reshape(len(cues), -1)[:, 1]
    assert np.mean(np.abs(second - GOOD * cues[:, 0]) < 0.3) > 0.9


@pytest.mark.slow
@pytest.mark.parametrize("on_pretrained", [False, True])
def test_a_qc_run_interrupted_offline_then_online_resumes_exactly(tmp_path, on_pretrained):
    # 4 offline iterations of 32 gradient steps, then 4 online ones of 32 env steps; the clock
    # (env steps + offline updates) checkpoints at 64 (iteration 2), at the end of the offline
    # phase (4) and at 192 (6). Interrupted at 3, the run resumes from the offline phase into
    # the online one; interrupted at 7, from within the online phase.
    config = replace(FAST_QC, update_to_data=2, offline_updates=128)
    dataset = cue_dataset("probe/cue-resume-v0", episodes=50)
    init = pretrained_cue_flow(tmp_path, dataset, steps=100) if on_pretrained else None
    run = cue_run(
        tmp_path, "run", dataset, total_steps=128, eval_every=96, checkpoint_every=64, init=init
    )
    reference = train("qc", replace(run, out=tmp_path / "uninterrupted"), config)
    resume = RunConfig(resume=run.out, progress=False)
    for start, stop_at, resumed_from in ((run, 3, 2), (resume, 7, 6)):
        with pytest.raises(Interrupted):
            train("qc", start, config, on_iteration=interrupt_at(stop_at))
        assert read_meta(run.out)["progress"]["iteration"] == resumed_from
    train("qc", resume, config)
    rows = rows_without_timing(reference)
    assert rows_without_timing(run.out) == rows
    # With --init, a first row (iteration 0) evaluates the run before its first update.
    offline = 5 if on_pretrained else 4
    assert [r["env_steps"] for r in rows] == ["0"] * offline + ["32", "64", "96", "128"]


WHOLE_CHUNKS = PretrainConfig(chunk_length=2, execute_steps=2)


def pretrained_cue_flow(tmp_path, dataset: str, steps: int = 1000):
    """A flow of whole chunks of 2 fitted to the dataset by `gprl pretrain`: its run directory."""
    options = PretrainRun(
        dataset=dataset, steps=steps, out=tmp_path / "base", progress=False, eval_every=0
    )
    fitted = replace(WHOLE_CHUNKS, learning_rate=1e-3, log_every=100)
    return pretrain("flow", options, fitted, FlowPolicyConfig(hidden=SMALL, num_steps=4))


def qc_on_random_policy(kind: str, config=FAST_QC):
    """QC on an untrained policy of whole chunks of 2 actions, with observation and action
    maps, as the run sees it; and that policy."""
    pretrained = random_chunked_policy(kind, WHOLE_CHUNKS)
    spec = chunked_spec(CHUNK_SPEC, initial_policy.chunking_of(pretrained.config, 0.9))
    flat = initial_policy.flat_chunk_policy(pretrained)
    return QC(replace(config, num_samples=1), spec, 4, 20_000, pretrained=flat), pretrained


@pytest.mark.parametrize("kind", ["flow", "ddpm"])
def test_a_pretrained_base_decides_from_qcs_noise_and_learns_by_its_own_loss(kind):
    algo, pretrained = qc_on_random_policy(kind)
    state = algo.init(jax.random.PRNGKey(0))
    start = pretrained.acting["params"]
    jax.tree.map(np.testing.assert_array_equal, state["params"]["flow"], start)
    # The critics see what the base sees: observations standardised with its statistics.
    np.testing.assert_array_equal(state["obs_norm"]["mean"], [0.5, -1.0, 0.0])
    obs = jax.random.normal(jax.random.PRNGKey(1), (8, 3))
    decided = algo.act_deterministic(algo.acting_params(state), obs)
    noise = jax.random.normal(jax.random.PRNGKey(EVALUATION_NOISE_SEED), (1, 4))
    chunk = pretrained.policy.plan_from_noise(pretrained.acting, obs, jnp.repeat(noise, 8, 0))
    np.testing.assert_allclose(np.asarray(decided), np.asarray(chunk).reshape(8, 4), atol=1e-5)

    rng = np.random.default_rng(0)
    batch = Transition(
        obs=rng.normal(size=(64, 3)).astype(np.float32),
        action=np.full((64, 4), 0.5, np.float32), reward=np.zeros(64, np.float32),
        next_obs=rng.normal(size=(64, 3)).astype(np.float32),
        terminated=np.zeros(64, bool), truncated=np.zeros(64, bool), extras={},
    )  # fmt: skip
    updated, info = jax.jit(algo.update)(state, batch, jax.random.PRNGKey(2))
    assert np.isfinite(info["flow/loss"]) and np.isfinite(info["critic/loss"])
    moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), updated["params"]["flow"],
                         state["params"]["flow"])  # fmt: skip
    assert max(jax.tree.leaves(moved)) > 0


def test_qc_decides_among_the_chunks_of_given_noises_by_its_critics():
    algo, pretrained = qc_on_random_policy("flow")
    state = algo.init(jax.random.PRNGKey(0))
    acting = algo.acting_params(state)
    obs = jax.random.normal(jax.random.PRNGKey(1), (8, 3))
    noise = jax.random.normal(jax.random.PRNGKey(2), (5, 4))
    candidates = np.stack([
        np.asarray(pretrained.policy.plan_from_noise(pretrained.acting, obs, jnp.tile(n, (8, 1))))
        .reshape(8, 4) for n in noise
    ], axis=1)  # fmt: skip
    decided = np.asarray(algo.act_from_noise(acting, obs, jnp.broadcast_to(noise, (8, 5, 4))))
    picked = np.abs(candidates - decided[:, None]).max(-1).argmin(-1)
    np.testing.assert_allclose(decided, candidates[np.arange(8), picked], atol=1e-5)
    assert len(set(picked)) > 1  # the critics' choice depends on the observation
    # One noise: the flow's own chunk, whatever critics decide with.
    negated = jax.tree.map(jnp.negative, acting["policy"]["critic"])
    other = acting | {"policy": acting["policy"] | {"critic": negated}}
    for params in (acting, other):
        alone = algo.act_from_noise(params, obs, jnp.broadcast_to(noise[:1], (8, 1, 4)))
        np.testing.assert_allclose(np.asarray(alone), candidates[:, 0], atol=1e-5)
    evaluation = algo.act_from_noise(acting, obs, algo.evaluation_noise((8,)))
    np.testing.assert_array_equal(evaluation, algo.act_deterministic(acting, obs))


def test_a_pretrained_base_qc_cannot_use_is_refused_in_one_line():
    with pytest.raises(ValueError, match="weights a flow's imitation loss; --init holds a 'ddpm'"):
        qc_on_random_policy("ddpm", replace(FAST_QC, imitate_returns_above=0.0))
    pretrained = initial_policy.flat_chunk_policy(random_chunked_policy("flow", WHOLE_CHUNKS))
    spec = chunked_spec(CHUNK_SPEC, initial_policy.chunking_of(WHOLE_CHUNKS, 0.9))
    velocity = CustomNetworks(velocity=lambda x: x)
    with pytest.raises(ValueError, match="qc with --init has no velocity network to replace"):
        QC(FAST_QC, spec, 4, 20_000, pretrained=pretrained, networks=velocity)
    with pytest.raises(ValueError, match="--init decides 4 action values at once; this run's "):
        QC(FAST_QC, CHUNK_SPEC, 4, 20_000, pretrained=pretrained)


@pytest.mark.slow
def test_qc_on_a_pretrained_flow_plans_the_good_chunk_its_base_samples_half_the_time(tmp_path):
    dataset = cue_dataset("probe/cue-init-v0")
    base = pretrained_cue_flow(tmp_path, dataset)
    run_dir = train("qc", cue_run(tmp_path, "qc", dataset, init=base), FAST_QC)
    offline = [r for r in read_rows(run_dir) if int(r["env_steps"]) == 0]
    # Optimal 0; the base imitates both halves of the data.
    assert float(offline[-1]["eval_return"]) > -0.1
    algo, state, _ = load_run(run_dir)
    cues = np.repeat([[1.0, 0.0], [-1.0, 0.0]], 256, axis=0).astype(np.float32)
    noise = jax.random.normal(jax.random.PRNGKey(0), (len(cues), 2))
    acting = algo.acting_params(state)
    obs = algo._standardised(acting["obs_norm"], jnp.asarray(cues))
    sampled = np.asarray(algo.flow.sample(acting["policy"]["flow"], obs, noise))[:, 1]
    good = np.mean(np.abs(sampled - GOOD * cues[:, 0]) < 0.3)
    assert 0.2 < good < 0.8, good  # the base alone: either half
