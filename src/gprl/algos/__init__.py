"""One RL method per file. ALGORITHMS maps a CLI name to (algorithm class, config class)."""

from gprl.algos.gorl import GoRL, GoRLConfig
from gprl.algos.ppo import PPO, PPOConfig

ALGORITHMS = {
    "ppo": (PPO, PPOConfig),
    "gorl": (GoRL, GoRLConfig),
}

__all__ = ["ALGORITHMS", "PPO", "GoRL", "GoRLConfig", "PPOConfig"]
