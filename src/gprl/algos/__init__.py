"""One RL method per file. ALGORITHMS is the registry the trainer and the CLI are built from."""

from collections.abc import Callable
from typing import Any, NamedTuple

from gprl.algos.dppo import DPPO, DPPOConfig
from gprl.algos.dsrl import DSRL, DSRLConfig
from gprl.algos.flow_sde import FlowSDE, FlowSDEConfig
from gprl.algos.fpo import FPO, FPOConfig
from gprl.algos.fql import FQL, FQLConfig
from gprl.algos.gorl import GoRL, GoRLConfig, reference_gorl_config
from gprl.algos.grpo import GRPO, GRPOConfig
from gprl.algos.ppo import PPO, PPOConfig
from gprl.algos.reinflow import ReinFlow, ReinFlowConfig
from gprl.algos.sac import SAC, SACConfig


class Registered(NamedTuple):
    algorithm: type
    config: type
    summary: str
    """One line for `gprl --help` and the subcommand's description."""
    preset: Callable[[], Any] | None = None
    """Builds the defaults of a named preset of a method, when they are not its config class's."""

    def default_config(self):
        return self.config() if self.preset is None else self.preset()


ALGORITHMS = {
    "ppo": Registered(PPO, PPOConfig, "Gaussian PPO"),
    "gorl": Registered(
        GoRL,
        GoRLConfig,
        "GoRL: PPO on a Gaussian latent policy decoded by a flow or diffusion model (decoder "
        "data-collection steps count toward --total-steps unless "
        "--gorl.no-count-collection-steps)",
    ),
    "gorl-reference": Registered(
        GoRL,
        GoRLConfig,
        "GoRL with the reference code's settings (encoder, critic, refits, schedule shape), "
        "scaled to --total-steps",
        reference_gorl_config,
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
    "dsrl": Registered(
        DSRL,
        DSRLConfig,
        "DSRL: SAC over the input noise of a frozen pretrained policy (--init RUN_DIR), plain or "
        "noise-aliased",
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
    "DSRL",
    "FPO",
    "FQL",
    "GRPO",
    "PPO",
    "SAC",
    "DPPOConfig",
    "DSRLConfig",
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
