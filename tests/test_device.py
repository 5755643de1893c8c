"""The device path: JAX envs stepped inside jit, rollout and update fused into one call."""

import csv
from dataclasses import replace

import jax
import numpy as np
import pytest

from gprl.algos import GoRL, GoRLConfig, PPOConfig
from gprl.backends import make_collector, open_environments
from gprl.checkpoint import read_meta
from gprl.envs.diagnostics import contextual_target_optimum
from gprl.loops import OnPolicyLoop
from gprl.trainer import RunConfig, load_run, train

FAST_PPO = PPOConfig(rollout_steps=32, num_minibatches=4, learning_rate=1e-3)
FAST_GORL = replace(
    GoRLConfig(ppo=replace(GoRLConfig().ppo, rollout_steps=32, num_minibatches=4)),
    num_stages=2,
    stage_weights=(1.0, 1.0),
    decoder_train_steps=500,
    decoder_min_samples=128,  # a refit's collection stays a small share of these budgets
)


def eval_returns(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return [float(r["eval_return"]) for r in csv.DictReader(f) if r["eval_return"]]


def rows_without_timing(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return [
            {k: v for k, v in r.items() if k not in ("wall_time", "steps_per_second")}
            for r in csv.DictReader(f)
        ]


@pytest.mark.parametrize("backend", ["jax", "gymnasium"])
def test_jax_and_host_versions_of_a_task_learn_the_same_optimum(tmp_path, backend):
    run = RunConfig(
        env="gprl/ContextualTarget-v0",
        env_backend=backend,
        total_steps=20_000,
        num_envs=8,
        out=tmp_path / backend,
        progress=False,
        eval_every=5_000,
        eval_episodes=32,
    )
    run_dir = train("ppo", run, FAST_PPO)
    assert eval_returns(run_dir)[-1] > -0.03  # a = 0 earns about -0.43
    algo, state, _ = load_run(run_dir)
    contexts = np.random.default_rng(7).uniform(-1, 1, (256, 3)).astype(np.float32)
    actions = np.asarray(algo.act_deterministic(algo.acting_params(state), contexts))
    assert np.abs(actions - contextual_target_optimum(contexts)).mean() < 0.08


def test_device_run_resumes_exactly(tmp_path, resume_check):
    run = RunConfig(
        env="gprl/TwoGoalPoint-v0",
        env_backend="jax",
        total_steps=2048,
        num_envs=4,
        out=tmp_path / "interrupted",
        progress=False,
        eval_every=1024,
        eval_episodes=4,
        checkpoint_every=512,
    )

    def checkpointed_before_the_stop(run_dir):
        assert 0 < read_meta(run_dir)["progress"]["iteration"] < 10

    # 16 iterations in two stages: stopped at 10, in the second stage, after the refit.
    rows = resume_check.train("gorl", run, FAST_GORL, 10, checkpointed_before_the_stop).rows
    assert any(r["decoder_val_loss"] for r in rows)


def test_a_device_iteration_is_one_compiled_call_shared_by_every_stage():
    envs = open_environments("gprl/BimodalBandit-v0", "jax", 8, 2, 0, 1)
    algo = GoRL(FAST_GORL, envs.spec, 8, 8 * 32 * 6)
    traces = {"update": 0, "step": 0}
    real_update, real_step = algo.update, envs.train.step

    def counting_update(*args):
        traces["update"] += 1
        return real_update(*args)

    def counting_step(*args):
        traces["step"] += 1
        return real_step(*args)

    algo.update = counting_update
    envs.train.step = counting_step
    loop = OnPolicyLoop(algo, make_collector(envs, algo.act))
    loop.reset(0)
    state, key = algo.init(jax.random.PRNGKey(0)), jax.random.PRNGKey(1)
    stages = []
    while int(state["iteration"]) < algo.num_iterations:
        state, key, metrics, *_ = loop.iterate(state, key)
        stages.append(int(state["stage"]))
    assert stages[0] == 0 and stages[-1] == 1
    # One trace of the fused rollout-and-update for both stages (the stage is data, not code),
    # and one more trace of the env step for the refit's data collection.
    assert traces["update"] == 1
    assert traces["step"] == 2
    assert np.isfinite(metrics["policy_loss"])


@pytest.mark.slow
def test_a_playground_task_trains_on_the_device_by_default(tmp_path):
    # One PPO iteration on an MJX task: --env-backend auto picks the device path, and the fused
    # iteration compiles and runs with MJX physics (26 s here, so -m slow: the default suite steps
    # MJX inside jit in test_jax_envs' Playground smoke test, picks the device path for
    # playground: ids in test_jax_envs, and runs the device loop on JAX diagnostic tasks here).
    pytest.importorskip("mujoco_playground")
    run = RunConfig(
        env="playground:PendulumSwingup",
        total_steps=8 * 32,
        num_envs=8,
        out=tmp_path / "ppo",
        progress=False,
        eval_every=0,
        eval_episodes=2,
    )
    run_dir = train("ppo", run, replace(FAST_PPO, num_epochs=1))
    assert read_meta(run_dir)["backend"] == "jax"
    rows = rows_without_timing(run_dir)
    assert len(rows) == 1 and np.isfinite(float(rows[0]["policy_loss"]))
    assert np.isfinite(eval_returns(run_dir)[-1])


@pytest.mark.slow
def test_gorl_trains_through_a_refit_on_a_playground_task(tmp_path):
    # GoRL's stages run the device loop PPO uses, so one run covers both on an MJX task (each
    # compile of one costs tens of seconds here); PPO's own device runs are checked above.
    pytest.importorskip("mujoco_playground")
    run = RunConfig(
        env="playground:PendulumSwingup",
        total_steps=8 * 32 * 6,
        num_envs=8,
        out=tmp_path / "gorl",
        progress=False,
        eval_every=0,
        eval_episodes=2,
    )
    # A refit collects decoder_min_samples here, not a whole 1000-step episode per env.
    run_dir = train("gorl", run, replace(FAST_GORL, min_collect_episodes=0.0))
    assert read_meta(run_dir)["backend"] == "jax"
    rows = rows_without_timing(run_dir)
    assert all(np.isfinite(float(r["policy_loss"])) for r in rows if r["policy_loss"])
    assert np.isfinite(eval_returns(run_dir)[-1])
    assert any(r["refit"] == "1" for r in rows)
