"""Cell texts every output shares (leaderboard, paper tables, site): one wording, one unit.

Texts are plain; each writer escapes them for its format (``report/escape.py``).
"""

from __future__ import annotations

import numpy as np

DATA_LABEL = {
    "none": "data-free",
    "current_task": "current task",
    "calibration": "calibration samples",
    "all_seen": "all seen tasks",
    "test_inputs": "unlabeled test inputs",
}
LONG_HPARAMS = 8  # beyond this many, a row lists what differs from its method's first row


def devices(recs: list[dict]) -> list[str]:
    """Where the jobs computed, as their keys say (device type, evaluation precision), with
    the device's name where the result records it (a device named once is not repeated
    unnamed for results written before names were recorded)."""
    out: dict[str, str | None] = {}
    for r in recs:
        inp = r.get("inputs") or {}
        name = (r.get("device") or {}).get("name") or (r.get("versions") or {}).get("cpu_capability")
        base = f"{inp.get('device', '?')} {inp.get('precision', '?')}"
        if name or base not in out:
            out[base] = out.get(base) or name
    return [f"{base} ({name})" if name else base for base, name in out.items()]


def data_text(rec: dict) -> str:
    access = rec.get("data_access", "none")
    return DATA_LABEL.get(access, access)


def mib(n: float) -> str:
    """Bytes in binary units, as the plots show them (KiB, MiB, GiB)."""
    if n != n:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def published_text(p: dict | None) -> str:
    if not p:
        return "–"
    return f"{p['acc']:.1f}" + (f" ± {p['std']:.1f}" if p.get("std") is not None else "")


def storage_text(rs: list[dict]) -> str:
    peak = mib(float(np.mean([r["storage_bytes"]["peak"] for r in rs])))
    kinds = sorted({k for r in rs for k in r["storage_bytes"].get("peak_by_kind", {})})
    if len(kinds) < 2:
        return peak + (f" ({kinds[0]})" if kinds else "")
    parts = [f"{k} {mib(float(np.mean([r['storage_bytes']['peak_by_kind'].get(k, 0) for r in rs])))}" for k in kinds]
    return f"{peak} ({', '.join(parts)})"


def hparam_text(label: str, rs: list[dict], first_of: dict) -> str:
    """A row's hyperparameters (and LoRA spec, and where the values come from); long lists
    say what differs from the first row of the same method (``first_of``: method -> that
    row's label and values, filled as rows are seen)."""
    hparams = rs[0]["hparams"]
    base_label, base = first_of.setdefault(rs[0]["method"], (label, hparams))
    if len(hparams) <= LONG_HPARAMS:
        hp = ", ".join(f"{k}={v}" for k, v in sorted(hparams.items()))
    elif base_label == label:  # e.g. ODE-M's 35 public-config values: in the result files
        hp = f"{len(hparams)} values, listed in the result files"
    else:
        diff = ", ".join(f"{k}={v}" for k, v in sorted(hparams.items()) if base.get(k) != v)
        hp = f"{diff or 'same values'}; others as {base_label}"
    lora = rs[0].get("lora")
    if lora:
        hp = f"LoRA rank {lora['rank']} on {'/'.join(lora['targets'])}" + (f"; {hp}" if hp else "")
    own = rs[0].get("training")
    if own:  # the method's own training recipe fields (e.g. a full-parameter lr)
        hp = "training " + ", ".join(f"{k}={v}" for k, v in sorted(own.items())) + (f"; {hp}" if hp else "")
    hp = hp or "–"
    src = rs[0].get("hparam_source") or {"kind": "suite"}
    return hp + (
        " (suite defaults)"
        if src["kind"] == "suite"
        else (" (tuned on validation data" + (", oracle: all tasks" if src.get("oracle") else "") + ")")
    )


def final_mean(row: list) -> float:
    return float(np.nanmean([np.nan if v is None else v for v in row]))
