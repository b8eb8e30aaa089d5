"""Reading result files: the one place the report, verify and the CLI get them from."""

from __future__ import annotations

import json
from pathlib import Path

from . import CmbenchError, metrics


def load_results(results_dir: str | Path, include_rehearsal: bool = False) -> list[dict]:
    """Every result file under ``results_dir``; metrics are derived afresh from R (they are
    not part of a key, so a fix to ``metrics.py`` reaches every committed result). A
    rehearsal's results (random weights) are refused unless ``include_rehearsal``."""
    out = []
    for p in sorted(Path(results_dir).rglob("*.json")):
        try:
            rec = json.loads(p.read_text())
        except ValueError:
            raise CmbenchError(f"{p}: not valid JSON; delete it and rerun its suite") from None
        if isinstance(rec, dict) and "suite" in rec and "status" in rec:
            rec["_path"] = str(p)
            if rec["status"] == "ok":
                rec["metrics"] = derived_metrics(rec)
            if rec.get("rehearsal") and not include_rehearsal:
                raise CmbenchError(
                    f"{p}: a rehearsal's result (random weights, generated data), not a benchmark "
                    "number; report it with --include-rehearsal (tables are then labelled)"
                )
            out.append(rec)
    return out


def derived_metrics(rec: dict) -> dict[str, float]:
    acc_all = rec.get("ACC_all_steps") if rec.get("heads") == "class_incremental" else None
    return metrics.all_metrics(rec["R"], rec.get("E"), acc_all)
