"""What a policy's stochastic actions look like: many `act` samples at a few observations, drawn
as a histogram (1-D actions) or a scatter of the first two action dimensions, with the optimal
modes and their coverage where the task is a multimodal diagnostic
(:data:`gprl.envs.diagnostics.OPTIMAL_MODES`).

Only the algorithm contract is used (`act(acting, obs, key)`), so every algorithm can be drawn.
The deterministic evaluation picks one action per state by construction; these samples show
whether the policy keeps several.
"""

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

from gprl.envs.diagnostics import OPTIMAL_MODES, ModeCoverage, mode_coverage
from gprl.envs.outcomes import EPISODE_OUTCOMES

PLOT_OBSERVATIONS = 4
PLOT_SAMPLES = 1000
EPISODE_ROLLOUTS = 1000
# Observations up to this size are written into the panel titles.
SHOWN_OBS_DIM = 4


class ActionPlot(NamedTuple):
    path: Path
    observations: np.ndarray
    """(N, obs_dim) the observations drawn, one panel each."""
    coverage: ModeCoverage | None
    """Per observation, on the multimodal diagnostic tasks; None elsewhere."""
    episodes: dict[str, float] | None
    """Share of EPISODE_ROLLOUTS stochastic episodes per outcome where the task has
    EPISODE_OUTCOMES; None elsewhere."""


def reset_observations(env, count: int, seed: int) -> np.ndarray:
    """(count, obs_dim) first observations of env 0 after resets with seeds seed, seed + 1, ..."""
    return np.concatenate([env.reset(seed + index)[:1] for index in range(count)])


def sample_actions(act, acting, observations: np.ndarray, samples: int, key) -> np.ndarray:
    """(N, samples, action_dim) stochastic actions at each of N observations, clipped to [-1, 1]
    as the envs clip them (a clipped Gaussian's raw samples can lie outside)."""
    repeated = np.repeat(np.asarray(observations, np.float32), samples, axis=0)
    actions, _ = jax.jit(act)(acting, repeated, key)
    actions = np.clip(np.asarray(actions, np.float64), -1.0, 1.0)
    return actions.reshape(len(observations), samples, -1)


def coverage_at(env_id: str, observations: np.ndarray, actions: np.ndarray) -> ModeCoverage | None:
    """Mode coverage of actions (N, S, action_dim) sampled at observations (N, obs_dim), or None
    when env_id is not a multimodal diagnostic."""
    optimal = OPTIMAL_MODES.get(env_id)
    if optimal is None:
        return None
    return mode_coverage(actions, optimal.of(observations), optimal.radius)


