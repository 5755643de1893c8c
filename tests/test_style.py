import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_code_is_ruff_clean():
    for args in (["check", "."], ["format", "--check", "."]):
        result = subprocess.run(
            [sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout + result.stderr


SHARED_MODULES = ["trainer", "loops", "collectors", "backends", "evaluation", "logger", "cli"]
ROOMS_ALGORITHMS_MUST_NOT_ENTER = ("gprl.envs", "gprl.collectors", "gprl.loops", "gprl.backends")


def test_shared_code_names_no_algorithm():
    import re

    from gprl.algos import ALGORITHMS

    names = "|".join(re.escape(name) for name in ALGORITHMS)
    for module in SHARED_MODULES:
        text = (ROOT / "src" / "gprl" / f"{module}.py").read_text()
        found = re.findall(rf"\b({names})\b", text, flags=re.IGNORECASE)
        assert not found, f"{module}.py names algorithms {sorted(set(found))}"


def test_algorithms_import_no_env_collector_or_loop():
    import ast

    for path in (ROOT / "src" / "gprl" / "algos").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                imported = [node.module or ""]
            elif isinstance(node, ast.Import):
                imported = [alias.name for alias in node.names]
            else:
                continue
            for name in imported:
                assert not name.startswith(ROOMS_ALGORITHMS_MUST_NOT_ENTER), f"{path.name}: {name}"


def undocumented_fields(config_cls, prefix=""):
    """Dotted names of config fields (nested dataclasses included) without a docstring, the text
    `--help` shows."""
    import dataclasses
    import typing

    from tyro._docstrings import get_field_docstring

    missing = []
    hints = typing.get_type_hints(config_cls)
    for field in dataclasses.fields(config_cls):
        name = f"{prefix}{field.name}"
        if dataclasses.is_dataclass(hints[field.name]):
            missing += undocumented_fields(hints[field.name], name + ".")
        elif not get_field_docstring(config_cls, field.name, ()):
            missing.append(name)
    return missing


def test_every_algorithm_config_field_is_documented():
    from gprl.algos import ALGORITHMS

    for name, entry in ALGORITHMS.items():
        assert undocumented_fields(entry.config) == [], name
