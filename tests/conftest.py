import csv
import os
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

# One compilation cache for the whole suite, every program in it however quick its compilation,
# and used by tests that call JAX directly too: later tests (on either worker, in subprocesses)
# reuse what earlier ones compiled, as new algorithm objects compile the same programs again.
CACHE = str(Path(__file__).parents[1] / ".jax_cache")
os.environ.setdefault("GPRL_COMPILATION_CACHE_DIR", CACHE)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.environ["GPRL_COMPILATION_CACHE_DIR"])
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# The suite compiles some hundreds of tiny programs once each and spends more time compiling them
# than running them: XLA's cheaper CPU code generation took 22% off two modules' time on a cold
# cache (100 s -> 78 s), and its older elemental emitters instead of the fusion emitters a further
# 35% off three modules' (93 s -> 60 s, 2026-12-06). Each program's code generated in one piece
# instead of up to 32 split across a thread pool (two workers already fill both cores) took a
# further ~15% off four modules' (39.6 s -> 33.5 s, 2026-12-07). Tests and their subprocesses
# only; a user's runs keep XLA's defaults.
os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    " --xla_cpu_use_fusion_emitters=false --xla_cpu_parallel_codegen_split_count=1",
)


@pytest.fixture
def minari_root(tmp_path, monkeypatch):
    """A fresh, empty Minari data path for the test (MINARI_DATASETS_PATH)."""
    root = tmp_path / "datasets"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


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


# The longest modules, longest first (worker seconds on 2 cores, 2026-12-03). Each runs whole on
# one worker (see addopts); collected in name order, a long one would start after the other
# worker ran out of work and leave it idle to the end.
LONGEST_MODULES = (
    "test_sweep.py",
    "test_pretrain.py",
    "test_flow_methods.py",
    "test_finetune.py",
    "test_dsrl.py",
    "test_trainer.py",
    "test_offpolicy.py",
    "test_algorithms.py",
    "test_fql.py",
    "test_qc.py",
    "test_options.py",
)


def pytest_collection_modifyitems(items):
    def cost_rank(item) -> int:
        name = item.path.name
        return LONGEST_MODULES.index(name) if name in LONGEST_MODULES else len(LONGEST_MODULES)

    items.sort(key=cost_rank)


class Interrupted(Exception):
    """Raised from a run's progress callback: the run stops there as a crash would."""


TIMING_COLUMNS = ("wall_time", "steps_per_second")


def rows_without_timing(run_dir: Path) -> list[dict[str, str]]:
    """A run's metrics rows without the columns that differ between identical runs."""
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in csv.DictReader(f)]


@dataclass(frozen=True)
class ResumedRun:
    reference: Path
    """The uninterrupted run's directory."""
    resumed: Path
    """The interrupted run's directory, after resuming it to the end."""
    rows: list[dict[str, str]]
    """The metrics rows (without timing) both runs wrote."""


class ResumeCheck:
    """Train a run uninterrupted (out: RUN.out-uninterrupted); train it again at RUN.out,
    interrupted from its progress callback at `stop_at`; call before_resume(RUN.out) (to check
    or disturb the checkpoint); resume; assert both runs wrote the same metrics rows."""

    def train(self, algo, run, config, stop_at, before_resume=None) -> ResumedRun:
        from gprl.trainer import RunConfig, train

        def start(run, hook=None):
            return train(algo, run, config, on_iteration=hook)

        resume = RunConfig(resume=run.out, progress=False)
        return self._compare(start, run, resume, stop_at, before_resume)

    def pretrain(self, kind, run, config, policy_config, stop_at, before_resume=None):
        from gprl.pretrain import PretrainRun, pretrain

        def start(run, hook=None):
            if run.resume is not None:
                return pretrain(kind, run, config, on_log=hook)
            return pretrain(kind, run, config, policy_config, on_log=hook)

        resume = PretrainRun(resume=run.out, progress=False)
        return self._compare(start, run, resume, stop_at, before_resume)

    @staticmethod
    def _compare(start, run, resume, stop_at, before_resume) -> ResumedRun:
        def interrupt(iteration, row):
            if iteration == stop_at:
                raise Interrupted

        reference = start(replace(run, out=run.out.with_name(f"{run.out.name}-uninterrupted")))
        with pytest.raises(Interrupted):
            start(run, interrupt)
        if before_resume is not None:
            before_resume(run.out)
        resumed = start(resume)
        rows = rows_without_timing(reference)
        assert rows_without_timing(resumed) == rows
        return ResumedRun(reference, resumed, rows)


@pytest.fixture
def resume_check() -> ResumeCheck:
    """Interrupt a run, resume it, and compare it with the uninterrupted run (see ResumeCheck)."""
    return ResumeCheck()
