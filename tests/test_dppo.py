"""DPPO as the paper (gprl.algos.dppo) on the DDPM policy: the frozen base runs the untrained
steps, sampling and scoring agree, the per-step clip and denoising discount, fine-tuning a
`gprl pretrain ddpm` run, exact resume, and the flow variant's old runs refused in one line."""

import csv
import json
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gprl.algos import ALGORITHMS
from gprl.algos.dppo import DPPOConfig, step_advantage_weights, step_clip_ranges
from gprl.algos.dppo_flow import DPPOFlowConfig
from gprl.configs import from_jsonable, to_jsonable
from gprl.policies import DDPMPolicy, DDPMPolicyConfig
from gprl.pretrained import ChunkPolicy, PretrainConfig, Pretrained
from gprl.rl_math import running_stats_init
from gprl.trainer import RunConfig, train
from gprl.types import EnvSpec, Transition

SPEC = EnvSpec("probe", 3, 2, -np.ones(2, np.float32), np.ones(2, np.float32), None)
NUM_ENVS, ROLLOUT, STEPS, TRAINED = 256, 2, 5, 2
SMALL_DDPM = DDPMPolicyConfig(hidden=(32, 32), num_train_steps=STEPS, num_steps=STEPS)


def small_config(**overrides) -> DPPOConfig:
    fields = dict(
        ddpm=SMALL_DDPM,
        fine_tuned_steps=TRAINED,
        denoising_discount=0.5,
        rollout_steps=ROLLOUT,
        num_epochs=1,
        num_minibatches=1,
        learning_rate=1e-2,
    )
    return replace(DPPOConfig(), **(fields | overrides))


def rollout(algo, state, key):
    """A (T, N) batch of the algorithm's own actions on random observations and rewards."""
    obs_key, reward_key, act_key = jax.random.split(key, 3)
    obs = jax.random.normal(obs_key, (ROLLOUT, NUM_ENVS, SPEC.obs_dim))
    actions, extras = jax.vmap(algo.act, in_axes=(None, 0, 0))(
        algo.acting_params(state), obs, jax.random.split(act_key, ROLLOUT)
    )
    done = jnp.ones((ROLLOUT, NUM_ENVS), bool)
    rewards = jax.random.normal(reward_key, (ROLLOUT, NUM_ENVS))
    return Transition(obs, actions, rewards, done, ~done, obs, extras)


@pytest.fixture(scope="module")
def one_update():
    """(algo, state before, its rollout, state after one update on it, the update's metrics),
    training the last 2 of 5 steps."""
    algo = ALGORITHMS["dppo"].algorithm(small_config(), SPEC, NUM_ENVS, 10_000)
    state = algo.init(jax.random.PRNGKey(0))
    batch = jax.jit(lambda s, key: rollout(algo, s, key))(state, jax.random.PRNGKey(1))
    updated, metrics = jax.jit(algo.update)(state, batch, jax.random.PRNGKey(2))
    return algo, state, batch, updated, metrics


def sampled_chain(algo, acting, obs, noise, step_noise):
    """The whole chain x_0..x_S (S + 1, B, d) the acting policy samples from the given noises:
    the frozen base's steps, then the trained network's (as `act` samples), and x_{S-k} as
    `denoise` reached it."""
    first = algo.first_trained_step
    stds = jnp.maximum(algo.coefficients["sigma"], algo.config.min_sampling_std)
    _, frozen = algo.policy.run_steps(
        acting["base_policy"], obs, noise, step_noise[:first], algo.steps(0, first), stds[:first]
    )
    _, trained = algo.denoise(acting, obs, noise, step_noise)
    return jnp.concatenate([frozen[:-1], trained]), trained[0]


def chain_step_log_probs(algo, acting, obs, chain):
    """(B, S): each step of a whole chain scored under the network that runs it."""
    first = algo.first_trained_step
    frozen = algo.segment_log_probs(acting["base_policy"], obs, chain[: first + 1], 0)
    trained = algo.segment_log_probs(acting["params"]["policy"], obs, chain[first:], first)
    return jnp.concatenate([frozen, trained], axis=-1)


