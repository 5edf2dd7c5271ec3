"""The package's shape, read from its imports with ``ast`` (docs/ARCHITECTURE.md).

- No import cycle, between modules or between subpackages, counting every import: at the top
  of a module, inside a function, and under ``TYPE_CHECKING``.
- No module imports another module's private (``_name``) name.
- An import inside a function defers a heavy dependency (torch, transformers, peft, ray,
  mlflow, matplotlib, ...) that the importing module does not already pull in; an import that
  only dodges a cycle is a defect.
- The modules stand on at most :data:`MAX_FLOORS` floors. A module's floor is 1 when it imports
  nothing of loraplace at import time, else one more than the highest floor it imports at
  import time (imports deferred into functions are not executed then, so they do not lift it).
"""

from __future__ import annotations

import ast
import functools
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "loraplace"
MAX_FLOORS = 10
HEAVY = frozenset(
    {
        "torch",
        "transformers",
        "peft",
        "accelerate",
        "gguf",
        "ray",
        "mlflow",
        "tensorboard",
        "matplotlib",
        "numpy",
        "scipy",
        "pandas",
    }
)


@dataclass
class Module:
    name: str
    path: Path
    at_import: set[str] = field(default_factory=set)
    """loraplace modules imported when this module is imported."""
    deferred: list[tuple[str, int]] = field(default_factory=list)
    """loraplace modules imported inside a function, with the line."""
    external: set[str] = field(default_factory=set)
    """Top-level names of other distributions imported when this module is imported."""
    private: list[tuple[str, str, int]] = field(default_factory=list)
    """(module, private name, line) imported from another loraplace module."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _scopes(tree: ast.Module) -> tuple[set[int], set[int]]:
    """ids of the nodes inside functions, and of those under ``if TYPE_CHECKING:``."""
    in_function, type_only = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function.update(id(n) for n in ast.walk(node))
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only.update(id(n) for n in ast.walk(node))
    return in_function, type_only


@functools.cache
def package() -> dict[str, Module]:  # noqa: C901 (one reader for every import form)
    modules = {_module_name(p): Module(_module_name(p), p) for p in sorted(PACKAGE.rglob("*.py"))}
    for module in modules.values():
        tree = ast.parse(module.path.read_text(), str(module.path))
        in_function, type_only = _scopes(tree)
        is_package = module.path.name == "__init__.py"
        for node in ast.walk(tree):
            targets: list[tuple[str, str | None]] = []
            if isinstance(node, ast.Import):
                targets = [(alias.name, None) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = module.name.split(".")
                    anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.append((full, None) if full in modules else (base, alias.name))
            for target, name in targets:
                if not target.startswith("loraplace"):
                    if id(node) not in in_function and id(node) not in type_only:
                        module.external.add(target.split(".")[0])
                    continue
                while target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target == module.name or target not in modules:
                    continue
                if name and name.startswith("_") and not name.startswith("__"):
                    module.private.append((target, name, node.lineno))
                if id(node) in in_function:
                    module.deferred.append((target, node.lineno))
                elif id(node) in type_only:
                    module.deferred.append((target, node.lineno))
                else:
                    module.at_import.add(target)
    return modules


def _edges(every: bool) -> dict[str, set[str]]:
    modules = package()
    return {
        name: m.at_import | ({t for t, _ in m.deferred} if every else set())
        for name, m in modules.items()
    }


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:  # noqa: C901 (Tarjan, as written)
    """Strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _package_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


def floors() -> dict[str, int]:
    edges = _edges(every=False)

    @functools.cache
    def floor(name: str) -> int:
        return 1 + max((floor(t) for t in edges[name]), default=0)

    return {name: floor(name) for name in edges}


def closure_external(name: str, seen: frozenset = frozenset()) -> set[str]:
    modules = package()
    found = set(modules[name].external)
    for target in modules[name].at_import:
        if target not in seen:
            found |= closure_external(target, seen | {name})
    return found


def test_no_import_cycle_between_modules():
    assert _cycles(_edges(every=True)) == []


def test_no_import_cycle_between_subpackages():
    edges: dict[str, set[str]] = {}
    for source, targets in _edges(every=True).items():
        for target in targets:
            a, b = _package_of(source), _package_of(target)
            if a != b and a != "loraplace" and b != "loraplace":
                edges.setdefault(a, set()).add(b)
    assert _cycles(edges) == []


def test_no_module_imports_another_modules_private_name():
    found = [
        f"{m.name}:{line} imports {name} from {target}"
        for m in package().values()
        for target, name, line in m.private
    ]
    assert found == []


def test_an_import_inside_a_function_defers_a_heavy_dependency():
    dodges = []
    for module in package().values():
        mine = closure_external(module.name) & HEAVY
        for target, line in module.deferred:
            if not closure_external(target) & HEAVY - mine:
                dodges.append(f"{module.name}:{line} defers {target}, which is light")
    assert dodges == []


def test_the_package_stands_on_at_most_ten_floors(capsys):
    levels = floors()
    by_floor: dict[int, list[str]] = {}
    for name, level in levels.items():
        by_floor.setdefault(level, []).append(name.removeprefix("loraplace."))
    with capsys.disabled():
        print()
        for level in sorted(by_floor):
            print(f"  floor {level}: {', '.join(sorted(by_floor[level]))}")
    assert max(levels.values()) <= MAX_FLOORS


@pytest.mark.parametrize(
    "source, expected",
    [
        ("import loraplace.b\n", {"loraplace.b"}),
        ("from loraplace import b\n", {"loraplace.b"}),
        ("from . import b\n", {"loraplace.b"}),
        ("def f():\n    import loraplace.b\n", set()),
    ],
)
def test_the_reader_finds_imports_in_every_form(tmp_path, monkeypatch, source, expected):
    # The checks above are only as good as this reader: a tiny package with each import form.
    root = tmp_path / "loraplace"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "a.py").write_text(source)
    (root / "b.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", root)
    package.cache_clear()
    try:
        assert package()["loraplace.a"].at_import == expected
    finally:
        package.cache_clear()


def test_a_cycle_is_found():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
