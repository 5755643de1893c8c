"""The Python API: the README's example runs as written, and every kind of env source trains."""

import re
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import gprl
from gprl.checkpoint import CheckpointError
from gprl.envs import EnvError
from gprl.envs.diagnostics import ContextualTargetEnv

README = Path(__file__).parents[1] / "README.md"
FAST = {"rollout_steps": 32, "num_minibatches": 4, "learning_rate": 1e-3}


def readme_example() -> str:
    section = README.read_text().split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_learns_and_reloads(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_example(), "README.md", "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out
    error = float(re.search(r"optimal action: ([0-9.]+)", printed).group(1))
    assert error < 0.08  # the best constant action is ~0.35 away on average


def quick(**overrides):
    from gprl.algos import PPOConfig

    options = dict(total_steps=512, num_envs=4, eval_episodes=2) | overrides
    return PPOConfig(**FAST), options


class MatchTheContext:
    """A JAX task: observe c in [-1, 1]^3, act a in [-1, 1]^2, reward -|a - c[:2]|^2, one step."""

    obs_dim = 3
    action_low = (-1.0, -1.0)
    action_high = (1.0, 1.0)
    max_episode_steps = None

    def reset(self, key):
        import jax

        context = jax.random.uniform(key, (3,), minval=-1.0, maxval=1.0)
        return context, context

    def step(self, context, action):
        import jax.numpy as jnp

        reward = -jnp.sum((action - context[:2]) ** 2)
        return context, context, reward, jnp.asarray(True)


@pytest.mark.parametrize("kind", ["instance", "factory", "jax_task"])
def test_env_objects_train_and_record_their_name(tmp_path, kind):
    source = {"instance": ContextualTargetEnv(), "factory": ContextualTargetEnv}.get(kind)
    config, options = quick()
    if kind == "jax_task":
        source, options = MatchTheContext(), options | {"env_backend": "jax"}
    run = gprl.train(config, env=source, out=tmp_path / "run", **options)
    assert run.config.env.startswith("python:")
    obs = np.random.default_rng(1).uniform(-1, 1, (5, 3)).astype(np.float32)
    assert run.act(obs).shape == (5, 2) and run.act(obs[0]).shape == (2,)
    with pytest.raises(EnvError, match="resume it from Python"):
        gprl.trainer.train("ppo", gprl.trainer.RunConfig(resume=tmp_path / "run"), config)


def test_a_registered_env_instance_records_its_id_and_reopens(tmp_path):
    config, options = quick(total_steps=400, num_envs=2)
    run = gprl.train(config, env=gym.make("Pendulum-v1"), out=tmp_path / "run", **options)
    assert run.config.env == "Pendulum-v1"
    low, high = run.spec.action_low, run.spec.action_high
    actions = run.act(np.zeros((64, 3), np.float32), deterministic=False)
    assert np.all(actions >= low) and np.all(actions <= high) and np.ptp(actions) > 0


def test_a_run_with_custom_networks_needs_them_to_load(tmp_path):
    import flax.linen as nn

    from gprl.networks import CustomNetworks

    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, obs):
            return nn.tanh(nn.Dense(8)(obs))

    config, options = quick()
    networks = CustomNetworks(critic=Tiny())
    gprl.train(
        config, env="gprl/ContextualTarget-v0", out=tmp_path / "run", networks=networks, **options
    )
    with pytest.raises(CheckpointError, match="custom networks"):
        gprl.load(tmp_path / "run")
    assert gprl.load(tmp_path / "run", networks=networks).act(np.zeros(3, np.float32)).shape == (2,)


def test_unknown_options_and_algorithms_are_refused(tmp_path):
    with pytest.raises(TypeError, match="unknown run options"):
        gprl.train("ppo", env="gprl/ContextualTarget-v0", total_step=10)
    with pytest.raises(ValueError, match="unknown algorithm"):
        gprl.train("nope", env="gprl/ContextualTarget-v0")