def test_an_update_leaves_the_untrained_steps_exactly_where_they_were(one_update):
    # Training the last 2 of 5 steps: the 3 earlier transitions must not move (the bug of one
    # shared network: they did, with no ratio and no clip on them), the trained ones must.
    algo, before, _, after, _ = one_update
    keys = jax.random.split(jax.random.PRNGKey(3), 3)
    obs = jax.random.normal(keys[0], (64, SPEC.obs_dim))
    noise = jax.random.normal(keys[1], (64, SPEC.action_dim))
    step_noise = jax.random.normal(keys[2], (STEPS, 64, SPEC.action_dim))

    @jax.jit
    def resample_and_score(chain, state):
        acting = algo.acting_params(state)
        again, reached = sampled_chain(algo, acting, obs, noise, step_noise)
        return again, reached, chain_step_log_probs(algo, acting, obs, chain)

    chain, _, old = resample_and_score(jnp.zeros((STEPS + 1, 64, 2)), before)
    chain, _, old = resample_and_score(chain, before)
    again, reached, new = resample_and_score(chain, after)
    change = np.abs(np.asarray(new - old)).mean(axis=0)
    untrained = STEPS - TRAINED
    assert (change[:untrained] == 0).all()
    assert (change[untrained:] > 1e-3).all()
    # From the same noises, `act` after the update reaches the same x_{S-k} and moves on.
    np.testing.assert_array_equal(np.asarray(reached), np.asarray(chain[untrained]))
    np.testing.assert_array_equal(np.asarray(again[: untrained + 1]), chain[: untrained + 1])
    assert not np.allclose(np.asarray(again[-1]), np.asarray(chain[-1]))


def test_ratio_is_one_before_the_first_gradient_step(one_update):
    # One epoch of one minibatch: the only ratio the update computes is at the parameters the
    # rollout was sampled with.
    *_, metrics = one_update
    assert abs(float(metrics["ratio_mean"]) - 1.0) < 1e-6
    assert abs(float(metrics["approx_kl"])) < 1e-7
    assert float(metrics["clip_fraction"]) == 0.0


def acted_minibatch(algo, state, batch) -> dict:
    """The rollout's samples as an update scores them (normalised observations, the chains)."""
    obs = algo.normalized(algo.acting_params(state), batch.obs.reshape(-1, SPEC.obs_dim))
    chain = batch.extras["chain"].reshape(-1, TRAINED + 1, SPEC.action_dim)
    return {"obs": obs, "chain": chain}


def test_sampling_and_scoring_share_the_step_means_and_the_noise_is_clipped(one_update):
    # The trained steps' noises recovered from the stored chains under the scoring means and
    # the sampling stds are standard normal draws clipped at 3.
    algo, state, batch, *_ = one_update
    minibatch = acted_minibatch(algo, state, batch)
    chain = jnp.moveaxis(minibatch["chain"], -2, 0)
    first = algo.first_trained_step
    steps = algo.steps(first, TRAINED)
    means = jax.jit(algo.policy.chain_means)(
        state["params"]["policy"], minibatch["obs"], chain, steps
    )
    stds = jnp.maximum(steps["sigma"], 0.1)[:, None, None]
    z = np.abs(np.asarray((chain[1:] - means) / stds))
    assert 2.999 < z.max() <= 3.0 + 1e-4
    assert 0.5 < z.mean() < 0.9  # E|z| = 0.80 for a standard normal
    assert float(stds.min()) == pytest.approx(0.1) and float(stds.max()) > 0.1  # floor, and above


def test_clip_grows_and_the_discount_shrinks_over_the_trained_steps_as_numbers():
    config = DPPOConfig()  # the reference's: clip 1e-3 -> 0.01 at rate 3, discount 0.99
    clips = step_clip_ranges(config, 3)
    # 1e-3 + 9e-3 (e^{3t} - 1) / (e^3 - 1) at t = 0, 1/2, 1.
    np.testing.assert_allclose(clips, [1e-3, 1e-3 + 9e-3 * 0.18242552, 0.01], rtol=1e-5)
    np.testing.assert_allclose(step_clip_ranges(config, 1), [0.01])
    np.testing.assert_allclose(step_advantage_weights(config, 3), [0.9801, 0.99, 1.0], rtol=1e-6)


