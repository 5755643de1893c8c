"""GoRL: PPO on a Gaussian latent policy, decoded into actions by a generative model.

A tractable encoder pi(z | s) is trained with PPO while a flow-matching or diffusion decoder
maps (s, z) to an action a = squash(decoder(s, z)), clipped (default) or tanh (reference).
Stage 0 uses the identity decoder (plain latent PPO). Between stages the best policy is rolled
out, a decoder is fitted by imitation to map the prior N(0, I) onto its (pre-squash) actions,
and the encoder restarts at the prior, so decoder(prior) reproduces the last policy and the next
stage improves on it (arXiv 2512.02581). A refit is only taken where its policy acts like the
last one on states of the stage's rollouts; otherwise the old decoder stays and the next stage
goes on from the last policy (see gprl.algos.gorl_refit).

Fine-tuning (`--init PRETRAIN_RUN`): the pretrained flow policy is the first decoder instead of
the identity, with its own observation statistics and action map; the encoder starts exactly
at the prior, so the first policy, decoder(s, prior), is the pretrained policy (its evaluation,
z = 0, is the pretrained policy acting from zero noise). Under tanh squashing this decoder
returns atanh of the pretrained action, kept a margin inside [-1, 1]; the refits that follow
fit fresh decoders to those pre-squash actions as usual.
"""

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np

