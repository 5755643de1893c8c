"""The replay buffer, the off-policy loop and SAC: probe tasks, masks, exact resume, bad input."""

import csv
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gprl import cli
from gprl.algos import SAC, SACConfig
from gprl.checkpoint import load_checkpoint, read_meta
from gprl.envs.diagnostics import contextual_target_optimum
from gprl.replay import (
    replay_add,
    replay_add_steps,
    replay_init,
    replay_prefill,
    replay_restart_episodes,
    replay_sample,
)
from gprl.trainer import RunConfig, load_run, train
from gprl.types import EnvSpec, Transition

FAST_SAC = SACConfig(
    actor_hidden=(64, 64),
    critic_hidden=(64, 64),
    batch_size=64,
    learning_starts=256,
    update_every=16,
    steps_per_iteration=128,
    actor_learning_rate=1e-3,
    critic_learning_rate=1e-3,
    alpha_learning_rate=1e-3,
)


def example_transition(obs_dim=2, action_dim=1) -> Transition:
    return Transition(
        obs=np.zeros(obs_dim, np.float32),
        action=np.zeros(action_dim, np.float32),
        reward=np.float32(0),
        terminated=np.bool_(False),
        truncated=np.bool_(False),
        next_obs=np.zeros(obs_dim, np.float32),
        extras={"noise": np.zeros(action_dim, np.float32)},
    )


def rows_with_rewards(rewards, obs_dim=2, action_dim=1) -> Transition:
    """Transitions whose reward (and first obs coordinate) identifies them."""
    rewards = np.asarray(rewards, np.float32)
    n = len(rewards)
    obs = np.repeat(rewards[:, None], obs_dim, axis=1)
    return Transition(
        obs=obs,
        action=np.zeros((n, action_dim), np.float32),
        reward=rewards,
        terminated=np.zeros(n, bool),
        truncated=np.zeros(n, bool),
        next_obs=obs + 0.5,
        extras={"noise": np.zeros((n, action_dim), np.float32)},
    )


def offline_dataset(rewards, obs_dim=2, action_dim=1) -> dict:
    rows = rows_with_rewards(rewards, obs_dim, action_dim)._asdict()
    del rows["extras"]
    return rows


# ----- replay buffer --------------------------------------------------------------------------


def test_buffer_wraps_around_overwriting_the_oldest_transitions():
    buffer = replay_init(example_transition(), online_capacity=5)
    add = jax.jit(replay_add)
    buffer = add(buffer, rows_with_rewards([1, 2, 3]))
    assert int(buffer.position) == 3 and int(buffer.online_size) == 3
    buffer = add(buffer, rows_with_rewards([4, 5, 6, 7]))
    assert int(buffer.position) == 2 and int(buffer.online_size) == 5
    # Slots 0 and 1 now hold 6 and 7; 3, 4, 5 survive; 1 and 2 are gone.
    np.testing.assert_array_equal(np.asarray(buffer.data.reward), [6, 7, 3, 4, 5])
    np.testing.assert_array_equal(np.asarray(buffer.data.next_obs)[:, 0], [6.5, 7.5, 3.5, 4.5, 5.5])
    with pytest.raises(ValueError, match="cannot add 6 transitions at once"):
        replay_add(buffer, rows_with_rewards(np.arange(6)))


def test_buffer_samples_only_stored_transitions_uniformly():
    buffer = replay_init(example_transition(), online_capacity=1000)
    buffer = replay_add(buffer, rows_with_rewards(np.arange(1, 11)))
    sample = jax.jit(replay_sample, static_argnums=(2, 3))(buffer, jax.random.PRNGKey(0), 5000)
    rewards = np.asarray(sample.reward)
    assert set(rewards) == set(range(1, 11))  # never an empty (zero) slot, every stored one
    counts = np.bincount(rewards.astype(int))[1:]
    assert counts.min() > 400 and counts.max() < 600  # 500 expected each
    # The rows stay whole: each sampled field comes from the same transition.
    np.testing.assert_array_equal(np.asarray(sample.obs)[:, 0], rewards)
    np.testing.assert_array_equal(np.asarray(sample.next_obs)[:, 1], rewards + 0.5)