def test_the_loss_applies_each_steps_clip_and_discount(one_update):
    # Advantages +-1 (normalised they stay so) and the same log ratio on every step: the
    # surrogate is -mean over samples and steps of w_k A min(r, 1 + clip_k) for A > 0 and
    # w_k A r for A < 0 (the clip only binds where the ratio gains), w = (0.5, 1).
    algo, state, batch, *_ = one_update
    minibatch = acted_minibatch(algo, state, batch)
    signs = jnp.where(jnp.arange(len(minibatch["obs"])) % 2 == 0, 1.0, -1.0)
    ones = jnp.ones_like(signs)
    minibatch |= {"advantages": signs, "value": ones, "returns": ones}
    current = algo.step_log_probs(state["params"], minibatch)
    loss = jax.jit(lambda m: algo.loss(state["params"], m, algo.config.clip_eps, state["frozen"]))
    weights, clips = np.array([0.5, 1.0]), step_clip_ranges(algo.config, TRAINED)
    # 0.005: beyond the first step's clip (1e-3), inside the last one's (0.01).
    for log_ratio in (0.5, 0.005):
        ratio = np.exp(log_ratio)
        gained = np.minimum(ratio, 1 + clips)
        expected = -np.mean(weights * (gained - ratio)) / 2
        _, info = loss(minibatch | {"old_step_log_prob": current - log_ratio})
        assert float(info["policy_loss"]) == pytest.approx(expected, rel=1e-4)


def random_pretrained_ddpm() -> Pretrained:
    """An untrained DDPM of single actions with an action map and observation statistics that
    change its inputs and outputs (as a `gprl pretrain ddpm` run's would)."""
    ddpm = DDPMPolicy(2, DDPMPolicyConfig(hidden=(16,), num_train_steps=4, num_steps=4))
    obs_norm = running_stats_init((SPEC.obs_dim,)) | {"mean": jnp.full(SPEC.obs_dim, 0.5)}
    acting = {
        "params": jax.jit(ddpm.init, static_argnums=1)(jax.random.PRNGKey(0), SPEC.obs_dim),
        "obs_norm": obs_norm,
        "action_norm": {"center": jnp.full(2, 0.2), "half_range": jnp.full(2, 0.5)},
    }
    return Pretrained(
        "ddpm", ChunkPolicy(ddpm, 1, 2, 0.0), acting, PretrainConfig(), ddpm.config, "probe",
        "gymnasium", SPEC.obs_dim, SPEC.action_dim,
    )  # fmt: skip


def test_init_starts_from_the_pretrained_policy_and_may_change_only_its_sampler():
    pretrained = random_pretrained_ddpm()
    config = replace(small_config(), ddpm=DPPOConfig().ddpm)

    def build(config):
        return ALGORITHMS["dppo"].algorithm(config, SPEC, NUM_ENVS, 10_000, pretrained=pretrained)

    algo = build(config)
    acting = jax.jit(lambda key: algo.acting_params(algo.init(key)))(jax.random.PRNGKey(1))
    obs = jax.random.normal(jax.random.PRNGKey(2), (16, SPEC.obs_dim))
    # The deterministic policy is the pretrained one at noise scale 0, action map included.
    plan = jax.jit(pretrained.policy.plan)
    expected = plan(pretrained.acting, obs, jax.random.PRNGKey(3))[:, 0]
    actual = jax.jit(algo.act_deterministic)(acting, obs)
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), atol=1e-6)
    assert float(jnp.abs(actual - 0.2).max()) <= 0.5 + 1e-6  # inside the action map's range
    ddim = DDPMPolicyConfig(hidden=(64, 64), sampler="ddim", num_steps=2, eta=1.0)
    assert build(replace(config, ddpm=ddim)).policy.config.num_steps == 2
    with pytest.raises(ValueError, match=r"drop --dppo\.ddpm\.hidden"):
        build(replace(config, ddpm=DDPMPolicyConfig(hidden=(8,))))
    with pytest.raises(ValueError, match=r"exceeds the policy's 4 denoising steps"):
        build(replace(config, fine_tuned_steps=5))


