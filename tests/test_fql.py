"""FQL, and offline datasets fed to off-policy training: offline learning on a probe task with
a known answer, the offline phase, exact resume across the offline -> online boundary, bad
input."""

import csv
import hashlib
import shutil
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gprl.algos import FQL, FQLConfig, SACConfig
from gprl.checkpoint import CheckpointError, read_meta
from gprl.configs import from_jsonable, to_jsonable
from gprl.dataset_writer import write_dataset
from gprl.datasets import Episode, dataset_path
from gprl.envs.diagnostics import contextual_target_optimum
from gprl.policies import FlowPolicyConfig
from gprl.trainer import RunConfig, load_run, train
from gprl.types import EnvSpec, Transition

ENV = "gprl/ContextualTarget-v0"
SPEC = EnvSpec(ENV, 3, 2, -np.ones(2, np.float32), np.ones(2, np.float32), 1)
SMALL = (64, 64)
FAST_FQL = FQLConfig(
    flow=FlowPolicyConfig(hidden=SMALL, activation="gelu"),
    actor_hidden=SMALL,
    critic_hidden=SMALL,
    activation="gelu",  # the reference's: a smoother critic for the actor to climb
    batch_size=128,
    learning_starts=64,
    update_every=16,
    steps_per_iteration=64,
    learning_rate=1e-3,
    alpha=0.1,
)


# Every test here writes its datasets to a fresh folder (conftest.minari_root).
pytestmark = pytest.mark.usefixtures("minari_root")


def mixed_dataset(dataset_id: str, episodes: int = 600, seed: int = 0, env=ENV) -> str:
    """One-step ContextualTarget episodes: half take the optimal action a*(c) (reward 0), half
    its mirror image -a*(c) (reward -4 |a*|^2, about -1.8 on average)."""
    rng = np.random.default_rng(seed)
    contexts = rng.uniform(-1, 1, (episodes, 3)).astype(np.float32)
    optimum = contextual_target_optimum(contexts)
    actions = np.where(rng.random((episodes, 1)) < 0.5, optimum, -optimum)
    rewards = -np.sum((actions - optimum) ** 2, axis=1)
    recorded = [
        Episode(
            observations=np.stack([c, c]),
            actions=a[None],
            rewards=np.array([r]),
            terminations=np.array([True]),
            truncations=np.array([False]),
        )
        for c, a, r in zip(contexts, actions, rewards, strict=True)
    ]
    write_dataset(dataset_id, recorded, replace(SPEC, env_id=env), "mixed", "test")
    return dataset_id


def files_digest(folder):
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def read_rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def offline_run(tmp_path, name, dataset, **overrides) -> RunConfig:
    fields = dict(
        env=ENV,
        dataset=dataset,
        total_steps=128,
        num_envs=4,
        out=tmp_path / name,
        progress=False,
        eval_every=0,
        eval_episodes=64,
    )
    return RunConfig(**(fields | overrides))


def imitated_error(config: FQLConfig, obs, optimum, updates: int = 600) -> tuple[float, dict]:
    """Mean squared error of FQL's evaluation actions after `updates` gradient steps on a dataset
    of optimal actions alone (no reward to climb: the one-step policy distils the BC flow), and
    the observation statistics it kept (predicting 0 everywhere errs by 0.24). At 600 updates
    the standardised run errs by 0.005, the raw one by 0.26 (2026-12-05)."""
    algo = FQL(config, SPEC, num_envs=1, total_steps=4096)
    zeros = np.zeros(len(obs), np.float32)
    data = jax.tree.map(
        jnp.asarray, Transition(obs, optimum, zeros, zeros > -1, zeros > 0, obs, {})
    )
    state = algo.with_offline_data(algo.init(jax.random.PRNGKey(0)), data._asdict())

    def gradient_step(state, key):
        rows = jax.random.randint(key, (config.batch_size,), 0, len(obs))
        return algo.update(state, jax.tree.map(lambda x: x[rows], data), key)

    state, _ = jax.jit(lambda s, k: jax.lax.scan(gradient_step, s, jax.random.split(k, updates)))(
        state, jax.random.PRNGKey(1)
    )
    acted = algo.act_deterministic(algo.acting_params(state), obs)
    return float(np.mean((np.asarray(acted) - optimum) ** 2)), state["obs_norm"]


