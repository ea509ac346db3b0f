"""The one dependency rule (trainer -> models_store <- service), and a service that names no kind:
checked on every module's imports, so a new edge fails here rather than in a review."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
FORBIDDEN = {"models_store": ("trainer", "service"), "trainer": ("service",), "service": ("trainer", "models_store.kinds")}
ALLOWED = ("models_store.kinds.base",)  # the contract every kind fulfils, which the service talks to


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_module_imports_across_the_rule(package):
    bad = [f"{path.relative_to(ROOT)} imports {name}" for path in sorted((ROOT / package).rglob("*.py"))
           for name in sorted(imports(path)) if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[package])
           and not any(name == a or name.startswith(a + ".") for a in ALLOWED)]
    assert not bad, bad


KINDS_AND_LEARNERS = ("models_store/kinds", "trainer/families")


def outside_kinds_and_learners() -> list[Path]:
    return [path for package in FORBIDDEN for path in sorted((ROOT / package).rglob("*.py"))
            if not str(path.relative_to(ROOT)).startswith(KINDS_AND_LEARNERS)]


def test_no_kind_is_named_outside_the_kinds_and_the_learners():
    """A new kind is a file in models_store/kinds/ and its registry line: nothing else names a kind,
    by string or by importing its module (the generic contract is kinds/base.py and kinds/__init__.py)."""
    from models_store.kinds import KINDS

    modules = {target.partition(':')[0] for target in KINDS.values()}
    bad = []
    for path in outside_kinds_and_learners():
        tree = ast.parse(path.read_text())
        bad += [f"{path.relative_to(ROOT)}:{node.lineno} names kind {node.value!r}" for node in ast.walk(tree)
                if isinstance(node, ast.Constant) and node.value in KINDS]
        bad += [f"{path.relative_to(ROOT)} imports {name}" for name in sorted(imports(path))
                if any(name == m or name.startswith(m + ".") for m in modules)]
    assert not bad, bad


def module_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that `path` imports anywhere: at the top, in a function (a deferred
    import still ties the two), under TYPE_CHECKING."""
    name = module_of(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else node.module
            out |= {base, *(f"{base}.{a.name}" for a in node.names)}
    return {m for m in out if m in modules and m != name}


def test_no_package_has_an_import_circle():
    """Modules depend one way: a circle (even through a deferred import) is two modules that are one."""
    paths = {module_of(p): p for package in FORBIDDEN for p in (ROOT / package).rglob("*.py")}
    graph = {m: imported_modules(p, set(paths)) for m, p in paths.items()}
    circles, done = [], set()

    def visit(m: str, trail: list[str]) -> None:
        if m in trail:
            circles.append(trail[trail.index(m):] + [m])
            return
        if m in done:
            return
        for n in sorted(graph[m]):
            visit(n, trail + [m])
        done.add(m)
    for m in sorted(graph):
        visit(m, [])
    assert not circles, [" -> ".join(c) for c in circles]