def test_buffer_mixes_offline_and_online_data_at_the_requested_ratio():
    buffer = replay_init(example_transition(), online_capacity=100, offline_capacity=50)
    buffer = replay_prefill(buffer, offline_dataset(-np.arange(1, 41)))  # 40 offline rows < 0
    sample = jax.jit(replay_sample, static_argnums=(2, 3))
    key = jax.random.PRNGKey(1)

    only_offline = np.asarray(sample(buffer, key, 256, 0.25).reward)
    assert (only_offline < 0).all()  # no online data yet: every row from the dataset
    assert set(only_offline) <= set(-np.arange(1, 41.0))

    buffer = replay_add(buffer, rows_with_rewards(np.arange(1, 21)))  # 20 online rows > 0
    mixed = np.asarray(sample(buffer, key, 256, 0.25).reward)
    assert (mixed < 0).sum() == 64 and (mixed > 0).sum() == 192
    assert set(mixed[mixed > 0]) <= set(np.arange(1, 21.0))

    # Uniform over all 60 stored transitions: 2/3 offline.
    uniform = np.asarray(sample(buffer, key, 6000, None).reward)
    assert abs((uniform < 0).mean() - 40 / 60) < 0.03
    assert 0 not in uniform

    # The ring never overwrites the dataset.
    for start in range(0, 300, 50):
        buffer = replay_add(buffer, rows_with_rewards(np.arange(1000 + start, 1050 + start)))
    np.testing.assert_array_equal(np.asarray(buffer.data.reward[:40]), -np.arange(1, 41))


def env_steps(rewards, terminated, truncated) -> Transition:
    """(T, N) steps of N envs, rewards and ends given as (T, N) arrays."""
    rewards = np.asarray(rewards, np.float32)
    rows = rows_with_rewards(rewards.reshape(-1))
    steps = jax.tree.map(lambda x: x.reshape(*rewards.shape, *x.shape[1:]), rows)
    return steps._replace(
        terminated=np.asarray(terminated, bool), truncated=np.asarray(truncated, bool)
    )


def test_buffer_writes_each_terminated_episodes_discounted_return_to_go():
    buffer = replay_init(example_transition(), 64, return_discount=0.5, num_envs=2)
    add = jax.jit(replay_add_steps)
    # env 0: one episode of 5 steps across both calls, terminating with reward 8 on its last
    # (rewards 1, 0, 2, 0, 8); env 1: truncated after 2 steps, then an episode of 2 steps that
    # terminates (rewards 4, 2) and one still running.
    truncated = [[0, 0], [0, 1], [0, 0]]
    buffer = add(buffer, env_steps([[1, 3], [0, 5], [2, 4]], [[0, 0]] * 3, truncated))
    buffer = add(buffer, env_steps([[0, 2], [8, 7]], [[0, 1], [1, 0]], [[0, 0], [0, 0]]))
    returns = np.asarray(buffer.data.return_to_go)[:10]
    # Backwards from the termination: 8, 0 + 0.5 * 8, 2 + 0.5 * 4, 0 + 0.5 * 4, 1 + 0.5 * 2.
    np.testing.assert_allclose(returns[0::2], [2.0, 2.0, 4.0, 4.0, 8.0])
    np.testing.assert_allclose(returns[1::2], [-np.inf, -np.inf, 4 + 0.5 * 2, 2.0, -np.inf])


def test_buffer_gives_no_return_to_the_episodes_a_restart_of_the_envs_dropped():
    buffer = replay_init(example_transition(), 16, return_discount=1.0, num_envs=2)
    buffer = replay_add_steps(buffer, env_steps([[1, 2], [3, 4]], [[0, 0]] * 2, [[0, 0]] * 2))
    buffer = replay_restart_episodes(buffer)  # the loop restarts its envs (a checkpoint)
    buffer = replay_add_steps(buffer, env_steps([[5, 6], [7, 8]], [[0, 1], [1, 0]], [[0, 0]] * 2))
    returns = np.asarray(buffer.data.return_to_go)[:8]
    np.testing.assert_array_equal(returns, [-np.inf] * 4 + [12, 6, 7, -np.inf])


