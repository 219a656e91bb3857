"""The library's import structure: no import cycle anywhere in alice_core (function-local imports included), models/
reads no files, and no host (ComfyUI, Gradio, the app, the nodes) is imported by the library."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOSTS = ("gradio", "comfy", "comfy_execution", "comfy_api", "folder_paths", "server", "webui", "nodes")


def module_names(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package is its __init__.py)."""
    names = {}
    for path in package_dir.rglob("*.py"):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imports_of(name: str, path: Path) -> set[str]:
    """Every module `path` imports, at any depth of its code (function-local imports included), as dotted names."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}  # `from . import x` imports module x
    return found


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    modules = module_names(package_dir)
    return {name: {m for m in imports_of(name, path) if m in modules and m != name} for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_cycle_hidden_in_a_function(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import c\n")
    (pkg / "c.py").write_text("import os\n\ndef g():\n    from pkg.a import x\n")
    assert cycles(import_graph(pkg)) == [["pkg.a", "pkg.c", "pkg.sub.b"]]
    (pkg / "c.py").write_text("import os\n")
    assert cycles(import_graph(pkg)) == []


def test_alice_core_has_no_import_cycle():
    graph = import_graph(ROOT / "alice_core")
    assert "alice_core.loading.dit" in graph["alice_core.pipeline"]  # a function-local import, seen
    assert cycles(graph) == []


def test_models_read_no_files_and_the_library_imports_no_host():
    modules = module_names(ROOT / "alice_core")
    for name, path in modules.items():
        imported = imports_of(name, path)
        hosts = sorted(m for m in imported if m.split(".")[0] in HOSTS)
        assert not hosts, f"{name} imports {hosts}"
        if name.startswith("alice_core.models"):
            above = sorted(m for m in imported if m.startswith(("alice_core.loading", "alice_core.pipeline",
                                                                   "alice_core.train", "alice_core.bundle")))
            assert not above, f"{name} imports {above}"
