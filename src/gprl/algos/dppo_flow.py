"""DPPO's idea on a flow policy, the "DPPO" baseline of the FPO paper (registered as dppo-flow):
each Euler step of the flow policy's sampler is a Gaussian transition with a fixed noise std,
and PPO's ratio is taken per step, every step sharing its environment step's advantage
(arXiv 2409.00588 applies it to a DDPM policy: gprl.algos.dppo).

Only the last `fine_tuned_steps` steps enter the loss (the earlier ones still sample with
noise, from the same network, so training moves them too), and a step k steps before the last
has its advantage discounted by denoising_discount^k. As ReinFlow's, an optional W2 penalty
keeps the deterministic flow near the pretrained policy (--init) or the initial one.
"""

from dataclasses import dataclass
from typing import ClassVar

import jax.numpy as jnp

from gprl.algos.flow_actor_critic import GaussianChainActorCritic, NarrowSourceConfig


@dataclass(frozen=True)
class DPPOFlowConfig(NarrowSourceConfig):
    learned_source_std: bool | None = None
    """Learn the source noise's std (one per action dimension) and count x_0's density in the
    chain's likelihood, as its own clipped ratio. None: learned from scratch (from 0.1, which
    beat the fixed 0.1 on DMC cheetah-run and walker-walk; README), fixed with --init."""
    denoising_std: float | None = None
    """Std of the Gaussian noise added at every Euler step. None: 0.1 from scratch (with the
    learned source, higher on DMC walker-walk than 0.05; README), 0.05 with --init (the FPO
    comparison's; fine-tuning at 0.1 is unmeasured beyond the probe tests)."""
    values_before_added: ClassVar[dict] = NarrowSourceConfig.values_before_added | {
        "learned_source_std": False
    }
    """Runs saved before learned_source_std existed kept their source std fixed."""
    fine_tuned_steps: int | None = None
    """Train only the last k of the K steps (DPPO's ft_denoising_steps); None trains all."""
    denoising_discount: float = 0.99
    """Advantage discount per denoising step before the last (DPPO's gamma_denoising)."""
    clip_eps: float = 0.2
    """PPO ratio clipping range, per denoising step."""
    w2_coef: float = 0.0
    """Weight of the W2 penalty to the reference policy, the pretrained one with --init (0
    disables it)."""

    def validate(self) -> None:
        super().validate()
        if self.denoising_std is not None and not self.denoising_std > 0:
            raise ValueError(f"denoising_std must be positive, got {self.denoising_std}")
        if self.fine_tuned_steps is not None and not 1 <= self.fine_tuned_steps <= (
            self.flow.num_steps
        ):
            raise ValueError(
                f"fine_tuned_steps must be in [1, flow.num_steps={self.flow.num_steps}], got "
                f"{self.fine_tuned_steps}"
            )
        if not 0 < self.denoising_discount <= 1:
            raise ValueError(f"denoising_discount must be in (0, 1], got {self.denoising_discount}")
        if self.w2_coef < 0:
            raise ValueError(f"w2_coef must be non-negative, got {self.w2_coef}")

    def step_std(self, fine_tuning: bool) -> float:
        """The Euler steps' noise std a run samples and scores with (see denoising_std)."""
        if self.denoising_std is not None:
            return self.denoising_std
        return 0.05 if fine_tuning else 0.1


class DPPOFlow(GaussianChainActorCritic):
    def __init__(self, config: DPPOFlowConfig, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        self.w2_coef = config.w2_coef
        self.step_std = config.step_std(fine_tuning=self.pretrained is not None)
        trained = config.fine_tuned_steps or self.num_steps
        if trained > self.num_steps:  # with --init, K is the pretrain run's
            raise ValueError(
                f"fine_tuned_steps ({trained}) exceeds the flow's {self.num_steps} Euler steps"
            )
        self.first_trained_step = self.num_steps - trained
        steps_before_last = jnp.arange(trained - 1, -1, -1, dtype=jnp.float32)
        self.step_weights = config.denoising_discount**steps_before_last

    def transition(self, params, obs, aux, k, x, velocity, t):
        dt = 1.0 / self.num_steps
        return x + dt * velocity, jnp.full_like(x, self.step_std)

    def policy_terms(self, params, minibatch, frozen):
        log_ratios, _ = self.step_log_ratios(params, minibatch)
        trained = log_ratios[:, -len(self.step_weights) :]  # the last fine-tuned steps
        weights = self.step_weights
        if self.learns_source_std:  # x_0's term, first: its own ratio, always trained
            trained = jnp.concatenate([log_ratios[:, :1], trained], axis=-1)
            weights = jnp.concatenate([jnp.ones(1), weights])
        penalty, info = self.reference_penalty(params, minibatch, frozen)
        return trained, weights, penalty, info | self.source_info(params)
