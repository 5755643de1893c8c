"""Fine-tuning a `gprl pretrain` flow policy with ReinFlow, dppo-flow and GoRL (`--init`): the
first evaluation is the pretrained policy's, fine-tuning improves a deliberately weak one, the
critic warm-up and the W2 penalty hold the policy, bad --init runs are refused in one line, and
a fine-tuning run resumes exactly."""

import csv
import functools
import shutil
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gprl.algos import ALGORITHMS
from gprl.algos.ppo import PPOConfig
from gprl.cli import main
from gprl.dataset_writer import write_dataset
from gprl.datasets import Episode
from gprl.envs import make_env
from gprl.envs.diagnostics import contextual_target_optimum
from gprl.policies import POLICIES
from gprl.pretrain import PretrainConfig, PretrainRun, evaluate_run, load_pretrained, pretrain
from gprl.trainer import RunConfig, boundary_seed, train
from gprl.types import EnvSpec, Transition

# One worker runs this module, so its costly module fixture (pretrained_runs) is built once.

PROBE = "gprl/ContextualTarget-v0"
FINE_TUNERS = ("reinflow", "dppo-flow", "gorl")
EVAL_EPISODES = 64
# A pretrain run evaluates with this seed; a training run with seed 0 too.
EVAL_SEED = boundary_seed(0, 2**31 - 1)
# Zero noise: the pretrain run then evaluates the policy the fine-tuners evaluate (their
# deterministic policy integrates the flow from zero noise).
PRETRAIN = PretrainConfig(log_every=500, noise_scale=0.0)


def mediocre_actions(obs, rng):
    """0.4 of ContextualTarget's optimal action, with noise: its behaviour clone earns about
    -0.17 (the optimum 0, the best constant action about -0.46)."""
    return 0.4 * contextual_target_optimum(obs) + 0.1 * rng.normal(size=2)


def record_one_step_task(env_id, dataset_id, policy, episodes, seed=0):
    """A Minari dataset of `episodes` one-step episodes of policy(obs, rng)."""
    rng = np.random.default_rng(seed)
    env = make_env(env_id, 1, seed, backend="gymnasium")
    obs, recorded = env.reset(seed), []
    for _ in range(episodes):
        action = np.clip(policy(obs[0], rng), -1, 1).astype(np.float32)
        step = env.step(action[None])
        recorded.append(
            Episode(
                np.stack([obs[0], step.final_obs[0]]),
                action[None],
                step.reward[:1],
                step.terminated[:1],
                step.truncated[:1],
            )
        )
        obs = step.obs
    write_dataset(dataset_id, recorded, env.spec, "mediocre", "scripted")
    env.close()
    return dataset_id


@pytest.fixture(scope="module")
def pretrained_runs(tmp_path_factory):
    """A weak flow policy of the mediocre data."""
    root = tmp_path_factory.mktemp("finetune")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MINARI_DATASETS_PATH", str(root / "datasets"))
        dataset = record_one_step_task(PROBE, "probe/mediocre-v0", mediocre_actions, 500)

        options = PretrainRun(
            dataset=dataset,
            steps=1000,
            out=root / "flow",
            progress=False,
            eval_every=0,
            eval_episodes=EVAL_EPISODES,
        )
        # The fine-tuners take its Euler steps too: 5 keeps them quick.
        flow = replace(POLICIES["flow"].default_config, hidden=(64, 64), num_steps=5)
        return {"flow": pretrain("flow", options, PRETRAIN, flow)}


def small_config(name, **overrides):
    config = ALGORITHMS[name].config()
    if name == "gorl":
        ppo = replace(config.ppo, rollout_steps=32, num_minibatches=4)
        return replace(config, ppo=ppo, **overrides)
    fields = {"rollout_steps": 32, "num_minibatches": 4, "learning_rate": 1e-3}
    return replace(config, **(fields | overrides))


def eval_rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r["eval_return"]]


# ----- starting point and improvement ------------------------------------------------------------


@pytest.mark.parametrize("name", FINE_TUNERS)
def test_fine_tuning_starts_at_the_pretrained_return_and_improves(name, pretrained_runs, tmp_path):
    _, pretrained = evaluate_run(pretrained_runs["flow"], EVAL_EPISODES, EVAL_SEED)
    overrides = {
        "reinflow": {},
        # Twice the default step noise: the pretrained actions span about half the action box,
        # so the default explores a quarter as much as it would from scratch.
        "dppo-flow": {"denoising_std": 0.1},
        # Two stages: the pretrained flow is the first decoder, a refit the second.
        "gorl": {"num_stages": 2, "stage_weights": (1.0, 1.0), "decoder_train_steps": 3000},
    }[name]
    run = RunConfig(
        env=PROBE,
        env_backend="gymnasium",
        total_steps=6144,
        num_envs=8,
        out=tmp_path / name,
        progress=False,
        eval_every=3072,
        eval_episodes=EVAL_EPISODES,
        init=pretrained_runs["flow"],
    )
    rows = eval_rows(train(name, run, small_config(name, **overrides)))
    assert rows[0]["env_steps"] == "0"
    start, final = float(rows[0]["eval_return"]), float(rows[-1]["eval_return"])
    assert pretrained["eval_return"] < -0.1  # deliberately weak
    assert start == pytest.approx(pretrained["eval_return"], abs=1e-5)
    assert final > -0.06
    if name == "gorl":
        (refit,) = [r for r in rows if r.get("refit")]
        assert refit["refit/accepted"] == "1"  # a refused refit would keep the policy trivially
        # The refitted decoder keeps what the first stage learned.
        assert abs(float(refit["eval_return"]) - float(refit["eval_return_before_refit"])) < 0.03


