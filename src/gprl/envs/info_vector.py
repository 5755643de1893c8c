"""Host Gymnasium envs that keep each env's info dict, for policies that read it.

gprl's :class:`~gprl.envs.VecEnv` drops the infos (batching them costs time nobody spends them
on), but scripted experts often act on them: OGBench's oracles read privileged state from
``info``. :class:`InfoVecEnv` steps the same envs with the same semantics and seeds, one after the
other in this process, and keeps the infos.
"""

import dataclasses

import numpy as np

from gprl.envs import EnvError, resolve_env
from gprl.envs.common import ActionMapper, first_line, reported_success
from gprl.envs.vector import gymnasium_task_shape, instance_reports_success, sub_env_makers
from gprl.types import StepResult


class InfoVecEnv:
    """``num_envs`` Gymnasium envs of one id driven as :class:`~gprl.envs.VecEnv` drives them:
    actions in [-1, 1], flat float32 observations, same-step autoreset, env i reset with
    seed + i (later episodes continue each env's own random stream). ``infos[i]`` is the info
    that came with ``obs[i]``: the reset's info where an episode just started. Whether the envs
    report success is learnt as VecEnv learns it (env 0 reset and stepped once).

    Raises:
        EnvError: as :func:`gprl.envs.make_env` for an id it cannot build on Gymnasium.
    """

    def __init__(self, env_id: str, num_envs: int, seed: int):
        resolved = resolve_env(env_id, "gymnasium")
        self._envs = []
        try:
            for make in sub_env_makers(resolved, num_envs):
                self._envs.append(make())
            shape = gymnasium_task_shape(self._envs[0], resolved.name)
            reports_success = instance_reports_success(self._envs[0])
        except EnvError:
            self.close()
            raise
        except Exception as exc:  # env constructors raise anything
            self.close()
            raise EnvError(f"cannot make {env_id}: {first_line(exc)}") from exc
        self.num_envs = num_envs
        self.spec = dataclasses.replace(shape.spec, reports_success=reports_success)
        self._flattener = shape.flattener
        self._env_action = ActionMapper(self.spec.env_id, shape.action_space, num_envs)
        self.infos: list[dict] = [{} for _ in range(num_envs)]
        self.reset(seed)

    def reset(self, seed: int) -> np.ndarray:
        """Start new episodes, env i seeded with seed + i; returns (num_envs, obs_dim) float32."""
        observations = []
        for index, env in enumerate(self._envs):
            try:
                obs, self.infos[index] = env.reset(seed=int(seed) + index)
            except Exception as exc:  # user envs' reset raises anything
                raise EnvError(f"cannot reset {self.spec.env_id}: {first_line(exc)}") from exc
            observations.append(self._flattener.single(obs))
        return np.stack(observations)

    def step(self, action: np.ndarray) -> StepResult:
        """Step every env with actions (num_envs, action_dim) in [-1, 1] (clipped, rescaled)."""
        env_action = self._env_action(action)
        n = self.num_envs
        obs = np.empty((n, self.spec.obs_dim), np.float32)
        final_obs = np.empty_like(obs)
        reward = np.empty(n, np.float32)
        terminated, truncated, success = (np.zeros(n, bool) for _ in range(3))
        for i, env in enumerate(self._envs):
            last_obs, reward[i], terminated[i], truncated[i], info = env.step(env_action[i])
            success[i] = bool(reported_success(info))
            final_obs[i] = self._flattener.single(last_obs)
            if terminated[i] or truncated[i]:
                last_obs, info = env.reset()
            obs[i] = self._flattener.single(last_obs)
            self.infos[i] = info
        return StepResult(
            obs=obs,
            reward=reward,
            terminated=terminated,
            truncated=truncated & ~terminated,
            final_obs=final_obs,
            success=success,
        )

    def close(self) -> None:
        for env in self._envs:
            env.close()