def test_buffer_returns_cover_only_the_rows_the_ring_still_holds():
    buffer = replay_init(example_transition(), 4, offline_capacity=1, return_discount=1.0)
    buffer = replay_prefill(buffer, offline_dataset([9.0]) | {"return_to_go": np.array([7.0])})
    for reward in range(1, 7):  # one episode of 6 steps, rewards 1..6, in a ring of 4
        done = [[reward == 6]]
        buffer = replay_add_steps(buffer, env_steps([[reward]], done, [[False]]))
    # Slots hold rewards 5, 6, 3, 4; each row's return sums its own and the later rewards.
    np.testing.assert_allclose(np.asarray(buffer.data.return_to_go), [7, 11, 6, 18, 15])
    with pytest.raises(ValueError, match="filled by replay_add_steps"):
        replay_add(buffer, rows_with_rewards([1.0]))


def test_buffer_prefill_rejects_a_malformed_dataset():
    buffer = replay_init(example_transition(), online_capacity=10, offline_capacity=5)
    dataset = offline_dataset(np.arange(1, 5))
    with pytest.raises(ValueError, match=r"lacks the fields \['truncated'\]"):
        replay_prefill(buffer, {k: v for k, v in dataset.items() if k != "truncated"})
    with pytest.raises(ValueError, match=r"'action' has shape \(4, 3\), expected \(4, 1\)"):
        replay_prefill(buffer, dataset | {"action": np.zeros((4, 3), np.float32)})
    with pytest.raises(ValueError, match="has 6 transitions, the buffer's offline region 5"):
        replay_prefill(buffer, offline_dataset(np.arange(6)))


# ----- SAC ------------------------------------------------------------------------------------


def test_sac_targets_bootstrap_truncations_and_stop_at_terminations():
    # Two states with reward 1: A terminates, B is cut by a time limit and leads back to B.
    # The TD target must give Q(A) = 1 and Q(B) = 1 / (1 - gamma) = 10.
    config = replace(
        FAST_SAC,
        gamma=0.9,
        tau=0.1,
        critic_learning_rate=3e-3,
        autotune_alpha=False,
        initial_alpha=1e-6,
    )
    spec = EnvSpec("probe", 1, 1, -np.ones(1, np.float32), np.ones(1, np.float32), None)
    sac = SAC(config, spec, num_envs=1, total_steps=10_000)
    obs = np.array([[-1.0], [1.0]], np.float32)
    batch = Transition(
        obs=obs,
        action=np.zeros((2, 1), np.float32),
        reward=np.ones(2, np.float32),
        terminated=np.array([True, False]),
        truncated=np.array([False, True]),
        next_obs=obs,
        extras={},
    )

    @jax.jit
    def train_on_batch(state, key):
        def step(state, key):
            return sac.update(state, batch, key)[0], None

        return jax.lax.scan(step, state, jax.random.split(key, 3000))[0]

    state = train_on_batch(sac.init(jax.random.PRNGKey(0)), jax.random.PRNGKey(1))
    q = np.asarray(sac.critic.apply(state["critic"], obs, np.zeros((2, 1), np.float32)))
    np.testing.assert_allclose(q[:, 0], 1.0, atol=0.1)
    np.testing.assert_allclose(q[:, 1], 10.0, atol=0.5)


def read_rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def contextual_target_run(tmp_path, backend: str) -> RunConfig:
    return RunConfig(
        env="gprl/ContextualTarget-v0",
        env_backend=backend,
        total_steps=2560,
        num_envs=4,
        out=tmp_path / backend,
        progress=False,
        eval_every=1280,
        eval_episodes=32,
    )


