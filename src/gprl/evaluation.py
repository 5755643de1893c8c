"""Deterministic evaluation on separate envs (host or device), and video recording."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from gprl.envs import EnvError

DEFAULT_MAX_EPISODE_STEPS = 1000
EVAL_EPISODES = 10
SUCCESS_EVAL_EPISODES = 50
"""Evaluation episodes on envs that report success: the references' success rates are over 50."""


def default_eval_episodes(spec) -> int:
    """Episodes per evaluation when none are asked for: 50 on an env that reports success (a
    success rate over 10 episodes moves in steps of 0.1), else 10."""
    return SUCCESS_EVAL_EPISODES if spec.reports_success else EVAL_EPISODES


def _summary(returns, lengths, succeeded=None) -> dict:
    """The evaluation's numbers; `succeeded` ((N,) bool: the episode had a successful step) adds
    eval_success_rate, and is None on envs that do not report success."""
    returns, lengths = np.asarray(returns, np.float64), np.asarray(lengths, np.float64)
    summary = {
        "eval_return": float(returns.mean()),
        "eval_return_std": float(returns.std()),
        "eval_length": float(lengths.mean()),
    }
    if succeeded is not None:
        summary["eval_success_rate"] = float(np.mean(succeeded))
    return summary


def _host_episodes(env, seed: int, policy) -> dict:
    """One episode in each env of a host vector env, acting with policy(obs) -> actions."""
    returns, lengths, succeeded = host_episode_outcomes(env, seed, policy)
    return _summary(returns, lengths, succeeded if env.spec.reports_success else None)


