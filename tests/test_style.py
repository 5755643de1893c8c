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


def field_docstrings(config_cls) -> dict[str, str | None]:
    """Each field's docstring (the text `--help` shows): the string literal right after the
    field's annotated assignment in the body of the class, or of the base class, defining it."""
    import ast
    import dataclasses
    import inspect
    import textwrap

    docs = {}
    for cls in reversed(config_cls.__mro__):  # a subclass's definition replaces its base's
        if not dataclasses.is_dataclass(cls):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
        for statement, following in zip(body, [*body[1:], None], strict=True):
            if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                is_docstring = (
                    isinstance(following, ast.Expr)
                    and isinstance(following.value, ast.Constant)
                    and isinstance(following.value.value, str)
                )
                docs[statement.target.id] = following.value.value if is_docstring else None
    return docs


def undocumented_fields(config_cls, prefix=""):
    """Dotted names of config fields (nested dataclasses included) without a docstring."""
    import dataclasses
    import typing

    missing = []
    hints = typing.get_type_hints(config_cls)
    docs = field_docstrings(config_cls)
    for field in dataclasses.fields(config_cls):
        name = f"{prefix}{field.name}"
        if dataclasses.is_dataclass(hints[field.name]):
            missing += undocumented_fields(hints[field.name], name + ".")
        elif not (docs.get(field.name) or "").strip():
            missing.append(name)
    return missing


def test_undocumented_fields_finds_each_field_without_a_docstring():
    from dataclasses import dataclass

    @dataclass
    class Inner:
        documented: int = 1
        """Shown by --help."""
        bare: int = 2

    @dataclass
    class Base:
        inherited: float = 0.5
        empty: str = ""
        ""

    @dataclass
    class Outer(Base):
        inner: Inner = None
        """Nested: its own fields are checked, not this docstring."""
        commented: int = 3  # a comment is not a docstring
        documented: bool = True
        """Shown by --help."""
        inherited: float = 0.25
        """A subclass may document a field it redefines."""

    assert undocumented_fields(Outer) == ["empty", "inner.bare", "commented"]
    assert field_docstrings(Inner)["documented"] == "Shown by --help."


def test_every_algorithm_config_field_is_documented():
    from gprl.algos import ALGORITHMS

    for name, entry in ALGORITHMS.items():
        assert undocumented_fields(entry.config) == [], name


def test_every_run_and_command_config_field_is_documented():
    from gprl.collect import CollectArgs
    from gprl.pretrain import PretrainConfig, PretrainRun
    from gprl.trainer import RunConfig

    for config_cls in (RunConfig, PretrainRun, PretrainConfig, CollectArgs):
        assert undocumented_fields(config_cls) == [], config_cls.__name__
