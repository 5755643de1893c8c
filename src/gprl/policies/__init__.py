"""Policies know how to be trained by imitation and how to sample; algorithms live in gprl.algos.

Every policy in POLICIES has one interface: `init(key, cond_dim)`, `loss(params, cond, actions,
key) -> (loss, info)` and `sample(params, cond, noise, num_steps=None)`, the action being a
deterministic function of the noise the caller supplies (latent-space methods drive it).
"""

from typing import NamedTuple

from gprl.policies.diffusion import DiffusionPolicy, DiffusionPolicyConfig
from gprl.policies.flow import FlowPolicy, FlowPolicyConfig
from gprl.policies.gaussian import (
    GaussianPolicy,
    GaussianPolicyConfig,
    GaussianPolicyNet,
    gaussian_entropy,
    gaussian_log_prob,
    kl_to_standard_normal,
)
from gprl.policies.meanflow import MeanFlowPolicy, MeanFlowPolicyConfig
from gprl.policies.shortcut import ShortcutPolicy, ShortcutPolicyConfig


class RegisteredPolicy(NamedTuple):
    policy: type
    config: type
    default_config: object
    """Defaults for imitation from demonstrations (wider than an RL actor's)."""
    summary: str


POLICIES = {
    "gaussian": RegisteredPolicy(
        GaussianPolicy,
        GaussianPolicyConfig,
        GaussianPolicyConfig(hidden=(256, 256, 256), activation="silu"),
        "Gaussian maximum likelihood (unimodal baseline)",
    ),
    "flow": RegisteredPolicy(
        FlowPolicy,
        FlowPolicyConfig,
        FlowPolicyConfig(hidden=(256, 256, 256)),
        "flow matching, K Euler steps",
    ),
    "diffusion": RegisteredPolicy(
        DiffusionPolicy,
        DiffusionPolicyConfig,
        DiffusionPolicyConfig(hidden=(256, 256, 256)),
        "DDPM training, K DDIM steps",
    ),
    "meanflow": RegisteredPolicy(
        MeanFlowPolicy,
        MeanFlowPolicyConfig,
        MeanFlowPolicyConfig(),
        "MeanFlow: average velocity, one step",
    ),
    "shortcut": RegisteredPolicy(
        ShortcutPolicy,
        ShortcutPolicyConfig,
        ShortcutPolicyConfig(),
        "shortcut model: step-size conditioned flow, one step",
    ),
}
"""Imitation-learnable policies by name (`gprl pretrain KIND`)."""

__all__ = [
    "POLICIES",
    "DiffusionPolicy",
    "DiffusionPolicyConfig",
    "FlowPolicy",
    "FlowPolicyConfig",
    "GaussianPolicy",
    "GaussianPolicyConfig",
    "GaussianPolicyNet",
    "MeanFlowPolicy",
    "MeanFlowPolicyConfig",
    "RegisteredPolicy",
    "ShortcutPolicy",
    "ShortcutPolicyConfig",
    "gaussian_entropy",
    "gaussian_log_prob",
    "kl_to_standard_normal",
]
