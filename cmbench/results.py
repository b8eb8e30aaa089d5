"""Reading result files: the one place the report, verify, tracking and the CLI get them from.

Every file is validated through :mod:`cmbench.record`. What the caller does with a bad one
is its choice (``on_bad``): the report skips it with a warning and renders the rest;
``verify`` and ``log`` refuse it (the default: :class:`CmbenchError` naming the file).
Beyond each file on its own, a directory is checked as a whole: a file sits where the runner
writes that job (``SUITE/LABEL/seedS-orderO.json``), no job is held by two files, and a
suite's files agree on its setting and its set of tasks.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Callable

from . import CmbenchError, metrics
from .record import BadResult, expected_place, integrity, printable, read_record, result_files
from .verified import file_hash, verified_files


def _raise(path: Path, why: str) -> None:
    raise CmbenchError(f"{printable(str(path))}: {why}")


def load_results(
    results_dir: str | Path,
    include_rehearsal: bool = False,
    check_r: bool = True,
    on_bad: Callable[[Path, str], None] = _raise,
) -> list[dict]:
    """Every valid result file under ``results_dir`` as a dict (with ``_path`` and its
    ``integrity``); metrics are derived afresh from R (they are not part of a key, so a fix to
    ``metrics.py`` reaches every committed result). ``check_r``: a file whose checksum does not
    match is bad (``cmbench verify`` reads them to compare). A rehearsal's results (random
    weights) are bad unless ``include_rehearsal``."""
    root = Path(results_dir)
    checked = verified_files(root, warn=lambda line: on_bad(root, line))
    good: list[dict] = []
    for p in result_files(root):
        try:
            rec = read_record(p)
        except BadResult as e:
            on_bad(p, str(e))
            continue
        if tuple(p.parts[-3:]) != expected_place(rec):
            want = "/".join(expected_place(rec))
            on_bad(p, f"holds the result of {want}, so it belongs at …/{want}; move it there or delete it")
            continue
        rec["integrity"] = integrity(rec)
        if check_r and rec["integrity"] == "edited":
            on_bad(
                p,
                "its content does not match the checksum recorded when it was computed (edited by hand?); "
                "rerun its suite to recompute it, or restore the file",
            )
            continue
        if rec.get("rehearsal") and not include_rehearsal:
            on_bad(
                p,
                "a rehearsal's result (random weights, generated data), not a benchmark number; "
                "report it with --include-rehearsal (tables are then labelled)",
            )
            continue
        rec["_path"] = str(p)
        # recomputed by `cmbench verify` and found to agree, with the bytes it has now
        rec["verified"] = checked.get("/".join(p.parts[-3:])) == file_hash(p) if checked else False
        if rec["status"] == "ok":
            rec["metrics"] = derived_metrics(rec)
        good.append(rec)
    return _consistent(good, on_bad)


def _consistent(recs: list[dict], on_bad: Callable[[Path, str], None]) -> list[dict]:
    """Drop what cannot be right together: two files for one job (both: neither is trusted
    over the other), and a file whose setting or task set differs from most of its suite's."""
    holders: dict[tuple, list[dict]] = defaultdict(list)
    for r in recs:
        holders[(r["suite"], r["label"], r["seed"], r["order_index"])].append(r)
    dup = {id(r) for rs in holders.values() if len(rs) > 1 for r in rs}
    for (suite, label, seed, order), rs in holders.items():
        if len(rs) > 1:
            others = ", ".join(printable(r["_path"]) for r in rs[1:])
            on_bad(
                Path(rs[0]["_path"]),
                f"the same job ({suite} {label} seed {seed} order {order}) as {others}; both skipped: keep one",
            )
    recs = [r for r in recs if id(r) not in dup]
    by_suite: dict[str, list[dict]] = defaultdict(list)
    for r in recs:
        by_suite[r["suite"]].append(r)
    out = []
    for suite, rs in by_suite.items():
        shape = Counter((r["setting"], frozenset(r["tasks"])) for r in rs)
        # the most common shape; ties go to the one of the first file in path order
        best = max(shape, key=lambda s: (shape[s], -min(i for i, r in enumerate(rs) if _shape(r) == s)))
        for r in rs:
            if _shape(r) == best:
                out.append(r)
            else:
                on_bad(
                    Path(r["_path"]),
                    f"its setting and tasks ({r['setting']}: {', '.join(sorted(r['tasks']))}) differ from "
                    f"{shape[best]} other result(s) of suite {suite} "
                    f"({best[0]}: {', '.join(sorted(best[1]))}); skipped",
                )
    return sorted(out, key=lambda r: Path(r["_path"]))  # the order of result_files


def _shape(r: dict) -> tuple:
    return (r["setting"], frozenset(r["tasks"]))


