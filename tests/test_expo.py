"""EXPO: its edit policy reaches an optimum the BC flow's samples miss, edits stay within their
bound, bad input, exact resume."""

from dataclasses import replace

import jax
import numpy as np
import pytest
from test_fql import SPEC, offline_run, read_rows

from gprl.algos import EXPO, EXPOConfig
from gprl.checkpoint import read_meta
from gprl.datasets import Episode, write_dataset
from gprl.envs.diagnostics import contextual_target_optimum
from gprl.policies import FlowPolicyConfig
from gprl.trainer import load_run, train

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
        (["--init", str(tmp_path)], "expo cannot start from a pretrained policy"),
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
