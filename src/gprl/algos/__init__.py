"""One RL method per file. ALGORITHMS is the registry the trainer and the CLI are built from.

An entry names its classes as "module:attribute" strings and imports them on first use, so
that the names and summaries (`gprl --help`) are readable without importing JAX. The classes
are importable from this package too (`from gprl.algos import PPOConfig`), looked up in the
registry on first access.

Adding a method: its module (see gprl.algos.base for what it implements) and one entry below.
"""

import importlib
from collections.abc import Callable
from typing import Any


def _resolve(target: str) -> Any:
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


class Registered:
    """One method of `gprl train`: its algorithm and config classes (and preset), imported
    lazily from their "module:attribute" targets."""

    def __init__(self, algorithm: str, config: str, summary: str, preset: str | None = None):
        self.targets = {"algorithm": algorithm, "config": config, "preset": preset}
        self.summary = summary
        """One line for `gprl --help` and the subcommand's description."""

    @property
    def algorithm(self) -> type:
        return _resolve(self.targets["algorithm"])

    @property
    def config(self) -> type:
        return _resolve(self.targets["config"])

    @property
    def preset(self) -> Callable[[], Any] | None:
        """Builds the defaults of a named preset of a method, when they are not its config
        class's."""
        target = self.targets["preset"]
        return None if target is None else _resolve(target)

    def default_config(self):
        return self.config() if self.preset is None else self.preset()


ALGORITHMS = {
    "ppo": Registered("gprl.algos.ppo:PPO", "gprl.algos.ppo:PPOConfig", "Gaussian PPO"),
    "gorl": Registered(
        "gprl.algos.gorl:GoRL",
        "gprl.algos.gorl:GoRLConfig",
        "GoRL: PPO on a Gaussian latent policy decoded by a flow or diffusion model (decoder "
        "data-collection steps count toward --total-steps unless "
        "--gorl.no-count-collection-steps)",
    ),
    "gorl-reference": Registered(
        "gprl.algos.gorl:GoRL",
        "gprl.algos.gorl:GoRLConfig",
        "GoRL with the reference code's settings (encoder, critic, refits, schedule shape), "
        "scaled to --total-steps",
        preset="gprl.algos.gorl:reference_gorl_config",
    ),
    "fpo": Registered(
        "gprl.algos.fpo:FPO",
        "gprl.algos.fpo:FPOConfig",
        "FPO / FPO++: PPO on a flow policy through the flow-matching loss ratio",
    ),
    "dppo": Registered(
        "gprl.algos.dppo:DPPO",
        "gprl.algos.dppo:DPPOConfig",
        "DPPO (the paper's): per-denoising-step PPO on a DDPM / DDIM policy, the last steps "
        "trained beside a frozen copy of the base",
    ),
    "dppo-flow": Registered(
        "gprl.algos.dppo_flow:DPPOFlow",
        "gprl.algos.dppo_flow:DPPOFlowConfig",
        "DPPO on a flow policy (the FPO paper's baseline): per-step PPO ratios over Gaussian "
        "Euler steps",
    ),
    "reinflow": Registered(
        "gprl.algos.reinflow:ReinFlow",
        "gprl.algos.reinflow:ReinFlowConfig",
        "ReinFlow / Flow-Noise: a learned noise network makes the flow chain's likelihood exact",
    ),
    "flow-sde": Registered(
        "gprl.algos.flow_sde:FlowSDE",
        "gprl.algos.flow_sde:FlowSDEConfig",
        "Flow-SDE: one marginal-preserving SDE step per action gives the flow an exact likelihood",
    ),
    "grpo": Registered(
        "gprl.algos.grpo:GRPO",
        "gprl.algos.grpo:GRPOConfig",
        "GRPO (+Guard) for flow policies: critic-free, group-relative episode advantages",
    ),
    "sac": Registered(
        "gprl.algos.sac:SAC",
        "gprl.algos.sac:SACConfig",
        "Gaussian SAC (off-policy): twin critics, auto-tuned entropy temperature, replay buffer",
    ),
    "dsrl": Registered(
        "gprl.algos.dsrl:DSRL",
        "gprl.algos.dsrl:DSRLConfig",
        "DSRL: SAC over the input noise of a frozen pretrained policy (--init RUN_DIR), plain or "
        "noise-aliased",
    ),
    "residual": Registered(
        "gprl.algos.residual:Residual",
        "gprl.algos.residual:ResidualConfig",
        "Residual off-policy RL: SAC on a small bounded correction of a frozen pretrained "
        "policy's action (--init RUN_DIR)",
    ),
    "fql": Registered(
        "gprl.algos.fql:FQL",
        "gprl.algos.fql:FQLConfig",
        "Flow Q-Learning (off-policy, offline and offline-to-online with --dataset): a one-step "
        "policy distilled from a BC flow while climbing the critics",
    ),
    "qc-fql": Registered(
        "gprl.algos.qc:QCFQL",
        "gprl.algos.qc:QCFQLConfig",
        "Q-chunking's QC-FQL: FQL over action chunks executed whole (h = 5), offline and "
        "offline-to-online with --dataset",
    ),
    "qc": Registered(
        "gprl.algos.qc:QC",
        "gprl.algos.qc:QCConfig",
        "Q-chunking's QC: critics over action chunks (h = 5) pick the best of N chunks sampled "
        "from a BC flow (or --init RUN_DIR, a chunked policy of any kind), to act and in the TD "
        "target",
    ),
    "expo": Registered(
        "gprl.algos.expo:EXPO",
        "gprl.algos.expo:EXPOConfig",
        "EXPO: a base trained only by imitation (a BC flow, or --init RUN_DIR of any kind), a "
        "bounded Gaussian edit of its actions, and the best by Q of N samples and their edits, "
        "to act and in the TD target",
    ),
    "pa-rl": Registered(
        "gprl.algos.parl:PARL",
        "gprl.algos.parl:PARLConfig",
        "PA-RL: the top base samples by Q, refined by gradient steps on Q, to act and in the TD "
        "target, distilled into a base of any kind (--init RUN_DIR optional) by its own loss",
    ),
    "dpmd": Registered(
        "gprl.algos.dpmd:DPMD",
        "gprl.algos.dpmd:DPMDConfig",
        "DPMD / SDAC-style max-entropy flow policy (off-policy): the flow fitted to its own "
        "samples weighted by softmax(Q / alpha), alpha auto-tuned; keeps equally good modes",
    ),
    "maxentdp": Registered(
        "gprl.algos.maxentdp:MaxEntDP",
        "gprl.algos.maxentdp:MaxEntDPConfig",
        "MaxEntDP (off-policy): a DDPM fitted at every noise level to the noise of "
        "exp(Q / alpha) by Q-weighted importance sampling, alpha auto-tuned",
    ),
}


def _exported() -> dict[str, str]:
    """Class name -> target, for every algorithm and config class of the registry."""
    targets = (t for entry in ALGORITHMS.values() for t in entry.targets.values() if t)
    return {target.partition(":")[2]: target for target in targets}


def __getattr__(name: str):
    target = _exported().get(name)
    if target is None:
        raise AttributeError(f"module 'gprl.algos' has no attribute '{name}'")
    return _resolve(target)


__all__ = ["ALGORITHMS", "Registered", *sorted(_exported())]
