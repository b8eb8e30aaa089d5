"""Reading result files: the one place the report, verify and the CLI get them from."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from . import CmbenchError, metrics


def r_checksum(R: list) -> str:
    """A checksum of an accuracy matrix as written (undefined cells null): a result whose R
    was edited by hand no longer matches the one recorded when it was computed."""
    cells = [[None if v is None or v != v else v for v in row] for row in R]
    return hashlib.sha256(json.dumps(cells).encode()).hexdigest()[:16]


def r_tampered(rec: dict) -> bool:
    """Whether a result's R differs from its recorded checksum (older files have none)."""
    return "R_checksum" in rec and r_checksum(rec.get("R") or []) != rec["R_checksum"]


def load_results(results_dir: str | Path, include_rehearsal: bool = False, check_r: bool = True) -> list[dict]:
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
            if check_r and rec["status"] == "ok" and r_tampered(rec):
                raise CmbenchError(
                    f"{p}: its R does not match the checksum recorded when it was computed (edited by "
                    "hand?); rerun its suite to recompute it, or restore the file"
                )
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


def job_of(rec: dict) -> tuple[int, int]:
    """Which job of its row a result is: (seed, order index). Rows are compared job by job."""
    return (rec["seed"], rec["order_index"])


def derived_metrics(rec: dict) -> dict[str, float]:
    acc_all = rec.get("ACC_all_steps") if rec.get("heads") == "class_incremental" else None
    return metrics.all_metrics(rec["R"], rec.get("E"), acc_all)
