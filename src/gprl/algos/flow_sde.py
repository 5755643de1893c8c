"""Flow-SDE (pi_RL): the flow policy's ODE step is replaced, at one randomly chosen step per
action (or at every step), by the Euler-Maruyama step of the SDE with the same marginals
(Flow-GRPO's conversion); that step is a Gaussian transition whose density is log pi in PPO,
one ratio per environment step. Every other step stays deterministic, so the policy's actions
keep the flow's distribution while the likelihood stays exact.
"""

from dataclasses import dataclass
from typing import Literal

import jax
import jax.numpy as jnp

from gprl.algos.flow_actor_critic import GaussianChainActorCritic, GaussianChainActorCriticConfig
from gprl.policies.flow import ode_transition, sde_transition


@dataclass(frozen=True)
class FlowSDEConfig(GaussianChainActorCriticConfig):
    sde_steps: Literal["one", "all"] = "one"
    """Where the SDE replaces the ODE: one uniformly chosen step per action, or every step."""
    noise_level: float = 0.7
    """Scale a of the SDE's diffusion g(t) = a sqrt((1 - t) / t) (Flow-GRPO's default)."""

    def validate(self) -> None:
        super().validate()
        if not self.noise_level > 0:
            raise ValueError(f"noise_level must be positive, got {self.noise_level}")


class FlowSDE(GaussianChainActorCritic):
    def sampling_aux(self, acting, obs, key):
        if self.config.sde_steps == "all":
            return {}
        return {"sde_step": jax.random.randint(key, obs.shape[:-1], 0, self.num_steps)}

    @property
    def aux_names(self):
        return () if self.config.sde_steps == "all" else ("sde_step",)

    def transition(self, params, obs, aux, k, x, velocity, t):
        dt = 1.0 / self.num_steps
        sde_mean, sde_std = sde_transition(x, velocity, t, dt, self.config.noise_level)
        if self.config.sde_steps == "all":
            return sde_mean, sde_std
        ode_mean, ode_std = ode_transition(x, velocity, t, dt)
        stochastic = (k == aux["sde_step"])[..., None]
        return jnp.where(stochastic, sde_mean, ode_mean), jnp.where(stochastic, sde_std, ode_std)

    def policy_terms(self, params, minibatch, frozen):
        log_ratios, _ = self.step_log_ratios(params, minibatch)
        return jnp.sum(log_ratios, axis=-1), 1.0, 0.0, self.source_info(params)
