import os
from pathlib import Path

# One compilation cache for the whole suite: later tests reuse the updates earlier ones compiled.
os.environ.setdefault("GPRL_COMPILATION_CACHE_DIR", str(Path(__file__).parents[1] / ".jax_cache"))
