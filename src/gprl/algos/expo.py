"""EXPO ("EXPO: Stable Reinforcement Learning with Expressive Policies"; reference code
Servo97/EXPO): an expressive base policy trained only by imitation, a small Gaussian edit
policy that moves its actions toward higher Q, and an on-the-fly policy that picks by Q.

- The base learns only by imitation of the replay buffer's actions, offline and online ones
  alike: it never climbs the critic, which is what keeps its training as stable as supervised
  learning. It is a `gprl pretrain` run of any kind (--init: flow, DDPM, Gaussian, ...; a
  chunked one arrives as its flat chunk, one decision of Ta x d actions, see gprl.algos.base)
  trained on by its own loss with its pretrain run's observation and action maps
  (gprl.algos.imitating_base), or without --init a fresh BC flow (gprl.algos.fql.FlowCritic)
  fitted by flow matching.
- The edit policy sees (s, b) for a base action b and proposes b' = clip(b + edit_scale *
  tanh(u), -1, 1), u ~ N(mu(s, b), sigma(s, b)): a correction bounded by edit_scale per
  dimension that starts at 0 (gprl.algos.dsrl.starting_actor). It maximises
  Q(s, b') - alpha log pi(u | s, b) as SAC's actor does, alpha tuned toward target_entropy.
- The on-the-fly policy samples N base actions, edits each once, and takes the argmax of Q over
  the 2N candidates, both to act and in the TD target r + gamma Q'(s', argmax) (no entropy
  term in the backup: the reference's backup_entropy=False).

As in QC (gprl.algos.qc), the critics choose among candidates with the online critics and the
target critics value the choice; the deterministic evaluation draws its N base samples from
fixed noises, the first zero (the base's mode, as every fine-tuner evaluates its start), with
zero step noises, and takes each edit's mean. Base samples to act and learn from use unit noise,
and a pretrained DDPM its step noises, whatever the pretrain run's noise_scale: their spread is
what the critics choose from. All networks learn in one gradient step on the sum of
their losses (one Adam; the temperature's loss moves only log alpha).

Departures from the reference: one edit per base sample (its n_edit_samples draws several),
without --init a flow base where the reference trains a DDPM, and the candidates picked by the
online critics where the reference's acting uses its target critics (and samples an average of
the base's weights, Polyak 0.001). The reference pre-trains only its base offline (its robot
scripts set --pretrain_q=False): critics and edit start online. Here --offline-updates trains
all of them on the dataset; with --init the base is pretrained already and --offline-updates 0
is the reference's protocol.
"""

from dataclasses import dataclass
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from gprl.algos.base import check_networks
from gprl.algos.dsrl import starting_actor
from gprl.algos.fql import FlowCritic, FlowCriticConfig, evaluation_noises
from gprl.algos.imitating_base import check_base, pretrained_base, with_observation_maps
from gprl.algos.sac import squashed_log_prob


@dataclass(frozen=True)
class EXPOConfig(FlowCriticConfig):
    """The BC flow and critics as FQL's, with their CPU defaults (2 x 64 networks, 2 critics;
    reference: 3 x 256, batch 256, learning rate 3e-4, 10 critics whose TD target is the
    minimum of 2 drawn at random, RLPD's: --expo.num-critics 10 --expo.target-subset 2
    --expo.q-aggregation mean, the edit then climbing their mean as the reference's; UTD 20)."""

    normalize_observations: bool | None = None
    """Standardise observations with the offline dataset's statistics (FQL's option); None: on
    without --init, off with it, whose base standardises them with its pretrain statistics
    (the critics and the edit policy then see them as the env gives them). On with --init is
    refused: the base would standardise them twice."""
    num_samples: int = 8
    """Base actions sampled per decision, each edited once; Q picks the best of the 2N
    candidates to act and in the TD target (reference N: 8)."""
    edit_scale: float = 0.1
    """Bound of an edit per action dimension (the reference's edit_action_scale: 0.05 to 0.1
    on its robot tasks)."""
    actor_hidden: tuple[int, ...] = (64, 64)
    """Hidden widths of the edit policy (reference: 3 x 256)."""
    actor_layer_norm: bool = True
    """LayerNorm after each hidden layer of the edit policy."""
    initial_log_std: float = -1.0
    """The edit policy's log standard deviation (before tanh) at the start, where its mean
    edit is 0."""
    log_std_min: float = -5.0
    """Lower bound of the edit policy's log standard deviation."""
    log_std_max: float = 2.0
    """Upper bound of the edit policy's log standard deviation."""
    initial_alpha: float = 0.1
    """Entropy temperature of the edit policy at the start (tuned from there)."""
    target_entropy: float | None = None
    """Entropy of the squashed edit the temperature aims for; None: -action_dim (SAC's, as the
    reference's temperature)."""
    q_aggregation: Literal["mean", "min"] = "min"
    """How the critics combine where the edit climbs them and the best candidate is picked:
    min or mean (the reference's edit climbs the mean of its 10)."""
    update_to_data: float = 1.0
    """Gradient steps per env step (reference: 20, as RLPD; each step here samples 2N
    candidates at s', so 20 costs ~20x the CPU time of 1)."""

    def validate(self) -> None:
        super().validate()
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {self.num_samples}")
        if not (np.isfinite(self.edit_scale) and 0 < self.edit_scale <= 2):
            raise ValueError(f"edit_scale must be in (0, 2], got {self.edit_scale}")
        if not self.initial_alpha > 0:
            raise ValueError(f"initial_alpha must be positive, got {self.initial_alpha}")
        if not self.log_std_min < self.initial_log_std < self.log_std_max:
            raise ValueError(
                f"initial_log_std ({self.initial_log_std}) must lie strictly between log_std_min "
                f"({self.log_std_min}) and log_std_max ({self.log_std_max})"
            )


