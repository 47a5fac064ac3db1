"""The package's shape: no import cycle between its modules, the compiled ops' wrappers in qcnn._ops (one module per
csrc/ops file) behind the public qcnn.ops and qcnn.codebook, and the exporter's parts importable under a name that
the function qcnn.export does not shadow."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import qcnn

PACKAGE = Path(qcnn.__file__).resolve().parent
CSRC_OPS = PACKAGE.parents[1] / "csrc" / "ops"


def module_imports() -> dict[str, set[str]]:
    """Each module of the package and the package modules it imports at module level (function-level imports run
    later and cannot form an import-time cycle)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    graph = {}
    for name, (path, is_package) in modules.items():
        here = name.split(".") if is_package else name.split(".")[:-1]
        deps = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom):
                base = ".".join(here[:len(here) - node.level + 1] + ([node.module] if node.module else [])) \
                    if node.level else node.module
                for alias in node.names:
                    deps.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
            elif isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def test_no_import_cycle():
    graph = module_imports()
    assert "qcnn._ops.codebook" in graph and "qcnn.exporter.lower" in graph
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph[name]):
            assert state.get(dep) != 1, f"import cycle: {' -> '.join(path + [name, dep])}"
            if dep not in state:
                visit(dep, path + [name])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_ops_wrappers_mirror_csrc_ops():
    """A module of qcnn._ops per op file that registers ops (fake_quant_autograd.cpp registers the autograd of
    fake_quant.cpp's ops), and the public names are the same functions."""
    op_files = {p.stem for p in CSRC_OPS.glob("*.cpp") if "TORCH_LIBRARY_FRAGMENT" in p.read_text()}
    wrappers = {p.stem for p in (PACKAGE / "_ops").glob("*.py") if p.stem != "__init__"}
    assert op_files == wrappers
    for name in ("fake_quant", "fake_quant_binary", "fake_quant_fixed"):
        assert getattr(qcnn.ops, name) is getattr(importlib.import_module("qcnn._ops.fake_quant"), name)
    for name in ("kmeans_1d", "kmeans_1d_optimal", "lloyd_max", "quantize_to_codebook"):
        assert getattr(qcnn.ops, name) is getattr(importlib.import_module("qcnn.codebook"), name)
        assert getattr(qcnn.ops, name) is getattr(importlib.import_module("qcnn._ops.codebook"), name)


def test_export_is_the_function_and_the_exporter_a_package():
    import qcnn.exporter.graph

    assert callable(qcnn.export) and qcnn.export is qcnn.exporter.export
    assert qcnn.exporter.graph.Graph is qcnn.exporter.Graph
    assert qcnn.load is qcnn.exporter.runtime.load


def test_no_module_takes_another_modules_private_names():
    """What a module shares has a public name: no `from qcnn.x import _helper` (nor `module._helper`) across
    modules; the compiled extension `_C` is the one private module the package imports by name."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        aliases = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                   and (node.level or (node.module or "").startswith("qcnn")) for alias in node.names}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("qcnn")):
                found += [f"{path.name}: from {node.module} import {a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__") and a.name != "_C"]
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases \
                    and node.attr.startswith("_") and not node.attr.startswith("__"):
                found.append(f"{path.name}: {node.value.id}.{node.attr}")
    assert not found, found
