"""EXPO: its edit policy reaches an optimum the BC flow's samples miss, edits stay within their
bound; a pretrained base of any kind (chunked too) is taken and imitates the replayed actions by
its own loss, and EXPO on a weak pretrained base reaches the optimum it misses; bad input, exact
resume."""

from dataclasses import replace

import jax
import numpy as np
import pytest
from test_chunked_finetune import CHUNK_SPEC, on_random_chunked_policy, random_chunked_policy
from test_fql import SPEC, offline_run, read_rows
from test_residual import residual_run
from test_residual import weak_base as flow_base  # noqa: F401 (a fixture)

from gprl import initial_policy
from gprl.algos import EXPO, EXPOConfig
from gprl.checkpoint import read_meta
from gprl.dataset_writer import write_dataset
from gprl.datasets import Episode
from gprl.envs.chunked import chunked_spec
from gprl.envs.diagnostics import contextual_target_optimum
from gprl.networks import CustomNetworks
from gprl.policies import FlowPolicyConfig
from gprl.trainer import load_run, train
from gprl.types import Transition

SMALL = (64, 64)
FAST = EXPOConfig(
    flow=FlowPolicyConfig(hidden=SMALL, num_steps=4),
    critic_hidden=SMALL,
    actor_hidden=SMALL,
    batch_size=128,
    learning_starts=64,
    update_every=16,
    steps_per_iteration=64,
    learning_rate=1e-3,
    edit_scale=0.5,
)

pytestmark = pytest.mark.usefixtures("minari_root")


def spread_dataset(dataset_id: str, episodes: int = 400, spread: float = 0.5, seed: int = 0):
    """One-step ContextualTarget episodes whose actions scatter uniformly within `spread` of the
    optimum a*(c) per dimension (reward -|a - a*|^2: about -2 spread^2 / 3 on average)."""
    rng = np.random.default_rng(seed)
    contexts = rng.uniform(-1, 1, (episodes, 3)).astype(np.float32)
    optimum = contextual_target_optimum(contexts)
    actions = np.clip(optimum + rng.uniform(-spread, spread, optimum.shape), -1, 1)
    rewards = -np.sum((actions - optimum) ** 2, axis=1)
    recorded = [
        Episode(
            observations=np.stack([c, c]),
            actions=a[None].astype(np.float32),
            rewards=np.array([r]),
            terminations=np.array([True]),
            truncations=np.array([False]),
        )
        for c, a, r in zip(contexts, actions, rewards, strict=True)
    ]
    write_dataset(dataset_id, recorded, SPEC, "scattered around the optimum", "test")
    return dataset_id


# -m slow: compiling a run costs ~20 s on the shared 2-core machine, ~1 s its 2048 updates.
@pytest.mark.slow
def test_offline_edits_reach_the_optimum_that_one_bc_sample_misses(tmp_path):
    # One base sample per decision: the argmax can only choose it or its edit, so only a
    # learnt edit can beat the BC flow, whose samples scatter as the data (about -0.33).
    config = replace(FAST, num_samples=1, offline_updates=2048)
    dataset = spread_dataset("probe/spread-v0", spread=0.7)
    run_dir = train("expo", offline_run(tmp_path, "expo", dataset, total_steps=64), config)
    offline = [r for r in read_rows(run_dir) if int(r["env_steps"]) == 0]
    assert float(offline[-1]["eval_return"]) > -0.03  # optimal 0

    algo, state, _ = load_run(run_dir)
    contexts = np.random.default_rng(1).uniform(-1, 1, (1024, 3)).astype(np.float32)
    noise = jax.random.normal(jax.random.PRNGKey(2), (1024, 2))
    bc = np.clip(np.asarray(algo.flow.sample(state["params"]["flow"], contexts, noise)), -1, 1)
    optimum = contextual_target_optimum(contexts)
    assert -np.sum((bc - optimum) ** 2, axis=1).mean() < -0.1