class EXPO(FlowCritic):
    pretrained_policy = "optional"
    fine_tunes_chunks = True

    def __init__(
        self,
        config: EXPOConfig,
        spec,
        num_envs: int,
        total_steps: int,
        pretrained=None,
        networks=None,
    ):
        """networks (gprl.networks.CustomNetworks): a critic torso, torso(obs, action), for
        every critic, and without --init a velocity torso for the BC flow; the edit policy
        takes none."""
        if pretrained is not None:
            check_networks(networks, ("critic",), "expo with --init")
        check_base(pretrained, spec, "expo", "builds on")
        config = with_observation_maps(config, pretrained is not None)
        super().__init__(config, spec, num_envs, total_steps, networks)
        if pretrained is not None:
            self.flow = pretrained_base(pretrained)
        self.edit = starting_actor(config, spec.action_dim)
        self.target_entropy = (
            -float(spec.action_dim) if config.target_entropy is None else config.target_entropy
        )

    def _init_policy(self, key) -> dict:
        seen = jnp.zeros((1, self.spec.obs_dim + self.spec.action_dim))
        initial_alpha = jnp.asarray(self.config.initial_alpha, jnp.float32)
        return {"edit": self.edit.init(key, seen), "log_alpha": jnp.log(initial_alpha)}

    def _policy_params(self, params):
        return {part: params[part] for part in ("flow", "critic", "edit")}

    def _edit_distribution(self, edit, obs, base):
        """Mean and standard deviation of u, before tanh, for base actions in obs."""
        mean, raw_log_std = jnp.split(
            self.edit.apply(edit, jnp.concatenate([obs, base], -1)), 2, -1
        )
        span = self.config.log_std_max - self.config.log_std_min
        log_std = self.config.log_std_min + 0.5 * span * (jnp.tanh(raw_log_std) + 1.0)
        return mean, jnp.exp(log_std)

    def edited(self, base, squashed_edit):
        """b' = clip(b + edit_scale * tanh(u)): within edit_scale of b in every dimension."""
        return jnp.clip(base + self.config.edit_scale * squashed_edit, -1.0, 1.0)

    def _sample(self, policy, obs, key):
        base_key, edit_key = jax.random.split(key)
        shape = (*obs.shape[:-1], self.config.num_samples, self.spec.action_dim)
        noise, step_noise = self._flow_noises(base_key, shape)
        return self._best_of(policy, obs, noise, edit_key, step_noise)

    def _deterministic(self, policy, obs):
        return self._best_of(policy, obs, self.evaluation_noise(obs.shape[:-1]))

    def evaluation_noise(self, batch_shape):
        """The deterministic evaluation's N fixed base noises for each of batch_shape's
        observations, the first zero (the base's mode)."""
        return evaluation_noises(
            self.config.num_samples, self.spec.action_dim, batch_shape, zero_first=True
        )

    def _best_of(self, policy, obs, noise, edit_key=None, step_noise=None):
        """Of the base actions for noise (..., N, action_dim) and their edits (sampled with
        edit_key; the mean edits without), the one the critics value most."""
        repeated = jnp.broadcast_to(obs[..., None, :], (*noise.shape[:-1], obs.shape[-1]))
        base = self._flow_actions(policy["flow"], repeated, noise, step_noise)
        mean, std = self._edit_distribution(policy["edit"], repeated, base)
        if edit_key is not None:
            mean = mean + std * jax.random.normal(edit_key, mean.shape)
        candidates = jnp.concatenate([base, self.edited(base, jnp.tanh(mean))], axis=-2)
        seen = jnp.concatenate([repeated, repeated], axis=-2)
        best = jnp.argmax(self._q(policy["critic"], seen, candidates), axis=-1)
        return jnp.take_along_axis(candidates, best[..., None, None], axis=-2)[..., 0, :]

    def _policy_losses(self, params, current, batch, key) -> list:
        base_key, edit_key = jax.random.split(key)
        noise, step_noise = self._flow_noises(base_key, batch.action.shape)
        base = self._flow_actions(current["flow"], batch.obs, noise, step_noise)
        mean, std = self._edit_distribution(params["edit"], batch.obs, base)
        raw_edit = mean + std * jax.random.normal(edit_key, mean.shape)
        log_prob = squashed_log_prob(mean, std, raw_edit)
        # The edit climbs the critics as they were before this step (as FQL's actor).
        q = self._q(current["critic"], batch.obs, self.edited(base, jnp.tanh(raw_edit)))
        alpha = jnp.exp(jax.lax.stop_gradient(params["log_alpha"]))
        edit_loss = jnp.mean(alpha * log_prob - q)
        entropy_gap = jax.lax.stop_gradient(log_prob + self.target_entropy)
        alpha_loss = -jnp.mean(params["log_alpha"] * entropy_gap)
        return [
            (
                edit_loss,
                {"edit/loss": edit_loss, "edit/q": q.mean(), "edit/entropy": -log_prob.mean()},
            ),
            (alpha_loss, {"edit/alpha": alpha}),
        ]