# ----- what holds the policy: warm-up, frozen statistics, W2 penalty ---------------------------

SPEC = EnvSpec(PROBE, 3, 2, -np.ones(2, np.float32), np.ones(2, np.float32), None)
NUM_ENVS, ROLLOUT = 8, 8


def random_rollout(algo, state, key):
    """A (T, N) batch of the algorithm's own actions on uniform observations, random rewards."""
    obs_key, reward_key, act_key = jax.random.split(key, 3)
    obs = jax.random.uniform(obs_key, (ROLLOUT, NUM_ENVS, SPEC.obs_dim), minval=-1, maxval=1)
    actions, extras = jax.vmap(algo.act, in_axes=(None, 0, 0))(
        algo.acting_params(state), obs, jax.random.split(act_key, ROLLOUT)
    )
    done = jnp.ones((ROLLOUT, NUM_ENVS), bool)
    rewards = jax.random.normal(reward_key, (ROLLOUT, NUM_ENVS))
    return Transition(obs, actions, rewards, done, ~done, obs, extras)


def trainer_on_random_rollouts(algo):
    """updates(state, iterations, seed) -> the state after that many updates on random
    rollouts (the update and the rollout compiled once)."""
    update = jax.jit(algo.update)
    rollout = jax.jit(functools.partial(random_rollout, algo))

    def updates(state, iterations, seed=0):
        for i in range(iterations):
            rollout_key, update_key = jax.random.split(jax.random.PRNGKey(seed * 1000 + i))
            state, _ = update(state, rollout(state, rollout_key), update_key)
        return state

    return updates


def build(name, pretrained, **overrides):
    config = replace(small_config(name, **overrides), rollout_steps=ROLLOUT, num_epochs=2)
    return ALGORITHMS[name].algorithm(config, SPEC, NUM_ENVS, 100_000, pretrained=pretrained)


def test_critic_warmup_moves_only_the_critic_and_observation_statistics_stay_frozen(
    pretrained_runs,
):
    pretrained = load_pretrained(pretrained_runs["flow"])
    algo = build("reinflow", pretrained, critic_warmup_iterations=2)
    updates = trainer_on_random_rollouts(algo)
    start = algo.init(jax.random.PRNGKey(0))
    warmed = updates(start, 2)
    for part in ("policy", "noise"):
        held = jax.tree.map(jnp.array_equal, warmed["params"][part], start["params"][part])
        assert jax.tree.all(held)
    critic_change = jax.tree.map(
        lambda a, b: jnp.abs(a - b).max(), warmed["params"]["critic"], start["params"]["critic"]
    )
    assert max(jax.tree.leaves(critic_change)) > 1e-3
    trained = updates(warmed, 1, seed=1)
    policy_change = jax.tree.map(
        lambda a, b: jnp.abs(a - b).max(), trained["params"]["policy"], start["params"]["policy"]
    )
    assert max(jax.tree.leaves(policy_change)) > 1e-5
    # ... and it takes a fresh Adam's first steps: the warm-up's spent bias correction, kept,
    # scales them (3.3x after 640 warm-up steps).
    from_fresh_adam = updates(warmed | {"opt_state": start["opt_state"]}, 1, seed=1)
    for part in ("policy", "noise", "critic"):
        same = jax.tree.map(
            jnp.array_equal, trained["params"][part], from_fresh_adam["params"][part]
        )
        assert jax.tree.all(same)
    # The pretrained statistics stay: the policy's inputs mean what they meant in pretraining.
    for stats in (warmed["obs_norm"], trained["obs_norm"]):
        assert jax.tree.all(jax.tree.map(jnp.array_equal, stats, pretrained.acting["obs_norm"]))


# dppo-flow's penalty is the same code as ReinFlow's (GaussianChainActorCritic.w2_to_reference),
# so the default suite runs it once; -m slow runs it on dppo-flow's chain too.
@pytest.mark.parametrize("name", ["reinflow", pytest.param("dppo-flow", marks=pytest.mark.slow)])
def test_w2_penalty_keeps_the_policy_near_the_pretrained_one(name, pretrained_runs):
    # Random rewards push the policy around; the penalty must pull it back toward the
    # pretrained policy, measured on the deterministic actions from zero noise.
    pretrained = load_pretrained(pretrained_runs["flow"])
    obs = jax.random.uniform(jax.random.PRNGKey(7), (256, SPEC.obs_dim), minval=-1, maxval=1)

    def drift(w2_coef):
        algo = build(name, pretrained, w2_coef=w2_coef, learning_rate=3e-3)
        start = algo.init(jax.random.PRNGKey(0))
        end = trainer_on_random_rollouts(algo)(start, 6)
        act = jax.jit(algo.act_deterministic)
        before, after = act(algo.acting_params(start), obs), act(algo.acting_params(end), obs)
        return float(jnp.mean(jnp.sum((after - before) ** 2, axis=-1)))

    free, penalised = drift(0.0), drift(10.0)
    assert free > 1e-4
    assert penalised < 0.3 * free


