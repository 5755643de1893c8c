"""GoRL's decoder refits keep the policy: each collects whole episodes, and a refit whose policy
acts unlike the last one on states of the stage's rollouts is not taken."""

import csv
import math
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gprl.algos import GoRL, GoRLConfig
from gprl.types import EnvSpec, Transition

SPEC = EnvSpec("probe", 3, 2, -np.ones(2, np.float32), np.ones(2, np.float32), None)
NUM_ENVS, ROLLOUT = 16, 8


def small_gorl(**overrides) -> GoRLConfig:
    # 250 decoder steps fit this probe's policy to an action error of a few hundredths: a
    # tolerance of 0.1 takes that refit and still refuses one that extrapolates.
    ppo = replace(GoRLConfig().ppo, rollout_steps=ROLLOUT, num_minibatches=4)
    fast = {"decoder_train_steps": 250, "refit_tolerance": 0.1}
    return replace(GoRLConfig(ppo=ppo), **(fast | overrides))


def with_state_dependent_policy(state):
    """The state with an encoder whose means vary across most of the action range with the
    state: a policy a refit must keep."""
    actor = jax.tree.map(lambda x: x, state["params"]["actor"])
    layers = actor["params"]["MLP_0"]
    head = layers[max(layers, key=lambda name: int(name.rsplit("_", 1)[1]))]
    head["kernel"] = head["kernel"] * 150.0
    return state | {"params": state["params"] | {"actor": actor}}


def own_rollout(algo, state, contexts, seed):
    """A (T, N) batch of the policy's own actions on the given (T, N, 3) states."""
    keys = jax.random.split(jax.random.PRNGKey(seed), len(contexts))
    act = jax.vmap(algo.act, in_axes=(None, 0, 0))
    actions, extras = act(algo.acting_params(state), jnp.asarray(contexts), keys)
    shape = contexts.shape[:2]
    done = np.ones(shape, bool)
    return Transition(contexts, actions, np.zeros(shape, np.float32), done, ~done, contexts, extras)


def uniform_states(seed, shape, low=-1.0):
    return np.random.default_rng(seed).uniform(low, 1.0, (*shape, 3)).astype(np.float32)


def test_a_refit_fitted_to_a_corner_of_the_states_is_refused_and_a_covering_one_taken():
    algo = GoRL(small_gorl(), SPEC, NUM_ENVS, 100_000)
    state = with_state_dependent_policy(algo.init(jax.random.PRNGKey(0)))
    # One update on rollouts over the whole state box fills the probe the refit is checked on.
    rollout = own_rollout(algo, state, uniform_states(0, (ROLLOUT, NUM_ENVS)), 1)
    state, _ = jax.jit(algo.update)(state, rollout, jax.random.PRNGKey(2))
    deterministic = jax.jit(algo.act_deterministic)
    test_states = uniform_states(3, (512,))
    before = np.asarray(deterministic(algo.acting_params(state), test_states))

    # The collecting policy's own samples, but all in one corner of the state box: the decoder
    # fits them, and extrapolates elsewhere.
    corner = own_rollout(algo, state, uniform_states(4, (8, NUM_ENVS), low=0.8), 5)
    refused, info = algo.end_stage(state, corner, jax.random.PRNGKey(6))
    assert info["refit/accepted"] == 0
    assert info["refit/action_error"] > algo.config.refit_tolerance
    kept = np.asarray(deterministic(algo.acting_params(refused), test_states))
    np.testing.assert_allclose(kept, before, atol=1e-6)
    assert not bool(refused["decoder_active"]) and int(refused["stage"]) == 1

    covering = own_rollout(algo, state, uniform_states(7, (8, NUM_ENVS)), 8)
    taken, info = algo.end_stage(state, covering, jax.random.PRNGKey(6))
    assert info["refit/accepted"] == 1
    assert bool(taken["decoder_active"]) and int(taken["stage"]) == 1
    after = np.asarray(deterministic(algo.acting_params(taken), test_states))
    assert np.abs(after - before).mean() == pytest.approx(info["refit/action_error"], abs=0.03)
    assert np.abs(after - before).mean() < algo.config.refit_tolerance


def test_each_refit_collects_a_whole_episode_in_every_env_and_the_budget_must_hold_them():
    pendulum = replace(SPEC, max_episode_steps=200)
    # 4% of 20k steps is 50 steps per env: a quarter of a Pendulum episode.
    algo = GoRL(small_gorl(), pendulum, NUM_ENVS, 20_000)
    assert algo.collect_rollout_steps == 200
    # Envs without a time limit: at least decoder_min_samples pairs across the envs.
    assert GoRL(small_gorl(), SPEC, NUM_ENVS, 20_000).collect_rollout_steps == math.ceil(
        1024 / NUM_ENVS
    )
    with pytest.raises(ValueError, match="decoder refits collect 25600 of total_steps 20000"):
        GoRL(small_gorl(min_collect_episodes=4.0), pendulum, NUM_ENVS, 20_000)


# ----- the case: GoRL after --init on Pendulum-v1 ----------------------------------------


def eval_rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return [row for row in csv.DictReader(f) if row["eval_return"]]


@pytest.mark.slow
def test_gorl_after_behaviour_cloning_keeps_the_pendulum_policy(tmp_path, monkeypatch):
    """PPO -> 20 episodes -> flow BC -> gorl --init at 20k steps (about 1.5 min on 2 cores).
    Before the fix the first refit, fitted to 50 steps per env of balanced pendulums, dropped the
    evaluation from about -150 to -1,070."""
    from gprl.cli import main

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    common = ["--no-progress", "--env", "Pendulum-v1"]
    main(["train", "ppo", *common, "--total-steps", "300000", "--out", str(tmp_path / "ppo")])
    main(["collect", str(tmp_path / "ppo"), "--episodes", "20", "--out", "pendulum/ppo-v0"])
    bc = tmp_path / "bc"
    main(["pretrain", "flow", "--dataset", "pendulum/ppo-v0", "--steps", "5000", "--out", str(bc)])
    out = tmp_path / "gorl"
    main(["train", "gorl", *common, "--init", str(bc), "--total-steps", "20000", "--out", str(out)])
    rows = eval_rows(out)
    bc_return, final = float(rows[0]["eval_return"]), float(rows[-1]["eval_return"])
    # Pendulum's 10 evaluation episodes vary by about +-100 each: 60 is about 2 standard errors.
    assert final >= bc_return - 60
    refits = [row for row in rows if row.get("refit")]
    assert len(refits) == 2
    # Whole episodes of data make the first refit good enough to be taken.
    assert refits[0]["refit/accepted"] == "1"
    assert int(refits[0]["decoder_dataset_size"]) == 16 * 200
    for row in refits:
        assert float(row["eval_return"]) >= bc_return - 60
