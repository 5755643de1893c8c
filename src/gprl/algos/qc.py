"""Q-chunking (Li, Zhou and Levine 2025, arXiv 2507.07969; reference code ColinQiyangLi/qc):
TD learning over action chunks, offline, offline-to-online (--dataset) and online.

Both methods act in chunks of h actions of their own (Algorithm.chunk_length; h = 5 in the
reference): the run executes each chunk whole as one decision of h env steps
(gprl.envs.chunked), and the method sees an ordinary task whose action is the flat chunk of
h x action_dim values. The critics value chunks, Q(s_t, a_t..a_{t+h-1}), with the TD target
sum_k gamma^k r_{t+k} + gamma^h Q'(s_{t+h}, a') (per_decision_config), and a BC flow over
chunks (gprl.algos.fql.FlowCritic) is the behaviour constraint. An offline dataset reaches
the run as windows of h recorded steps (gprl.decision_data.decision_transitions).

- QC-FQL: FQL on chunks: its one-step policy, distilled from the chunked BC flow, climbs the
  chunked critics (reference alpha 100).
- QC: no policy network. It acts with the best of N (reference 32) chunks sampled from the BC
  flow, by the online critics, and the same choice at s' gives the TD target (valued by the
  target critics); its loss is the critics' and the flow's alone. With --init, a `gprl
  pretrain` policy that predicts and executes chunks of h (any kind: flow, DDPM, Gaussian, ...)
  takes the BC flow's place from its pretrained weights and imitates by its own loss; the
  critics then see observations standardised with its pretrain run's statistics
  (normalize_observations; the dataset's without --init). A pretrained DDPM's samples draw
  step noises as it acts, and none in the deterministic evaluation.

Departures from the reference, which keeps single steps in its buffer and samples windows of
h of them from any step, online too: here the online buffer holds one transition per executed
chunk, and a dataset's windows end at terminations, their missing actions padded (the
reference leaves windows that cross an episode's end out of the critic's loss and masks their
missing actions in the BC loss). The reference takes one gradient step per env step, h per
decision; `update_to_data` counts per decision here (h gives the reference's). QC's
deterministic evaluation picks among chunks sampled from N fixed noises (the reference
evaluates as it acts, with fresh noise). The networks are gprl's (see gprl.algos.fql).
"""

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from gprl.algos.base import check_networks
from gprl.algos.fql import FQL, BufferImitationConfig, FlowCritic, FQLConfig, evaluation_noises
from gprl.algos.imitating_base import check_base, pretrained_base
from gprl.rl_math import running_stats_init

REFERENCE_CHUNK = 5


def chunk_length_of(config) -> int:
    """config.chunk_length, checked before the run builds envs that execute its chunks."""
    if config.chunk_length < 1:
        raise ValueError(f"chunk_length must be at least 1, got {config.chunk_length}")
    return config.chunk_length


@dataclass(frozen=True)
class QCFQLConfig(FQLConfig):
    """FQL's settings and CPU defaults (gprl.algos.fql), on chunks. Reference: 4 x 512 GELU
    networks, batch 256, learning rate 3e-4, alpha 100, 1M offline then 1M online steps at one
    gradient step per env step."""

    alpha: float = 100.0
    """Weight of the distillation term ||mu(s, z) - ODE(s, z)||^2 against -Q (reference: 100,
    in every example command of its README)."""
    chunk_length: int = REFERENCE_CHUNK
    """Actions per chunk, h: the critics and both policies see chunks of h actions, each
    executed whole as one decision (reference: 5; 1 is FQL)."""


@dataclass(frozen=True)
class QCConfig(BufferImitationConfig):
    """The BC flow and critics as FQL's, with its CPU defaults (2 x 64 networks; reference:
    4 x 512 GELU, batch 256, learning rate 3e-4, 1M offline then 1M online steps at one
    gradient step per env step)."""

    chunk_length: int = REFERENCE_CHUNK
    """Actions per chunk, h: the critics and the BC flow see chunks of h actions, each executed
    whole as one decision (reference: 5)."""
    num_samples: int = 32
    """Chunks sampled from the BC flow per decision, of which the critics pick the best, to act
    and in the TD target (reference: 32). Each costs a flow sample (flow.num_steps network
    calls) and a critic call: a gradient step at batch 256 with 2 x 64 networks took 13.7 ms
    at 32 and 4.0 ms at 8 here, FQL's 2.0 ms (28 observations, chunks of 5 x 5 actions)."""

    def validate(self) -> None:
        super().validate()
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {self.num_samples}")


