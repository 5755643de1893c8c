"""DPMD / SDAC family: a maximum-entropy flow policy whose target is the Boltzmann policy
exp(Q / alpha) (Ma et al. 2025, "Efficient Online Reinforcement Learning for Diffusion Policy",
arXiv 2502.00361; reference code mahaitongdae/diffusion_policy_online_rl, `relax/algorithm/
dpmd.py`, `sdac.py`).

The flow is the policy that acts, and it learns without backpropagating through its chain,
from candidate actions weighted by softmax(Q(s, a) / alpha) over M per state, as SDAC's
reverse-sampling score matching, in flow-matching form: per replay state, the current flow's
own sample a (no gradient) is noised to x_t = (1 - t) x0 + t a; M candidates are drawn from
the posterior of the action given x_t under an N(0, I) prior (Gaussian, closed form), weighted
by softmax(Q / alpha), and the flow's velocity at x_t is regressed onto their weighted mean
velocity. That is a self-normalised importance-sampling estimate of the velocity field of
pi*(a | s) ~ N(a; 0, I) exp(Q(s, a) / alpha), so pi* is the fixed point: equally good modes
keep equal mass, and a mode the flow has lost is pulled back, since the small-t candidates
range over the whole action space. (The plain DPMD form, candidates sampled from the flow and
trained on by weighted flow matching, targets pi_k exp(Q / alpha), which only contracts: here
its candidates collapsed to one point within 2k gradient steps on FourModeBandit.)

Critics: an ensemble regresses onto r + gamma (1 - terminated) Q'(s', a'), a' a fresh flow
sample at s': the reference's plain TD backup (a soft backup needs log pi, which a flow does not
give cheaply; the reference leaves it out too).

Temperature, tuned without the policy's likelihood: alpha moves so that the effective sample
size of the softmax weights, 1 / sum w^2 over M, averaged over the batch entries at flow times
t < 0.5 (where the candidates span the action space), is the share target_effective_share
of M: alpha rises while the weights are more peaked (Q differs more across candidates than
the target allows) and falls while they are flatter. This sets alpha
in units of the spread of Q over the action space, whatever the reward scale. (A
nearest-neighbour entropy target, SAC-style, failed: where the optimum lies on the action
bound, as TwoGoalPoint's, the flow's raw samples beyond the bound keep the prior's spread and
alpha fell to 1e-19.)

Acting samples the flow from fresh noise: the samples are what keep the modes. The
deterministic evaluation takes the best by Q of M flow samples from fixed noises.

Reference settings (MuJoCo): M = 64 (SDAC; DPMD 200), 3 x 256 networks with Mish, 20-step DDPM,
learning rate 1e-4 (policy 1e-4 -> 5e-5), alpha learning rate 3e-2 every 250 steps, policy and
targets every second step, tau 0.005, gamma 0.99, reward scale 0.2, minimum of two critics,
batch 256, UTD 1. CPU defaults here: M = 64, FQL's 2 x 64 networks and 10-step flow
(gprl.algos.fql), one Adam at 3e-4 for the networks and one at 3e-3 for log alpha (from 0.05),
every part updated every step, no reward scale (alpha adapts to it).

Measured (benchmarks/multimodality.py, seed 0): FourModeBandit at 20k steps keeps all four
modes (0.18 0.18 0.19 0.16 of the samples, 0.29 on none, the strays on the flow's bridges
between modes) at eval return 0.993. TwoGoalPoint at 15k steps keeps one goal (0.83 / 0.00):
alpha settles near 0.003 there, far below the critics' error on the goal the policy stops
visiting (its heading valued 0.07 below the other's at the start), so exp(Q / alpha) drops it.
gamma 0.9, alpha_learning_rate 1e-4 and backup_samples 32 keep both goals in 2 of 3 seeds (40k
steps), and in seeds 0-2 with a 15,000-step warm-up of draws held for 8 steps
(learning_starts 15000, explore_hold 8; 50k steps), which reaches each goal ~20x as often as
the 5,000 i.i.d. steps; a fourth seed leans to one goal, 0.23 / 0.77 of its episodes (the
README's "Keeping modes").
"""

from dataclasses import dataclass
from typing import Literal

import jax
import jax.numpy as jnp
import optax

from gprl.algos.base import check_learning_rates
from gprl.algos.fql import FlowCritic, FlowCriticConfig, evaluation_noises

