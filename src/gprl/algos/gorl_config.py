"""GoRL's settings (see gprl.algos.gorl): the latent encoder's PPO, the decoder, the stage
schedule and the decoder refits."""

from dataclasses import dataclass, field
from typing import Literal

from gprl.algos.base import check_learning_rates
from gprl.algos.ppo import PPOConfig
from gprl.policies import DiffusionPolicyConfig, FlowPolicyConfig


@dataclass(frozen=True)
class GoRLConfig:
    ppo: PPOConfig = field(default_factory=PPOConfig)
    """PPO settings of the latent encoder (clip_eps and max_grad_norm are set per stage below).
    Default: the PPO baseline's actor, critic and clipped actions, chosen on 3 seeds of
    cheetah-run at 1M steps (benchmarks/gorl_defaults.py): final evaluation 591 +- 215 against
    277 +- 25 with the reference 4 x 32 SiLU softplus encoder, tanh actions and critic resets
    (preset gorl-reference), and 398 +- 195 with tanh actions."""
    decoder: Literal["flow", "diffusion"] = "flow"
    """Generative decoder: flow matching (Euler) or diffusion (DDIM), both deterministic from z."""
    flow: FlowPolicyConfig = field(default_factory=FlowPolicyConfig)
    diffusion: DiffusionPolicyConfig = field(
        default_factory=lambda: DiffusionPolicyConfig(num_train_steps=10, num_steps=10)
    )
    num_stages: int = 3
    """Encoder stages; a decoder refit separates consecutive stages (reference: 4)."""
    stage_weights: tuple[float, ...] = (2.0, 1.0, 1.0)
    """Relative encoder budget of each stage (reference: 60M/60M/30M/30M, 2/2/1/1). At CPU
    budgets a long first stage matters most: each later stage restarts the learning-rate
    schedule and the encoder."""
    clip_eps_first_stage: float = 0.15
    """PPO clip range in stage 0 (reference)."""
    clip_eps_later_stages: float = 0.3
    """PPO clip range after the first refit (reference)."""
    max_grad_norm_first_stage: float = 0.5
    """Gradient-norm clip in stage 0 (reference)."""
    max_grad_norm_later_stages: float = 1.0
    """Gradient-norm clip after the first refit (reference)."""
    prior_regularizer: Literal["l2", "kl", "none"] = "l2"
    """'l2': coef * (mean(mu^2) + mean(sigma^2)) as the reference code; 'kl': coef * mean KL(pi(.|s)
    || N(0, I)) as the paper."""
    prior_coef_first_stage: float = 5e-4
    """Prior regulariser weight in stage 0 (reference)."""
    prior_coef_later_stages: float = 1e-3
    """Prior regulariser weight after the first refit (reference)."""
    reset_encoder: bool = True
    """Re-initialise the encoder (actor, optimiser, observation normaliser) at each stage."""
    reset_critic: bool = False
    """Re-initialise the critic with the encoder (reference). A refit preserves the policy, so
    the critic still values it and is kept by default (with its observation statistics)."""
    encoder_starts_at_prior: bool = True
    """Zero the re-initialised encoder's output layer, so that a new stage starts exactly at the
    prior (mean 0, std init_std) and the first policy after a refit (or, with --init, the first
    policy: the pretrained one) is decoder(s, prior) itself; otherwise its small random output
    (reference) shifts every latent a little."""
    warm_start_decoder: bool = False
    """Fine-tune the previous decoder instead of fitting a fresh one (reference: fresh)."""
    collect_fraction: float = 0.04
    """Env steps collected for each decoder refit, as a share of total_steps (reference: 0.08,
    19.7M per refit next to 180M encoder steps). Paired refits reproduce the policy from 0.04
    (median evaluation after a refit 99% of the one before, cheetah-run, 3 seeds). Raised to
    min_collect_episodes and decoder_min_samples at small budgets."""
    min_collect_episodes: float = 1.0
    """Each refit collects at least this many episodes' worth of steps (the env's time limit)
    in every env, whatever collect_fraction gives: its data are consecutive steps, and a window
    shorter than an episode holds only the phase the stage ended in (Pendulum-v1 at 20k steps:
    50 of 200 steps, the pendulum already up; the decoder fitted to them dropped the evaluation
    from -152 to -1,068). 0: no minimum; envs without a time limit have none."""
    decoder_min_samples: int = 1024
    """Each refit collects at least this many (state, action) pairs across its envs, whatever
    collect_fraction gives (twice the decoder's default minibatch)."""
    refit_tolerance: float | None = 0.03
    """Largest accepted mean |action after - action before| of the evaluation policy over the
    probe states (actions in [-1, 1]). A refit above it is not taken: the old decoder stays and
    the next stage continues from the encoder the refit was fitted to (logged as
    refit/accepted = 0 with refit/action_error). Pendulum-v1 after --init: 0.013 for refits that
    kept the return, 0.03-0.04 for underfit ones that cost 60-300 of it, 0.17 for one fitted to
    a quarter of each episode (-152 -> -1,068). None: every refit is taken (refit/action_error
    is still logged)."""
    refit_probe_states: int = 1024
    """States, drawn from the stage's last 4 rollouts, on which a refit is checked; they are
    not in its data, so a decoder that fits a too-narrow collection closely still fails there."""
    collect_policy: Literal["best", "last"] = "best"
    """Roll out the best-evaluated encoder of the stage (reference) or the latest one."""
    count_collection_steps: bool = True
    """Count decoder data-collection steps toward total_steps (the reference does not)."""
    decoder_train_steps: int = 10_000
    """Gradient steps of each decoder refit. 3000 underfit Pendulum-v1's paired refits after
    --init (held-out loss 0.05-0.07, evaluation action error 0.03-0.04, return -214 -> -521);
    10,000 fit them (0.018, 0.013, -214 -> -224)."""
    decoder_batch_size: int = 512
    """Minibatch size of decoder refits (reference: 8192 on GPU)."""
    decoder_learning_rate: float = 3e-4
    """Adam step size of decoder refits (reference)."""
    decoder_val_fraction: float = 0.1
    """Held-out share of the collected data; the decoder with the best held-out loss is kept."""
    decoder_eval_every: int = 250
    """Decoder training steps between held-out evaluations."""
    decoder_coupling: Literal["paired", "independent"] = "paired"
    """What a flow decoder learns to map the prior onto. 'paired': each collected action with
    the very prior noise that produced it (z = mean + std * eps keeps eps), so decoder(s, eps)
    reproduces the collecting policy sample by sample and decoder(s, 0) its evaluation action;
    'independent': the actions' distribution from fresh noise, as the reference (a refit then
    loses part of the policy: see the README). The diffusion decoder always fits independent
    noise."""

    pretrained_action_margin: float = 1e-4
    """With --init and tanh squashing: how far inside [-1, 1] the pretrained decoder's actions
    are kept before tanh is inverted (a saturated action starts off by at most this much; refit
    targets stay within atanh(1 - margin), 4.95 at 1e-4)."""

    def validate(self) -> None:
        """Raise ValueError naming the first nonsensical field."""
        self.ppo.validate()
        if not 0.0 < self.pretrained_action_margin < 1.0:
            raise ValueError(
                f"pretrained_action_margin must be in (0, 1), got {self.pretrained_action_margin}"
            )
        if self.num_stages < 1:
            raise ValueError(f"num_stages must be at least 1, got {self.num_stages}")
        if len(self.stage_weights) != self.num_stages:
            raise ValueError(
                f"stage_weights has {len(self.stage_weights)} entries for {self.num_stages} stages"
            )
        if any(not w > 0 for w in self.stage_weights):
            raise ValueError(f"stage_weights must be positive, got {self.stage_weights}")
        positive = ("clip_eps_first_stage", "clip_eps_later_stages", "max_grad_norm_first_stage")
        positive += ("max_grad_norm_later_stages", "collect_fraction", "decoder_train_steps")
        positive += ("decoder_batch_size", "decoder_eval_every", "decoder_min_samples")
        positive += ("refit_probe_states",)
        if self.min_collect_episodes < 0:
            raise ValueError(
                f"min_collect_episodes must be non-negative, got {self.min_collect_episodes}"
            )
        if self.refit_tolerance is not None and not self.refit_tolerance > 0:
            raise ValueError(f"refit_tolerance must be positive, got {self.refit_tolerance}")
        check_learning_rates(self, "decoder_learning_rate")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0.0 < self.decoder_val_fraction < 1.0:
            raise ValueError(
                f"decoder_val_fraction must be in (0, 1), got {self.decoder_val_fraction}"
            )
