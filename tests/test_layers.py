"""The import layers of cmbench, as a contract (docs/working-on-cmbench.md, "Layers, checks, keys").

Every import statement counts: module level, inside functions and under ``if
TYPE_CHECKING:``. A module may import its own layer or a lower one, never a higher one, and
the modules' imports form no circle. ``baselines/`` depend on cmbench, never the reverse.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# from the bottom
LAYERS = [
    # base: the package (CmbenchError, version), tensor and metric maths, small I/O helpers,
    # the run's configuration
    [
        "cmbench",
        "cmbench.config",
        "cmbench.tensors",
        "cmbench.metrics",
        "cmbench.layout",
        "cmbench.kernels",
        "cmbench.spectral",
        "cmbench.fingerprint",
        "cmbench.limits",
        "cmbench.pins",
        "cmbench.measure",
        "cmbench.catalog",
        "cmbench.store",
    ],
    # the method API and what methods use; the registry that finds method files
    ["cmbench.methods", "cmbench.estimates", "cmbench.lora", "cmbench.registry"],
    # the suite schema and job expansion; the result record (it reads names and LoRA from the
    # schema) and the reading of result files
    ["cmbench.suite", "cmbench.record", "cmbench.results", "cmbench.verified"],
    ["cmbench.data", "cmbench.models", "cmbench.train", "cmbench.published"],
    ["cmbench.artefacts", "cmbench.jobstate", "cmbench.plan", "cmbench.tuned"],
    # what decides a job's key and whether a result is current
    ["cmbench.keys"],
    # the continual loop (a package: evaluation, data access, the learner, the record, the loop)
    ["cmbench.protocol"],
    # where tasks execute (local, Ray, placement) and what a worker runs
    ["cmbench.executors", "cmbench.work"],
    [
        "cmbench.runner",
        "cmbench.tune",
        "cmbench.report",
        "cmbench.bench",
        "cmbench.tracking",
        "cmbench.verify",
        "cmbench.rehearse",
        "cmbench.conformance",
    ],
    ["cmbench.cli", "cmbench.__main__"],
]


def modules(package: Path = ROOT / "cmbench") -> dict[str, Path]:
    """Dotted name -> file of every module of the package at ``package``."""
    out = {}
    for p in sorted(package.rglob("*.py")):
        parts = list(p.relative_to(package.parent).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def imports_of(name: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """(imported cmbench module, line) for every import statement in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `cmbench.data.vision.x` -> the module that holds it
                t = t.rpartition(".")[0]
            if t and t != name:
                out.append((t, node.lineno))
    return out


def layer_of(name: str) -> int:
    for i, layer in enumerate(LAYERS):
        if any(name == m or name.startswith(m + ".") for m in layer if m != "cmbench") or name in layer:
            return i
    raise AssertionError(
        f"{name} has no layer: add it to LAYERS in tests/test_layers.py (and docs/working-on-cmbench.md)"
    )


def violations(mods: dict[str, Path]) -> list[str]:
    known = set(mods)
    bad = []
    for name, path in mods.items():
        for target, line in imports_of(name, path, known):
            if layer_of(target) > layer_of(name):
                bad.append(
                    f"{path.name}:{line}: {name} (layer {layer_of(name)}) imports {target} (layer {layer_of(target)})"
                )
    return bad


def cycles(mods: dict[str, Path]) -> list[list[str]]:
    known = set(mods)
    graph = {n: sorted({t for t, _ in imports_of(n, p, known)}) for n, p in mods.items()}
    # a package imports its own submodules when it is imported (`from . import micro`): not a circle
    graph = {n: [t for t in ts if not t.startswith(n + ".")] for n, ts in graph.items()}
    found, state = [], {}

    def visit(n, stack):
        state[n] = 1
        stack.append(n)
        for t in graph[n]:
            if state.get(t) == 1:
                found.append(stack[stack.index(t) :] + [t])
            elif t not in state:
                visit(t, stack)
        stack.pop()
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n, [])
    return found


def test_imports_go_down_the_layers():
    assert violations(modules()) == []


def test_no_import_circles():
    assert cycles(modules()) == []


def test_cmbench_never_imports_baselines():
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in (
                "baselines",
                "cmbench_baselines",
            ):
                pytest.fail(f"{path}: imports {node.module}")
            if isinstance(node, ast.Import) and any(
                a.name.split(".")[0] in ("baselines", "cmbench_baselines") for a in node.names
            ):
                pytest.fail(f"{path}: imports baselines")


def test_the_check_catches_an_upward_import(tmp_path):
    """The contract fails on an added upward import, also inside a function or under
    TYPE_CHECKING (a copy of the package with one such line)."""
    import shutil

    for snippet in (
        "from .runner import run_suite\n",
        "def f():\n    from . import cli\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .protocol import Learner\n",
    ):
        copy = tmp_path / "cmbench"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(ROOT / "cmbench", copy, ignore=shutil.ignore_patterns("__pycache__"))
        target = copy / "tensors.py"
        target.write_text(target.read_text() + "\n" + snippet)
        found = violations(modules(copy))
        assert len(found) == 1 and "cmbench.tensors (layer 0) imports" in found[0], found


def test_the_report_reads_results_only():
    """The report renders from result records and metrics alone: no suite, model or run code."""
    allowed = {"cmbench", "cmbench.metrics", "cmbench.record", "cmbench.results", "cmbench.verified"}
    mods = modules()
    known = set(mods)
    for name, path in mods.items():
        if name == "cmbench.report" or name.startswith("cmbench.report."):
            for target, line in imports_of(name, path, known):
                assert target in allowed or target.startswith("cmbench.report"), f"{path.name}:{line}: imports {target}"


def test_no_module_imports_another_modules_private_names():
    mods = modules()
    known = set(mods)
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("cmbench")):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                mod = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module
                for a in node.names:
                    private = a.name.startswith("_") and not a.name.startswith("__")
                    if private and f"{mod}.{a.name}" not in known:
                        pytest.fail(f"{path.name}:{node.lineno}: imports {mod}.{a.name}, a private name")