SPANNING_TIME = 0.5
"""Flow times below which the candidates' posterior (std >= 0.71 per dimension) spans the
action space: the temperature reads the weights' effective sample size there alone."""


@dataclass(frozen=True)
class DPMDConfig(FlowCriticConfig):
    """The flow and critics as FQL's, with its CPU defaults (2 x 64 networks, 10 Euler steps);
    the flow is the policy, trained on its own Q-weighted samples."""

    num_candidates: int = 64
    """Candidate actions M per replay state, weighted by softmax(Q / alpha) in the policy's
    loss (each a critic call), and the flow samples the deterministic evaluation picks the best
    of (reference: 64 SDAC, 200 DPMD). The candidates cost critic calls alone, no flow
    samples."""
    initial_alpha: float = 0.05
    """Temperature of the softmax over the candidates' Q at the start (tuned from there)."""
    alpha_learning_rate: float = 3e-3
    """Adam step size of log(alpha) (reference: 3e-2, applied every 250th gradient step)."""
    target_effective_share: float = 0.05
    """Effective sample size of the softmax weights, as a share of M, that alpha is tuned to
    hold (at flow times t < 0.5, averaged over the batch): smaller is a sharper policy; it must
    exceed 1 / M. On FourModeBandit (20k steps) 0.05 kept the four modes at 0.16-0.19 of the
    samples each (alpha 0.08), 0.15 blurred them to 0.08-0.11 (alpha 0.14)."""
    q_aggregation: Literal["mean", "min"] = "min"
    """How the critics combine, in the TD target, the weights and the evaluation's choice: min
    (reference: the minimum of 2 critics) or mean."""
    backup_samples: int = 0
    """0: the TD target takes Q' at one fresh policy sample at s' (the reference's plain
    backup). K > 0: the max of Q' over K policy samples and K uniform actions, an estimate of
    Q-learning's max (2K critic calls per batch entry): the critics then value every optimum
    the data reached, where the plain backup values the one the policy heads for. Measured on
    gprl/TwoGoalPoint-v0 in the README ("Keeping modes")."""

    def validate(self) -> None:
        super().validate()
        check_learning_rates(self, "alpha_learning_rate")
        if self.backup_samples < 0:
            raise ValueError(f"backup_samples must be 0 or more, got {self.backup_samples}")
        if self.num_candidates < 2:
            raise ValueError(f"num_candidates must be at least 2, got {self.num_candidates}")
        if not self.initial_alpha > 0:
            raise ValueError(f"initial_alpha must be positive, got {self.initial_alpha}")
        if not 1.0 / self.num_candidates < self.target_effective_share < 1.0:
            raise ValueError(
                f"target_effective_share must lie strictly between 1 / num_candidates "
                f"({1.0 / self.num_candidates:g}) and 1, got {self.target_effective_share}"
            )


def _temperature_labels(params):
    return {
        part: jax.tree.map(lambda _, p=part: "alpha" if p == "log_alpha" else "networks", tree)
        for part, tree in params.items()
    }


