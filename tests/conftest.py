import os
from pathlib import Path

import pytest

# One compilation cache for the whole suite: later tests reuse the updates earlier ones compiled.
os.environ.setdefault("GPRL_COMPILATION_CACHE_DIR", str(Path(__file__).parents[1] / ".jax_cache"))


@pytest.fixture
def cli_error(capsys):
    """Run the CLI in this process on input it must refuse and return its one error line: the
    same code path as `gprl ...` without paying a fresh interpreter and JAX import per case."""
    from gprl.cli import main

    def refused(argv: list[str]) -> str:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2, (argv, err)
        assert "\n" not in err and err.startswith("gprl: error:"), (argv, err)
        return err

    return refused


def pytest_collection_modifyitems(items):
    # An xdist group runs whole on one worker: collected last (test_sweep.py sorts late), it would
    # start after the other worker ran out of work and leave it idle to the end.
    items.sort(key=lambda item: item.get_closest_marker("xdist_group") is None)
