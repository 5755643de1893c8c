"""Residual off-policy RL (Ankile et al. 2025, "Residual Off-Policy RL for Finetuning Behavior
Cloning Policies"; code amazon-science/residual-offpolicy-rl): a small bounded correction on top
of a frozen pretrained policy, learnt off-policy.

The env receives a = clip(b + residual_scale * u, -1, 1), where b = pi_base(s, w = 0) is the
frozen policy's action from zero noise and u in [-1, 1]^d a tanh-squashed SAC actor's output for
the input (s, b). The critics learn Q(s, a) on the executed action; their input is (s, b) too.

Choices, and why:

- The base acts from zero noise, so b is a function of s: the TD target recomputes the next
  state's b exactly, replayed and offline transitions need no stored base action, the actor
  corrects one fixed action per state rather than a moving sample, and the first evaluation (u
  starts at 0) is the base's deterministic action. The reference stores the base action it
  sampled with each observation instead.
- Actor and critics see b beside s (the reference feeds the base action to its residual actor):
  the correction the actor should make depends on where the base acts, which the critics also
  need not relearn from s. Each gradient step decodes b for its batch's obs and next_obs.
- SAC, not the reference's TD3: gprl.algos.sac exists with hooks for a decoded action, and its
  tuned entropy replaces TD3's hand-set exploration noise schedule (0.05 fixed in the reference).
- No n-step returns: the replay samples single transitions, and an n-step window would need
  the vector env's interleaved rows, the ring's write position and episode ends in the
  sampler the loop owns. With a chunked base a decision already sums its Te rewards and
  bootstraps with gamma^Te, the same shortening of the horizon n-step returns give.
- A chunked --init arrives as its flat chunk (Ta x d actions per decision, see gprl.algos.base),
  so the residual corrects the whole chunk from the decision's observation; the reference's
  per-step residual would need a policy that acts inside a chunk.
- Before learning starts the run acts as the base plus a residual drawn uniformly from its whole
  bound (the actions the actor can reach), not uniform actions: the critics learn where the
  policy can act. The reference adds uniform noise of +-0.2 to the base.

The base's weights (with its observation and action statistics) live in the training state
under "frozen", so checkpoints hold them and a resumed run is exact.
"""

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from gprl.algos.dsrl import check_frozen_base, starting_actor
from gprl.algos.sac import SAC, SACConfig
from gprl.networks import CustomNetworks
from gprl.types import EnvSpec


@dataclass(frozen=True)
class ResidualConfig(SACConfig):
    residual_scale: float = 0.1
    """Bound of the residual: the executed action lies within residual_scale of the base's,
    per dimension (the reference's action_scale: 0.1)."""
    base_sampling_steps: int | None = None
    """Integration (denoising) steps of the frozen policy; None: the steps it was pretrained
    with. Every gradient step decodes two batches through it, so its cost follows the base's
    size and steps."""
    critic_warmup_updates: int = 1_000
    """Gradient steps that train only the critics before the actor and the temperature move
    (the reference's critic_warmup_steps: 10,000)."""
    initial_log_std: float = -0.7
    """The actor's log standard deviation (before tanh) at the start, where its mean residual
    is 0: about half the bound, as the reference's fixed exploration noise (0.05 at an
    action_scale of 0.1)."""
    actor_layer_norm: bool = True
    """LayerNorm after each hidden layer of the actor (reference: on, as for its critics)."""
    actor_hidden: tuple[int, ...] = (256, 256)
    """Hidden layer widths of the actor (reference: 3 x 256 on top of its image encoder)."""
    critic_hidden: tuple[int, ...] = (256, 256)
    """Hidden layer widths of each critic (reference: 3 x 1024 on state tasks)."""
    critic_layer_norm: bool = True
    """LayerNorm after each hidden layer of the critics (reference: on)."""
    actor_learning_rate: float = 3e-4
    """Adam step size of the actor (reference: 1e-6 for its image tasks over 1M+ steps; 3e-4
    is SAC's, for CPU budgets of 100k steps)."""
    critic_learning_rate: float = 3e-4
    """Adam step size of the critics (reference: 1e-4)."""
    update_to_data: float = 1.0
    """Gradient steps per env step (the reference's is high, as RLPD's; each costs two base
    decodes here, so 1 on CPU)."""

    def validate(self) -> None:
        super().validate()
        if not (np.isfinite(self.residual_scale) and 0 < self.residual_scale <= 2):
            raise ValueError(f"residual_scale must be in (0, 2], got {self.residual_scale}")
        if self.base_sampling_steps is not None and self.base_sampling_steps < 1:
            raise ValueError(
                f"base_sampling_steps must be at least 1, got {self.base_sampling_steps}"
            )
        if self.critic_warmup_updates < 0:
            raise ValueError(
                f"critic_warmup_updates must be non-negative, got {self.critic_warmup_updates}"
            )
        if not self.log_std_min < self.initial_log_std < self.log_std_max:
            raise ValueError(
                f"initial_log_std ({self.initial_log_std}) must lie strictly between log_std_min "
                f"({self.log_std_min}) and log_std_max ({self.log_std_max})"
            )


