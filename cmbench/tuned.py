"""Tuned hyperparameters on disk: where `cmbench tune` writes them and how `cmbench run
--use-tuned` reads them (below both, so neither imports the other)."""

from __future__ import annotations

import json
from pathlib import Path

from . import methods as methods_mod
from . import registry
from .suite import MethodSpec, Suite


def tuned_path(out: str | Path, suite: str, label: str) -> Path:
    return Path(out) / "tuned" / suite / f"{label}.json"


def tuned_specs(suite: Suite, out: str | Path) -> list[tuple[MethodSpec, dict]]:
    """``--use-tuned``: for each method with a tuned file, a ``<label>-tuned`` spec with the
    chosen values (and the file's summary to record in its results)."""
    extra = []
    for spec in suite.methods:
        path = tuned_path(out, suite.name, spec.display)
        if not path.exists():
            continue
        t = json.loads(path.read_text())
        hp = methods_mod.validate_hparams(registry.get(spec.name), {**spec.hparams, **t["best"]})
        source = {
            "kind": "tuned",
            "oracle": bool(t.get("oracle")),
            "scored_on": t["scored_on"],
            "file": str(path),
            "search": t["search"],
        }
        extra.append((spec.model_copy(update={"label": f"{spec.display}-tuned", "hparams": hp, "search": {}}), source))
    return extra
