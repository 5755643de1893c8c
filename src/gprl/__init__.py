"""gprl: reinforcement learning for flow-matching and diffusion policies, in JAX."""

__version__ = "0.1.0"
