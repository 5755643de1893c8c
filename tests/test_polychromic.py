"""The polychromic objective's set-level advantage, and GRPO with it keeping several optima."""

from dataclasses import replace
from functools import partial
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gprl.action_plots import coverage_at, reset_observations, sample_actions
from gprl.algos import ALGORITHMS
from gprl.algos.grpo import GRPO, polychromic_advantages
from gprl.algos.polychromic import set_level_advantages
from gprl.dataset_writer import write_dataset
from gprl.datasets import Episode
from gprl.envs import make_env
from gprl.envs.diagnostics import four_mode_modes
from gprl.policies import POLICIES
from gprl.pretrain import PretrainConfig, PretrainRun, pretrain
from gprl.trainer import RunConfig, load_run, train
from gprl.types import Transition

SAME, OTHER = (0.5, 0.5), (-0.5, 0.5)
FOUR_MODES = "gprl/FourModeBandit-v0"


def advantages(returns, outcomes, finished=(True,) * 4, set_size=2, radius=0.3, score="product"):
    # Compiled, as in the update: one compilation is quicker than running each op eagerly.
    compiled = jax.jit(set_level_advantages, static_argnums=(3, 4, 5))
    arrays = (jnp.array(returns), jnp.array(outcomes), jnp.array(finished))
    return np.asarray(compiled(*arrays, set_size, radius, score))


def test_equally_good_episodes_gain_by_being_different():
    # Pairs among the three alike score 1 x 1/2, pairs with the odd one 1 x 1: group mean 3/4.
    # The odd one is in three pairs of score 1 (+1/4); each alike one in two of 1/2 and one of 1.
    result = advantages([1.0] * 4, [SAME, SAME, SAME, OTHER])
    np.testing.assert_allclose(result, [-1 / 12, -1 / 12, -1 / 12, 1 / 4], atol=1e-6)
    # Wider than the outcomes' distance (1.0), the radius makes them all one outcome: no gain.
    np.testing.assert_allclose(advantages([1.0] * 4, [SAME] * 3 + [OTHER], radius=1.5), 0.0)


def test_with_distinct_outcomes_the_advantage_follows_success():
    # Every pair is diverse, so a pair scores its mean return: mean 3/4 over the group; the
    # failure's pairs score 1/2 each, a success's 1/2, 1 and 1.
    outcomes = [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0)]
    result = advantages([1.0, 0.0, 1.0, 1.0], outcomes)
    np.testing.assert_allclose(result, [1 / 12, -1 / 4, 1 / 12, 1 / 12], atol=1e-6)
    # Sets of three: all four sets are diverse; the failure's three score 2/3, the others' mean
    # (2/3 + 2/3 + 1) / 3, the group's mean 3/4.
    result = advantages([1.0, 0.0, 1.0, 1.0], outcomes, set_size=3)
    np.testing.assert_allclose(result, [1 / 36, -1 / 12, 1 / 36, 1 / 36], atol=1e-6)


def test_best_per_outcome_counts_each_outcome_once_at_its_best_return():
    # Episodes 0 and 1 share an outcome (returns 1 and 1/2), 2 and 3 are apart (1 and 0). Pair
    # scores: (0,1) 1/2, (0,2) 1, (0,3) 1/2, (1,2) 3/4, (1,3) 1/4, (2,3) 1/2; mean 7/12. The
    # duplicate's near miss costs nothing beyond its slot, unlike in the product.
    outcomes = [SAME, SAME, OTHER, (0.0, -1.0)]
    result = advantages([1.0, 0.5, 1.0, 0.0], outcomes, score="best_per_outcome")
    np.testing.assert_allclose(result, [1 / 12, -1 / 12, 1 / 6, -1 / 6], atol=1e-6)
    # Equal returns: the same answer as the product's.
    result = advantages([1.0] * 4, [SAME, SAME, SAME, OTHER], score="best_per_outcome")
    np.testing.assert_allclose(result, [-1 / 12, -1 / 12, -1 / 12, 1 / 4], atol=1e-6)


def test_unfinished_episodes_and_their_sets_are_left_out():
    # Without the unfinished odd one, the three alike episodes are all the group has.
    result = advantages([1.0] * 4, [SAME, SAME, SAME, OTHER], finished=(True, True, True, False))
    np.testing.assert_allclose(result, 0.0)


def test_rollouts_are_split_into_episodes_and_groups_by_their_first_actions():
    # 2 groups of 2 envs, 2 steps, 2-step episodes: envs 0, 1 first act SAME and OTHER (then the
    # same action), envs 2, 3 both SAME; every episode earns 1. Only group (0, 1) is diverse.
    config = ALGORITHMS["grpo"].config(group_size=2, polychromic_set_size=2)
    actions = jnp.array([[SAME, OTHER, SAME, SAME], [SAME, SAME, SAME, SAME]])
    rewards = jnp.array([[0.0] * 4, [1.0] * 4])
    dones = jnp.array([[False] * 4, [True] * 4])
    batch = (rewards, dones, actions)
    result = np.asarray(jax.jit(polychromic_advantages, static_argnums=3)(*batch, config))
    # One set per group: the group mean is its own score, so every advantage is 0 ...
    np.testing.assert_allclose(result, 0.0)
    # ... until one group of 4 holds them all: as above, the odd first action gains 1/4, the
    # others -1/12, here divided by their root mean square 1 / sqrt(48). (Had the second step's
    # actions, all alike, been read, every advantage would be 0.)
    config = replace(config, group_size=4)
    result = np.asarray(jax.jit(polychromic_advantages, static_argnums=3)(*batch, config))
    expected = np.array([-1.0, 3.0, -1.0, -1.0]) / np.sqrt(3)
    np.testing.assert_allclose(result, [expected] * 2, atol=1e-5)


