"""GoRL's decoder refits: how much data a refit collects, the states it is checked on, and the
flow loss of paired (noise, action) targets.

A refit's data are a window of consecutive steps in each env. Where the window is shorter than
an episode it holds only the part of the episodes in which the stage happened to end (on
Pendulum-v1, 50 steps of 200: the pendulum already balanced), and the decoder fitted to it
can fit that window closely yet act wrongly everywhere else. So a refit collects at least one
episode per env, and before its decoder replaces the old one it is checked on states of the
stage's own rollouts, which are not part of its data.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from gprl.algos.onpolicy import iterations_for_budget
from gprl.policies import FlowPolicy
from gprl.policies.imitation import FitConfig, ImitationFitter
from gprl.rl_math import running_stats_init, running_stats_update

PROBE_WRITES_PER_UPDATE = 4
"""An update writes 1/4 of the probe's states, so the probe holds the stage's last 4 updates."""


def refit_rollout_steps(config, max_episode_steps: int | None, num_envs: int, total_steps: int):
    """Vector steps each refit collects: collect_fraction of the budget, raised to
    min_collect_episodes of the env's time limit and to decoder_min_samples in all."""
    steps = max(1, round(config.collect_fraction * total_steps / num_envs))
    if max_episode_steps:
        steps = max(steps, math.ceil(config.min_collect_episodes * max_episode_steps))
    return max(steps, math.ceil(config.decoder_min_samples / num_envs))


def plan_stages(config, max_episode_steps: int | None, num_envs: int, total_steps: int):
    """Split the budget: refit collections, then the encoder's stages by stage_weights.
    Returns (vector steps of each refit's collection, encoder iterations of each stage)."""
    refits = config.num_stages - 1
    collect_steps = refit_rollout_steps(config, max_episode_steps, num_envs, total_steps)
    encoder_budget = total_steps
    if config.count_collection_steps:
        collected = refits * collect_steps * num_envs
        if collected >= total_steps:
            raise ValueError(
                f"the {refits} decoder refits collect {collected} of total_steps {total_steps} "
                f"env steps ({collect_steps} per env each: min_collect_episodes, "
                "decoder_min_samples); raise the budget"
            )
        encoder_budget -= collected
    weights = np.asarray(config.stage_weights, np.float64)
    stage_iterations = tuple(
        iterations_for_budget(
            int(encoder_budget * w / weights.sum()),
            config.ppo.rollout_steps * num_envs,
            f"the encoder budget of stage {stage}",
        )
        for stage, w in enumerate(weights)
    )
    return collect_steps, stage_iterations


def probe_init(num_states: int, obs_dim: int) -> dict:
    """An empty ring of observations: the states a refit is checked on."""
    return {
        "obs": jnp.zeros((num_states, obs_dim), jnp.float32),
        "next": jnp.asarray(0, jnp.int32),
        "count": jnp.asarray(0, jnp.int32),
    }


def probe_record(probe: dict, obs, key) -> dict:
    """Write a random share of a (T, N, obs_dim) rollout's observations into the ring."""
    size, obs_dim = probe["obs"].shape
    writes = max(1, size // PROBE_WRITES_PER_UPDATE)
    flat = obs.reshape(-1, obs_dim)
    picked = flat[jax.random.randint(key, (writes,), 0, flat.shape[0])]
    slots = (probe["next"] + jnp.arange(writes)) % size
    return {
        "obs": probe["obs"].at[slots].set(picked.astype(jnp.float32)),
        "next": (probe["next"] + writes) % size,
        "count": jnp.minimum(probe["count"] + writes, size),
    }


def probe_action_error(act_deterministic, before, after, probe: dict) -> float:
    """Mean |action after - action before| of two evaluation policies (acting parameters) over
    the probe's states, in the policies' [-1, 1] action units."""
    # Every slot is evaluated (one compiled shape); only the filled ones count.
    gap = jnp.abs(act_deterministic(after, probe["obs"]) - act_deterministic(before, probe["obs"]))
    filled = np.asarray(gap)[: int(probe["count"])]
    return float(filled.mean()) if filled.size else float("nan")


class PairedFlowLoss:
    """The flow-matching loss on targets that carry their own noise, [noise | action] along the
    last axis: what the imitation fitter minimises to learn a given noise -> action coupling."""

    def __init__(self, flow: FlowPolicy):
        self.flow = flow

    def loss(self, params, cond, noise_and_action, key):
        noise, action = jnp.split(noise_and_action, 2, axis=-1)
        return self.flow.loss(params, cond, action, key, noise=noise)


class DecoderRefitter:
    """Fits a GoRL decoder (flow or diffusion) to a refit's (state, pre-squash action) pairs,
    from the prior noise that produced each action (paired) or from fresh noise."""

    def __init__(self, decoder, config, obs_dim: int, action_dim: int):
        self.decoder = decoder
        self.train_steps = config.decoder_train_steps
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.paired = config.decoder == "flow" and config.decoder_coupling == "paired"
        self.fitter = ImitationFitter(
            PairedFlowLoss(decoder) if self.paired else decoder,
            FitConfig(
                batch_size=config.decoder_batch_size,
                learning_rate=config.decoder_learning_rate,
                val_fraction=config.decoder_val_fraction,
                chunk_steps=config.decoder_eval_every,
            ),
        )

    def refit(self, batch, params, key) -> tuple[dict, dict, dict]:
        """Fit `params` (None: a fresh decoder) to a collected (T, N) batch of `act`'s
        transitions; returns (decoder params, their observation statistics, fit metrics)."""
        init_key, fit_key = jax.random.split(key)
        obs = np.asarray(batch.obs).reshape(-1, self.obs_dim)
        targets = np.asarray(batch.extras["decoded"]).reshape(-1, self.action_dim)
        if self.paired:
            noise = np.asarray(batch.extras["prior_noise"]).reshape(-1, self.action_dim)
            targets = np.concatenate([noise, targets], axis=-1)
        obs_stats = running_stats_update(running_stats_init((self.obs_dim,)), obs)
        if params is None:
            params = self.decoder.init(init_key, self.obs_dim)
        params, info = self.fit(params, obs, targets, obs_stats, fit_key)
        return params, obs_stats, info | {"decoder_dataset_size": len(obs)}

    def fit(self, params, obs, targets, obs_stats, key):
        """Fit the decoder to (obs, target) pairs, keeping the best held-out params."""
        # Host-side preprocessing: eager jax ops would each compile for the dataset's shape.
        std = np.sqrt(np.asarray(obs_stats["var"]) + 1e-8)
        cond = np.clip((obs - np.asarray(obs_stats["mean"])) / std, -10.0, 10.0)
        params, info = self.fitter.fit(params, cond, targets, key, self.train_steps)
        return params, {f"decoder_{name}": value for name, value in info.items()}
