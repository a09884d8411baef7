"""The package layout: imports point down the layers, and no module grows past ~400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = [pytest.mark.unit]

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vistrace"

# Bottom to top. A module may import its own unit and any unit of a lower layer, nothing else.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"compat", "images", "roles"}),
    frozenset({"hook"}),
    frozenset({"adapters"}),
    frozenset({"models", "data"}),
    frozenset({"knockout", "capture"}),
    frozenset({"volcano"}),
    frozenset({"runs"}),
    frozenset({"plots"}),
    frozenset({"results", "report"}),
    frozenset({"api", "check"}),
    frozenset({"demo"}),
    frozenset({"cli", "__main__", "__init__"}),
)
MAX_LINES = 400


def _unit(module: str) -> str:
    """`vistrace.knockout.sweep` -> `knockout`; the package itself -> `__init__`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _layer(unit: str) -> int:
    for index, layer in enumerate(LAYERS):
        if unit in layer:
            return index
    raise AssertionError(f"unit {unit!r} has no layer in tests/test_layout.py")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("vistrace"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("vistrace"):
                continue
            if target == "vistrace":
                found.update(f"vistrace.{alias.name}" for alias in node.names if alias.name != "__version__")
            else:
                found.add(target)
    return found


SOURCES = sorted(p for p in PACKAGE.rglob("*.py"))


@pytest.mark.unit
def test_every_unit_has_a_layer() -> None:
    units = {_unit(_module_name(path)) for path in SOURCES}
    for unit in units:
        _layer(unit)


@pytest.mark.unit
def test_imports_point_down() -> None:
    upward = []
    for path in SOURCES:
        module = _module_name(path)
        unit = _unit(module)
        for target in _imports(path):
            target_unit = _unit(target)
            if target_unit != unit and _layer(target_unit) >= _layer(unit):
                upward.append(f"{module} -> {target}")
    assert not upward, "imports that do not point down:\n" + "\n".join(sorted(upward))


@pytest.mark.unit
def test_the_demo_training_script_is_not_imported_by_the_library() -> None:
    importers = [_module_name(p) for p in SOURCES if "vistrace.demo.train" in _imports(p)]
    assert not importers


@pytest.mark.unit
def test_no_module_is_longer_than_the_limit() -> None:
    long = {
        _module_name(p): n
        for p in SOURCES
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"
