"""GoRL: PPO on a Gaussian latent policy, decoded into actions by a generative model.

A tractable encoder pi(z | s) is trained with PPO while a flow-matching or diffusion decoder
maps (s, z) to an action a = squash(decoder(s, z)), clipped (default) or tanh (reference).
Stage 0 uses the identity decoder (plain latent PPO). Between stages the best policy is rolled
out, a decoder is fitted by imitation to map the prior N(0, I) onto its (pre-squash) actions,
and the encoder restarts at the prior, so decoder(prior) reproduces the last policy and the next
stage improves on it (arXiv 2512.02581).

Fine-tuning (`--init PRETRAIN_RUN`): the pretrained flow policy is the first decoder instead of
the identity, with its own observation statistics and action map; the encoder starts exactly
at the prior, so the first policy, decoder(s, prior), is the pretrained policy (its evaluation,
z = 0, is the pretrained policy acting from zero noise). Under tanh squashing this decoder
returns atanh of the pretrained action, kept a margin inside [-1, 1]; the refits that follow
fit fresh decoders to those pre-squash actions as usual.
"""

from dataclasses import dataclass, field, replace
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from gprl.algos.base import (
    OnPolicyAlgorithm,
    StageBoundary,
    check_learning_rates,
    check_networks,
    check_pretrained_flow,
)
from gprl.algos.onpolicy import (
    annealed_learning_rate,
    check_batch_geometry,
    iterations_for_budget,
    make_optimizer,
    ppo_update,
    reward_normalizer_init,
    set_hyperparameters,
)
from gprl.algos.ppo import GaussianActorCritic, PPOConfig, gaussian_ppo_loss
from gprl.networks import CustomNetworks
from gprl.policies import (
    DiffusionPolicy,
    DiffusionPolicyConfig,
    FlowPolicy,
    FlowPolicyConfig,
    GaussianPolicyConfig,
    gaussian_log_prob,
    kl_to_standard_normal,
)
from gprl.policies.imitation import FitConfig, ImitationFitter
from gprl.rl_math import normalize, running_stats_init, running_stats_update
from gprl.types import EnvSpec


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
    (median evaluation after a refit 99% of the one before, cheetah-run, 3 seeds)."""
    collect_policy: Literal["best", "last"] = "best"
    """Roll out the best-evaluated encoder of the stage (reference) or the latest one."""
    count_collection_steps: bool = True
    """Count decoder data-collection steps toward total_steps (the reference does not)."""
    decoder_train_steps: int = 3000
    """Gradient steps of each decoder refit."""
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
        positive += ("decoder_batch_size", "decoder_eval_every")
        check_learning_rates(self, "decoder_learning_rate")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0.0 < self.decoder_val_fraction < 1.0:
            raise ValueError(
                f"decoder_val_fraction must be in (0, 1), got {self.decoder_val_fraction}"
            )


def prior_regularizer(kind: str):
    """Penalty pulling the encoder toward the prior N(0, I); its coefficient is set per stage."""
    if kind == "none":
        return None
    if kind == "l2":
        return lambda mean, std: jnp.mean(mean**2) + jnp.mean(std**2)
    if kind == "kl":
        return lambda mean, std: jnp.mean(kl_to_standard_normal(mean, std))
    raise ValueError(f"unknown prior_regularizer '{kind}'; use 'l2', 'kl' or 'none'")


def zero_output_layer(actor_params: dict) -> dict:
    """A copy of a Gaussian actor's parameters with its output layer zeroed: the last dense
    layer of gprl's MLP, or the head under a user's torso."""
    inner = actor_params["params"]
    network = "MLP_0" if "MLP_0" in inner else "TorsoHead_0"
    layers = inner[network]
    if network == "MLP_0":
        last = max(layers, key=lambda name: int(name.rsplit("_", 1)[1]))
    else:
        last = "head"
    zeroed = jax.tree.map(jnp.zeros_like, layers[last])
    return {**actor_params, "params": {**inner, network: {**layers, last: zeroed}}}


def reference_gorl_config() -> GoRLConfig:
    """The reference code's settings (bennidict23/GoRL) with its schedule's shape, scaled to the
    run's budget: a 4 x 32 SiLU encoder with softplus scale, a 5 x 256 SiLU critic, entropy bonus
    1e-2, encoder and critic re-initialised at every stage with a small random output, a fresh
    decoder fitted from independent noise, 4 stages of 2/2/1/1, 8% of the budget collected per
    refit and not counted toward it."""
    return GoRLConfig(
        ppo=PPOConfig(
            action_squash="tanh",
            actor=GaussianPolicyConfig(hidden=(32,) * 4, activation="silu", std_type="softplus"),
            critic_hidden=(256,) * 5,
            critic_activation="silu",
            ent_coef=1e-2,
        ),
        num_stages=4,
        stage_weights=(2.0, 2.0, 1.0, 1.0),
        reset_critic=True,
        encoder_starts_at_prior=False,
        collect_fraction=0.08,
        decoder_coupling="independent",
        count_collection_steps=False,
    )


class PairedFlowLoss:
    """The flow-matching loss on targets that carry their own noise, [noise | action] along the
    last axis: what the imitation fitter minimises to learn a given noise -> action coupling."""

    def __init__(self, flow: FlowPolicy):
        self.flow = flow

    def loss(self, params, cond, noise_and_action, key):
        noise, action = jnp.split(noise_and_action, 2, axis=-1)
        return self.flow.loss(params, cond, action, key, noise=noise)


class GoRL(OnPolicyAlgorithm):
    pretrained_policy = "optional"

    def __init__(
        self,
        config: GoRLConfig,
        spec: EnvSpec,
        num_envs: int,
        total_steps: int,
        pretrained=None,
        networks=None,
    ):
        """networks (gprl.networks.CustomNetworks): actor and critic torsos for the encoder's
        actor-critic, a velocity torso for every decoder fitted at a refit (flow or diffusion;
        with --init the first decoder is the pretrained one)."""
        config.validate()
        check_batch_geometry(config.ppo, num_envs)
        check_networks(networks, ("actor", "critic", "velocity"), "GoRL")
        given = networks or CustomNetworks()
        if pretrained is not None:
            check_pretrained_flow(pretrained, "GoRL")
        self.pretrained = pretrained
        self.config = config
        self.spec = spec
        self.num_envs = num_envs
        self.model = GaussianActorCritic(
            config.ppo, spec.obs_dim, spec.action_dim, given.actor, given.critic
        )
        if config.decoder == "flow":
            flow = replace(config.flow, zero_init=False)
            self.decoder = FlowPolicy(spec.action_dim, flow, given.velocity)
        else:
            self.decoder = DiffusionPolicy(spec.action_dim, config.diffusion, given.velocity)
        self.regularizer = prior_regularizer(config.prior_regularizer)
        self.rollout_steps = config.ppo.rollout_steps
        self._plan_stages(total_steps)
        later = config.num_stages - 1
        self._per_stage = {
            "clip_eps": (config.clip_eps_first_stage,) + (config.clip_eps_later_stages,) * later,
            "max_grad_norm": (config.max_grad_norm_first_stage,)
            + (config.max_grad_norm_later_stages,) * later,
            "prior_coef": (config.prior_coef_first_stage,)
            + (config.prior_coef_later_stages,) * later,
            "iterations": self.stage_iterations,
        }
        self.optimizer = make_optimizer(config.ppo)
        self.paired_refit = config.decoder == "flow" and config.decoder_coupling == "paired"
        self.decoder_fitter = ImitationFitter(
            PairedFlowLoss(self.decoder) if self.paired_refit else self.decoder,
            FitConfig(
                batch_size=config.decoder_batch_size,
                learning_rate=config.decoder_learning_rate,
                val_fraction=config.decoder_val_fraction,
                chunk_steps=config.decoder_eval_every,
            ),
        )

    def _plan_stages(self, total_steps: int) -> None:
        """Split the budget: refit collections, then the encoder's stages by stage_weights."""
        config, num_envs = self.config, self.num_envs
        steps_per_iteration = config.ppo.rollout_steps * num_envs
        refits = config.num_stages - 1
        self.collect_rollout_steps = max(1, round(config.collect_fraction * total_steps / num_envs))
        encoder_budget = total_steps
        if config.count_collection_steps:
            encoder_budget -= refits * self.collect_rollout_steps * num_envs
        weights = np.asarray(config.stage_weights, np.float64)
        self.stage_iterations = tuple(
            iterations_for_budget(
                int(encoder_budget * w / weights.sum()),
                steps_per_iteration,
                f"the encoder budget of stage {stage}",
            )
            for stage, w in enumerate(weights)
        )
        self.num_iterations = sum(self.stage_iterations) + refits

    def stage_value(self, name: str, stage):
        return jnp.asarray(self._per_stage[name])[stage]

    # ----- state -------------------------------------------------------------------------------

    def _fresh_encoder(self, key) -> dict:
        params = self.model.init_params(key)
        return {
            "params": params,
            "opt_state": self.optimizer.init(params),
            "obs_norm": running_stats_init((self.spec.obs_dim,)),
        }

    def _at_prior(self, encoder: dict) -> dict:
        """The encoder with its output layer zeroed: exactly the prior (mean 0, std init_std)."""
        params = encoder["params"] | {"actor": zero_output_layer(encoder["params"]["actor"])}
        return encoder | {"params": params, "opt_state": self.optimizer.init(params)}

    def _best_so_far(self, state) -> dict:
        return {
            "return": jnp.asarray(-jnp.inf, jnp.float32),
            "actor": state["params"]["actor"],
            "obs_norm": state["obs_norm"],
        }

    def init(self, key) -> dict:
        encoder_key, decoder_key = jax.random.split(key)
        encoder = self._fresh_encoder(encoder_key)
        if self.pretrained is not None and self.config.encoder_starts_at_prior:
            encoder = self._at_prior(encoder)
        state = encoder | {
            "reward_norm": reward_normalizer_init(self.num_envs),
            "iteration": jnp.asarray(0, jnp.int32),
            "stage": jnp.asarray(0, jnp.int32),
            "stage_iteration": jnp.asarray(0, jnp.int32),
            "decoder": self.decoder.init(decoder_key, self.spec.obs_dim),
            "decoder_obs_norm": running_stats_init((self.spec.obs_dim,)),
        }
        if self.pretrained is not None:
            state["initial_decoder"] = self.pretrained.acting
        return state | {"best": self._best_so_far(state)}

    # ----- acting ------------------------------------------------------------------------------

    def acting_params(self, state, actor=None, obs_norm=None) -> dict:
        acting = {
            "actor": state["params"]["actor"] if actor is None else actor,
            "obs_norm": state["obs_norm"] if obs_norm is None else obs_norm,
            "decoder": state["decoder"],
            "decoder_obs_norm": state["decoder_obs_norm"],
            "decoder_active": state["stage"] > 0,
        }
        if self.pretrained is not None:
            acting["initial_decoder"] = state["initial_decoder"]
        return acting

    def decode(self, acting, obs, latent):
        """Pre-squash decoder output; in stage 0 the identity, or the pretrained policy."""

        def run_decoder():
            cond = normalize(obs, acting["decoder_obs_norm"])
            return self.decoder.sample(acting["decoder"], cond, latent)

        def first_decoder():
            if self.pretrained is None:
                return latent
            return self.pretrained_decode(acting["initial_decoder"], obs, latent)

        return jax.lax.cond(acting["decoder_active"], run_decoder, first_decoder)

    def pretrained_decode(self, pretrained_acting, obs, latent):
        """The pretrained policy's action from the noise `latent`, as a pre-squash value: the
        action itself under clipping; under tanh its atanh, the action kept
        pretrained_action_margin inside [-1, 1] so that it stays finite."""
        action = self.pretrained.policy.plan_from_noise(pretrained_acting, obs, latent)[..., 0, :]
        if self.config.ppo.action_squash != "tanh":
            return action
        bound = 1.0 - self.config.pretrained_action_margin
        return jnp.arctanh(jnp.clip(action, -bound, bound))

    def _encoder(self, acting, obs):
        obs = normalize(obs, acting["obs_norm"], self.config.ppo.normalize_observations)
        return self.model.distribution(acting["actor"], obs)

    def act(self, acting, obs, key):
        mean, std = self._encoder(acting, obs)
        prior_noise = jax.random.normal(key, mean.shape)
        latent = mean + std * prior_noise
        decoded = self.decode(acting, obs, latent)
        extras = {
            "sample": latent,
            "log_prob": gaussian_log_prob(mean, std, latent),
            "decoded": decoded,
            "prior_noise": prior_noise,
        }
        return self.squash(decoded), extras

    def act_deterministic(self, acting, obs):
        """z = mean of the encoder, through the decoder."""
        return self.squash(self.decode(acting, obs, self._encoder(acting, obs)[0]))

    def squash(self, decoded):
        """Decoder output to action: tanh (reference) or clipping (`--gorl.ppo.action-squash`);
        decoder refits fit the decoder output, before either."""
        if self.config.ppo.action_squash == "tanh":
            return jnp.tanh(decoded)
        return jnp.clip(decoded, -1.0, 1.0)

    def on_evaluation(self, state, evaluation: dict) -> dict:
        """Keep the best-evaluated encoder of the stage: the refit's collecting policy."""
        eval_return = evaluation["eval_return"]
        # Ties go to the later policy, as in the reference.
        if eval_return >= float(state["best"]["return"]) - 1e-6:
            best = self._best_so_far(state) | {"return": jnp.asarray(eval_return, jnp.float32)}
            return state | {"best": best}
        return state

    # ----- training ----------------------------------------------------------------------------

    def update(self, state, batch, key):
        """A PPO update of the latent encoder with the hyperparameters of the current stage."""
        config = self.config.ppo
        stage = state["stage"]
        learning_rate = annealed_learning_rate(
            config, state["stage_iteration"], self.stage_value("iterations", stage)
        )
        opt_state = set_hyperparameters(
            state["opt_state"],
            learning_rate=learning_rate,
            max_grad_norm=self.stage_value("max_grad_norm", stage),
        )
        clip_eps = self.stage_value("clip_eps", stage)
        prior_coef = self.stage_value("prior_coef", stage)

        def loss_fn(params, minibatch):
            loss, info, (mean, std) = gaussian_ppo_loss(
                params, minibatch, self.model, config, clip_eps
            )
            if self.regularizer is not None:
                penalty = prior_coef * self.regularizer(mean, std)
                loss, info = loss + penalty, info | {"prior_penalty": penalty}
            return loss, info

        # The decoded actions are kept for refit data only; the update needs the latents.
        batch = batch._replace(extras={k: batch.extras[k] for k in ("sample", "log_prob")})
        state, metrics = ppo_update(
            state,
            batch,
            key,
            loss_fn,
            lambda obs: self.model.value(state["params"]["critic"], obs),
            opt_state,
            self.optimizer,
            config,
        )
        state = state | {"stage_iteration": state["stage_iteration"] + 1}
        return state, metrics | {"learning_rate": learning_rate, "stage": stage}

    def stage_boundary(self, state) -> StageBoundary | None:
        """A decoder refit ends every stage but the last: collect with the stage's best (or
        last) encoder."""
        stage = int(state["stage"])
        if stage == self.config.num_stages - 1:
            return None
        if int(state["stage_iteration"]) < self.stage_iterations[stage]:
            return None
        best = state["best"]
        use_best = self.config.collect_policy == "best" and np.isfinite(float(best["return"]))
        acting = (
            self.acting_params(state, best["actor"], best["obs_norm"])
            if use_best
            else self.acting_params(state)
        )
        return StageBoundary(acting, self.collect_rollout_steps, self.config.count_collection_steps)

    def end_stage(self, state, batch, key):
        """Fit the next stage's decoder on the collected (obs, pre-squash action) pairs, then
        restart the encoder at the prior."""
        cfg = self.config
        stage = int(state["stage"])
        fit_key, init_key, encoder_key = jax.random.split(key, 3)
        obs = np.asarray(batch.obs).reshape(-1, self.spec.obs_dim)
        targets = np.asarray(batch.extras["decoded"]).reshape(-1, self.spec.action_dim)
        if self.paired_refit:
            noise = np.asarray(batch.extras["prior_noise"]).reshape(-1, self.spec.action_dim)
            targets = np.concatenate([noise, targets], axis=-1)
        decoder_obs_norm = running_stats_update(running_stats_init((self.spec.obs_dim,)), obs)
        if cfg.warm_start_decoder and stage > 0:
            decoder_params = state["decoder"]
        else:
            decoder_params = self.decoder.init(init_key, self.spec.obs_dim)
        decoder_params, fit_info = self.fit_decoder(
            decoder_params, obs, targets, decoder_obs_norm, fit_key
        )
        next_stage = stage + 1
        state = state | {
            "decoder": decoder_params,
            "decoder_obs_norm": decoder_obs_norm,
            "stage": jnp.asarray(next_stage, jnp.int32),
            "stage_iteration": jnp.asarray(0, jnp.int32),
            "iteration": state["iteration"] + 1,
        }
        if cfg.reset_encoder:
            fresh = self._fresh_encoder(encoder_key)
            if cfg.encoder_starts_at_prior:
                fresh = self._at_prior(fresh)
            if not cfg.reset_critic:
                fresh["params"]["critic"] = state["params"]["critic"]
                fresh["opt_state"] = self.optimizer.init(fresh["params"])
                fresh["obs_norm"] = state["obs_norm"]
            state = state | fresh
        else:
            state = state | {"opt_state": self.optimizer.init(state["params"])}
        state = state | {"best": self._best_so_far(state)}
        return state, fit_info | {"stage": next_stage, "decoder_dataset_size": len(obs)}

    # ----- decoder fitting ---------------------------------------------------------------------

    def fit_decoder(self, params, obs, targets, obs_stats, key):
        """Fit the decoder to (obs, pre-squash action) pairs, keeping the best held-out params."""
        # Host-side preprocessing: eager jax ops would each compile for the dataset's shape.
        std = np.sqrt(np.asarray(obs_stats["var"]) + 1e-8)
        cond = np.clip((obs - np.asarray(obs_stats["mean"])) / std, -10.0, 10.0)
        params, info = self.decoder_fitter.fit(
            params, cond, targets, key, self.config.decoder_train_steps
        )
        return params, {f"decoder_{name}": value for name, value in info.items()}
