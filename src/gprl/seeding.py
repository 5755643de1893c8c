"""Seeds derived from a run's seed, shared by every command that restarts envs."""

import numpy as np

# Env i of a vector env gets seed + i, and envpool takes int32 seeds: keep room for the envs.
MAX_SEED = 2**31 - 2**16


def boundary_seed(seed: int, iteration: int) -> int:
    """The seed envs restart from at an iteration boundary (a checkpoint)."""
    return int(np.random.SeedSequence([seed, iteration]).generate_state(1)[0]) % MAX_SEED


def eval_seed(seed: int) -> int:
    """The evaluation envs' seed: fixed for a run, apart from every training seed."""
    return boundary_seed(seed, 2**31 - 1)
