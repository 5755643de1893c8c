"""DSRL: steering a frozen, deliberately weak pretrained policy through its noise on a probe task
where the best action is known; the starting evaluation; exact resume; bad input."""

import csv
from dataclasses import replace

import jax
import numpy as np
import pytest

from gprl.algos import DSRL, DSRLConfig
from gprl.checkpoint import load_checkpoint, read_meta
from gprl.dataset_writer import write_dataset
from gprl.datasets import Episode
from gprl.envs import make_env
from gprl.envs.diagnostics import contextual_target_optimum
from gprl.policies import POLICIES, FlowPolicy
from gprl.pretrain import ChunkPolicy, PretrainConfig, PretrainRun, load_pretrained, pretrain
from gprl.replay import replay_init
from gprl.trainer import RunConfig, load_run, train
from gprl.types import Transition

# One worker runs this module, so its costly module fixture (weak_base) is built once.

ENV = "gprl/ContextualTarget-v0"
FAST_DSRL = DSRLConfig(
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
EVAL_EPISODES = 32


def uniform_action_episodes(count: int, seed: int) -> list[Episode]:
    """One-step ContextualTarget episodes whose actions ignore the context: uniform in the box."""
    rng = np.random.default_rng(seed)
    episodes = []
    for _ in range(count):
        context = rng.uniform(-1, 1, 3).astype(np.float32)
        action = rng.uniform(-1, 1, 2).astype(np.float32)
        reward = -np.sum((action - contextual_target_optimum(context)) ** 2, dtype=np.float32)
        done, cut = np.ones(1, bool), np.zeros(1, bool)
        episodes.append(
            Episode(np.stack([context, context]), action[None], reward[None], done, cut)
        )
    return episodes


@pytest.fixture(scope="module")
def weak_base(tmp_path_factory):
    """A flow policy cloned from uniformly random actions: it ignores the context, but its
    noise reaches every action, the optimal ones included. Evaluated at noise 0 (its deterministic
    action, near the box's centre) it earns about -0.44; the optimum is 0."""
    root = tmp_path_factory.mktemp("weak-base")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MINARI_DATASETS_PATH", str(root / "datasets"))
        with make_env(ENV, 1, 0, backend="gymnasium") as env:
            spec = env.spec
        write_dataset("probe/uniform-v0", uniform_action_episodes(2000, 0), spec, "uniform", "-")
        options = PretrainRun(
            dataset="probe/uniform-v0",
            steps=1000,
            out=root / "pretrain",
            progress=False,
            eval_every=0,
            eval_episodes=EVAL_EPISODES,
        )
        flow = replace(POLICIES["flow"].default_config, hidden=(64, 64))
        return pretrain("flow", options, PretrainConfig(noise_scale=0.0), flow)


def read_rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def evaluations(run_dir) -> list[float]:
    return [float(row["eval_return"]) for row in read_rows(run_dir) if row["eval_return"]]


def dsrl_run(base, out, backend="jax", total_steps=1536, **overrides) -> RunConfig:
    fields = dict(
        env=ENV,
        env_backend=backend,
        total_steps=total_steps,
        num_envs=4,
        out=out,
        progress=False,
        eval_every=512,
        eval_episodes=EVAL_EPISODES,
        init=base,
    )
    return RunConfig(**(fields | overrides))


@pytest.fixture(scope="module")
def steered_runs(tmp_path_factory, weak_base):
    """steered(variant) -> the run dir of DSRL steering weak_base, trained on first use. The
    plain variant acts on the host (gymnasium) backend, the pretrain run's own, so its first
    evaluation is comparable with the pretrain run's; noise_aliased on the JAX backend."""
    runs = {}

    def steered(variant):
        if variant not in runs:
            backend = "gymnasium" if variant == "plain" else "jax"
            run = dsrl_run(weak_base, tmp_path_factory.mktemp(variant) / "run", backend)
            runs[variant] = train("dsrl", run, replace(FAST_DSRL, variant=variant))
        return runs[variant]

    return steered


# The noise-aliased variant's learning run is -m slow (19 s); its noise critic trains in the
# default suite in the resume test (test_interrupted_dsrl_run_resumes_exactly_...).
@pytest.mark.parametrize(
    "variant", ["plain", pytest.param("noise_aliased", marks=pytest.mark.slow)]
)
def test_dsrl_steers_a_weak_frozen_policy_to_the_optimum(steered_runs, weak_base, variant):
    run_dir = steered_runs(variant)
    returns = evaluations(run_dir)
    assert returns[0] < -0.4  # the base policy at noise 0 (a near 0)
    assert returns[-1] > -0.08 and returns[-1] > returns[0] + 0.35, returns

    algo, state, _ = load_run(run_dir)
    contexts = np.random.default_rng(7).uniform(-1, 1, (256, 3)).astype(np.float32)
    actions = np.asarray(algo.act_deterministic(algo.acting_params(state), contexts))
    assert np.abs(actions - contextual_target_optimum(contexts)).mean() < 0.15, returns
    # The base policy is untouched: its weights in the state are the pretrained ones.
    jax.tree.map(np.testing.assert_array_equal, state["frozen"], load_pretrained(weak_base).acting)
    if variant == "noise_aliased":
        # The noise critic has learnt Q(s, pi_base(s, w)) of the action critic.
        noise = np.random.default_rng(8).normal(size=(256, 2)).astype(np.float32)
        decoded = algo._decode(state["frozen"], contexts, noise)
        q_action = np.asarray(algo.critic.apply(state["critic"], contexts, decoded).min(0))
        q_noise = np.asarray(
            algo.noise_critic.apply(state["noise_critic"], contexts, noise / 1.5).min(0)
        )
        assert np.abs(q_noise - q_action).mean() < 0.2 * q_action.std()


def test_first_evaluation_is_the_base_policy_at_noise_zero(steered_runs, weak_base):
    # Same env backend, evaluation seed and episode count as the pretrain run's evaluation
    # (which used noise_scale 0): the actor's initial mean noise is exactly 0, so the returns
    # must agree to float precision.
    pretrain_return = float(read_rows(weak_base)[-1]["eval_return"])
    rows = read_rows(steered_runs("plain"))
    assert rows[0]["env_steps"] == "0"
    assert float(rows[0]["eval_return"]) == pytest.approx(pretrain_return, abs=1e-5)
    assert pretrain_return < -0.4


# -m slow (the suite's time on 2 cores): the replay loop's exact resume runs by default for SAC.
@pytest.mark.slow
def test_interrupted_dsrl_run_resumes_exactly_and_stores_the_noise_it_acted_from(
    tmp_path, weak_base, resume_check
):
    config = replace(FAST_DSRL, variant="noise_aliased", noise_critic_every=3)
    run = dsrl_run(weak_base, tmp_path / "interrupted", total_steps=768, checkpoint_every=384)

    def checkpointed_at_384_steps(run_dir):
        assert read_meta(run_dir)["progress"]["iteration"] == 3

    checked = resume_check.train("dsrl", run, config, 5, checkpointed_at_384_steps)
    reference_rows, resumed = checked.rows, checked.resumed
    assert len(reference_rows) == 7 and reference_rows[-1]["noise_critic/loss"]

    # Every stored action is the base policy's action for the stored noise, explored (the
    # first 256 steps) or acted.
    algo, state, _ = load_run(resumed)
    example = Transition(
        obs=np.zeros(3, np.float32),
        action=np.zeros(2, np.float32),
        reward=np.float32(0),
        terminated=np.bool_(False),
        truncated=np.bool_(False),
        next_obs=np.zeros(3, np.float32),
        extras={"noise": np.zeros(2, np.float32)},
    )
    template = {"algo": state, "key": jax.random.PRNGKey(0), "replay": replay_init(example, 768)}
    replay = load_checkpoint(resumed, template, {"algo": "dsrl"})[0]["replay"]
    assert int(replay.online_size) == 768
    data = replay.data
    decoded = algo._decode(state["frozen"], data.obs, data.extras["noise"])
    np.testing.assert_allclose(np.asarray(decoded), np.asarray(data.action), atol=1e-5)
    noise = np.asarray(data.extras["noise"])
    assert np.abs(noise).max() <= 1.5 and noise[256:].std() > 0.1


@pytest.mark.parametrize("kind", list(POLICIES))
def test_dsrl_acts_through_every_policy_kind_from_the_noise_it_reports(kind):
    # An untrained policy of each kind with random observation and action statistics: the
    # action is pi_base(s, w) for the w kept in the extras, w stays in the box, and the
    # starting deterministic action is pi_base(s, 0).
    rng = np.random.default_rng(0)
    pretrained = untrained_base(kind, rng)
    acting = pretrained.acting
    dsrl = DSRL(FAST_DSRL, probe_spec(), 4, 1024, pretrained=pretrained)
    state = dsrl.init(jax.random.PRNGKey(1))
    obs = rng.uniform(-1, 1, (64, 3)).astype(np.float32)
    # Compiled like DSRL's: DDIM's division by sqrt(alpha_bar) amplifies float differences.
    decode = jax.jit(lambda obs, noise: pretrained.policy.plan_from_noise(acting, obs, noise))

    action, extras = jax.jit(dsrl.act)(dsrl.acting_params(state), obs, jax.random.PRNGKey(2))
    noise = np.asarray(extras["noise"])
    assert np.abs(noise).max() <= 1.5 and noise.std() > 0.3
    np.testing.assert_allclose(action, decode(obs, noise)[:, 0], atol=1e-4)
    start = jax.jit(dsrl.act_deterministic)(dsrl.acting_params(state), obs)
    np.testing.assert_allclose(start, decode(obs, np.zeros((64, 2), np.float32))[:, 0], atol=1e-4)
    assert np.abs(np.asarray(action) - np.asarray(start)).max() > 0.01  # the noise matters


def probe_spec():
    with make_env(ENV, 1, 0, backend="gymnasium") as env:
        return env.spec


def untrained_base(kind: str, rng):
    """An untrained policy of this kind for ContextualTarget, with random observation and
    action statistics."""
    policy = POLICIES[kind].policy(2, replace(POLICIES[kind].config(), hidden=(16, 16)))
    acting = {
        "params": policy.init(jax.random.PRNGKey(0), 3),
        "obs_norm": {"mean": rng.normal(size=3), "var": rng.uniform(0.5, 2, 3), "count": 1.0},
        "action_norm": {"center": rng.uniform(-0.2, 0.2, 2), "half_range": np.full(2, 0.5)},
    }
    acting = jax.tree.map(lambda x: np.asarray(x, np.float32), acting)
    return load_pretrained_like(kind, ChunkPolicy(policy, 1, 2, 1.0), acting)


class RecordingCritic:
    """A critic module whose apply keeps the actions (noises) it is called on."""

    def __init__(self, critic):
        self.critic, self.inputs = critic, []

    def apply(self, params, obs, action):
        self.inputs.append(np.asarray(action))
        return self.critic.apply(params, obs, action)


def test_the_noise_critic_learns_the_noises_the_actor_can_produce():
    dsrl = DSRL(
        replace(FAST_DSRL, variant="noise_aliased"),
        probe_spec(),
        4,
        1024,
        pretrained=untrained_base("flow", np.random.default_rng(0)),
    )
    state = dsrl.init(jax.random.PRNGKey(0))
    dsrl.noise_critic = RecordingCritic(dsrl.noise_critic)
    obs = np.random.default_rng(1).uniform(-1, 1, (512, 3)).astype(np.float32)
    dsrl._distill(state, obs, jax.random.PRNGKey(1))
    (inputs,) = dsrl.noise_critic.inputs
    # Scaled by the box: the actor's squashed noises lie in [-1, 1]. The prior restricted to
    # the box, not clipped onto its faces, and as wide as the prior there (std 0.74 at 1.5).
    assert np.abs(inputs).max() < 1.0
    assert 0.6 < float(inputs.std()) * 1.5 < 0.9


def load_pretrained_like(kind, policy, acting):
    """A gprl.pretrain.Pretrained for ContextualTarget without a pretrain run."""
    from gprl.pretrain import Pretrained

    return Pretrained(kind, policy, acting, PretrainConfig(), None, ENV, "gymnasium", 3, 2)


def test_dsrl_takes_a_policy_of_chunks_only_as_its_flat_chunk(weak_base):
    pretrained = load_pretrained(weak_base)
    chunked = pretrained._replace(policy=ChunkPolicy(FlowPolicy(4), 2, 2, 1.0))
    with make_env(ENV, 1, 0, backend="gymnasium") as env:
        spec = env.spec
    with pytest.raises(ValueError, match="this one plans chunks of 2: pass its flat-chunk view"):
        DSRL(FAST_DSRL, spec, 4, 1024, pretrained=chunked)


def test_cli_rejects_bad_dsrl_input_in_one_line(tmp_path, weak_base, cli_error):
    base = ["train", "dsrl", "--total-steps", "4096", "--out", str(tmp_path / "bad")]
    init = ["--env", ENV, "--init", str(weak_base)]
    for args, message in [
        (["--env", ENV], "dsrl fine-tunes a pretrained policy: pass --init RUN_DIR"),
        ([*init, "--dsrl.noise-bound", "0"], "noise_bound must be a positive number, got 0.0"),
        ([*init, "--dsrl.noise-critic-every", "0"], "noise_critic_every must be at least 1, got 0"),
        (
            ["--env", "gprl/BimodalBandit-v0", "--init", str(weak_base)],
            f"was pretrained on {ENV}, not gprl/BimodalBandit-v0",
        ),
    ]:
        assert message in cli_error([*base, *args]), args
    assert not (tmp_path / "bad").exists()
