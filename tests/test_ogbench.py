"""OGBench single-task envs as gprl envs (ogbench:<dataset>): the spec, seeding, success ending
an episode, bad ids in one line; and `gprl collect --policy oracle` recording OGBench's protocol
with the task's relabelled rewards."""

import numpy as np
import pytest

from gprl.datasets import dataset_path, load_demonstrations
from gprl.envs import EnvError, make_env
from gprl.envs.ogbench import make_ogbench_env, make_oracle_collection_env

pytestmark = pytest.mark.filterwarnings("ignore:.*precision lowered by casting")

TASK = "ogbench:cube-single-play-singletask-task2-v0"
TASK_GOAL = np.array([0.5, 0.0, 0.02])
"""Where cube-single's task 2 wants the cube."""


def move_cube_to(env, position) -> None:
    import mujoco

    unwrapped = env.unwrapped
    unwrapped._data.joint("object_joint_0").qpos[:3] = position
    mujoco.mj_forward(unwrapped._model, unwrapped._data)


def test_a_single_task_has_ogbench_spec_and_is_seeded_like_every_gprl_env():
    with make_env(TASK, 2, seed=7, env_workers=0) as env:
        spec = env.spec
        start = env.reset(7)
        np.testing.assert_array_equal(start, env.reset(7))
        assert not np.array_equal(start[0], start[1])  # env i has seed 7 + i
    assert (spec.env_id, spec.obs_dim, spec.action_dim) == (TASK, 28, 5)
    assert spec.max_episode_steps == 200 and spec.reports_success


def test_ogbench_tasks_get_a_worker_process_per_core_by_default(monkeypatch):
    from gprl.envs import resolve_env, vector

    monkeypatch.setattr(vector, "_usable_cores", lambda: 2)
    assert vector.worker_count(resolve_env(TASK, "auto"), 8, None) == 1  # and this process


def test_success_is_reported_in_info_and_ends_the_episode():
    env = make_ogbench_env(TASK)
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step(np.zeros(5))
    assert (reward, terminated, info["success"]) == (-1.0, False, False)
    move_cube_to(env, TASK_GOAL)
    env.step(np.zeros(5))  # the success of the state a step starts from is reported
    _, reward, terminated, _, info = env.step(np.zeros(5))
    assert (reward, terminated, info["success"]) == (0.0, True, True)
    env.close()


@pytest.mark.parametrize(
    ("env_id", "expected"),
    [
        (
            "ogbench:cube-single-plya-singletask-task2-v0",
            r"unknown OGBench single-task env .*did you mean 'ogbench:cube-single-play-singletask",
        ),
        (
            "ogbench:cube-single-play-v0",
            r"goal-conditioned dataset .*downloaded.* ogbench:cube-single-play-singletask-task1-v0 "
            r"to cube-single-play-singletask-task5-v0",
        ),
        ("ogbench:cube-single-play-singletask-task9-v0", "unknown OGBench single-task env"),
        ("ogbench:nothing", r"unknown OGBench single-task env 'nothing'; names look like"),
        (TASK, "runs on Gymnasium only"),
    ],
)
def test_bad_ogbench_ids_are_refused_in_one_line(env_id, expected):
    backend = "envpool" if env_id == TASK else "auto"
    with pytest.raises(EnvError, match=expected) as error:
        make_env(env_id, backend=backend)
    assert "\n" not in str(error.value)


def test_collection_relabels_rewards_for_the_task_and_replays_a_seed():
    env = make_oracle_collection_env(TASK, episode_steps=30)

    def episode(seed: int) -> tuple[list, list]:
        _, info = env.reset(seed=seed)
        actions, rewards = [], []
        for _ in range(30):
            actions.append(info["oracle_action"])
            _, reward, terminated, truncated, info = env.step(info["oracle_action"])
            rewards.append(reward)
        assert truncated and not terminated
        return actions, rewards

    actions, _ = episode(3)
    assert np.array_equal(episode(3)[0], actions) and not np.array_equal(episode(4)[0], actions)
    env.reset(seed=3)
    move_cube_to(env, TASK_GOAL)  # far from the random target the oracle pursues
    _, reward, _, _, info = env.step(np.zeros(5))
    assert (reward, info["success"]) == (0.0, True)
    env.close()


def test_collect_records_an_ogbench_dataset_for_the_task(minari_root, cli_error, capsys):
    from gprl.cli import main

    argv = ["collect", "--env", TASK, "--policy", "oracle", "--num-envs", "1"]
    main([*argv, "--episodes", "2", "--episode-steps", "40", "--out", "ogb/cube-v0"])
    assert "wrote dataset ogb/cube-v0: 2 episodes, 80 steps" in capsys.readouterr().out
    demos = load_demonstrations("ogb/cube-v0")
    assert demos.env_id == TASK and demos.episode_lengths.tolist() == [40, 40]
    assert not demos.terminations.any()
    # cube-single's task reward: 0 where the cube is at the goal, else -1.
    cube = demos.obs[:, 19:22] / 10 + np.array([0.425, 0.0, 0.0])
    at_goal = np.linalg.norm(cube - TASK_GOAL, axis=1) <= 0.04
    np.testing.assert_array_equal(demos.rewards, at_goal - 1.0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--env", "Pendulum-v1"], "--policy oracle collects an OGBench dataset"),
        (["--env", "ogbench:antmaze-large-navigate-singletask-v0"], "is a locomotion env"),
        (["--env", "ogbench:cube-single-play-v0"], "is an OGBench goal-conditioned dataset"),
        (["--env", TASK, "--episode-steps", "0"], "--episode-steps must be at least 1"),
        (["--policy", "numpy:zeros_like", "--episode-steps", "9"], "only to --policy oracle"),
    ],
)
def test_bad_oracle_collections_are_refused_in_one_line_and_write_nothing(
    minari_root, cli_error, options, message
):
    argv = ["collect", "--policy", "oracle", "--env", TASK, *options, "--out", "ogb/bad-v0"]
    error = cli_error(argv)
    assert message in error, error
    assert not dataset_path("ogb/bad-v0").exists()
