"""Fitting a policy to (condition, action) pairs: the one routine behind behaviour cloning
(`gprl pretrain`) and the decoder refits of staged RL algorithms.

Any policy with `loss(params, cond, actions, key) -> (loss, info)` can be fitted. The data are
split once into a training and a held-out part; training runs in chunks of `chunk_steps` Adam
steps on minibatches drawn with replacement (one compiled `lax.scan` per chunk), and after each
chunk the held-out loss, averaged over several noise draws, decides the best parameters so far.
The whole fitting state is a pytree, so a caller can checkpoint it between chunks and resume.

With `ema_decay` the fitter also keeps an exponential moving average of the weights, updated
after every Adam step and warmed up as Diffusion Policy's (decay min(ema_decay, 1 - (1 +
n)^-0.75) at update n, so the first updates follow the weights); the average is then what the
held-out loss measures and what is kept (Diffusion Policy and DPPO evaluate and ship it).
"""

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

VAL_NOISE_DRAWS = 4
EMA_WARMUP_POWER = 0.75
"""Diffusion Policy's warm-up of the average's decay: 1 - (1 + n)^-power at update n."""
TRAINED = ("params", "opt_state", "ema_params", "ema_updates")
"""The fitting state's entries that gradient steps change (the last two with an average)."""


@dataclass(frozen=True)
class FitConfig:
    batch_size: int = 512
    """Minibatch size (drawn with replacement from the training part)."""
    learning_rate: float = 3e-4
    """Adam step size."""
    val_fraction: float = 0.1
    """Held-out share of the data."""
    chunk_steps: int = 250
    """Gradient steps between held-out evaluations (one compiled call)."""
    ema_decay: float | None = None
    """Decay per gradient step of an exponential moving average of the weights, which is then
    evaluated and kept; None: no average."""

    def validate(self) -> None:
        for name in ("batch_size", "learning_rate", "chunk_steps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")


class Split(NamedTuple):
    train: tuple
    """(cond, targets) of the training part."""
    val: tuple
    """(cond, targets) of the held-out part."""
    val_key: jax.Array
    """Noise key of the held-out loss (the same at every evaluation, so losses compare)."""


class ImitationFitter:
    def __init__(self, policy, config: FitConfig):
        config.validate()
        self.policy = policy
        self.config = config
        self.optimizer = optax.adam(config.learning_rate)
        self._train_chunk = jax.jit(self._train_chunk_impl)
        self._val_loss = jax.jit(self._val_loss_impl)

    def split(self, cond, targets, key):
        """Split (cond, targets) into training and held-out parts; returns (split, key) with
        the key left for training."""
        split_seed, val_key, key = jax.random.split(key, 3)
        order = np.random.default_rng(np.asarray(jax.random.key_data(split_seed))).permutation(
            len(cond)
        )
        num_val = max(1, int(self.config.val_fraction * len(cond)))
        val_index, train_index = order[:num_val], order[num_val:]
        if len(train_index) == 0:
            raise ValueError("fitting needs at least 2 samples (one is held out)")
        train = (np.asarray(cond[train_index], np.float32), np.asarray(targets[train_index]))
        val = (np.asarray(cond[val_index], np.float32), np.asarray(targets[val_index]))
        return Split(train, val, val_key), key

    def init(self, params, split: Split | None) -> dict:
        """The fitting state: current and best parameters, optimiser state, best held-out loss,
        and with ema_decay the average and its number of updates. Without a split (a template to
        restore a checkpoint into) the losses are inf."""
        if split is None:
            val_loss = jnp.asarray(jnp.inf, jnp.float32)
        else:
            val_loss = self._val_loss(params, *split.val, split.val_key)
        state = {
            "params": params,
            "opt_state": self.optimizer.init(params),
            "best_params": params,
            "best_val_loss": val_loss,
            "val_loss_at_init": val_loss,
        }
        if self.config.ema_decay is not None:
            state |= {"ema_params": params, "ema_updates": jnp.zeros((), jnp.int32)}
        return state

    @staticmethod
    def evaluated_params(state: dict):
        """The parameters the held-out loss measures: the average where there is one."""
        return state.get("ema_params", state["params"])

    def step(self, state: dict, split: Split, key) -> tuple[dict, dict]:
        """chunk_steps gradient steps, then the held-out loss; keeps the best parameters."""
        train, val, val_key = split
        trained = {name: state[name] for name in TRAINED if name in state}
        trained, train_loss = self._train_chunk(trained, *train, key)
        state = state | trained
        params = self.evaluated_params(state)
        val_loss = float(self._val_loss(params, *val, val_key))
        if not np.isfinite(val_loss):
            raise FloatingPointError("NaN in the held-out imitation loss")
        if val_loss < float(state["best_val_loss"]):
            state = state | {"best_params": params, "best_val_loss": jnp.asarray(val_loss)}
        return state, {
            "train_loss": float(train_loss),
            "val_loss": val_loss,
            "best_val_loss": float(state["best_val_loss"]),
        }

    def fit(self, params, cond, targets, key, num_steps: int) -> tuple[dict, dict]:
        """Fit from `params` for num_steps (rounded down to whole chunks, at least one); returns
        the parameters with the best held-out loss and the losses."""
        split, key = self.split(cond, targets, key)
        state = self.init(params, split)
        info = {}
        chunks = max(1, num_steps // self.config.chunk_steps)
        for chunk_key in jax.random.split(key, chunks):
            state, info = self.step(state, split, chunk_key)
        return state["best_params"], {
            "train_loss": info["train_loss"],
            "val_loss": float(state["best_val_loss"]),
            "val_loss_at_init": float(state["val_loss_at_init"]),
        }

    def _train_chunk_impl(self, trained, cond, actions, key):
        batch_size = min(self.config.batch_size, cond.shape[0])

        def train_step(trained, step_key):
            params = trained["params"]
            index_key, loss_key = jax.random.split(step_key)
            index = jax.random.randint(index_key, (batch_size,), 0, cond.shape[0])
            grad_fn = jax.value_and_grad(self.policy.loss, has_aux=True)
            (loss, _), grads = grad_fn(params, cond[index], actions[index], loss_key)
            updates, opt_state = self.optimizer.update(grads, trained["opt_state"], params)
            trained = trained | {
                "params": optax.apply_updates(params, updates),
                "opt_state": opt_state,
            }
            if "ema_params" in trained:
                trained = trained | self._averaged(trained)
            return trained, loss

        keys = jax.random.split(key, self.config.chunk_steps)
        trained, losses = jax.lax.scan(train_step, trained, keys)
        return trained, jnp.mean(losses)

    def _averaged(self, trained) -> dict:
        updates = trained["ema_updates"]
        warm_up = 1.0 - (1.0 + updates.astype(jnp.float32)) ** -EMA_WARMUP_POWER
        decay = jnp.minimum(self.config.ema_decay, warm_up)
        average = jax.tree.map(
            lambda mean, new: decay * mean + (1.0 - decay) * new,
            trained["ema_params"],
            trained["params"],
        )
        return {"ema_params": average, "ema_updates": updates + 1}

    def _val_loss_impl(self, params, cond, actions, key):
        # Averaged over several noise draws: a single draw makes model selection noisy.
        keys = jax.random.split(key, VAL_NOISE_DRAWS)
        losses = jax.vmap(lambda k: self.policy.loss(params, cond, actions, k)[0])(keys)
        return jnp.mean(losses)
