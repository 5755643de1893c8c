"""Residual off-policy RL: a bounded correction learnt on top of a frozen, deliberately weak base
reaches the optimum of a probe task that the base misses; the first evaluation is the base's own;
the correction never leaves its bound, for every pretrain kind; exact resume; bad input."""

import csv
from dataclasses import replace

import jax
import numpy as np
import pytest
from test_dsrl import dsrl_run, probe_spec, untrained_base

from gprl.algos import Residual, ResidualConfig
from gprl.checkpoint import read_meta
from gprl.dataset_writer import write_dataset
from gprl.datasets import Episode
from gprl.envs.diagnostics import contextual_target_optimum
from gprl.policies import POLICIES
from gprl.pretrain import PretrainConfig, PretrainRun, pretrain
from gprl.trainer import RunConfig, load_run, train

ENV = "gprl/ContextualTarget-v0"
# The optimum lies up to 0.8 from the base's near-zero action: a bound of 0.9 can reach it.
FAST = ResidualConfig(
    residual_scale=0.9,
    actor_hidden=(64, 64),
    critic_hidden=(64, 64),
    batch_size=64,
    learning_starts=256,
    update_every=16,
    steps_per_iteration=128,
    critic_warmup_updates=128,  # the updates of the first iteration that learns
    actor_layer_norm=False,  # each LayerNorm adds a second to the update's compilation
    critic_layer_norm=False,
    actor_learning_rate=1e-3,
    critic_learning_rate=1e-3,
    alpha_learning_rate=1e-3,
)
EVAL_EPISODES = 32


def residual_run(base, out, **overrides) -> RunConfig:
    # The pretrain run's backend, so that their evaluations compare.
    return dsrl_run(base, out, backend="gymnasium", **overrides)


@pytest.fixture(scope="module")
def weak_base(tmp_path_factory):
    """A flow policy cloned briefly from actions near 0 that ignore the context: it earns about
    the best constant action's -0.46 (the optimum is 0)."""
    root = tmp_path_factory.mktemp("weak-base")
    rng = np.random.default_rng(0)
    episodes = []
    for _ in range(256):
        context = rng.uniform(-1, 1, 3).astype(np.float32)
        action = rng.uniform(-0.05, 0.05, 2).astype(np.float32)
        reward = -np.sum((action - contextual_target_optimum(context)) ** 2, dtype=np.float32)
        done, cut = np.ones(1, bool), np.zeros(1, bool)
        episodes.append(
            Episode(np.stack([context, context]), action[None], reward[None], done, cut)
        )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MINARI_DATASETS_PATH", str(root / "datasets"))
        write_dataset("probe/near-zero-v0", episodes, probe_spec(), "near-zero", "-")
        options = PretrainRun(
            dataset="probe/near-zero-v0",
            steps=50,
            out=root / "pretrain",
            progress=False,
            eval_every=0,
            eval_episodes=EVAL_EPISODES,
        )
        flow = replace(POLICIES["flow"].default_config, hidden=(16, 16), num_steps=2)
        return pretrain("flow", options, PretrainConfig(noise_scale=0.0, log_every=50), flow)