def test_fql_standardises_observations_with_its_dataset_statistics():
    # ContextualTarget's contexts as a sensor might report them: a large offset and a spread of
    # centimetres (Meta-World reports positions in metres).
    contexts = np.random.default_rng(0).uniform(-1, 1, (1024, 3)).astype(np.float32)
    obs = 50.0 + 0.01 * contexts
    optimum = contextual_target_optimum(contexts)
    # A large alpha: with no reward the critics are flat, and the one-step policy should
    # distil the BC flow rather than climb their noise.
    config = replace(FAST_FQL, alpha=100.0)
    standardised, statistics = imitated_error(config, obs, optimum)
    raw, _ = imitated_error(replace(config, normalize_observations=False), obs, optimum)
    np.testing.assert_allclose(statistics["mean"], obs.mean(0), rtol=1e-5)
    np.testing.assert_allclose(statistics["var"], obs.var(0), rtol=1e-2)
    assert standardised < 0.01 and raw > 0.1, (standardised, raw)
    # A run saved before the option existed saw raw observations and resumes on them.
    saved = to_jsonable(config)
    del saved["normalize_observations"]
    assert not from_jsonable(FQLConfig, saved).normalize_observations


def chain_values(length: int = 40, gamma: float = 0.99, updates: int = 500):
    """FQL's critic after `updates` gradient steps on one recorded episode of a chain: `length`
    steps from observation 0 to 1, reward 1 on the last, which terminates (the value of step p,
    `truth`, is gamma^(length - 1 - p)). Trained twice, once with each step's return-to-go
    known (floored), once with none known (-inf, as a buffer stores a truncated episode's).
    Alpha 100 keeps the TD target's next action at the recorded one: no value of an action the
    data never shows enters it. Returns {floored: (values, floor share per step)}, truth."""
    spec = EnvSpec("probe/chain-v0", 1, 1, -np.ones(1, np.float32), np.ones(1, np.float32), 1)
    config = replace(
        FAST_FQL,
        gamma=gamma,
        alpha=100.0,
        batch_size=64,
        normalize_observations=False,
        return_floor=True,
    )
    algo = FQL(config, spec, num_envs=1, total_steps=4096)
    steps = np.arange(length, dtype=np.float32)
    truth = gamma ** (length - 1 - steps)
    last = steps == length - 1
    data = Transition(
        obs=(steps / length)[:, None],
        action=np.zeros((length, 1), np.float32),
        reward=last.astype(np.float32),
        terminated=last,
        truncated=np.zeros(length, bool),
        next_obs=((steps + 1) / length)[:, None],
        extras={},
    )

    @jax.jit
    def train(returns):
        known = jax.tree.map(jnp.asarray, data._replace(return_to_go=returns))

        def gradient_step(state, key):
            rows = jax.random.randint(key, (config.batch_size,), 0, length)
            return algo.update(state, jax.tree.map(lambda x: x[rows], known), key)

        keys = jax.random.split(jax.random.PRNGKey(1), updates)
        state, info = jax.lax.scan(gradient_step, algo.init(jax.random.PRNGKey(0)), keys)
        values = algo.critic.apply(state["params"]["critic"], known.obs, known.action).mean(0)
        return values, info["critic/return_floor_share"]

    unknown = np.full(length, -np.inf, np.float32)
    trained = {floored: train(truth if floored else unknown) for floored in (True, False)}
    return {k: jax.tree.map(np.asarray, v) for k, v in trained.items()}, truth


