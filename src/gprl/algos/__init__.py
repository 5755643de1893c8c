"""One RL method per file. ALGORITHMS is the registry the trainer and the CLI are built from."""

from typing import NamedTuple

from gprl.algos.dppo import DPPO, DPPOConfig
from gprl.algos.flow_sde import FlowSDE, FlowSDEConfig
from gprl.algos.fpo import FPO, FPOConfig
from gprl.algos.fql import FQL, FQLConfig
from gprl.algos.gorl import GoRL, GoRLConfig
from gprl.algos.grpo import GRPO, GRPOConfig
from gprl.algos.ppo import PPO, PPOConfig
from gprl.algos.reinflow import ReinFlow, ReinFlowConfig
from gprl.algos.sac import SAC, SACConfig


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
    "fpo": Registered(
        FPO, FPOConfig, "FPO / FPO++: PPO on a flow policy through the flow-matching loss ratio"
    ),
    "dppo": Registered(
        DPPO, DPPOConfig, "DPPO: per-denoising-step PPO ratios over Gaussian Euler steps"
    ),
    "reinflow": Registered(
        ReinFlow,
        ReinFlowConfig,
        "ReinFlow / Flow-Noise: a learned noise network makes the flow chain's likelihood exact",
    ),
    "flow-sde": Registered(
        FlowSDE,
        FlowSDEConfig,
        "Flow-SDE: one marginal-preserving SDE step per action gives the flow an exact likelihood",
    ),
    "grpo": Registered(
        GRPO,
        GRPOConfig,
        "GRPO (+Guard) for flow policies: critic-free, group-relative episode advantages",
    ),
    "sac": Registered(
        SAC,
        SACConfig,
        "Gaussian SAC (off-policy): twin critics, auto-tuned entropy temperature, replay buffer",
    ),
    "fql": Registered(
        FQL,
        FQLConfig,
        "Flow Q-Learning (off-policy, offline and offline-to-online with --dataset): a one-step "
        "policy distilled from a BC flow while climbing the critics",
    ),
}

__all__ = [
    "ALGORITHMS",
    "DPPO",
    "FPO",
    "FQL",
    "GRPO",
    "PPO",
    "SAC",
    "DPPOConfig",
    "FPOConfig",
    "FQLConfig",
    "FlowSDE",
    "FlowSDEConfig",
    "GRPOConfig",
    "GoRL",
    "GoRLConfig",
    "PPOConfig",
    "Registered",
    "ReinFlow",
    "ReinFlowConfig",
    "SACConfig",
]