# On host envs with -m slow: the same algorithm code (test_cli_trains_sac... runs it on a host env).
@pytest.mark.parametrize("backend", [pytest.param("gymnasium", marks=pytest.mark.slow), "jax"])
def test_sac_reaches_the_optimum_of_a_contextual_task(tmp_path, backend):
    run_dir = train("sac", contextual_target_run(tmp_path, backend), FAST_SAC)
    assert read_meta(run_dir)["backend"] == backend
    evaluations = [float(r["eval_return"]) for r in read_rows(run_dir) if r["eval_return"]]
    assert evaluations[-1] > -0.05  # a = 0 earns about -0.46
    algo, state, _ = load_run(run_dir)
    contexts = np.random.default_rng(7).uniform(-1, 1, (256, 3)).astype(np.float32)
    actions = np.asarray(algo.act_deterministic(algo.acting_params(state), contexts))
    assert np.abs(actions - contextual_target_optimum(contexts)).mean() < 0.1


def test_sac_learns_the_bootstrapped_value_of_a_time_limited_task(tmp_path):
    # Reward 1 forever, cut at 10 steps, one observation: Q = 1 / (1 - 0.9) = 10 only if the
    # cut bootstraps. Treating it as a termination ends 1 in 10 targets at r = 1, so Q would
    # settle at 1 / (1 - 0.9 * 0.9) = 5.3.
    config = replace(FAST_SAC, gamma=0.9, tau=0.05, autotune_alpha=False, initial_alpha=1e-6)
    run = RunConfig(
        env="gprl/TruncationProbe-v0",
        total_steps=3072,
        num_envs=4,
        out=tmp_path / "run",
        progress=False,
        eval_every=0,
        eval_episodes=2,
    )
    rows = read_rows(train("sac", run, config))
    assert float(rows[-1]["critic/q_mean"]) == pytest.approx(10.0, abs=0.5)
    assert float(rows[-1]["critic/target_mean"]) == pytest.approx(10.0, abs=0.5)


def checkpoint_holds_768_steps_of_replay(run_dir):
    assert read_meta(run_dir)["progress"]["iteration"] == 6  # the checkpoint at 768 steps
    _, state, _ = load_run(run_dir)
    template = {"algo": state, "key": jax.random.PRNGKey(0)}
    template["replay"] = replay_init(example_transition(3, 2)._replace(extras={}), 1024)
    saved, _ = load_checkpoint(run_dir, template, {"algo": "sac"})
    assert int(saved["replay"].online_size) == 768
    assert np.abs(np.asarray(saved["replay"].data.obs[:768])).sum() > 0


# Host env state is resumed in test_trainer's and test_fql's default cases; here with -m slow.
@pytest.mark.parametrize("backend", [pytest.param("gymnasium", marks=pytest.mark.slow), "jax"])
def test_interrupted_sac_run_resumes_exactly_with_its_replay_buffer(
    tmp_path, backend, resume_check
):
    run = RunConfig(
        env="gprl/TwoGoalPoint-v0",
        env_backend=backend,
        total_steps=1024,
        num_envs=4,
        out=tmp_path / "interrupted",
        progress=False,
        eval_every=512,
        eval_episodes=4,
        checkpoint_every=384,
    )
    checked = resume_check.train("sac", run, FAST_SAC, 7, checkpoint_holds_768_steps_of_replay)
    assert len(checked.rows) == 8 and checked.rows[-1]["critic/loss"]


def one_step_returns_are_their_rewards(run_dir):
    _, state, _ = load_run(run_dir)
    template = {"algo": state, "key": jax.random.PRNGKey(0)}
    example = example_transition(3, 2)._replace(extras={})
    template["replay"] = replay_init(example, 512, return_discount=0.99, num_envs=4)
    saved, _ = load_checkpoint(run_dir, template, {"algo": "sac"})
    stored = int(saved["replay"].online_size)
    data = jax.tree.map(lambda x: np.asarray(x[:stored]), saved["replay"].data)
    assert stored == 384 and data.terminated.all()
    np.testing.assert_array_equal(data.return_to_go, data.reward)


