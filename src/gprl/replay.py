"""A replay buffer as a pure pytree: fixed-size arrays, an insert position and a size.

`replay_add` and `replay_sample` are pure and jittable, so a whole collect-store-update chunk
compiles into one call, and the buffer is saved in checkpoints like any other state (a resumed
run samples exactly what the uninterrupted one would have).

The arrays hold two regions: an offline region at the front, filled once from a dataset by
:func:`replay_prefill` and never overwritten, and an online region after it, a ring that the
loop's transitions overwrite oldest first once it is full. :func:`replay_sample` draws uniformly
over every stored transition, or a fixed share of each batch from the offline region (the rest
from the online one) for offline-to-online training.

A buffer made with a `return_discount` also tracks returns: :func:`replay_add_steps` takes the
loop's (T, N) steps, and when an env's episode terminates it writes the return-to-go
(Transition.return_to_go) of every stored row of that episode, summed backwards over its rows
with the discount; the offline region takes the dataset's own. Rows of episodes that are running or
ended at a time limit keep -inf: no return is known for them.
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from gprl.types import Transition

DATASET_FIELDS = ("obs", "action", "reward", "terminated", "truncated", "next_obs")
"""Arrays an offline dataset must provide, one row per transition; `extras` is optional."""


@struct.dataclass
class ReplayBuffer:
    data: Transition
    """Leaves (offline_capacity + online_capacity, ...): the offline rows, then the online ring."""
    position: jax.Array
    """int32: the online slot the next transition goes to."""
    online_size: jax.Array
    """int32: filled online slots (at most the online capacity)."""
    offline_size: jax.Array
    """int32: rows of the offline region holding dataset transitions."""
    added: jax.Array | None = None
    """Tracking returns: int32, online rows ever added; the n-th went to slot n % capacity."""
    episode_starts: jax.Array | None = None
    """Tracking returns: (num_envs,) int32, the `added` count of each env's running episode's
    first row."""
    offline_capacity: int = struct.field(pytree_node=False, default=0)
    return_discount: float | None = struct.field(pytree_node=False, default=None)
    """The discount per stored transition that returns are tracked with; None: not tracked."""

    @property
    def capacity(self) -> int:
        return self.data.reward.shape[0]

    @property
    def online_capacity(self) -> int:
        return self.capacity - self.offline_capacity


def replay_init(
    example: Transition,
    online_capacity: int,
    offline_capacity: int = 0,
    return_discount: float | None = None,
    num_envs: int = 1,
):
    """An empty buffer for transitions shaped like `example` (one transition, no batch axis;
    arrays or jax.ShapeDtypeStruct). With a return_discount it tracks the returns of num_envs
    envs' episodes (see the module docstring)."""
    if online_capacity < 1 or offline_capacity < 0:
        raise ValueError(
            f"replay capacities must be positive (online) and non-negative (offline), got "
            f"{online_capacity} and {offline_capacity}"
        )
    rows = offline_capacity + online_capacity
    example = example._replace(return_to_go=None)
    data = jax.tree.map(lambda x: jnp.zeros((rows, *np.shape(x)), x.dtype), example)
    zero = jnp.zeros((), jnp.int32)
    if return_discount is None:
        return ReplayBuffer(data, zero, zero, zero, offline_capacity=offline_capacity)
    if not 0.0 <= return_discount <= 1.0:
        raise ValueError(f"return_discount must be in [0, 1], got {return_discount}")
    data = data._replace(return_to_go=jnp.full(rows, -jnp.inf, jnp.float32))
    starts = jnp.arange(num_envs, dtype=jnp.int32)
    return ReplayBuffer(
        data, zero, zero, zero, zero, starts, offline_capacity, float(return_discount)
    )


def replay_add(buffer: ReplayBuffer, transitions: Transition) -> ReplayBuffer:
    """Store a flat (K, ...) batch of transitions in the online ring, overwriting the oldest.
    A buffer that tracks returns takes the loop's steps through replay_add_steps instead."""
    if buffer.return_discount is not None:
        raise ValueError("a replay buffer that tracks returns is filled by replay_add_steps")
    return _add_rows(buffer, transitions)


