"""Meta-World tasks as gprl envs (metaworld:<task>): the spec, MT1 placements seeded like every
gprl env, typos, and a scripted expert reaching success through VecEnv."""

import numpy as np
import pytest

from gprl.envs import EnvError, make_env, probe_spec
from gprl.envs.metaworld import _train_placements, make_metaworld_env

TASK = "metaworld:pick-place-v3"


def placement(obs: np.ndarray) -> np.ndarray:
    """The object's position and the goal in (a batch of) Meta-World observations."""
    return np.concatenate([obs[..., 4:7], obs[..., -3:]], axis=-1)


def test_pick_place_has_meta_worlds_spec_and_reports_success():
    spec = probe_spec(TASK)
    assert (spec.env_id, spec.obs_dim, spec.action_dim) == (TASK, 39, 4)
    assert spec.max_episode_steps == 500 and spec.reports_success
    np.testing.assert_array_equal(spec.action_low, -np.ones(4))
    np.testing.assert_array_equal(spec.action_high, np.ones(4))


def test_placements_are_seeded_like_every_gprl_env():
    # In this process: worker processes would only add their start-up time here.
    with (
        make_env(TASK, 3, 7, env_workers=0) as first,
        make_env(TASK, 3, 7, env_workers=0) as second,
    ):
        start = first.reset(7)
        np.testing.assert_array_equal(start, second.reset(7))
        np.testing.assert_array_equal(start, first.reset(7))  # the same every time
        assert len({tuple(row) for row in placement(start)}) == 3  # env i has seed 7 + i
        np.testing.assert_array_equal(placement(first.reset(8))[0], placement(start)[1])


def test_each_episode_draws_a_new_placement_and_a_seed_replays_the_draws():
    env = make_metaworld_env(TASK)

    def episode_starts() -> list[tuple]:
        starts = [env.reset(seed=1)[0]] + [env.reset()[0] for _ in range(3)]
        return [tuple(placement(obs)) for obs in starts]

    starts = episode_starts()
    assert len(set(starts)) >= 3  # draws from 50 placements rarely repeat
    assert episode_starts() == starts
    env.close()


def test_the_placements_are_the_same_in_every_process():
    tasks = _train_placements("pick-place-v3")
    _train_placements.cache_clear()
    assert [task.data for task in _train_placements("pick-place-v3")] == [t.data for t in tasks]
    assert len(tasks) == 50


@pytest.mark.parametrize(
    ("env_id", "backend", "expected"),
    [
        ("metaworld:pick-plase-v3", "auto", r"unknown Meta-World task.*'metaworld:pick-place-v3'"),
        ("metaworld:xyz", "auto", r"unknown Meta-World task 'xyz'; .*50 in all"),
        (TASK, "envpool", "runs on Gymnasium only"),
    ],
)
def test_bad_meta_world_ids_are_refused_in_one_line(env_id, backend, expected):
    with pytest.raises(EnvError, match=expected) as error:
        make_env(env_id, backend=backend)
    assert "\n" not in str(error.value)


@pytest.mark.filterwarnings("ignore:Constant\\(s\\) may be too high")
def test_a_scripted_expert_succeeds_through_vec_env_and_its_episode_ends_there():
    from metaworld.policies import SawyerPickPlaceV3Policy

    expert = SawyerPickPlaceV3Policy()
    with make_env(TASK, 1, seed=0, sparse_reward=True, end_on_success=True) as env:
        obs = env.reset(0)
        for _ in range(200):
            step = env.step(expert.get_action(obs[0])[None])
            if step.success[0]:
                break
            assert step.reward[0] == 0.0 and not step.terminated[0]
            obs = step.obs
    assert step.success[0] and step.terminated[0] and step.reward[0] == 1.0
    assert not np.array_equal(step.final_obs, step.obs)  # the next episode has started


@pytest.mark.slow
def test_meta_world_renders_frames():
    with make_env(TASK, 2, seed=0, render=True) as env:
        frame = env.render()
    assert frame.shape == (480, 480, 3) and frame.dtype == np.uint8 and frame.std() > 0