# ----- bad input ---------------------------------------------------------------------------------


def test_bad_init_runs_are_refused_in_one_line(pretrained_runs, tmp_path, cli_error):
    common = ["--num-envs", "8", "--total-steps", "512", "--no-progress"]
    not_pretrain = train(
        "ppo",
        RunConfig(env=PROBE, total_steps=256, num_envs=8, out=tmp_path / "ppo", progress=False),
        PPOConfig(rollout_steps=32, num_minibatches=4),
    )
    cases = {
        "was pretrained on gprl/ContextualTarget-v0, not gprl/BimodalBandit-v0": (
            "reinflow",
            "gprl/BimodalBandit-v0",
            pretrained_runs["flow"],
        ),
        "is not a pretrain run": ("reinflow", PROBE, not_pretrain),
        "--init: no checkpoint in": ("reinflow", PROBE, tmp_path / "missing"),
        "sac cannot start from a pretrained policy": ("sac", PROBE, pretrained_runs["flow"]),
        "ppo fine-tunes 'gaussian' pretrain runs; --init holds a 'flow' policy": (
            "ppo",
            PROBE,
            pretrained_runs["flow"],
        ),
    }
    flow_option = ["--reinflow.flow.num-steps", "3"]
    argv = ["train", "reinflow", "--env", PROBE, "--init", str(pretrained_runs["flow"])]
    argv += ["--out", str(tmp_path / "flow-option"), *common, *flow_option]
    message = "takes the flow policy (network and Euler steps) from the pretrain run"
    assert message in cli_error(argv)
    for i, (message, (name, env, init)) in enumerate(cases.items()):
        out = tmp_path / f"run{i}"
        argv = ["train", name, "--env", env, "--init", str(init), "--out", str(out), *common]
        assert message in cli_error(argv)
        assert not out.exists()
    # A Gaussian or a chunked pretrain run loads as the flow run does (one-line errors above);
    # the fine-tuner refuses its policy. Built from the flow run: two more pretrain runs would
    # compile two more policies.
    flow = load_pretrained(pretrained_runs["flow"])
    gaussian = flow._replace(kind="gaussian")
    chunked = flow._replace(config=replace(flow.config, chunk_length=2))
    for name, pretrained, message in [
        (
            "dppo-flow",
            gaussian,
            "fine-tunes 'flow' pretrain runs; --init holds a 'gaussian' policy",
        ),
        ("dppo", flow, "DPPO fine-tunes 'ddpm' pretrain runs; --init holds a 'flow' policy"),
        ("gorl", chunked, "predicts chunks of 2"),
    ]:
        with pytest.raises(ValueError, match=message):
            ALGORITHMS[name].algorithm(small_config(name), SPEC, 8, 100_000, pretrained=pretrained)


# ----- resumption ---------------------------------------------------------------------------------

RESUME_OVERRIDES = {
    "reinflow": {"w2_coef": 0.1, "critic_warmup_iterations": 2},
    "gorl": {"num_stages": 2, "stage_weights": (1.0, 1.0), "decoder_train_steps": 250},
}


# GoRL's resume after a refit runs by default in test_trainer and test_device; here -m slow.
@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=pytest.mark.slow if name == "gorl" else ())
        for name in sorted(RESUME_OVERRIDES)
    ],
)
def test_interrupted_fine_tuning_resumes_exactly(
    name, pretrained_runs, tmp_path, capsys, resume_check
):
    init = tmp_path / "pretrained"
    shutil.copytree(pretrained_runs["flow"], init)
    config = small_config(name, **RESUME_OVERRIDES[name])
    run = RunConfig(
        env=PROBE,
        env_backend="gymnasium",
        total_steps=2560,
        num_envs=4,
        out=tmp_path / "interrupted",
        progress=False,
        eval_every=512,
        eval_episodes=8,
        checkpoint_every=512,
        init=init,
    )

    def remove_the_pretrain_run(run_dir):
        # A run keeps its own copy of the pretrained policy: it resumes without the pretrain run.
        shutil.rmtree(init)

    checked = resume_check.train(name, run, config, 9, remove_the_pretrain_run)
    reference = checked.reference
    # `gprl eval` rebuilds the fine-tuned policy: the run's last evaluation again.
    main(["eval", str(reference), "--episodes", "8", "--seed", str(EVAL_SEED)])
    printed = float(capsys.readouterr().out.split("return ")[1].split()[0])
    assert printed == pytest.approx(float(checked.rows[-1]["eval_return"]), abs=1e-3)
    assert (reference / "initial_policy" / "checkpoint").is_dir()