def test_every_candidate_lies_within_the_edit_bound_of_a_base_action():
    algo = EXPO(replace(FAST, edit_scale=0.2), SPEC, num_envs=1, total_steps=1024)
    state = algo.init(jax.random.PRNGKey(0))
    policy = algo.acting_params(state)["policy"]
    # Large weights saturate tanh: the edits' magnitudes reach the bound itself.
    policy["edit"] = jax.tree.map(lambda w: 50.0 * w + 1.0, policy["edit"])
    obs = jax.random.uniform(jax.random.PRNGKey(1), (256, 3), minval=-1.0)
    noise = jax.random.normal(jax.random.PRNGKey(2), (256, 1, 2))
    base = np.clip(np.asarray(algo.flow.sample(policy["flow"], obs[:, None], noise)), -1, 1)[:, 0]
    best_of = jax.jit(algo._best_of)
    for key in range(3):
        # With one base sample (fixed noise, as evaluation uses) the pick is the base or its edit.
        acted = np.asarray(best_of(policy, obs, noise, jax.random.PRNGKey(key)))
        assert np.all(np.abs(acted - base) <= 0.2 + 1e-6)
    assert np.abs(acted - base).max() > 0.19


def test_the_edit_policy_starts_at_a_zero_mean_edit():
    algo = EXPO(FAST, SPEC, num_envs=1, total_steps=1024)
    policy = algo.acting_params(algo.init(jax.random.PRNGKey(0)))["policy"]
    obs = jax.random.uniform(jax.random.PRNGKey(1), (64, 3), minval=-1.0)
    mean, _ = algo._edit_distribution(policy["edit"], obs, np.zeros((64, 2), np.float32))
    assert np.all(np.asarray(mean) == 0.0)


def test_cli_rejects_bad_expo_input_in_one_line(tmp_path, cli_error):
    base = ["train", "expo", "--env", "gprl/ContextualTarget-v0", "--out", str(tmp_path / "bad")]
    for args, message in [
        (["--expo.edit-scale", "0"], "edit_scale must be in (0, 2], got 0.0"),
        (["--expo.num-samples", "0"], "num_samples must be at least 1, got 0"),
        (["--expo.initial-alpha", "-1"], "initial_alpha must be positive, got -1.0"),
        (["--init", str(tmp_path)], "--init: no checkpoint in"),
    ]:
        assert message in cli_error([*base, *args]), args
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_an_interrupted_offline_then_online_expo_run_resumes_exactly(tmp_path, resume_check):
    dataset = spread_dataset("probe/spread-resume-v0", episodes=200)
    config = replace(FAST, offline_updates=128)
    run = offline_run(
        tmp_path, "interrupted", dataset, total_steps=256, eval_every=192, checkpoint_every=128
    )

    def checkpointed_in_the_online_phase(run_dir):
        assert read_meta(run_dir)["progress"]["iteration"] == 4

    checked = resume_check.train("expo", run, config, 5, checkpointed_in_the_online_phase)
    assert len(checked.rows) == 6 and checked.rows[-1]["edit/loss"]


def chunked_expo(kind: str, config=FAST):
    """EXPO on test_chunked_finetune's untrained chunked policy of this kind."""
    return on_random_chunked_policy(EXPO, kind, config)


def test_a_chunked_pretrained_base_starts_as_pretrained_and_its_mode_is_a_candidate():
    # One sample: the evaluation's candidates are the base's chunk at zero noise and its mean
    # edit, which starts at zero, so the first decision is the pretrained chunk itself.
    algo, pretrained = chunked_expo("ddpm", replace(FAST, num_samples=1))
    state = algo.init(jax.random.PRNGKey(0))
    start = pretrained.acting["params"]
    jax.tree.map(np.testing.assert_array_equal, state["params"]["flow"], start)
    acting = algo.acting_params(state)
    histories = jax.random.normal(jax.random.PRNGKey(1), (8, 6))
    decided = algo.act_deterministic(acting, histories)
    zero = np.zeros((8, pretrained.policy.noise_dim), np.float32)
    chunk = pretrained.policy.plan_from_noise(pretrained.acting, histories, zero)
    np.testing.assert_allclose(np.asarray(decided), np.asarray(chunk).reshape(8, 6), atol=1e-5)
    sampled, _ = jax.jit(algo.act)(acting, histories, jax.random.PRNGKey(2))
    assert sampled.shape == (8, 6) and float(np.abs(sampled).max()) <= 1.0
    assert float(np.abs(sampled - decided).max()) > 1e-3  # it explores


