"""The Gymnasium backend's worker processes (env_workers): same results as in one process."""

import functools
import os
import threading

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.classic_control.pendulum import PendulumEnv

from gprl.envs import EnvError, make_env, resolve_env
from gprl.envs import vector as vector_module
from gprl.envs.diagnostics import point_reach_expert


def seeded_rollout(env_workers: int) -> tuple[list, list, np.ndarray]:
    """40 expert steps of 5 PointReach envs ending on success (so episodes end both ways), the
    frames of env 0, and the observations of a grouped restart."""
    with make_env(
        "gprl/PointReach-v0", 5, seed=7, render=True, end_on_success=True, env_workers=env_workers
    ) as env:
        obs = env.reset(7)
        noise = np.random.default_rng(0).normal(0.0, 0.5, (40, 5, 2))
        results, frames = [], []
        for step in range(40):
            result = env.step(np.clip(point_reach_expert(obs) + noise[step], -1, 1))
            results.append(result)
            frames.append(env.render())
            obs = result.obs
        return results, frames, env.restart(11, start_state_group=2)


def test_workers_give_the_in_process_rollout_exactly():
    in_process, in_process_frames, in_process_restart = seeded_rollout(0)
    workers, worker_frames, worker_restart = seeded_rollout(2)
    ended = sum(int((r.terminated | r.truncated).sum()) for r in in_process)
    assert ended >= 3 and sum(int(r.success.sum()) for r in in_process) >= 3
    for expected, got in zip(in_process, workers, strict=True):
        for field in expected._fields:
            np.testing.assert_array_equal(getattr(got, field), getattr(expected, field), field)
    np.testing.assert_array_equal(np.stack(worker_frames), np.stack(in_process_frames))
    np.testing.assert_array_equal(worker_restart, in_process_restart)


class FailsInWorkers(gym.Env):
    """A tiny env that raises from its second step on (make_env steps once to learn whether it
    reports success), but only in a process other than the one that made the factory: the error
    must come back from a worker."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self, parent_pid: int):
        self._in_worker = os.getpid() != parent_pid
        self._steps = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self._steps += 1
        if self._in_worker and self._steps > 1:
            raise RuntimeError("joint limits exceeded\nsecond line")
        return np.zeros(1, np.float32), 0.0, False, False, {}


def test_an_exception_in_a_worker_is_a_one_line_env_error():
    factory = functools.partial(FailsInWorkers, parent_pid=os.getpid())
    env = make_env(factory, 2, env_workers=1)
    with pytest.raises(EnvError) as error:
        env.step(np.zeros((2, 1)))
    message = str(error.value)
    assert "\n" not in message and "RuntimeError: joint limits exceeded" in message
    with pytest.raises(EnvError, match="closed"):
        env.step(np.zeros((2, 1)))
    env.close()


def test_envs_that_cannot_reach_a_worker_are_refused_in_one_line():
    with pytest.raises(EnvError, match="instance, which cannot be sent to worker processes"):
        make_env(PendulumEnv(), 2, env_workers=1)
    lock = threading.Lock()
    with pytest.raises(EnvError, match=r"cannot send .* to worker processes") as error:
        make_env(lambda: lock and PendulumEnv(), 2, env_workers=1)
    assert "\n" not in str(error.value)
    with pytest.raises(EnvError, match="env_workers must be 0"):
        make_env("Pendulum-v1", 2, backend="gymnasium", env_workers=-1)


@pytest.mark.parametrize(
    ("env_id", "num_envs", "cores", "expected"),
    [
        ("metaworld:pick-place-v3", 16, 2, 1),  # this process and one worker
        ("metaworld:pick-place-v3", 3, 8, 2),  # never more processes than envs
        ("metaworld:pick-place-v3", 16, 1, 0),
        ("Pendulum-v1", 16, 2, 0),  # cheap steps: the pipes would cost more than they gain
    ],
)
def test_workers_by_default_only_for_slow_tasks_and_spare_cores(
    monkeypatch, env_id, num_envs, cores, expected
):
    monkeypatch.setattr(vector_module, "_usable_cores", lambda: cores)
    resolved = resolve_env(env_id, "gymnasium")
    assert vector_module.worker_count(resolved, num_envs, None) == expected
    assert vector_module.worker_count(resolved, num_envs, 5) == min(5, num_envs - 1)