def test_a_run_with_a_return_floor_tracks_returns_in_its_compiled_loop_and_resumes_exactly(
    tmp_path, resume_check
):
    # ContextualTarget's episodes are one step long: each stored row's return is its reward.
    run = replace(contextual_target_run(tmp_path, "jax"), total_steps=512, eval_every=0)
    run = replace(run, checkpoint_every=128, out=tmp_path / "floored")
    config = replace(FAST_SAC, return_floor=True)
    checked = resume_check.train("sac", run, config, 3, one_step_returns_are_their_rewards)
    # A one-step episode's TD target is its return: the floor, at the right rows, lifts none.
    floor_shares = [row["critic/return_floor_share"] for row in checked.rows[2:]]
    assert floor_shares and all(float(share) == 0.0 for share in floor_shares)


def test_cli_trains_sac_and_rejects_nonsense_in_one_line(tmp_path, cli_error, capsys):
    out = tmp_path / "cli-run"
    cli.main(
        [
            *("train", "sac", "--env", "gprl/ContextualTarget-v0", "--total-steps", "512"),
            *("--num-envs", "4", "--sac.learning-starts", "128", "--sac.batch-size", "32"),
            *("--sac.steps-per-iteration", "128"),
            *("--sac.actor-hidden", "16", "16", "--sac.critic-hidden", "16", "16"),
            *("--out", str(out), "--no-progress"),
        ]
    )
    assert "final deterministic eval return" in capsys.readouterr().out
    assert (out / "checkpoint" / "meta.json").exists()
    base = ["train", "sac", "--env", "gprl/ContextualTarget-v0", "--total-steps", "4096"]
    for args, message in [
        (["--sac.update-to-data", "-1"], "update_to_data must be positive, got -1.0"),
        (["--sac.batch-size", "0"], "batch_size must be at least 1, got 0"),
        (["--sac.learning-starts", "5000"], "learning_starts (5000) must be below total_steps"),
        (["--sac.update-to-data", "0.3"], "gradient steps per call; it must be a whole number"),
        (["--sac.tau", "2"], "tau must be in [0, 1], got 2.0"),
    ]:
        assert message in cli_error([*base, *args, "--out", str(tmp_path / "bad")]), args
    assert not (tmp_path / "bad").exists()


def test_a_compiled_update_call_runs_every_gradient_step_of_the_interval():
    from gprl.backends import make_collector, open_environments
    from gprl.loops import OffPolicyLoop

    envs = open_environments("gprl/ContextualTarget-v0", "jax", 4, 2, 0, 1)
    config = replace(FAST_SAC, learning_starts=0, update_to_data=2.0, steps_per_iteration=64)
    algo = SAC(config, envs.spec, 4, 640)
    updates = []
    real_update = algo.update

    def counting_update(state, batch, key):
        updates.append(batch.reward.shape)
        return real_update(state, batch, key)

    algo.update = counting_update
    loop = OffPolicyLoop(algo, lambda act: make_collector(envs, act))
    loop.reset(0)
    state, key = algo.init(jax.random.PRNGKey(0)), jax.random.PRNGKey(1)
    for _ in range(3):
        state, key, metrics, *_ = loop.iterate(state, key)
    # Traced once (one scan body) for the whole run; 2 x 16 gradient steps per call, 4 calls
    # per iteration, each moving the critics.
    assert updates == [(64,)]
    assert algo.schedule.gradient_steps == 32 and algo.schedule.calls_per_iteration == 4
    assert int(state["iteration"]) == 3 and int(loop.replay.online_size) == 192
    assert np.isfinite(metrics["critic/loss"])
    assert jnp.abs(loop.replay.data.reward[:192]).min() > 0  # every stored reward is real