def replay_add_steps(buffer: ReplayBuffer, steps: Transition) -> ReplayBuffer:
    """Store (T, N, ...) steps of N envs, time-major, as T x N rows; a buffer that tracks
    returns then writes the return-to-go of every episode that terminated in them."""
    num_steps, num_envs = steps.reward.shape[:2]
    rows = jax.tree.map(lambda x: x.reshape(num_steps * num_envs, *x.shape[2:]), steps)
    if buffer.return_discount is None:
        return _add_rows(buffer, rows)
    tracked_envs = buffer.episode_starts.shape[0]
    if num_envs != tracked_envs:
        raise ValueError(f"steps of {num_envs} envs for a replay buffer tracking {tracked_envs}")
    first = buffer.added
    unknown = jnp.full(num_steps * num_envs, -jnp.inf, jnp.float32)
    buffer = _add_rows(buffer, rows._replace(return_to_go=unknown))
    buffer = buffer.replace(added=first + num_steps * num_envs)
    return _record_returns(buffer, steps, first)


def replay_restart_episodes(buffer: ReplayBuffer) -> ReplayBuffer:
    """The buffer after the loop restarted its envs: every env's next row begins an episode,
    and the rows of the episodes it dropped get no return."""
    if buffer.return_discount is None:
        return buffer
    num_envs = buffer.episode_starts.shape[0]
    return buffer.replace(episode_starts=buffer.added + jnp.arange(num_envs, dtype=jnp.int32))


def _record_returns(buffer: ReplayBuffer, steps: Transition, first) -> ReplayBuffer:
    """Write the returns of the episodes that terminate in steps, whose rows begin at count
    `first`: an episode's rows are its env's counts last, last - N, ... back to its first row
    or the oldest row the ring still holds, each valued r + discount x the later row's value."""
    num_steps, num_envs = steps.reward.shape[:2]
    envs = jnp.arange(num_envs, dtype=jnp.int32)
    oldest_stored = buffer.added - buffer.online_capacity
    rewards, discount = buffer.data.reward, buffer.return_discount

    def episode_returns(returns, last, start):
        def backwards(carry):
            count, later_value, returns = carry
            row = buffer.offline_capacity + count % buffer.online_capacity
            value = rewards[row] + discount * later_value
            return count - num_envs, value, returns.at[row].set(value)

        oldest = jnp.maximum(start, oldest_stored)
        carry = (last, jnp.zeros((), jnp.float32), returns)
        return jax.lax.while_loop(lambda c: c[0] >= oldest, backwards, carry)[2]

    def at_step(carry, step):
        returns, starts = carry
        t, terminated, truncated = step
        counts = first + t * num_envs + envs

        def write_env(env, returns):
            return jax.lax.cond(
                terminated[env],
                lambda r: episode_returns(r, counts[env], starts[env]),
                lambda r: r,
                returns,
            )

        returns = jax.lax.fori_loop(0, num_envs, write_env, returns)
        starts = jnp.where(terminated | truncated, counts + num_envs, starts)
        return (returns, starts), None

    ends = (
        jnp.arange(num_steps, dtype=jnp.int32),
        jnp.asarray(steps.terminated, bool),
        jnp.asarray(steps.truncated, bool),
    )
    carry = (buffer.data.return_to_go, buffer.episode_starts)
    (returns, starts), _ = jax.lax.scan(at_step, carry, ends)
    return buffer.replace(data=buffer.data._replace(return_to_go=returns), episode_starts=starts)


