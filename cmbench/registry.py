"""Where methods come from: the registry's discovery of ``baselines/`` and installed plugins.

Kept apart from :mod:`cmbench.methods` (the interface every method imports): a method's key
hashes the code it imports, and how method files are found changes no number a method
computes.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from . import CmbenchError
from .config import current
from .methods import REGISTRY, Method, validate_hparams


def baseline_dirs() -> list[Path]:
    """Where method files are discovered: the configuration's folders (its default:
    $CMBENCH_BASELINES), ./baselines, the repo's own."""
    dirs = list(current().baselines)
    dirs += [Path.cwd() / "baselines", Path(__file__).resolve().parents[1] / "baselines"]
    out: list[Path] = []
    for d in dirs:
        d = d.resolve()
        if d.is_dir() and d not in out:
            out.append(d)
    return out


# a method file's import is bounded (a `time.sleep` or a download at import would hang
# every command, `cmbench list methods` included)
IMPORT_LIMIT_S = 60.0


class Registry:
    """The methods a process can run, by name: the classes ``@register`` added (the repo's, and
    the plugins' once ``load`` has imported their files).

    Only two sources are ever executed: plugins are code, so they come from the folders of
    ``baseline_dirs`` or an installed package (the ``cmbench.methods`` entry points), never
    from a suite or a result file. A file that fails to import is reported once (``broken``:
    path -> why) and skipped: the methods of the other files stay usable, and a method it
    would have defined is "unknown", with it named."""

    def __init__(self) -> None:
        self.loaded: set[Path] = set()
        self.broken: dict[Path, str] = {}

    def load(self, dirs: list[Path] | None = None) -> dict[str, type[Method]]:
        """Import every ``*.py`` of ``dirs`` (default ``baseline_dirs()``) not imported yet, and
        the entry points; every method known now, by name."""
        if "cmbench_baselines" not in sys.modules:  # a namespace so `import cmbench_baselines.x` works
            pkg = types.ModuleType("cmbench_baselines")
            pkg.__path__ = []
            sys.modules["cmbench_baselines"] = pkg
        dirs = baseline_dirs() if dirs is None else dirs
        # a method file may import another one's helpers (`from cmbench_baselines.x import f`)
        # whichever of the two is read first: the namespace finds files in the same folders
        search = sys.modules["cmbench_baselines"].__path__
        search.extend(str(d) for d in dirs if str(d) not in search)
        for d in dirs:
            for path in sorted(Path(d).glob("*.py")):
                path = path.resolve()
                if path.name.startswith("_") or path in self.loaded or path in self.broken:
                    continue
                already = sys.modules.get(f"cmbench_baselines.{path.stem}")
                if already is not None and Path(getattr(already, "__file__", "") or "").resolve() == path:
                    self.loaded.add(path)  # imported by another method file
                    continue
                why = _import_file(path, f"cmbench_baselines.{path.stem}")
                if why is None:
                    self.loaded.add(path)
                else:
                    self._report(path, "method file", why)
        for ep in entry_points(group="cmbench.methods"):
            try:
                ep.load()
            except Exception as e:  # noqa: BLE001 - an installed plugin's failure names it
                self._report(Path(f"entry point {ep.name} ({ep.value})"), "method", f"{type(e).__name__}: {e}")
        return dict(REGISTRY)

    def _report(self, where: Path, what: str, why: str) -> None:
        if where not in self.broken:
            self.broken[where] = why
            print(f"cmbench: warning: {what} {where} not loaded: {why}", file=sys.stderr)

    def get(self, name: str) -> type[Method]:
        if name not in REGISTRY:
            self.load()
        if name not in REGISTRY:
            known = ", ".join(sorted(REGISTRY)) or "(none found)"
            broken = "; ".join(f"{p}: {why}" for p, why in sorted(self.broken.items()))
            raise CmbenchError(
                f"unknown method {name!r}; known methods: {known}"
                + (f" (not loaded, and may define it: {broken})" if broken else "")
            )
        return REGISTRY[name]

    def create(self, name: str, hparams: dict[str, Any]) -> Method:
        """An instance of method ``name`` with ``hparams`` validated (defaults filled in)."""
        cls = self.get(name)
        return cls(**validate_hparams(cls, hparams))


def _import_file(path: Path, mod_name: str) -> str | None:
    """Import one method file: None, or why it failed (an exception, ``sys.exit``, a hang past
    ``IMPORT_LIMIT_S``) in one line."""
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
        return None
    sys.modules.pop(mod_name, None)
    return " ".join(why.split())[:300]


# this process's methods: a method file is imported once per process
METHODS = Registry()
discover = METHODS.load
get = METHODS.get
create = METHODS.create