def test_a_return_floor_carries_a_sparse_reward_back_along_the_chain_at_once():
    trained, truth = chain_values()
    values, floor_share = trained[True]
    assert np.abs(values - truth).max() < 0.15, np.round(values, 2)
    assert floor_share[0] > 0.9  # the untrained critics' targets lie below every return
    # Bootstrapping alone, through target critics that move 0.005 a step, has not reached the
    # chain's first steps in as many updates.
    values, floor_share = trained[False]
    assert values[0] < truth[0] - 0.3, np.round(values, 2)
    assert not floor_share.any()


def test_fql_offline_picks_the_good_actions_of_a_mixed_dataset_where_bc_averages(tmp_path):
    dataset = mixed_dataset("probe/mixed-v0")
    # Its contexts are on a unit scale already; standardised they took ~2x the updates to get
    # as close to the optimum (-0.09 at 2560, -0.04 at 5120 on this dataset).
    config = replace(FAST_FQL, offline_updates=2560, normalize_observations=False)
    run_dir = train("fql", offline_run(tmp_path, "fql", dataset), config)
    rows = read_rows(run_dir)
    offline = [r for r in rows if int(r["env_steps"]) == 0]
    assert len(offline) == 40 and offline[-1]["offline_updates"] == "2560"
    # The evaluation right at the end of the offline phase: FQL before any env step.
    before_online = float(offline[-1]["eval_return"])
    assert before_online > -0.05  # optimal 0; the bad half of the data earns about -1.8

    # The BC flow trained alongside imitates all of the data: sampled from fresh noise, its
    # actions earn far less (the dataset's actions earn about -0.9 on average).
    algo, state, _ = load_run(run_dir)
    contexts = np.random.default_rng(1).uniform(-1, 1, (1024, 3)).astype(np.float32)
    noise = jax.random.normal(jax.random.PRNGKey(2), (1024, 2))
    bc = np.clip(np.asarray(algo.flow.sample(state["params"]["flow"], contexts, noise)), -1, 1)
    optimum = contextual_target_optimum(contexts)
    bc_return = -np.sum((bc - optimum) ** 2, axis=1).mean()
    assert bc_return < -0.3
    # The one-step policy, stochastic as it acts, keeps to the good half.
    acted = np.asarray(algo.act(algo.acting_params(state), contexts, jax.random.PRNGKey(3))[0])
    assert -np.sum((acted - optimum) ** 2, axis=1).mean() > -0.1


def test_offline_phase_trains_any_off_policy_algorithm_on_the_dataset_alone(tmp_path):
    # SAC with the dataset: the offline iterations take no env step, and its critics learn the
    # dataset's rewards (about -0.9 on average for the stored actions).
    dataset = mixed_dataset("probe/mixed-sac-v0", episodes=300)
    config = SACConfig(
        actor_hidden=SMALL,
        critic_hidden=SMALL,
        batch_size=128,
        update_every=16,
        steps_per_iteration=64,
        critic_learning_rate=1e-3,
        learning_starts=64,
        offline_updates=640,
    )
    run = offline_run(tmp_path, "sac", dataset, eval_every=320, eval_episodes=8)
    rows = read_rows(train("sac", run, config))
    offline = [r for r in rows if int(r["env_steps"]) == 0]
    assert [int(r["offline_updates"]) for r in offline] == list(range(64, 641, 64))
    assert all(r["episodes"] == "0" for r in offline)
    # Evaluations on the one clock of updates and env steps: 320 and 640 updates (the end of
    # the offline phase), then at the end of the run.
    assert [int(r["offline_updates"]) for r in offline if r["eval_return"]] == [64, 320, 640]
    assert float(offline[-1]["critic/q_mean"]) == pytest.approx(-0.9, abs=0.25)
    online = rows[len(offline) :]
    assert [int(r["env_steps"]) for r in online] == [64, 128]
    assert online[-1]["eval_return"]


class Interrupted(Exception):
    """Raised from a run's progress callback: the run stops there as a crash would."""


def interrupt_at(stop_at: int):
    def interrupt(iteration, row):
        if iteration == stop_at:
            raise Interrupted

    return interrupt