def read_rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_the_residual_reaches_the_optimum_its_frozen_base_misses(tmp_path, weak_base):
    run_dir = train("residual", residual_run(weak_base, tmp_path / "run"), FAST)
    rows = read_rows(run_dir)
    returns = [float(row["eval_return"]) for row in rows if row["eval_return"]]
    # The first evaluation (before any env step) is the base's, to float precision: the
    # residual starts at 0 (same backend, evaluation seeds and episodes as the pretrain run).
    assert rows[0]["env_steps"] == "0"
    assert returns[0] == pytest.approx(float(read_rows(weak_base)[-1]["eval_return"]), abs=1e-5)
    assert returns[0] < -0.35
    assert returns[-1] > -0.05, returns
    # Only the critics learn in the first iteration of updates (env steps 256 to 384): the
    # temperature stands still with the actor.
    alphas = {row["env_steps"]: float(row["alpha"]) for row in rows if row["alpha"]}
    assert alphas["384"] == FAST.initial_alpha and alphas["512"] < FAST.initial_alpha

    algo, state, _ = load_run(run_dir)
    contexts = np.random.default_rng(7).uniform(-1, 1, (256, 3)).astype(np.float32)
    actions = np.asarray(algo.act_deterministic(algo.acting_params(state), contexts))
    assert np.abs(actions - contextual_target_optimum(contexts)).mean() < 0.1
    base = np.asarray(algo.base_action(state["frozen"], contexts))
    assert np.abs(base).max() < 0.2  # the base stays where it was: weak, near 0


# The bound does not depend on how the base samples: a flow by default, every kind -m slow
# (test_dsrl decodes each kind from its noise by default).
KINDS = [
    kind if kind == "flow" else pytest.param(kind, marks=pytest.mark.slow) for kind in POLICIES
]


@pytest.mark.parametrize("kind", KINDS)
def test_the_executed_action_stays_within_the_bound_of_the_base_action(kind):
    # An untrained base of each kind, and an actor pushed far past its squashing: every way
    # of acting stays within residual_scale of the base's zero-noise action, which the
    # starting deterministic action equals.
    rng = np.random.default_rng(0)
    config = replace(FAST, residual_scale=0.1)
    algo = Residual(config, probe_spec(), 4, 1024, pretrained=untrained_base(kind, rng))
    state = algo.init(jax.random.PRNGKey(1))
    obs = rng.uniform(-1, 1, (64, 3)).astype(np.float32)
    base = np.asarray(algo.base_action(state["frozen"], obs))
    start = algo.act_deterministic(algo.acting_params(state), obs)
    np.testing.assert_allclose(start, base, atol=1e-6)
    explored, _ = algo.explore(algo.acting_params(state), obs, jax.random.PRNGKey(2))
    state["actor"] = jax.tree.map(lambda w: 100 * w + 1, state["actor"])
    acting = algo.acting_params(state)
    sampled, _ = algo.act(acting, obs, jax.random.PRNGKey(3))
    for actions in (explored, sampled, algo.act_deterministic(acting, obs)):
        offset = np.abs(np.asarray(actions) - base)
        assert offset.max() <= 0.1 + 1e-6 and np.abs(actions).max() <= 1.0
    assert np.abs(np.asarray(explored) - base).std() > 0.02  # exploration spans the bound


@pytest.mark.slow
def test_an_interrupted_residual_run_resumes_exactly(tmp_path, weak_base, resume_check):
    run = residual_run(weak_base, tmp_path / "interrupted", total_steps=768, checkpoint_every=384)

    def checkpointed_at_384_steps(run_dir):
        assert read_meta(run_dir)["progress"]["iteration"] == 3

    checked = resume_check.train("residual", run, FAST, 5, checkpointed_at_384_steps)
    assert len(checked.rows) == 7 and checked.rows[-1]["critic/loss"]


def test_cli_rejects_bad_residual_input_in_one_line(tmp_path, weak_base, cli_error):
    base = ["train", "residual", "--total-steps", "4096", "--out", str(tmp_path / "bad")]
    init = ["--env", ENV, "--init", str(weak_base)]
    for args, message in [
        (["--env", ENV], "residual fine-tunes a pretrained policy: pass --init RUN_DIR"),
        ([*init, "--residual.residual-scale", "0"], "residual_scale must be in (0, 2], got 0.0"),
        (
            ["--env", "gprl/BimodalBandit-v0", "--init", str(weak_base)],
            f"was pretrained on {ENV}, not gprl/BimodalBandit-v0",
        ),
    ]:
        assert message in cli_error([*base, *args]), args
    assert not (tmp_path / "bad").exists()