class QCFQL(FQL):
    @classmethod
    def chunk_length(cls, config) -> int:
        return chunk_length_of(config)


class QC(FlowCritic):
    pretrained_policy = "optional"
    fine_tunes_chunks = True

    def __init__(
        self,
        config: QCConfig,
        spec,
        num_envs: int,
        total_steps: int,
        pretrained=None,
        networks=None,
    ):
        """pretrained (--init): a `gprl pretrain` policy of any kind, predicting and executing
        chunks of chunk_length from one observation, seen through its flat chunk; it takes the
        BC flow's place from its pretrained weights and imitates by its own loss. networks
        (gprl.networks.CustomNetworks): a critic torso, torso(obs, action), for every critic,
        and without --init a velocity torso for the BC flow."""
        if pretrained is not None:
            check_networks(networks, ("critic",), "qc with --init")
        check_base(pretrained, spec, "qc", "builds on")
        super().__init__(config, spec, num_envs, total_steps, networks)
        self.base_obs_norm = None
        if pretrained is not None:
            self.flow, self.base_obs_norm = pretrained_in_flow_place(pretrained, config)

    @classmethod
    def chunk_length(cls, config) -> int:
        return chunk_length_of(config)

    def init(self, key) -> dict:
        state = super().init(key)
        if self.base_obs_norm is None:
            return state
        return state | {"obs_norm": jax.tree.map(jnp.array, self.base_obs_norm)}

    def with_offline_data(self, state, transitions: dict) -> dict:
        if self.base_obs_norm is not None:
            return state  # every network keeps the pretrain run's statistics
        return super().with_offline_data(state, transitions)

    def _policy_params(self, params):
        return {"flow": params["flow"], "critic": params["critic"]}

    def _sample(self, policy, obs, key):
        shape = (*obs.shape[:-1], self.config.num_samples, self.spec.action_dim)
        return self._best_of(policy, obs, *self._flow_noises(key, shape))

    def _deterministic(self, policy, obs):
        return self._best_of(policy, obs, self.evaluation_noise(obs.shape[:-1]))

    def evaluation_noise(self, batch_shape):
        """The deterministic evaluation's N fixed noises for each of batch_shape's observations."""
        return evaluation_noises(self.config.num_samples, self.spec.action_dim, batch_shape)

    def act_from_noise(self, acting, obs, noise):
        """Of the chunks the BC flow maps noise (..., N, action_dim) to in obs (..., obs_dim), the
        one the critics value most: with evaluation_noise, act_deterministic's chunk; with N = 1,
        the flow's own chunk for that noise, whatever the critics value."""
        return self._best_of(acting["policy"], self._standardised(acting["obs_norm"], obs), noise)

    def _best_of(self, policy, obs, noise, step_noise=None):
        """Of the chunks the BC flow maps noise (..., N, action_dim) to (and step noises, for a
        pretrained kind that draws them; None: zero), the one the critics value most in obs
        (..., obs_dim)."""
        repeated = jnp.broadcast_to(obs[..., None, :], (*noise.shape[:-1], obs.shape[-1]))
        chunks = self._flow_actions(policy["flow"], repeated, noise, step_noise)
        best = jnp.argmax(self._q(policy["critic"], repeated, chunks), axis=-1)
        return jnp.take_along_axis(chunks, best[..., None, None], axis=-2)[..., 0, :]


def pretrained_in_flow_place(pretrained, config: QCConfig):
    """(the --init policy as QC's BC flow, the observation statistics every network then
    standardises with): with normalize_observations the pretrain run's, moved from the policy
    to the run, so that the critics see what the policy sees; else None (the policy standardises
    its own input, the critics see observations as the env gives them)."""
    if config.imitate_returns_above is not None and pretrained.kind != "flow":
        raise ValueError(
            "imitate_returns_above weights a flow's imitation loss; --init holds a "
            f"'{pretrained.kind}' policy"
        )
    base = pretrained_base(pretrained)
    if not config.normalize_observations:
        return base, None
    statistics = base.maps["obs_norm"]
    base.maps = base.maps | {"obs_norm": running_stats_init(statistics["mean"].shape)}
    # The policy applied them whatever their count; the run applies statistics from a count of 1.
    return base, statistics | {"count": jnp.maximum(statistics["count"], 1.0)}
