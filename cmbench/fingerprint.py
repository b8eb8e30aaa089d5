"""Hashes of code by what it says, not how it is written.

A result is keyed on the code that computed it. Hashing raw bytes would re-key every job
after a comment, a docstring or a reformatting; hashing the syntax tree does not. The
tree is serialised by hand rather than with ``ast.dump`` so the hash does not move with
the Python version: fields a newer Python adds empty (``type_params``, ...) are skipped,
and node positions never enter.

``import_closure`` follows a file's imports of ``cmbench`` and ``cmbench_baselines``
modules (at any depth, including imports inside functions), so a method's key covers the
helpers it calls.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import sys
from functools import lru_cache
from pathlib import Path
from typing import Iterable

PACKAGE_ROOT = Path(__file__).resolve().parent  # cmbench/
_DOC_HOLDERS = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, _DOC_HOLDERS) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                node.body = node.body[1:]
    return tree


def _canonical(node) -> object:
    if isinstance(node, ast.AST):
        fields = [
            [name, _canonical(value)] for name, value in ast.iter_fields(node) if value is not None and value != []
        ]
        return [type(node).__name__, fields]
    if isinstance(node, list):
        return [_canonical(x) for x in node]
    return [type(node).__name__, repr(node)]


def normalised_source(text: str, where: str = "<source>") -> str:
    """The code of ``text`` as a canonical string: comments, docstrings, formatting and
    line numbers do not appear in it."""
    return repr(_canonical(_strip_docstrings(ast.parse(text, filename=where))))


def code_fingerprint(files: Iterable[Path]) -> str:
    """One hash over the normalised source of ``files`` (order-independent). Non-Python
    files (data the code reads) are hashed by content."""
    h = hashlib.sha256()
    for f in sorted({Path(f).resolve() for f in files}, key=_display_name):
        h.update(_display_name(f).encode() + b"\0")
        h.update(_file_digest(f.read_bytes(), f.suffix == ".py").encode() + b"\0")
    return h.hexdigest()[:16]


@lru_cache(maxsize=None)
def _file_digest(raw: bytes, python: bool) -> str:
    # keyed by the bytes, so an edited file is re-read; a suite's jobs share one parse per file
    text = raw.decode("utf-8")
    return hashlib.sha256((normalised_source(text) if python else text).encode()).hexdigest()


def _display_name(path: Path) -> str:
    """A path that is the same on every machine: relative to cmbench/ for the package's own
    files, else the file name (a method file moved between folders keeps its key)."""
    try:
        return "cmbench/" + path.resolve().relative_to(PACKAGE_ROOT).as_posix()
    except ValueError:
        return path.name


def _module_file(module: str) -> Path | None:
    """The source file of ``cmbench[.x]`` or ``cmbench_baselines.x`` (without importing it)."""
    parts = module.split(".")
    if parts[0] == "cmbench":
        base = PACKAGE_ROOT.joinpath(*parts[1:])
        for cand in (base.with_suffix(".py"), base / "__init__.py"):
            if cand.is_file():
                return cand
        return None
    if parts[0] == "cmbench_baselines" and len(parts) == 2:
        mod = sys.modules.get(module)
        f = getattr(mod, "__file__", None)
        return Path(f) if f else None
    return None


def _package_of(path: Path) -> str:
    """The dotted package a file of cmbench/ belongs to (for relative imports)."""
    try:
        rel = path.resolve().relative_to(PACKAGE_ROOT)
    except ValueError:
        return "cmbench_baselines"  # method files are loaded as cmbench_baselines.<stem>
    return ".".join(["cmbench", *rel.parent.parts])


def _imported_modules(path: Path) -> frozenset[str]:
    return _imports_in(path.read_bytes(), _package_of(path))


@lru_cache(maxsize=None)
def _imports_in(raw: bytes, package: str) -> frozenset[str]:
    tree = ast.parse(raw)
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.add(module)
            out.update(f"{module}.{a.name}" for a in node.names)  # `from cmbench import kernels`
    return frozenset(out)


def import_closure(path: Path) -> list[Path]:
    """``path`` and every cmbench / cmbench_baselines source file it imports, transitively."""
    seen: dict[Path, None] = {}
    todo = [Path(path).resolve()]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen[f] = None
        if f.suffix != ".py":
            continue
        for module in _imported_modules(f):
            dep = _module_file(module)
            if dep is not None and dep.resolve() not in seen:
                todo.append(dep.resolve())
    return sorted(seen, key=_display_name)


def method_fingerprint(cls: type) -> str:
    """A method's code identity: the normalised source of the file defining it and of every
    cmbench module it imports. A fixed method or helper is recomputed; a reformatted one,
    or one with new comments or docstrings, is not."""
    try:
        return code_fingerprint(import_closure(Path(inspect.getsourcefile(cls) or "")))
    except (OSError, TypeError, SyntaxError):  # defined interactively: no file to hash
        return hashlib.sha256(cls.__qualname__.encode()).hexdigest()[:16]


def git_commit() -> str | None:
    """The commit of the cmbench checkout this code runs from (None outside git)."""
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