def rows_without_timing(run_dir):
    return [
        {k: v for k, v in row.items() if k not in ("wall_time", "steps_per_second")}
        for row in read_rows(run_dir)
    ]


# -m slow (the suite's time on 2 cores): the replay loop's exact resume runs by default for SAC.
@pytest.mark.slow
def test_a_run_interrupted_offline_then_online_resumes_exactly(tmp_path):
    # 4 offline iterations (256 updates), then 4 online ones (256 env steps); checkpoints at
    # clock 128 (iteration 2), at the end of the offline phase (4) and at clock 384 (6). One run
    # is interrupted twice: at iteration 3 it resumes from the offline phase into the online
    # one, then at 7 from within the online phase.
    dataset = mixed_dataset("probe/mixed-resume-v0", episodes=200)
    config = replace(FAST_FQL, offline_updates=256)
    run = offline_run(
        tmp_path, "interrupted", dataset, total_steps=256, eval_every=192, checkpoint_every=128
    )
    reference = train("fql", replace(run, out=tmp_path / "uninterrupted"), config)
    resume = RunConfig(resume=run.out, progress=False)
    with pytest.raises(Interrupted):
        train("fql", run, config, on_iteration=interrupt_at(3))
    assert read_meta(run.out)["progress"]["iteration"] == 2
    with pytest.raises(Interrupted):
        train("fql", resume, config, on_iteration=interrupt_at(7))
    assert read_meta(run.out)["progress"]["iteration"] == 6
    train("fql", resume, config)
    reference_rows = rows_without_timing(reference)
    assert rows_without_timing(run.out) == reference_rows
    assert len(reference_rows) == 8 and reference_rows[-1]["actor/loss"]
    assert [r["env_steps"] for r in reference_rows] == ["0"] * 4 + ["64", "128", "192", "256"]

    # The checkpoint holds the dataset's checksum: a run does not go on with other data.
    kept = files_digest(reference)
    shutil.rmtree(dataset_path(dataset))
    mixed_dataset(dataset, episodes=200, seed=1)
    with pytest.raises(CheckpointError, match=f"dataset {dataset} changed since"):
        train("fql", RunConfig(resume=reference, progress=False), config)
    assert files_digest(reference) == kept


def test_bad_dataset_input_is_rejected_in_one_line_with_nothing_lost(tmp_path, cli_error):
    dataset = mixed_dataset("probe/kept-v0", episodes=20)
    mixed_dataset("probe/elsewhere-v0", episodes=20, env="gprl/FourModeBandit-v0")
    mixed_dataset("probe/bare-v0", episodes=20, env=None)
    before = files_digest(dataset_path(dataset))
    out = tmp_path / "run"
    base = ["train", "fql", "--total-steps", "20000", "--out", str(out), "--no-progress"]
    for args, message in [
        (["--env", "gprl/BimodalBandit-v0", "--dataset", dataset], "records " + ENV),
        (["--dataset", "probe/elsewhere-v0"], "observations of size 3; gprl/FourModeBandit"),
        (["--dataset", "probe/bare-v0"], "records no environment; pass --env ID"),
        (["--dataset", "probe/missing-v0"], "no Minari dataset 'probe/missing-v0'"),
        (["--dataset", "no version"], "invalid dataset id"),
        (["--fql.offline-updates", "100"], "give one with --dataset"),
        (["--dataset", dataset, "--fql.offline-updates", "-5"], "offline_updates must be"),
        (["--dataset", dataset, "--fql.alpha", "-1"], "alpha must be positive, got -1.0"),
        (["--dataset", dataset, "--fql.flow.num-steps", "0"], "flow.num_steps must be at least"),
    ]:
        assert message in cli_error(base + args), args
    refused = cli_error(["train", "ppo", "--dataset", dataset, "--out", str(out), "--no-progress"])
    assert "'ppo' is on-policy" in refused
    assert not out.exists()
    assert files_digest(dataset_path(dataset)) == before