@pytest.mark.slow
def test_a_pretrained_ddpm_base_imitates_the_replayed_chunks_by_its_own_loss():
    # Every replayed chunk is 0.5 everywhere: the base's own samples move toward it.
    algo, _ = chunked_expo("ddpm", replace(FAST, batch_size=128))
    state = algo.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    histories = rng.normal(size=(128, 6)).astype(np.float32)
    chunks = np.full((128, 6), 0.5, np.float32)
    batch = Transition(
        obs=histories, action=chunks, reward=np.zeros(128, np.float32), next_obs=histories,
        terminated=np.zeros(128, bool), truncated=np.zeros(128, bool), extras={},
    )  # fmt: skip

    def base_error(state):
        noise, step_noise = algo._flow_noises(jax.random.PRNGKey(1), chunks.shape)
        sampled = algo._flow_actions(state["params"]["flow"], histories, noise, step_noise)
        return float(np.mean((np.asarray(sampled) - 0.5) ** 2))

    def train(state, keys):
        return jax.lax.scan(lambda s, k: algo.update(s, batch, k), state, keys)

    before = base_error(state)
    state, info = jax.jit(train)(state, jax.random.split(jax.random.PRNGKey(2), 200))
    after = base_error(state)
    assert after < 0.5 * before, (before, after)
    assert np.all(np.isfinite(info["flow/loss"]))


def test_a_pretrained_base_expo_cannot_use_is_refused_in_one_line():
    pretrained = random_chunked_policy("gaussian")
    refusal = "expo builds on a policy of one action per decision; this one plans chunks of 3"
    with pytest.raises(ValueError, match=refusal):
        EXPO(FAST, CHUNK_SPEC, 4, 20_000, pretrained=pretrained)
    flat = initial_policy.flat_chunk_policy(pretrained)
    with pytest.raises(ValueError, match="--init decides 6 action values at once; this run's "):
        EXPO(FAST, CHUNK_SPEC, 4, 20_000, pretrained=flat)
    with pytest.raises(ValueError, match=r"a pretrained base \(--init\) standardises them itself"):
        chunked_expo("gaussian", replace(FAST, normalize_observations=True))
    spec = chunked_spec(CHUNK_SPEC, initial_policy.chunking_of(pretrained.config, 0.9))
    velocity = CustomNetworks(velocity=lambda x: x)
    with pytest.raises(ValueError, match="expo with --init has no velocity network to replace"):
        EXPO(FAST, spec, 4, 20_000, pretrained=flat, networks=velocity)


@pytest.mark.slow
def test_expo_on_a_weak_pretrained_base_reaches_the_optimum_it_misses(
    tmp_path,
    flow_base,  # noqa: F811 (the fixture)
):
    # The base earns about -0.46 (near-zero actions whatever the context); edits reach 0.5 from
    # its actions, and the base then imitates the edited actions the critics chose.
    run_dir = train("expo", residual_run(flow_base, tmp_path / "run", total_steps=3072), FAST)
    returns = [float(r["eval_return"]) for r in read_rows(run_dir) if r["eval_return"]]
    assert returns[0] < -0.3 and returns[-1] > -0.05, returns


@pytest.mark.slow
def test_an_interrupted_expo_run_on_a_pretrained_base_and_a_dataset_resumes_exactly(
    tmp_path,
    flow_base,  # noqa: F811 (the fixture)
    resume_check,
):
    dataset = spread_dataset("probe/spread-expo-init-v0", episodes=200)
    config = replace(FAST, offline_updates=128, offline_fraction=0.5)
    run = residual_run(
        flow_base, tmp_path / "interrupted", dataset=dataset, total_steps=640,
        eval_every=256, checkpoint_every=256,
    )  # fmt: skip

    def checkpointed_in_the_online_phase(run_dir):
        assert read_meta(run_dir)["progress"]["iteration"] == 4

    checked = resume_check.train("expo", run, config, 5, checkpointed_in_the_online_phase)
    # Two offline iterations of 64 updates, ten online ones of 64 env steps, and the start.
    assert len(checked.rows) == 13 and checked.rows[-1]["edit/loss"]
