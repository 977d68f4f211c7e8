"""The import graph runs one way: each layer imports only itself and the layers below it, at module level.

Layers, bottom to top: `microtvm_projects` (standalone: stdlib and pyserial) < the `tvm_patch` library <
the `tvm_patch` presentation (`report`, `cli`, `plot`, `__main__`) < `relay_passes` (the public face of the
passes) < `bench`. Imports are read with `ast`, nothing is executed.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("microtvm_projects", "tvm_patch", "relay_passes", "bench")
PRESENTATION = {"tvm_patch.report", "tvm_patch.cli", "tvm_patch.plot", "tvm_patch.__main__"}
LAYERS = ("microtvm_projects", "tvm_patch library", "tvm_patch presentation", "relay_passes", "bench")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int | None:
    """Index of `module`'s layer in LAYERS, None for a module outside the project."""
    top = module.split(".")[0]
    if top not in PACKAGES:
        return None
    if top == "tvm_patch":
        return 2 if any(module == p or module.startswith(p + ".") for p in PRESENTATION) else 1
    return {"microtvm_projects": 0, "relay_passes": 3, "bench": 4}[top]


def _sources() -> list[tuple[str, Path, ast.Module]]:
    out = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            out.append((_module_name(path), path, ast.parse(path.read_text(), str(path))))
    return out


def _imports(module: str, path: Path, tree: ast.Module) -> list[tuple[str, ast.AST, bool]]:
    """(imported module, node, inside a function) for every import statement of `tree`."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((a.name, child, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                found.append((base, child, in_function))
            visit(child, nested)

    visit(tree, False)
    return found


SOURCES = _sources()


def test_sources_found():
    names = {m for m, _, _ in SOURCES}
    assert {"tvm_patch.graph", "tvm_patch.cli", "relay_passes", "bench.run", "microtvm_projects"} <= names


@pytest.mark.parametrize("module,path,tree", SOURCES, ids=[m for m, _, _ in SOURCES])
def test_imports_go_down(module, path, tree):
    """No module imports a layer above its own (e.g. `tvm_patch` never imports `relay_passes` or `bench`,
    the library never imports `report`/`cli`, `microtvm_projects` imports nothing of the project)."""
    own = _layer(module)
    bad = [f"{path.name}:{node.lineno} imports {target} ({LAYERS[_layer(target)]})"
           for target, node, _ in _imports(module, path, tree)
           if _layer(target) is not None and _layer(target) > own]
    assert not bad, f"{module} ({LAYERS[own]}): " + "; ".join(bad)


@pytest.mark.parametrize("module,path,tree", SOURCES, ids=[m for m, _, _ in SOURCES])
def test_no_project_import_inside_functions(module, path, tree):
    """Project modules are imported at module level: an import inside a function is how a cycle hides."""
    bad = [f"{path.name}:{node.lineno} imports {target}" for target, node, inside in _imports(module, path, tree)
           if inside and _layer(target) is not None]
    assert not bad, "; ".join(bad)


def test_microtvm_projects_standalone():
    """The board projects run without the compiler: stdlib and pyserial only."""
    allowed = set(sys.stdlib_module_names) | {"serial"}
    for module, path, tree in SOURCES:
        if module.split(".")[0] != "microtvm_projects":
            continue
        for target, node, _ in _imports(module, path, tree):
            top = target.split(".")[0]
            assert top in allowed or top == "microtvm_projects" or top == "__future__", \
                f"{path}:{node.lineno} imports {target}"
