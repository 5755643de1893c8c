"""Policies know how to be trained by imitation and how to sample; algorithms live in gprl.algos."""

from gprl.policies.diffusion import DiffusionPolicy, DiffusionPolicyConfig
from gprl.policies.flow import FlowPolicy, FlowPolicyConfig
from gprl.policies.gaussian import (
    GaussianPolicyConfig,
    GaussianPolicyNet,
    gaussian_entropy,
    gaussian_log_prob,
    kl_to_standard_normal,
)

__all__ = [
    "DiffusionPolicy",
    "DiffusionPolicyConfig",
    "FlowPolicy",
    "FlowPolicyConfig",
    "GaussianPolicyConfig",
    "GaussianPolicyNet",
    "gaussian_entropy",
    "gaussian_log_prob",
    "kl_to_standard_normal",
]