def sampling_policy(act, acting, seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """observations (N, obs_dim) -> stochastic actions (N, action_dim), a fresh key per call.

    Batches are padded to the largest size seen, so that rollouts whose finished episodes drop
    out compile `act` once."""
    act = jax.jit(act)
    base_key = jax.random.PRNGKey(seed)
    seen = {"calls": 0, "size": 0}

    def policy(observations: np.ndarray) -> np.ndarray:
        observations = np.asarray(observations, np.float32)
        seen["size"] = max(seen["size"], len(observations))
        padded = np.zeros((seen["size"], observations.shape[-1]), np.float32)
        padded[: len(observations)] = observations
        actions, _ = act(acting, padded, jax.random.fold_in(base_key, seen["calls"]))
        seen["calls"] += 1
        return np.asarray(actions)[: len(observations)]

    return policy


def episode_outcomes(env_id: str, act, acting, seed: int = 0) -> dict[str, float] | None:
    """Share of EPISODE_ROLLOUTS stochastic episodes ending in each outcome of env_id, or None
    when the task has no EPISODE_OUTCOMES."""
    measure = EPISODE_OUTCOMES.get(env_id)
    if measure is None:
        return None
    return measure(sampling_policy(act, acting, seed), rollouts=EPISODE_ROLLOUTS)._asdict()


def plot_actions(
    algo,
    acting,
    env,
    path: Path,
    *,
    num_observations: int = PLOT_OBSERVATIONS,
    samples: int = PLOT_SAMPLES,
    seed: int = 0,
) -> ActionPlot:
    """Draw `samples` stochastic actions at each of `num_observations` reset observations of a
    host env (from :func:`gprl.envs.make_env`) to a PNG at path.

    Observations come from resets with seeds seed, seed + 1, ...; the sampling key from seed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    env_id = env.spec.env_id
    observations = reset_observations(env, num_observations, seed)
    actions = sample_actions(algo.act, acting, observations, samples, jax.random.PRNGKey(seed))
    coverage = coverage_at(env_id, observations, actions)
    optimal = OPTIMAL_MODES.get(env_id)
    modes = None if optimal is None else optimal.of(observations)

    fig, axes = plt.subplots(1, num_observations, figsize=(3.4 * num_observations, 4.0))
    for index, ax in enumerate(np.atleast_1d(axes)):
        panel_modes = None if modes is None else modes[index]
        if actions.shape[-1] == 1:
            _draw_histogram(ax, actions[index, :, 0], panel_modes, optimal)
        else:
            _draw_scatter(ax, actions[index], panel_modes, optimal)
        title = f"observation {index}"
        if observations.shape[1] <= SHOWN_OBS_DIM:
            title += " (" + ", ".join(f"{x:.2f}" for x in observations[index]) + ")"
        if coverage is not None:
            title += "\n" + _coverage_text(coverage, index, separator="\n")
        ax.set_title(title, fontsize=9)
    dims = "" if actions.shape[-1] <= 2 else f", first 2 of {actions.shape[-1]} action dims"
    title = f"{env_id}: {samples} stochastic actions per observation{dims}"
    episodes = episode_outcomes(env_id, algo.act, acting, seed)
    if episodes is not None:
        title += "\n" + _episodes_text(episodes)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return ActionPlot(path, observations, coverage, episodes)


def coverage_lines(plot: ActionPlot) -> list[str]:
    """One line per observation with its mode coverage, and one with the episodes' outcomes
    (none for non-diagnostic tasks)."""
    lines = []
    if plot.coverage is not None:
        lines = [
            f"observation {index}: {_coverage_text(plot.coverage, index)}"
            for index in range(len(plot.observations))
        ]
    if plot.episodes is not None:
        lines.append(_episodes_text(plot.episodes))
    return lines


def _episodes_text(episodes: dict[str, float]) -> str:
    shares = ", ".join(f"{outcome} {share:.2f}" for outcome, share in episodes.items())
    return f"{EPISODE_ROLLOUTS} stochastic episodes end: {shares}"


def _coverage_text(coverage: ModeCoverage, index: int, separator: str = ", ") -> str:
    shares = " ".join(f"{share:.2f}" for share in coverage.mode_shares[index])
    return f"mode shares {shares}{separator}on no mode {coverage.none_share[index]:.2f}"


def _draw_histogram(ax, actions: np.ndarray, modes, optimal) -> None:
    # Weights make a bar's height the share of samples in it, comparable across panels.
    ax.hist(actions, bins=100, range=(-1.0, 1.0), weights=np.full(len(actions), 1 / len(actions)))
    if modes is not None:
        for number, (mode,) in enumerate(modes):
            ax.axvspan(mode - optimal.radius, mode + optimal.radius, color="tab:green", alpha=0.2)
            ax.axvline(mode, color="tab:green", linewidth=1)
            ax.annotate(
                str(number),
                (mode, 0.97),
                xycoords=("data", "axes fraction"),
                ha="center",
                va="top",
                color="tab:green",
            )
    ax.set_xlim(-1.05, 1.05)
    ax.set_xlabel("action")
    ax.set_ylabel("share of samples")


def _draw_scatter(ax, actions: np.ndarray, modes, optimal) -> None:
    import matplotlib.patches as patches

    ax.scatter(actions[:, 0], actions[:, 1], s=3, alpha=0.25, linewidths=0)
    if modes is not None:
        for number, mode in enumerate(modes):
            ax.add_patch(patches.Circle(mode[:2], optimal.radius, color="tab:green", alpha=0.2))
            ax.annotate(str(number), mode[:2], ha="center", va="center", color="tab:green")
    ax.set_xlim(-1.05, 1.05)
    ax.set_ylim(-1.05, 1.05)
    ax.set_aspect("equal")
    ax.set_xlabel("action[0]")
    ax.set_ylabel("action[1]")
