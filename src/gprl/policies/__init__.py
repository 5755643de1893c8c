"""Policies know how to be trained by imitation and how to sample; algorithms live in gprl.algos.

Every policy in POLICIES has one interface: `init(key, cond_dim)`, `loss(params, cond, actions,
key) -> (loss, info)` and `sample(params, cond, noise, num_steps=None)`, the action being a
deterministic function of the noise the caller supplies (latent-space methods drive it). A kind
whose sampler also draws noise at each step (ddpm) takes those noises as `step_noise` too and
says how many it draws with `step_noise_steps(num_steps)`.

Importing this package imports no policy module (nor JAX): the registry and the names below load
their module on first use, so `gprl --help` lists the policy kinds in a fraction of a second.
"""

import importlib
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RegisteredPolicy:
    module: str
    """Module of gprl.policies defining the policy class and its config class."""
    class_name: str
    """The policy class; its config class is named class_name + "Config"."""
    summary: str
    """One line for `gprl --help` and the subcommand's description."""
    imitation_overrides: dict[str, Any] = field(default_factory=dict)
    """Config fields whose imitation defaults differ from the config class's (an RL actor's)."""

    @property
    def policy(self) -> type:
        return getattr(importlib.import_module(f"gprl.policies.{self.module}"), self.class_name)

    @property
    def config(self) -> type:
        module = importlib.import_module(f"gprl.policies.{self.module}")
        return getattr(module, f"{self.class_name}Config")

    @property
    def default_config(self):
        """Defaults for imitation from demonstrations (wider than an RL actor's)."""
        return self.config(**self.imitation_overrides)


POLICIES = {
    "gaussian": RegisteredPolicy(
        "gaussian",
        "GaussianPolicy",
        "Gaussian maximum likelihood (unimodal baseline)",
        {"hidden": (256, 256, 256), "activation": "silu"},
    ),
    "flow": RegisteredPolicy(
        "flow", "FlowPolicy", "flow matching, K Euler steps", {"hidden": (256, 256, 256)}
    ),
    "diffusion": RegisteredPolicy(
        "diffusion", "DiffusionPolicy", "DDPM training, K DDIM steps", {"hidden": (256, 256, 256)}
    ),
    "ddpm": RegisteredPolicy(
        "ddpm",
        "DDPMPolicy",
        "DPPO's DDPM: K = 20 steps, posterior or DDIM sampling",
        {"hidden": (256, 256, 256)},
    ),
    "meanflow": RegisteredPolicy(
        "meanflow", "MeanFlowPolicy", "MeanFlow: average velocity, one step"
    ),
    "shortcut": RegisteredPolicy(
        "shortcut", "ShortcutPolicy", "shortcut model: step-size conditioned flow, one step"
    ),
}
"""Imitation-learnable policies by name (`gprl pretrain KIND`)."""

_MODULE_OF = {
    "DDPMPolicy": "ddpm",
    "DDPMPolicyConfig": "ddpm",
    "DiffusionPolicy": "diffusion",
    "DiffusionPolicyConfig": "diffusion",
    "FlowPolicy": "flow",
    "FlowPolicyConfig": "flow",
    "GaussianPolicy": "gaussian",
    "GaussianPolicyConfig": "gaussian",
    "GaussianPolicyNet": "gaussian",
    "gaussian_entropy": "gaussian",
    "gaussian_log_prob": "gaussian",
    "kl_to_standard_normal": "gaussian",
    "MeanFlowPolicy": "meanflow",
    "MeanFlowPolicyConfig": "meanflow",
    "ShortcutPolicy": "shortcut",
    "ShortcutPolicyConfig": "shortcut",
}


def __getattr__(name: str):
    if name in _MODULE_OF:
        return getattr(importlib.import_module(f"gprl.policies.{_MODULE_OF[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_MODULE_OF])


__all__ = ["POLICIES", "RegisteredPolicy", *_MODULE_OF]