def test_the_loop_prefills_an_offline_dataset_and_keeps_it_while_learning_online():
    from gprl.backends import make_collector, open_environments
    from gprl.loops import OffPolicyLoop

    envs = open_environments("gprl/ContextualTarget-v0", "jax", 4, 2, 0, 1)
    config = replace(FAST_SAC, learning_starts=0, offline_fraction=0.5, steps_per_iteration=64)
    algo = SAC(config, envs.spec, 4, 256)
    rng = np.random.default_rng(0)
    obs = rng.uniform(-1, 1, (300, 3)).astype(np.float32)
    dataset = {
        "obs": obs,
        "action": rng.uniform(-1, 1, (300, 2)).astype(np.float32),
        "reward": np.full(300, 7.0, np.float32),  # no online reward is positive
        "terminated": np.ones(300, bool),
        "truncated": np.zeros(300, bool),
        "next_obs": obs,
    }
    loop = OffPolicyLoop(algo, lambda act: make_collector(envs, act), offline_data=dataset)
    loop.reset(0)
    state, key = algo.init(jax.random.PRNGKey(0)), jax.random.PRNGKey(1)
    for _ in range(4):
        state, key, metrics, *_ = loop.iterate(state, key)
    replay = loop.checkpoint_state()["replay"]
    assert int(replay.offline_size) == 300 and int(replay.online_size) == 256
    np.testing.assert_array_equal(np.asarray(replay.data.reward[:300]), 7.0)
    assert (np.asarray(replay.data.reward[300:]) <= 0).all()
    # Half of every batch has reward 7 and the other half about -0.5: the critics' mean
    # prediction sits between, far from what online data alone would give.
    assert 2.0 < metrics["critic/q_mean"] < 5.0


def test_a_prefilled_buffer_needs_no_budget_beyond_learning_starts():
    # The example of the help: 5000 env steps with the default learning_starts of 5000 leave no
    # update to a run that explores first, but a dataset in the buffer means no exploration.
    from gprl.algos import FQL, FQLConfig
    from gprl.backends import make_collector, open_environments
    from gprl.loops import OffPolicyLoop

    envs = open_environments("gprl/ContextualTarget-v0", "jax", 1, 2, 0, 1)
    dataset = offline_dataset(np.zeros(64), obs_dim=3, action_dim=2)

    def loop(algo, data):
        return OffPolicyLoop(algo, lambda act: make_collector(envs, act), offline_data=data)

    with pytest.raises(ValueError, match=r"learning_starts \(5000\) must be below total_steps"):
        loop(SAC(SACConfig(), envs.spec, 1, 5000), None)
    assert loop(SAC(SACConfig(), envs.spec, 1, 5000), dataset).warmup_calls == 0
    fql = FQL(FQLConfig(offline_updates=1000), envs.spec, 1, 5000)
    assert loop(fql, dataset).warmup_calls == 0 and fql.num_iterations == 6


def warmup_replay(explore_hold: int) -> Transition:
    """The replay after 200 vector steps of warm-up on TwoGoalPoint (16 envs, 2 per call)."""
    from gprl.backends import make_collector, open_environments
    from gprl.loops import OffPolicyLoop

    envs = open_environments("gprl/TwoGoalPoint-v0", "jax", 16, 2, 0, 1)
    config = replace(
        FAST_SAC,
        learning_starts=3200,
        update_every=32,
        steps_per_iteration=3200,
        explore_hold=explore_hold,
    )
    algo = SAC(config, envs.spec, 16, 6400)
    loop = OffPolicyLoop(algo, lambda act: make_collector(envs, act))
    loop.reset(0)
    loop.iterate(algo.init(jax.random.PRNGKey(0)), jax.random.PRNGKey(1))
    return jax.tree.map(lambda x: np.asarray(x[:3200]), loop.replay.data)


def test_held_warmup_draws_repeat_for_their_steps_and_reach_far_goals():
    fresh, held = warmup_replay(1), warmup_replay(8)
    actions = held.action.reshape(25, 8, 16, 2)
    np.testing.assert_array_equal(actions, np.broadcast_to(actions[:, :1], actions.shape))
    assert (np.abs(np.diff(actions[:, 0], axis=0)) > 1e-3).all(axis=-1).mean() > 0.95
    steps = fresh.action.reshape(200, 16, 2)
    assert (np.abs(np.diff(steps, axis=0)) > 1e-3).all(axis=-1).mean() > 0.95

    # i.i.d. draws wander ~sqrt(25) x 0.06 ~ 0.3 in an episode; the goals sit at x = +-0.7.
    def far_share(replay):
        return (np.abs(replay.next_obs[:, 0]) > 0.4).mean()

    assert far_share(held) > 4 * far_share(fresh)
    assert (held.reward > 0.5).sum() > 2 * (fresh.reward > 0.5).sum()
