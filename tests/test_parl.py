"""PA-RL: the acting policy (top base samples by Q, refined along dQ/da) reaches the optimum of
a probe task and the base distils it; the global then local optimisation climbs a known Q; a
chunked base of a non-flow kind is taken and trained by its own loss; exact resume; bad input."""

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_chunked_finetune import CHUNK_SPEC, on_random_chunked_policy, random_chunked_policy
from test_dsrl import probe_spec, read_rows
from test_expo import spread_dataset
from test_residual import residual_run
from test_residual import weak_base as flow_base  # noqa: F401 (a fixture)

from gprl import initial_policy
from gprl.algos import PARL, PARLConfig
from gprl.checkpoint import read_meta
from gprl.envs.diagnostics import contextual_target_optimum
from gprl.policies import FlowPolicyConfig
from gprl.trainer import RunConfig, load_run, train
from gprl.types import Transition

ENV = "gprl/ContextualTarget-v0"
SMALL = (32, 32)
FAST = PARLConfig(
    flow=FlowPolicyConfig(hidden=SMALL, num_steps=3),
    critic_hidden=SMALL,
    critic_layer_norm=False,  # each LayerNorm adds a second to the update's compilation
    batch_size=64,
    learning_starts=128,
    update_every=16,
    steps_per_iteration=128,
    learning_rate=1e-3,
    base_learning_rate=1e-3,
    num_samples=16,
    local_steps=3,
    local_step_size=0.05,
)


def probe_run(out, **overrides) -> RunConfig:
    fields = dict(
        env=ENV,
        total_steps=1536,
        num_envs=4,
        out=out,
        progress=False,
        eval_every=512,
        eval_episodes=64,
    )
    return RunConfig(**(fields | overrides))


def base_return(algo, state, contexts, seed: int) -> float:
    """The mean return of the base's own samples (no critic) on these contexts."""
    acting = algo.acting_params(state)
    actions, _ = algo.explore(acting, contexts, jax.random.PRNGKey(seed))
    return float(-np.sum((actions - contextual_target_optimum(contexts)) ** 2, axis=1).mean())


@pytest.mark.slow
def test_pa_rl_from_scratch_acts_at_the_optimum_and_distils_it_into_its_base(tmp_path):
    run_dir = train("pa-rl", probe_run(tmp_path / "run"), FAST)
    returns = [float(row["eval_return"]) for row in read_rows(run_dir) if row["eval_return"]]
    assert returns[-1] > -0.03, returns  # optimal 0; the best constant action earns -0.46

    algo, state, _ = load_run(run_dir)
    contexts = np.random.default_rng(7).uniform(-1, 1, (512, 3)).astype(np.float32)
    fresh = algo.init(jax.random.PRNGKey(0))
    before, after = base_return(algo, fresh, contexts, 1), base_return(algo, state, contexts, 1)
    assert before < -0.5 and after > -0.1, (before, after)


def test_the_global_then_local_optimisation_climbs_a_known_q():
    # A critic whose best action is known: Q(s, a) = -|a - (0.3, -0.6)|^2.
    algo = PARL(replace(FAST, num_samples=8, num_kept=3), probe_spec(), 4, 1024)
    optimum = jnp.array([0.3, -0.6])
    algo._q = lambda critic, obs, action: -jnp.sum((action - optimum) ** 2, axis=-1)
    policy = algo.acting_params(algo.init(jax.random.PRNGKey(0)))["policy"]
    obs = jax.random.uniform(jax.random.PRNGKey(1), (64, 3), minval=-1.0)
    noise = jax.random.normal(jax.random.PRNGKey(2), (64, 8, 2))
    samples = algo.flow.sample(policy["base"], jnp.repeat(obs[:, None], 8, axis=1), noise)
    sample_q = -np.sum((np.asarray(samples) - np.asarray(optimum)) ** 2, axis=-1)

    algo.config = replace(algo.config, local_steps=0)
    best_sample, *_ = jax.jit(algo.optimised)(policy, obs, noise)
    # Compiled and eager sampling may round differently (by an ulp under XLA's default
    # optimisation); the samples of one observation lie far further apart than that.
    np.testing.assert_allclose(best_sample, samples[np.arange(64), sample_q.argmax(1)], atol=1e-6)
    # Each step of size 0.25 along dQ/da = -2 (a - a*) halves the distance to the optimum (up
    # to the box): 3 steps leave an eighth of the best sample's distance, or less.
    algo.config = replace(algo.config, local_steps=3, local_step_size=0.25)
    ascended, *_ = jax.jit(algo.optimised)(policy, obs, noise)
    distance = np.linalg.norm(np.asarray(ascended) - np.asarray(optimum), axis=1)
    assert np.all(distance <= np.sqrt(-sample_q.max(1)) / 8 + 1e-5)
    assert np.abs(ascended).max() <= 1.0


