"""gprl: reinforcement learning for flow-matching and diffusion policies, in JAX.

    import gprl
    run = gprl.train("ppo", env="Pendulum-v1", total_steps=20_000)
    run.act(observation)
    run = gprl.load("runs/...")

`train` and `load` live in gprl.api and are imported on first use, so that `import gprl` (and the
command line's --help) does not pay for importing JAX.
"""

__version__ = "0.1.0"
__all__ = ["Run", "load", "train"]


def __getattr__(name: str):
    if name in __all__:
        from gprl import api

        return getattr(api, name)
    raise AttributeError(f"module 'gprl' has no attribute {name!r}")