class DPMD(FlowCritic):
    def __init__(self, config: DPMDConfig, spec, num_envs: int, total_steps: int, networks=None):
        """networks (gprl.networks.CustomNetworks): a velocity torso for the flow policy and a
        critic torso, torso(obs, action), for every critic."""
        super().__init__(config, spec, num_envs, total_steps, networks)
        rates = {"networks": config.learning_rate, "alpha": config.alpha_learning_rate}
        self.optimizer = optax.multi_transform(
            {part: optax.adam(rate) for part, rate in rates.items()}, _temperature_labels
        )

    def _init_policy(self, key) -> dict:
        return {"log_alpha": jnp.log(jnp.asarray(self.config.initial_alpha, jnp.float32))}

    def _policy_params(self, params):
        return {"flow": params["flow"], "critic": params["critic"]}

    def _sample(self, policy, obs, key):
        noise = jax.random.normal(key, (*obs.shape[:-1], self.spec.action_dim))
        return jnp.clip(self.flow.sample(policy["flow"], obs, noise), -1.0, 1.0)

    def _next_q(self, state, next_obs, key):
        return self._best_next_q(state, next_obs, key, self.config.backup_samples)

    def _deterministic(self, policy, obs):
        noise = evaluation_noises(self.config.num_candidates, self.spec.action_dim, obs.shape[:-1])
        candidates, q = self._candidates(policy, obs, noise)
        best = jnp.argmax(q, axis=-1)
        return jnp.take_along_axis(candidates, best[..., None, None], axis=-2)[..., 0, :]

    def _candidates(self, policy, obs, noise):
        """Flow samples from noise (..., M, action_dim) at obs (..., obs_dim), clipped, and the
        critics' values of them (..., M)."""
        repeated = jnp.broadcast_to(obs[..., None, :], (*noise.shape[:-1], obs.shape[-1]))
        candidates = jnp.clip(self.flow.sample(policy["flow"], repeated, noise), -1.0, 1.0)
        return candidates, self._q(policy["critic"], repeated, candidates)

    def _flow_loss(self, flow, batch, key):
        # The flow is the policy: it learns the Boltzmann field (_policy_losses), not the
        # buffer's actions.
        return jnp.zeros(()), {}

    def _policy_losses(self, params, current, batch, key) -> list:
        sample_key, field_key = jax.random.split(key)
        obs = batch.obs
        noise = jax.random.normal(sample_key, (obs.shape[0], self.spec.action_dim))
        actions = self.flow.sample(current["flow"], obs, noise)
        alpha = jnp.exp(jax.lax.stop_gradient(params["log_alpha"]))
        flow_loss, info = self._boltzmann_field_loss(
            params["flow"], current["critic"], obs, actions, alpha, field_key
        )
        # d/d(log alpha) = share - target: alpha rises while the weights are too peaked.
        share_gap = info["policy/effective_share"] - self.config.target_effective_share
        alpha_loss = params["log_alpha"] * jax.lax.stop_gradient(share_gap)
        info = info | {"policy/loss": flow_loss}
        return [(flow_loss, info), (alpha_loss, {"policy/alpha": alpha})]

    def _boltzmann_field_loss(self, flow, critic, obs, actions, alpha, key):
        """Regress the flow's velocity at x_t = (1 - t) x0 + t a, a the policy's own sample, onto
        the velocity field of the Boltzmann policy N(a; 0, I) exp(Q(s, a) / alpha), estimated by
        M candidates from the posterior of a given x_t under the N(0, I) prior, weighted by
        softmax(Q / alpha) (self-normalised importance sampling)."""
        time_key, source_key, candidate_key = jax.random.split(key, 3)
        t = self._training_times(time_key, actions.shape[:-1])[..., None]
        x_t = (1.0 - t) * jax.random.normal(source_key, actions.shape) + t * actions
        spread = (1.0 - t) ** 2 + t**2
        shape = (*actions.shape[:-1], self.config.num_candidates, actions.shape[-1])
        eps = jax.random.normal(candidate_key, shape)
        # The posterior is N(t x_t / spread, (1 - t)^2 / spread); a candidate's velocity
        # (a - x_t) / (1 - t) simplifies to the expression below, finite at t = 1.
        candidates = (t * x_t / spread)[..., None, :] + ((1 - t) / jnp.sqrt(spread))[
            ..., None
        ] * eps
        velocities = ((2 * t - 1) * x_t / spread)[..., None, :] + eps / jnp.sqrt(spread)[..., None]
        repeated = jnp.broadcast_to(obs[..., None, :], (*shape[:-1], obs.shape[-1]))
        q = self._q(critic, repeated, jnp.clip(candidates, -1.0, 1.0))
        weights = jax.nn.softmax(q / alpha, axis=-1)
        target = jnp.sum(weights[..., None] * velocities, axis=-2)
        error = self.flow.velocity(flow, obs, x_t, t[..., 0]) - target
        effective_share = 1.0 / jnp.sum(weights**2, axis=-1) / self.config.num_candidates
        # Only where the candidates span the action space does their spread of Q measure how
        # sharp the policy is; late times compare near-identical actions.
        spanning = (t[..., 0] < SPANNING_TIME).astype(jnp.float32)
        spanning_share = jnp.sum(spanning * effective_share) / jnp.maximum(spanning.sum(), 1.0)
        loss = jnp.mean(jnp.sum(error**2, axis=-1))
        return loss, {"policy/q": q.mean(), "policy/effective_share": spanning_share}

    def _training_times(self, key, shape):
        """Flow times of the regression: U[0, 1], or the sampler's grid."""
        steps = self.config.flow.num_steps
        if self.config.flow.time_sampling == "grid":
            return jax.random.randint(key, shape, 0, steps) / steps
        return jax.random.uniform(key, shape)
