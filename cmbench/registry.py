"""Where methods come from: the registry's discovery of ``baselines/`` and installed plugins.

Kept apart from :mod:`cmbench.methods` (the interface every method imports): a method's key
hashes the code it imports, and how method files are found changes no number a method
computes.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from . import CmbenchError
from .methods import REGISTRY, Method, validate_hparams


def baseline_dirs() -> list[Path]:
    """Where method files are discovered: $CMBENCH_BASELINES, ./baselines, the repo's own."""
    dirs = [Path(p) for p in os.environ.get("CMBENCH_BASELINES", "").split(os.pathsep) if p]
    dirs += [Path.cwd() / "baselines", Path(__file__).resolve().parents[1] / "baselines"]
    out: list[Path] = []
    for d in dirs:
        d = d.resolve()
        if d.is_dir() and d not in out:
            out.append(d)
    return out


_LOADED: set[Path] = set()
# method files that failed to import: path -> why (reported once; suites that do not use
# them run; a method they would have defined is "unknown", with them named)
BROKEN: dict[Path, str] = {}
# a method file's import is bounded (a `time.sleep` or a download at import would hang
# every command, `cmbench list methods` included)
IMPORT_LIMIT_S = 60.0


def _load(path: Path, mod_name: str) -> None:
    """Import one method file; a failure of any kind (an exception, ``sys.exit``, a hang past
    ``IMPORT_LIMIT_S``) is recorded in ``BROKEN`` with one line naming the file."""
    from .limits import time_limit

    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]  # a .py path always has a spec
    sys.modules[mod_name] = module
    setattr(sys.modules["cmbench_baselines"], path.stem, module)
    try:
        with time_limit(IMPORT_LIMIT_S, f"still importing after {IMPORT_LIMIT_S:g} s"):
            spec.loader.exec_module(module)  # type: ignore[union-attr]  # (the same)
    except KeyboardInterrupt:
        raise
    except SyntaxError as e:
        why = f"SyntaxError: {e.msg} (line {e.lineno})"
    except SystemExit as e:
        why = f"it calls sys.exit({e.code!r}) when imported"
    except CmbenchError as e:
        why = str(e)
    except BaseException as e:  # noqa: BLE001 - a broken plugin names itself and blocks nothing else
        why = f"{type(e).__name__}: {e}"
    else:
        return
    sys.modules.pop(mod_name, None)
    why = " ".join(why.split())[:300]
    if path not in BROKEN:
        BROKEN[path] = why
        print(f"cmbench: warning: method file {path} not loaded: {why}", file=sys.stderr)


def discover(dirs: list[Path] | None = None) -> dict[str, type[Method]]:
    """Import every ``*.py`` in the baseline folders and the ``cmbench.methods`` entry points.

    Only these two sources are ever executed: plugins are code, so they come from the
    project's own folder or an installed package, never from a suite or a result file. A file
    that fails to import is reported once (``BROKEN``) and skipped: the methods of the other
    files stay usable.
    """
    if "cmbench_baselines" not in sys.modules:  # a namespace so `import cmbench_baselines.x` works
        pkg = types.ModuleType("cmbench_baselines")
        pkg.__path__ = []
        sys.modules["cmbench_baselines"] = pkg
    for d in baseline_dirs() if dirs is None else dirs:
        for path in sorted(Path(d).glob("*.py")):
            path = path.resolve()
            if path.name.startswith("_") or path in _LOADED or path in BROKEN:
                continue
            _load(path, f"cmbench_baselines.{path.stem}")
            if path not in BROKEN:
                _LOADED.add(path)
    for ep in entry_points(group="cmbench.methods"):
        try:
            ep.load()
        except Exception as e:  # noqa: BLE001 - an installed plugin's failure names it
            where = Path(f"entry point {ep.name} ({ep.value})")
            if where not in BROKEN:
                BROKEN[where] = f"{type(e).__name__}: {e}"
                print(f"cmbench: warning: method {where} not loaded: {BROKEN[where]}", file=sys.stderr)
    return dict(REGISTRY)


def get(name: str) -> type[Method]:
    if name not in REGISTRY:
        discover()
    if name not in REGISTRY:
        known = ", ".join(sorted(REGISTRY)) or "(none found)"
        broken = "; ".join(f"{p}: {why}" for p, why in sorted(BROKEN.items()))
        raise CmbenchError(
            f"unknown method {name!r}; known methods: {known}"
            + (f" (not loaded, and may define it: {broken})" if broken else "")
        )
    return REGISTRY[name]


def create(name: str, hparams: dict[str, Any]) -> Method:
    """An instance of method ``name`` with ``hparams`` validated (defaults filled in)."""
    cls = get(name)
    return cls(**validate_hparams(cls, hparams))