def host_episode_outcomes(env, seed: int, policy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(return, length, succeeded) of one episode in each env of a host vector env restarted
    from seed, acting with policy(obs) -> actions; succeeded is all False where the env does
    not report success."""
    max_steps = env.spec.max_episode_steps or DEFAULT_MAX_EPISODE_STEPS
    obs = env.restart(seed)
    returns = np.zeros(env.num_envs)
    lengths = np.zeros(env.num_envs, np.int64)
    running = np.ones(env.num_envs, bool)
    succeeded = np.zeros(env.num_envs, bool)
    for _ in range(max_steps):
        step = env.step(policy(obs))
        returns += np.where(running, step.reward, 0.0)
        lengths += running * (1 if step.env_steps is None else step.env_steps)
        succeeded |= running & step.success
        running &= ~(step.terminated | step.truncated)
        if not running.any():
            break
        obs = step.obs
    return returns, lengths, succeeded


class HostEvaluator:
    """One episode in each of env.num_envs host envs (restarted from the same seed, or on
    envpool from each env's next episode)."""

    def __init__(self, env, act_deterministic, seed: int):
        self.env = env
        self.seed = seed
        self._action = jax.jit(act_deterministic)

    def evaluate(self, acting) -> dict:
        return _host_episodes(
            self.env, self.seed, lambda obs: np.asarray(self._action(acting, obs))
        )


class ObservationHistory:
    """The last `length` observations of each env of a host vector env, concatenated oldest
    first (num_envs, length * obs_dim); an env starting an episode has its first observation
    repeated."""

    def __init__(self, num_envs: int, length: int):
        self.length = length
        self.windows = None
        self.starting = np.ones(num_envs, bool)

    def __call__(self, obs) -> np.ndarray:
        obs = np.asarray(obs)
        if self.windows is None:
            self.windows = np.repeat(obs[:, None], self.length, axis=1)
        self.windows = np.concatenate([self.windows[:, 1:], obs[:, None]], axis=1)
        self.windows[self.starting] = obs[self.starting, None]
        self.starting[:] = False
        return self.windows.reshape(len(obs), -1)

    def episode_ended(self, ended) -> None:
        self.starting |= np.asarray(ended, bool)


class ActionQueue:
    """Executes action chunks on a host vector env: each env runs the first `execute_steps`
    actions of a chunk planned for it, then asks for a new one; an env whose episode ended
    asks at once. One batched plan(obs, key) -> (num_envs, chunk_length, action_dim) call serves
    every env that needs a chunk at a step (the others keep theirs). With obs_history H > 1,
    plan receives each env's last H observations (:class:`ObservationHistory`)."""

    def __init__(self, plan, num_envs: int, execute_steps: int, key, obs_history: int = 1):
        self.plan = plan
        self.execute_steps = execute_steps
        self.key = key
        self.chunks = None
        self.position = np.zeros(num_envs, np.int64)
        self.pending = np.zeros(num_envs, np.int64)
        """Actions left to execute from each env's chunk."""
        self.history = ObservationHistory(num_envs, obs_history) if obs_history > 1 else None

    def __call__(self, obs) -> np.ndarray:
        if self.history is not None:
            obs = self.history(obs)
        replan = self.pending == 0
        if replan.any():
            self.key, plan_key = jax.random.split(self.key)
            chunk = np.asarray(self.plan(obs, plan_key))
            if self.chunks is None:
                self.chunks = chunk.copy()
            self.chunks[replan] = chunk[replan]
            self.position[replan] = 0
            self.pending[replan] = self.execute_steps
        action = self.chunks[np.arange(len(self.position)), self.position]
        self.position += 1
        self.pending -= 1
        return action

    def episode_ended(self, ended) -> None:
        """The envs flagged in `ended` start a new episode: their next action is replanned."""
        self.pending[np.asarray(ended, bool)] = 0
        if self.history is not None:
            self.history.episode_ended(ended)


class ChunkedHostEvaluator:
    """HostEvaluator for policies that plan action chunks: plan(acting, obs, key) ->
    (N, chunk_length, action_dim), executed through an :class:`ActionQueue`. The plans' noise
    comes from a key fixed by the seed, so evaluations are repeatable."""

    def __init__(self, env, plan, seed: int, execute_steps: int, obs_history: int = 1):
        self.env = env
        self.seed = seed
        self.execute_steps = execute_steps
        self.obs_history = obs_history
        self._plan = jax.jit(plan)

    def evaluate(self, acting) -> dict:
        queue = ActionQueue(
            lambda obs, key: self._plan(acting, obs, key),
            self.env.num_envs,
            self.execute_steps,
            jax.random.PRNGKey(self.seed),
            self.obs_history,
        )
        return _host_episodes(self.env, self.seed, queue)


class DeviceEvaluator:
    """One episode in each of env.num_envs JAX envs, the whole evaluation one compiled call.
    Returns only: JAX tasks never report success."""

    def __init__(self, env, act_deterministic, seed: int):
        max_steps = env.spec.max_episode_steps or DEFAULT_MAX_EPISODE_STEPS

        def run(acting, key):
            env_state, obs = env.reset(key)

            def step(carry, _):
                env_state, obs, returns, lengths, running = carry
                env_state, result = env.step(env_state, act_deterministic(acting, obs))
                returns = returns + jnp.where(running, result.reward, 0.0)
                executed = 1 if result.env_steps is None else result.env_steps
                lengths = lengths + running * executed
                running = running & ~(result.terminated | result.truncated)
                return (env_state, result.obs, returns, lengths, running), None

            n = env.num_envs
            init = (env_state, obs, jnp.zeros(n), jnp.zeros(n, jnp.int32), jnp.ones(n, bool))
            carry, _ = jax.lax.scan(step, init, None, length=max_steps)
            return carry[2], carry[3]

        self._run = jax.jit(run)
        self._key = jax.random.PRNGKey(seed)

    def evaluate(self, acting) -> dict:
        return _summary(*jax.device_get(self._run(acting, self._key)))


def record_video(act_deterministic, acting, env, seed: int, path: Path, fps: int = 30) -> Path:
    """Render one deterministic episode of env 0 of a host env to an mp4 file."""
    import imageio.v2 as imageio

    action = jax.jit(act_deterministic)
    max_steps = env.spec.max_episode_steps or DEFAULT_MAX_EPISODE_STEPS
    obs = env.reset(seed=seed)
    frames = [env.render()]
    for _ in range(max_steps):
        step = env.step(np.asarray(action(acting, obs)))
        if step.terminated[0] or step.truncated[0]:
            break
        obs = step.obs
        frames.append(env.render())
    if frames[0] is None:
        raise EnvError(f"{env.spec.env_id} returned no frames to record")
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimsave(path, frames, fps=fps, macro_block_size=1)
    return path