def _add_rows(buffer: ReplayBuffer, transitions: Transition) -> ReplayBuffer:
    count = transitions.reward.shape[0]
    if count > buffer.online_capacity:
        # Two rows of one scatter landing in the same slot would be written in no defined order.
        raise ValueError(
            f"cannot add {count} transitions at once to a replay buffer with "
            f"{buffer.online_capacity} online slots"
        )
    slots = (buffer.position + jnp.arange(count)) % buffer.online_capacity
    rows = buffer.offline_capacity + slots
    data = jax.tree.map(lambda store, new: store.at[rows].set(new), buffer.data, transitions)
    return buffer.replace(
        data=data,
        position=(buffer.position + count) % buffer.online_capacity,
        online_size=jnp.minimum(buffer.online_size + count, buffer.online_capacity),
    )


def replay_sample(
    buffer: ReplayBuffer, key, batch_size: int, offline_fraction: float | None = None
) -> Transition:
    """batch_size transitions drawn uniformly with replacement from the stored ones.

    offline_fraction None: uniform over all stored transitions, offline and online alike.
    Otherwise round(offline_fraction * batch_size) rows come from the offline region and the
    rest from the online ring; while one region is empty, every row comes from the other.
    Sampling an empty buffer returns zero rows (the loop never does: it stores data first)."""
    total = buffer.offline_size + buffer.online_size
    if offline_fraction is None:
        draw = jax.random.randint(key, (batch_size,), 0, jnp.maximum(total, 1))
        rows = jnp.where(
            draw < buffer.offline_size,
            draw,
            buffer.offline_capacity + draw - buffer.offline_size,
        )
    else:
        offline_rows = round(offline_fraction * batch_size)
        from_offline = jnp.arange(batch_size) < offline_rows
        from_offline = jnp.where(buffer.online_size == 0, True, from_offline)
        from_offline = jnp.where(buffer.offline_size == 0, False, from_offline)
        offline_key, online_key = jax.random.split(key)
        offline_draw = jax.random.randint(
            offline_key, (batch_size,), 0, jnp.maximum(buffer.offline_size, 1)
        )
        online_draw = jax.random.randint(
            online_key, (batch_size,), 0, jnp.maximum(buffer.online_size, 1)
        )
        rows = jnp.where(from_offline, offline_draw, buffer.offline_capacity + online_draw)
    return jax.tree.map(lambda store: store[rows], buffer.data)


def replay_prefill(buffer: ReplayBuffer, dataset: Mapping) -> ReplayBuffer:
    """Fill the offline region from a dataset of arrays (DATASET_FIELDS, one row per transition,
    and optionally `extras` shaped like the buffer's); the algorithm's extras default to zeros.
    Raises ValueError naming a missing field or a wrong shape."""
    missing = [name for name in DATASET_FIELDS if name not in dataset]
    if missing:
        raise ValueError(f"offline dataset lacks the fields {missing}")
    count = len(dataset["reward"])
    if count > buffer.offline_capacity:
        raise ValueError(
            f"offline dataset has {count} transitions, the buffer's offline region "
            f"{buffer.offline_capacity}"
        )
    template = buffer.data
    fields = {}
    for name in DATASET_FIELDS:
        array = np.asarray(dataset[name])
        expected = (count, *getattr(template, name).shape[1:])
        if array.shape != expected:
            raise ValueError(
                f"offline dataset field '{name}' has shape {array.shape}, expected {expected}"
            )
        fields[name] = array.astype(getattr(template, name).dtype)
    extras = dataset.get("extras")
    if extras is None:
        extras = jax.tree.map(lambda x: np.zeros((count, *x.shape[1:]), x.dtype), template.extras)
    rows = Transition(**fields, extras=extras)
    if buffer.return_discount is not None:
        known = dataset.get("return_to_go")
        returns = np.full(count, -np.inf) if known is None else np.asarray(known)
        if returns.shape != (count,):
            raise ValueError(
                f"offline dataset field 'return_to_go' has shape {returns.shape}, expected "
                f"({count},)"
            )
        rows = rows._replace(return_to_go=returns.astype(np.float32))
    data = jax.tree.map(lambda store, new: store.at[:count].set(new), buffer.data, rows)
    return buffer.replace(data=data, offline_size=jnp.asarray(count, jnp.int32))