from gprl.algos.base import (
    OnPolicyAlgorithm,
    StageBoundary,
    check_networks,
    check_pretrained_flow,
)
from gprl.algos.gorl_config import GoRLConfig
from gprl.algos.gorl_refit import (
    DecoderRefitter,
    plan_stages,
    probe_action_error,
    probe_init,
    probe_record,
)
from gprl.algos.onpolicy import (
    annealed_learning_rate,
    check_batch_geometry,
    make_optimizer,
    ppo_update,
    reward_normalizer_init,
    set_hyperparameters,
)
from gprl.algos.ppo import GaussianActorCritic, PPOConfig, gaussian_ppo_loss
from gprl.networks import CustomNetworks
from gprl.policies import (
    DiffusionPolicy,
    FlowPolicy,
    GaussianPolicyConfig,
    gaussian_log_prob,
    kl_to_standard_normal,
)
from gprl.rl_math import normalize, running_stats_init
from gprl.types import EnvSpec


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
    decoder fitted from independent noise and always taken (refit/action_error is still
    logged), 4 stages of 2/2/1/1, 8% of the budget collected per refit and not counted toward
    it."""
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
        refit_tolerance=None,
        count_collection_steps=False,
    )


class GoRL(OnPolicyAlgorithm):
    pretrained_policy = "optional"
    # A chunked --init arrives as the flow over the flat chunk: the encoder's latent is a whole
    # chunk's noise, and every refit fits a decoder of flat chunks.
    fine_tunes_chunks = True

    @classmethod
    def step_discount(cls, config) -> float:
        return config.ppo.gamma

    @classmethod
    def per_decision_config(cls, config, env_steps: int):
        return replace(config, ppo=replace(config.ppo, gamma=config.ppo.gamma**env_steps))

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
        self.collect_rollout_steps, self.stage_iterations = plan_stages(
            config, spec.max_episode_steps, num_envs, total_steps
        )
        self.num_iterations = sum(self.stage_iterations) + config.num_stages - 1
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
        self._act_deterministic = jax.jit(self.act_deterministic)
        self.refitter = DecoderRefitter(self.decoder, config, spec.obs_dim, spec.action_dim)

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
            "decoder_active": jnp.asarray(False),
            "refit_probe": probe_init(self.config.refit_probe_states, self.spec.obs_dim),
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
            "decoder_active": state["decoder_active"],
        }
        if self.pretrained is not None:
            acting["initial_decoder"] = state["initial_decoder"]
        return acting

    def decode(self, acting, obs, latent):
        """Pre-squash decoder output; until a refit is taken, the identity or the pretrained
        policy."""

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

        probe = probe_record(state["refit_probe"], batch.obs, jax.random.fold_in(key, 1))
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
        state = state | {"stage_iteration": state["stage_iteration"] + 1, "refit_probe": probe}
        return state, metrics | {"learning_rate": learning_rate, "stage": stage}

    def stage_boundary(self, state) -> StageBoundary | None:
        """A decoder refit ends every stage but the last: collect with the stage's best (or
        last) encoder."""
        stage = int(state["stage"])
        if stage == self.config.num_stages - 1:
            return None
        if int(state["stage_iteration"]) < self.stage_iterations[stage]:
            return None
        return StageBoundary(
            self.acting_params(state, **self._kept_encoder(state)),
            self.collect_rollout_steps,
            self.config.count_collection_steps,
        )

    def _kept_encoder(self, state) -> dict:
        """The encoder a refit keeps: the stage's best-evaluated one, or the latest."""
        best = state["best"]
        if self.config.collect_policy == "best" and np.isfinite(float(best["return"])):
            return {"actor": best["actor"], "obs_norm": best["obs_norm"]}
        return {"actor": state["params"]["actor"], "obs_norm": state["obs_norm"]}

    def end_stage(self, state, batch, key):
        """Fit a decoder on the collected (obs, pre-squash action) pairs and restart the encoder
        at the prior; where the new policy acts beyond refit_tolerance from the kept one on the
        probe states, keep the old decoder and that encoder instead."""
        fit_key, encoder_key = jax.random.split(key)
        refitted, fit_info = self._refit(state, batch, fit_key)
        refitted = self._restart_encoder(state, refitted, encoder_key)
        kept = self._kept_encoder(state)
        action_error = probe_action_error(
            self._act_deterministic,
            self.acting_params(state, **kept),
            self.acting_params(refitted),
            state["refit_probe"],
        )
        tolerance = self.config.refit_tolerance
        accepted = tolerance is None or action_error <= tolerance
        if accepted:
            next_state = refitted
        else:
            params = state["params"] | {"actor": kept["actor"]}
            next_state = state | {
                "params": params,
                "obs_norm": kept["obs_norm"],
                "opt_state": self.optimizer.init(params),
            }
        next_stage = int(state["stage"]) + 1
        state = next_state | {
            "stage": jnp.asarray(next_stage, jnp.int32),
            "stage_iteration": jnp.asarray(0, jnp.int32),
            "iteration": state["iteration"] + 1,
            "refit_probe": probe_init(self.config.refit_probe_states, self.spec.obs_dim),
        }
        state = state | {"best": self._best_so_far(state)}
        return state, fit_info | {
            "stage": next_stage,
            "refit/accepted": int(accepted),
            "refit/action_error": action_error,
        }

    def _refit(self, state, batch, key) -> tuple[dict, dict]:
        """The state with a decoder fitted to the batch (fresh, or warm-started after a refit)."""
        warm = self.config.warm_start_decoder and bool(state["decoder_active"])
        params, obs_stats, fit_info = self.refitter.refit(
            batch, state["decoder"] if warm else None, key
        )
        refitted = state | {
            "decoder": params,
            "decoder_obs_norm": obs_stats,
            "decoder_active": jnp.asarray(True),
        }
        return refitted, fit_info

    def _restart_encoder(self, state, refitted, key) -> dict:
        """The refitted state's encoder for the next stage: fresh (at the prior), or kept with a
        fresh optimiser state."""
        cfg = self.config
        if not cfg.reset_encoder:
            return refitted | {"opt_state": self.optimizer.init(state["params"])}
        fresh = self._fresh_encoder(key)
        if cfg.encoder_starts_at_prior:
            fresh = self._at_prior(fresh)
        if not cfg.reset_critic:
            fresh["params"]["critic"] = state["params"]["critic"]
            fresh["opt_state"] = self.optimizer.init(fresh["params"])
            fresh["obs_norm"] = state["obs_norm"]
        return refitted | fresh

    def fit_decoder(self, params, obs, targets, obs_stats, key):
        """Fit the decoder to (obs, pre-squash action) pairs, keeping the best held-out params."""
        return self.refitter.fit(params, obs, targets, obs_stats, key)