def grpo_on_one_step_episodes(**overrides):
    """GRPO with groups of 4 and one group of one-step episodes in which env 1's first action
    and env 2's final observation differ from the other three envs'; every episode earns 1."""
    config = ALGORITHMS["grpo"].config(group_size=4, polychromic_set_size=2, **overrides)
    # advantages reads only the config: no need to build the networks.
    algo = SimpleNamespace(config=config)
    actions = jnp.array([[SAME, OTHER, SAME, SAME]])
    final_obs = jnp.array([[SAME, SAME, OTHER, SAME]])
    done = jnp.ones((1, 4), bool)
    batch = Transition(final_obs, actions, jnp.ones((1, 4)), done, ~done, final_obs, {})
    return np.asarray(jax.jit(partial(GRPO.advantages, algo))(batch))[0]


def test_grpo_reads_the_outcome_it_is_told_and_mixes_in_the_returns_by_weight():
    odd_one_out = np.array([-1.0, 3.0, -1.0, -1.0]) / np.sqrt(3)  # as in the test above
    np.testing.assert_allclose(grpo_on_one_step_episodes(), odd_one_out, atol=1e-5)
    final = grpo_on_one_step_episodes(polychromic_outcome="final_obs")
    np.testing.assert_allclose(final, odd_one_out[[0, 2, 1, 3]], atol=1e-5)
    # Equal returns standardise to 0, so half weight halves the set-level advantages.
    half = grpo_on_one_step_episodes(polychromic_weight=0.5)
    np.testing.assert_allclose(half, odd_one_out / 2, atol=1e-5)


@pytest.mark.parametrize("set_size", [1, 4, 5])
def test_set_size_must_be_smaller_than_the_group(set_size):
    with pytest.raises(ValueError, match="polychromic_set_size"):
        ALGORITHMS["grpo"].config(group_size=4, polychromic_set_size=set_size).validate()


def record_four_mode_demos(episodes: int) -> str:
    """A Minari dataset of FourModeBandit episodes, each on one of the four optima at random."""
    rng = np.random.default_rng(0)
    env = make_env(FOUR_MODES, 1, 0, backend="gymnasium")
    obs, recorded = env.reset(0), []
    for _ in range(episodes):
        mode = four_mode_modes(obs[0])[rng.integers(4)]
        action = np.clip(mode + 0.03 * rng.normal(size=2), -1, 1).astype(np.float32)
        step = env.step(action[None])
        observations = np.stack([obs[0], step.final_obs[0]])
        recorded.append(
            Episode(
                observations, action[None], step.reward[:1], step.terminated[:1], step.truncated[:1]
            )
        )
        obs = step.obs
    write_dataset("probe/four-modes-v0", recorded, env.spec, "four-mode expert", "scripted")
    env.close()
    return "probe/four-modes-v0"


def modes_kept_after_fine_tuning(pretrained, out, **overrides) -> float:
    """Modes holding >= 15% of the samples, averaged over 64 contexts, after GRPO fine-tunes
    the pretrained four-mode flow for 100k steps."""
    config = ALGORITHMS["grpo"].config(**overrides)
    run = RunConfig(
        env=FOUR_MODES, total_steps=100_000, num_envs=16, init=pretrained, out=out,
        progress=False, eval_every=0, eval_episodes=16, checkpoint_every=100_000,
    )  # fmt: skip
    algo, state, _ = load_run(train("grpo", run, config))
    with make_env(FOUR_MODES, 1, backend="gymnasium") as env:
        observations = reset_observations(env, 64, 12345)
    actions = sample_actions(
        algo.act, algo.acting_params(state), observations, 256, jax.random.PRNGKey(0)
    )
    coverage = coverage_at(FOUR_MODES, observations, actions)
    assert coverage.none_share.mean() < 0.1  # the samples stay on optima
    return float(coverage.modes_kept(0.15).mean())


@pytest.mark.slow
def test_fine_tuning_with_the_polychromic_objective_keeps_all_four_optima(tmp_path, monkeypatch):
    # From a behaviour clone of demos that pick each optimum at random, plain GRPO drifts
    # towards some (one took 36% of the samples, another 18%: 3.6 modes kept on average); with
    # the set-level advantage the four stay even (about 24% each: 3.98 kept).
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    options = PretrainRun(
        dataset=record_four_mode_demos(2000), steps=4000, out=tmp_path / "flow", progress=False,
        eval_every=0, eval_episodes=16,
    )  # fmt: skip
    flow = replace(POLICIES["flow"].default_config, hidden=(128, 128), num_steps=10)
    pretrained = pretrain("flow", options, PretrainConfig(log_every=500, noise_scale=0.0), flow)
    polychromic = modes_kept_after_fine_tuning(
        pretrained, tmp_path / "polychromic", polychromic_set_size=4
    )
    plain = modes_kept_after_fine_tuning(pretrained, tmp_path / "plain")
    assert polychromic >= 3.9 and plain < polychromic
