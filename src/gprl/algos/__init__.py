"""One RL method per file. ALGORITHMS is the registry the trainer and the CLI are built from."""

from typing import NamedTuple

from gprl.algos.gorl import GoRL, GoRLConfig
from gprl.algos.ppo import PPO, PPOConfig


class Registered(NamedTuple):
    algorithm: type
    config: type
    summary: str
    """One line for `gprl --help` and the subcommand's description."""


ALGORITHMS = {
    "ppo": Registered(PPO, PPOConfig, "Gaussian PPO"),
    "gorl": Registered(
        GoRL,
        GoRLConfig,
        "GoRL: PPO on a Gaussian latent policy decoded by a flow or diffusion model (decoder "
        "data-collection steps count toward --total-steps unless "
        "--gorl.no-count-collection-steps)",
    ),
}

__all__ = ["ALGORITHMS", "PPO", "GoRL", "GoRLConfig", "PPOConfig", "Registered"]