def quadratic_batch(obs, actions) -> Transition:
    """One-step transitions of actions at obs, rewarded -|action - 0.5|^2."""
    return Transition(
        obs=obs,
        action=actions,
        reward=-np.sum((actions - 0.5) ** 2, axis=1),
        terminated=np.ones(len(obs), bool),
        truncated=np.zeros(len(obs), bool),
        next_obs=obs,
        extras={},
    )


def test_the_critic_warm_up_holds_the_base_exactly_and_acts_with_its_samples():
    warmup = 12
    config = replace(FAST, critic_warmup_updates=warmup, num_samples=4, num_kept=2)
    algo = PARL(config, probe_spec(), 4, 1024)
    state = algo.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    obs = rng.uniform(-1, 1, (64, 3)).astype(np.float32)
    actions = rng.uniform(-1, 1, (64, 2)).astype(np.float32)
    batch = quadratic_batch(obs, actions)
    # While warming up the run acts with the base's own sample from the first noise.
    noise = jax.random.normal(jax.random.PRNGKey(1), (64, 4, 2))
    acted, *_ = algo.decide(algo.acting_params(state)["policy"], obs, noise)
    sampled = algo.flow.sample(state["params"]["flow"], obs, noise[:, 0])
    np.testing.assert_allclose(acted, sampled, atol=1e-6)

    update = jax.jit(lambda state, key: algo.update(state, batch, key))
    warm, losses = state, []
    for key in jax.random.split(jax.random.PRNGKey(2), warmup):
        warm, info = update(warm, key)
        losses.append(float(info["critic/loss"]))
        assert info["base/distilling"] == 0
    jax.tree.map(np.testing.assert_array_equal, warm["params"]["flow"], state["params"]["flow"])
    assert losses[-1] < 0.8 * losses[0], losses
    # The first distillation step is a fresh Adam's: the weights move by its rate, at most.
    distilled, info = update(warm, jax.random.PRNGKey(3))
    assert (
        info["base/distilling"] == 1 and not algo.acting_params(distilled)["policy"]["warming_up"]
    )
    moved = jax.tree.leaves(
        jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), distilled["params"]["flow"],
                     warm["params"]["flow"])
    )  # fmt: skip
    np.testing.assert_allclose(max(moved), FAST.base_learning_rate, rtol=1e-3)


def chunked_algo(kind: str, config=FAST):
    """PA-RL on test_chunked_finetune's untrained chunked policy of this kind."""
    return on_random_chunked_policy(PARL, kind, config)


def test_a_chunked_gaussian_base_acts_in_chunks_and_is_fitted_by_its_own_loss():
    algo, pretrained = chunked_algo("gaussian")
    state = algo.init(jax.random.PRNGKey(0))
    params = state["params"]["flow"]
    jax.tree.map(np.testing.assert_array_equal, params, pretrained.acting["params"])
    rng = np.random.default_rng(0)
    histories = rng.normal(size=(16, 6)).astype(np.float32)
    actions, _ = jax.jit(algo.act)(algo.acting_params(state), histories, jax.random.PRNGKey(1))
    assert actions.shape == (16, 6) and float(jnp.abs(actions).max()) <= 1.0
    # The distillation loss is the Gaussian's likelihood of the chunk under its action map
    # (centre 0.2, half range 0.5 per action), on the standardised history.
    chunks = rng.uniform(-1, 1, (16, 6)).astype(np.float32)
    loss, _ = algo.flow.loss(params, histories, chunks, jax.random.PRNGKey(2))
    cond = pretrained.policy.condition(pretrained.acting, histories)
    expected, _ = pretrained.policy.policy.loss(params, cond, (chunks - 0.2) / 0.5, None)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gaussian", "ddpm"])