# The parts of the state that stand still while only the critics train.
ACTOR_PARTS = ("actor", "actor_opt", "log_alpha", "alpha_opt")


class Residual(SAC):
    pretrained_policy = "required"
    fine_tunes_chunks = True

    def __init__(
        self,
        config: ResidualConfig,
        spec: EnvSpec,
        num_envs: int,
        total_steps: int,
        pretrained=None,
        networks=None,
    ):
        """networks (gprl.networks.CustomNetworks): an actor torso, torso(obs and base action),
        and a critic torso, torso(obs and base action, action); the frozen base keeps its own."""
        super().__init__(config, spec, num_envs, total_steps, networks)
        check_frozen_base(pretrained, "residual", "corrects")
        self.pretrained = pretrained
        self.base = pretrained.policy
        self.actor = starting_actor(config, spec.action_dim, (networks or CustomNetworks()).actor)

    def init(self, key) -> dict:
        # SAC's state (not SAC.init's: initialising its critics twice costs seconds), with
        # networks for inputs that carry the base action beside the observation.
        actor_key, critic_key = jax.random.split(key)
        seen = jnp.zeros((1, self.spec.obs_dim + self.spec.action_dim))
        actor = self.actor.init(actor_key, seen)
        critic = self.critic.init(critic_key, seen, jnp.zeros((1, self.spec.action_dim)))
        return self.state_of(actor, critic) | {
            "gradient_steps": jnp.asarray(0, jnp.int32),
            # Copies: the loop donates the state's arrays to its compiled calls.
            "frozen": jax.tree.map(jnp.array, self.pretrained.acting),
        }

    def acting_params(self, state):
        return {"actor": state["actor"], "frozen": state["frozen"]}

    def base_action(self, frozen, obs):
        """b = pi_base(s, 0): the frozen policy's action from zero noise."""
        noise = jnp.zeros((*obs.shape[:-1], self.base.noise_dim))
        chunk = self.base.plan_from_noise(frozen, obs, noise, self.config.base_sampling_steps)
        return chunk[..., 0, :]

    def _seen(self, frozen, obs):
        """What actor and critics see: the observation and the base action."""
        return jnp.concatenate([obs, self.base_action(frozen, obs)], axis=-1)

    def _executed(self, seen, squashed):
        """The executed action for a squashed residual u: clip(b + residual_scale u)."""
        base = seen[..., self.spec.obs_dim :]
        return jnp.clip(base + self.config.residual_scale * squashed, -1.0, 1.0)

    def _critic_action(self, state, seen, squashed):
        return self._executed(seen, squashed)

    def _actor_value(self, state, critic, seen, squashed):
        return self.critic.apply(critic, seen, self._executed(seen, squashed)).min(0)

    def act(self, acting, obs, key):
        seen = self._seen(acting["frozen"], obs)
        squashed, _ = self._sample(acting["actor"], seen, key)
        return self._executed(seen, squashed), {}

    def act_deterministic(self, acting, obs):
        seen = self._seen(acting["frozen"], obs)
        mean, _ = self._distribution(acting["actor"], seen)
        return self._executed(seen, jnp.tanh(mean))

    def explore(self, acting, obs, key):
        seen = self._seen(acting["frozen"], obs)
        residual = jax.random.uniform(key, (obs.shape[0], self.spec.action_dim), minval=-1.0)
        return self._executed(seen, residual), {}

    def update(self, state, batch, key):
        """SAC's gradient step on observations seen with their base actions; during the critic
        warm-up the actor and the temperature keep their values."""
        both = jnp.concatenate([batch.obs, batch.next_obs])
        seen, next_seen = jnp.split(self._seen(state["frozen"], both), 2)
        updated, metrics = super().update(state, batch._replace(obs=seen, next_obs=next_seen), key)
        if self.config.critic_warmup_updates:
            warming = state["gradient_steps"] < self.config.critic_warmup_updates
            held = {part: state[part] for part in ACTOR_PARTS}
            moved = {part: updated[part] for part in ACTOR_PARTS}
            updated |= jax.tree.map(lambda old, new: jnp.where(warming, old, new), held, moved)
        updated["gradient_steps"] = state["gradient_steps"] + 1
        return updated, metrics