def test_a_run_of_the_flow_variant_saved_as_dppo_is_refused_in_one_line(tmp_path, cli_error):
    old = tmp_path / "old-dppo"
    old.mkdir()
    run = RunConfig(env="gprl/ContextualTarget-v0", total_steps=4096, num_envs=8, out=old)
    record = {"algo": "dppo", "run": to_jsonable(run), "algo_config": to_jsonable(DPPOFlowConfig())}
    (old / "config.json").write_text(json.dumps(record))
    error = cli_error(["train", "dppo", "--resume", str(old)])
    assert "renamed dppo-flow" in error and "gprl train dppo-flow" in error
    with pytest.raises(ValueError, match="renamed dppo-flow"):
        from_jsonable(DPPOConfig, record["algo_config"])
    # The paper's own records load as they were saved.
    assert from_jsonable(DPPOConfig, to_jsonable(small_config())) == small_config()


def learning_config(fine_tuned_steps: int | None) -> DPPOConfig:
    """The settings of the learning tests: small rollouts, a wider clip than the paper's."""
    return replace(
        DPPOConfig(),
        fine_tuned_steps=fine_tuned_steps,
        rollout_steps=32,
        num_minibatches=4,
        learning_rate=1e-3,
        clip_eps=0.05,
        first_step_clip_eps=0.01,
    )


@pytest.mark.slow
def test_dppo_learns_an_observation_dependent_action_from_scratch(tmp_path):
    config = learning_config(fine_tuned_steps=None)
    run = RunConfig(
        env="gprl/ContextualTarget-v0",
        env_backend="jax",
        total_steps=30_000,
        num_envs=8,
        out=tmp_path / "run",
        progress=False,
        eval_every=10_000,
        eval_episodes=64,
    )
    with open(train("dppo", run, config) / "metrics.csv", newline="") as f:
        evals = [float(r["eval_return"]) for r in csv.DictReader(f) if r["eval_return"]]
    assert evals[-1] > -0.06  # the best constant action earns about -0.43, the optimum 0


@pytest.mark.slow
def test_interrupted_dppo_run_resumes_exactly(tmp_path, resume_check):
    run = RunConfig(
        env="gprl/TwoGoalPoint-v0",
        total_steps=2048,
        num_envs=4,
        out=tmp_path / "interrupted",
        progress=False,
        eval_every=512,
        eval_episodes=4,
        checkpoint_every=512,
    )
    config = small_config(rollout_steps=32, num_minibatches=4, learning_rate=3e-4)
    resume_check.train("dppo", run, config, 5)


@pytest.mark.slow
def test_fine_tuning_a_ddpm_pretrain_run_starts_at_its_return_and_improves(tmp_path, monkeypatch):
    from test_finetune import EVAL_SEED, PROBE, mediocre_actions, record_one_step_task

    from gprl.policies import POLICIES
    from gprl.pretrain import PretrainConfig as ImitationConfig
    from gprl.pretrain import PretrainRun, evaluate_run, pretrain

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    dataset = record_one_step_task(PROBE, "probe/mediocre-v0", mediocre_actions, 500)
    options = PretrainRun(
        dataset=dataset, steps=1000, out=tmp_path / "ddpm", progress=False, eval_every=0
    )
    ddpm = replace(
        POLICIES["ddpm"].default_config, hidden=(64, 64), num_train_steps=10, num_steps=10
    )
    init = pretrain("ddpm", options, ImitationConfig(log_every=500, noise_scale=0.0), ddpm)
    _, pretrained = evaluate_run(init, 64, EVAL_SEED)
    config = learning_config(fine_tuned_steps=5)
    run = RunConfig(
        env=PROBE,
        env_backend="gymnasium",
        total_steps=12_288,
        num_envs=8,
        out=tmp_path / "dppo",
        progress=False,
        eval_every=4096,
        eval_episodes=64,
        init=init,
    )
    with open(train("dppo", run, config) / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["eval_return"]]
    start, final = float(rows[0]["eval_return"]), float(rows[-1]["eval_return"])
    assert pretrained["eval_return"] < -0.1  # deliberately weak
    assert start == pytest.approx(pretrained["eval_return"], abs=1e-5)
    assert final > -0.06  # measured: -0.170 -> -0.026