def test_a_chunked_base_of_another_kind_is_distilled_toward_the_best_chunks(kind):
    # A fixed batch whose reward -|chunk - 0.5|^2 the critic learns: the base's own samples
    # move toward the best chunk.
    algo, _ = chunked_algo(kind, replace(FAST, batch_size=128, critic_warmup_updates=0))
    state = algo.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    histories = rng.normal(size=(128, 6)).astype(np.float32)
    chunks = rng.uniform(-1, 1, (128, 6)).astype(np.float32)
    batch = quadratic_batch(histories, chunks)

    def base_error(state):
        sampled, _ = algo.explore(algo.acting_params(state), histories, jax.random.PRNGKey(1))
        assert sampled.shape == (128, 6) and float(jnp.abs(sampled).max()) <= 1.0
        return float(jnp.mean((sampled - 0.5) ** 2))

    def train(state, key):
        return jax.lax.scan(lambda s, k: algo.update(s, batch, k), state, key)

    before = base_error(state)
    state, info = jax.jit(train)(state, jax.random.split(jax.random.PRNGKey(2), 200))
    after = base_error(state)
    assert after < 0.5 * before, (before, after)
    assert np.all(np.isfinite(info["base/distill_loss"]))


def test_a_base_that_does_not_act_in_this_runs_decisions_is_refused_in_one_line():
    pretrained = random_chunked_policy("gaussian")
    refusal = "pa-rl distils into a policy of one action per decision; this one plans chunks of 3"
    with pytest.raises(ValueError, match=refusal):
        PARL(FAST, CHUNK_SPEC, 4, 20_000, pretrained=pretrained)
    flat = initial_policy.flat_chunk_policy(pretrained)
    with pytest.raises(ValueError, match="--init decides 6 action values at once; this run's "):
        PARL(FAST, CHUNK_SPEC, 4, 20_000, pretrained=flat)
    # A pretrained base standardises observations itself: standardising them first is refused.
    standardising = replace(FAST, normalize_observations=True)
    with pytest.raises(ValueError, match=r"a pretrained base \(--init\) standardises them itself"):
        chunked_algo("gaussian", standardising)


def test_cli_rejects_bad_pa_rl_input_in_one_line(tmp_path, cli_error):
    base = ["train", "pa-rl", "--env", ENV, "--out", str(tmp_path / "bad")]
    for args, message in [
        (["--pa-rl.num-kept", "9"], "num_kept must be between 1 and num_samples (8), got 9"),
        (["--pa-rl.local-steps", "-1"], "local_steps must be non-negative, got -1"),
        (
            ["--pa-rl.critic-warmup-updates", "-1"],
            "critic_warmup_updates must be non-negative, got -1",
        ),
        (["--pa-rl.base-kind", "mlp"], "base_kind must be one of gaussian, flow,"),
        (["--init", str(tmp_path)], "--init: no checkpoint in"),
    ]:
        assert message in cli_error([*base, *args]), args
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_an_interrupted_pa_rl_run_on_a_pretrained_base_and_a_dataset_resumes_exactly(
    tmp_path,
    flow_base,  # noqa: F811 (the fixture)
    resume_check,
    minari_root,
):
    dataset = spread_dataset("probe/spread-parl-v0", episodes=200)
    # The critic warm-up spans the offline phase; the online iterations distil.
    config = replace(FAST, offline_updates=128, offline_fraction=0.5, critic_warmup_updates=128)
    run = residual_run(
        flow_base, tmp_path / "interrupted", dataset=dataset, total_steps=640,
        eval_every=256, checkpoint_every=256,
    )  # fmt: skip

    # One offline iteration of 128 updates (counted as 128 env steps), then 5 online ones.
    def checkpointed_in_the_online_phase(run_dir):
        assert read_meta(run_dir)["progress"]["iteration"] == 4

    checked = resume_check.train("pa-rl", run, config, 5, checkpointed_in_the_online_phase)
    assert len(checked.rows) == 7 and checked.rows[-1]["base/distill_loss"]
    distilling = [row["base/distilling"] for row in checked.rows[1:]]
    assert distilling[0] == "0.0" and distilling[-1] == "1.0", distilling
