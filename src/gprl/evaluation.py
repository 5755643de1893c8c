"""Deterministic evaluation on separate envs, and video recording."""

from pathlib import Path

import numpy as np

from gprl.envs import EnvError, VecEnv

DEFAULT_MAX_EPISODE_STEPS = 1000


def evaluate(action_fn, acting, env: VecEnv, seed: int) -> dict:
    """Run one episode in each of env.num_envs envs with a deterministic policy.

    action_fn(acting, obs) -> actions in [-1, 1]. Episodes of envs without a time limit stop
    after DEFAULT_MAX_EPISODE_STEPS.
    """
    max_steps = env.spec.max_episode_steps or DEFAULT_MAX_EPISODE_STEPS
    obs = env.reset(seed=seed)
    returns = np.zeros(env.num_envs)
    lengths = np.zeros(env.num_envs, np.int64)
    running = np.ones(env.num_envs, bool)
    for _ in range(max_steps):
        step = env.step(np.asarray(action_fn(acting, obs)))
        returns += np.where(running, step.reward, 0.0)
        lengths += running
        running &= ~(step.terminated | step.truncated)
        if not running.any():
            break
        obs = step.obs
    return {
        "eval_return": float(returns.mean()),
        "eval_return_std": float(returns.std()),
        "eval_length": float(lengths.mean()),
    }


def record_video(action_fn, acting, env: VecEnv, seed: int, path: Path, fps: int = 30) -> Path:
    """Render one deterministic episode of env 0 to an mp4 file."""
    import imageio.v2 as imageio

    max_steps = env.spec.max_episode_steps or DEFAULT_MAX_EPISODE_STEPS
    obs = env.reset(seed=seed)
    frames = [env.render()]
    for _ in range(max_steps):
        step = env.step(np.asarray(action_fn(acting, obs)))
        if step.terminated[0] or step.truncated[0]:
            break
        obs = step.obs
        frames.append(env.render())
    if frames[0] is None:
        raise EnvError(f"{env.spec.env_id} returned no frames to record")
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimsave(path, frames, fps=fps, macro_block_size=1)
    return path