def job_of(rec: dict) -> tuple[int, int]:
    """Which job of its row a result is: (seed, order index). Rows are compared job by job."""
    return (rec["seed"], rec["order_index"])


def derived_metrics(rec: dict) -> dict[str, float]:
    acc_all = rec.get("ACC_all_steps") if rec.get("heads") == "class_incremental" else None
    return metrics.all_metrics(rec["R"], rec.get("E"), acc_all)


# the metric columns of a frame, in this order; any other metric a record holds follows, by name
METRIC_ORDER = ("ACC", "AIA", "BWT", "FGT", "FWT", "NACC", "ACC_all", "AAA")
_FIRST = ("suite", "setting", "method", "label", "seed", "order_index", "status")
_LAST = (
    "key",
    "suite_hash",
    "git_commit",
    "finished_at",
    "verified",
    "integrity",
    "rehearsal",
    "error",
    "path",
)


def frame(
    results_dir: str | Path,
    include_rehearsal: bool = False,
    on_bad: Callable[[Path, str], None] = _raise,
):
    """The results under ``results_dir`` as one tidy :class:`pandas.DataFrame`: one row per
    job (finished and failed), read through :func:`load_results` (so a bad file is refused,
    or passed to ``on_bad``, and a rehearsal's results are left out unless
    ``include_rehearsal``). Columns (:func:`frame_of`):

    * ``suite``, ``setting``, ``method``, ``label``, ``seed``, ``order_index``: which job;
    * ``status``: ``ok`` or ``failed``;
    * one column per metric any record holds (``ACC``, ``AIA``, ``BWT``, ``FGT``, ``FWT``,
      then ``NACC`` for merge streams, ``ACC_all`` and ``AAA`` for class-incremental heads,
      then any other by name), derived from R when read, as fractions (0.38 is 38 %); NaN
      where a job has no such metric (a failed job, a metric of another kind of suite, FWT
      where it is undefined);
    * ``key``: the hash of the job's inputs (its suite's settings, method, hyperparameters,
      seed, order, the artefacts it consumed; :mod:`cmbench.keys`): a result is current
      while it matches the key of the inputs now; ``suite_hash``: the hash of the suite's
      shared settings (``Suite.hash``); ``git_commit``: the harness's commit;
      ``finished_at``: when the job finished (ISO 8601 text);
    * ``device_<field>`` (``device_type``, ``device_name``, ...): what the job ran on, one
      column per field any record gives (empty where a record has no device);
    * ``verified``: ``cmbench verify`` recomputed the file and found the same numbers;
      ``integrity``: ``ok`` (its checksum matches) or ``unchecked`` (written without one);
      ``rehearsal``: a rehearsal's result (random weights, not a benchmark number);
      ``error``: why a failed job failed (empty otherwise); ``path``: the result file.

    Rows are sorted by suite, label, seed and order index. pandas is imported here only."""
    return frame_of(load_results(results_dir, include_rehearsal, on_bad=on_bad))


def frame_of(recs: list[dict]):
    """:func:`frame` of records already read (:func:`load_results`'s dicts)."""
    import pandas as pd

    found = {m for r in recs for m in (r.get("metrics") or {}) if r["status"] == "ok"}
    metric_cols = [m for m in METRIC_ORDER if m in found] + sorted(found - set(METRIC_ORDER))
    device_cols = sorted({k for r in recs for k in (r.get("device") or {})})
    rows = []
    for r in recs:
        ms = (r.get("metrics") or {}) if r["status"] == "ok" else {}
        device = r.get("device") or {}
        row = {c: r.get(c) for c in _FIRST}
        row.update({m: _number(ms.get(m)) for m in metric_cols})
        row.update({f"device_{k}": _scalar(device.get(k)) for k in device_cols})
        row.update({c: r.get(c) for c in ("key", "suite_hash", "git_commit", "finished_at")})
        row["verified"] = bool(r.get("verified", False))
        row["integrity"] = r.get("integrity")
        row["rehearsal"] = bool(r.get("rehearsal"))
        row["error"] = r.get("error")
        row["path"] = r.get("_path")
        rows.append(row)
    columns = [*_FIRST, *metric_cols, *(f"device_{k}" for k in device_cols), *_LAST]
    rows.sort(key=lambda row: (row["suite"], row["label"], row["seed"], row["order_index"]))
    df = pd.DataFrame(rows, columns=columns)
    for c in ("seed", "order_index"):
        df[c] = df[c].astype("int64")
    for c in ("verified", "rehearsal"):
        df[c] = df[c].astype("bool")
    for m in metric_cols:
        df[m] = df[m].astype("float64")
    return df


def _number(v) -> float:
    return float("nan") if v is None else float(v)


def _scalar(v):
    """A device field for one cell: text and numbers as they are, anything else as JSON."""
    import json

    return v if v is None or isinstance(v, (str, int, float, bool)) else json.dumps(v, sort_keys=True)
