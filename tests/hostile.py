"""A corpus of hostile result files, as a stranger's ``--results`` folder could hold them.

``build(root)`` writes, under ``root/results``, the committed quick-merge results (the good
rows every output must still show) and one file per case below. Each case is either
refused (``"skipped"``: the report names the file and leaves it out) or shown with its
text escaped (``"escaped"``: a valid, checksummed file whose free text is a payload). The
payloads set ``window.__pwned`` if a page ever runs them.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .conftest import REPO, write_record

SUITE = "quick-merge"
GOOD = REPO / "results" / SUITE
JS = "<img src=x onerror=window.__pwned=1>"
PAYLOADS = {
    "html": JS,
    "script": '"><script>window.__pwned=2</script>',
    "markdown": "a | b\n## injected heading\n| c",
    "latex": "\\input{/etc/passwd}$x^2$ & 100%",
    "formula": '=HYPERLINK("http://x","y")',
    "svg": "<svg onload=window.__pwned=3>",
}


def _base() -> dict:
    return json.loads((GOOD / "ties" / "seed0-order0.json").read_text())


def _valid(label: str, **fields) -> tuple[str, dict]:
    """A valid record of a new row ``label`` (the TIES job's numbers) with ``fields`` set."""
    rec = _base()
    rec.update(label=label, **fields)
    return f"{SUITE}/{label}/seed0-order0.json", rec


def _raw(rel: str, text: str | bytes) -> tuple[str, bytes]:
    return rel, text.encode() if isinstance(text, str) else text


def _edit(label: str, fn, keep_checksum: bool = False) -> tuple[str | None, dict, bool]:
    """The TIES job's record as row ``label`` (its folder: the case's name), edited by ``fn``;
    ``keep_checksum``: edited after its checksum was taken."""
    rec = _base()
    rec["label"] = label
    fn(rec)
    return None, rec, keep_checksum


def _nested(depth: int) -> str:
    return '{"status": "ok", "suite": "quick-merge", "hparams": ' + "[" * depth + "]" * depth + "}"


# case -> fn(label): (path or None for SUITE/<case>/seed0-order0.json, record, keep_checksum)
SKIPPED = {
    "label-html": lambda label: _edit(label, lambda r: r.update(label=JS)),
    "suite-traversal": lambda label: _edit(label, lambda r: r.update(suite="../../escaped")),
    "suite-absolute": lambda label: _edit(label, lambda r: r.update(suite="/tmp/cmbench-absolute-escape")),
    "suite-hash-markup": lambda label: _edit(label, lambda r: r.update(suite_hash="<b>x</b>")),
    "git-commit-markup": lambda label: _edit(label, lambda r: r.update(git_commit=PAYLOADS["script"])),
    "setting-markup": lambda label: _edit(label, lambda r: r.update(setting=JS)),
    "E-null": lambda label: _edit(label, lambda r: r.update(E=None)),
    "R-empty": lambda label: _edit(label, lambda r: r.update(R=[])),
    "R-one-row": lambda label: _edit(label, lambda r: r.update(R=r["R"][:1])),
    "R-string": lambda label: _edit(label, lambda r: r["R"][2].__setitem__(1, "0.5")),
    "R-out-of-range": lambda label: _edit(label, lambda r: r["R"][2].__setitem__(1, 57.8)),
    "hparams-string": lambda label: _edit(label, lambda r: r.update(hparams="lam=0.5")),
    "label-mathtext": lambda label: _edit(label, lambda r: r.update(label="$\\frac{1}{$")),
    "label-pipe": lambda label: _edit(label, lambda r: r.update(label="a|b")),
    "no-timings": lambda label: _edit(label, lambda r: r.pop("timings")),
    "published-not-a-number": lambda label: _edit(
        label, lambda r: r.update(published={"ACC": {"acc": "high", "source": "x"}})
    ),
    "seed-string": lambda label: _edit(label, lambda r: r.update(seed="0")),
    "missing-seed": lambda label: _edit(label, lambda r: r.pop("seed")),
    "lora-negative-rank": lambda label: _edit(label, lambda r: r.update(lora={"rank": -1})),
    "tasks-differ": lambda label: _edit(label, lambda r: r.update(tasks=[t + "x" for t in r["tasks"]])),
    "E-edited": lambda label: _edit(label, lambda r: r["E"].__setitem__(0, 0.999), keep_checksum=True),
    "R-edited": lambda label: _edit(label, lambda r: r["R"][-1].__setitem__(0, 0.999), keep_checksum=True),
    "misplaced-copy": lambda label: ("quick-merge/ties/seed0-order7.json", _base(), False),
}
RAW = {
    "infinity-in-R": lambda: _raw(
        "quick-merge/inf/seed0-order0.json",
        json.dumps(dict(_base(), label="inf")).replace('"R": [[', '"R": [[Infinity, ', 1),
    ),
    "deep-nesting": lambda: _raw("quick-merge/deep/seed0-order0.json", _nested(200_000)),
    "not-json": lambda: _raw("quick-merge/nj/seed0-order0.json", "{not json"),
    "not-utf8": lambda: _raw("quick-merge/nu/seed0-order0.json", b'{"label": "\xff\xfe"}'),
    "top-level-list": lambda: _raw("quick-merge/tl/seed0-order0.json", "[1, 2, 3]"),
    "too-large": lambda: _raw("quick-merge/big/seed0-order0.json", b" " * (5 * 2**20) + b"{}"),
}
ESCAPED = {
    f"hparam-{kind}": (lambda kind=kind: _valid(f"hostile-{kind}", hparams={"mode": PAYLOADS[kind]}))
    for kind in PAYLOADS
}
ESCAPED.update(
    {
        "paper-script": lambda: _valid("hostile-paper", paper=PAYLOADS["script"]),
        "device-name-svg": lambda: _valid("hostile-device", device={"type": "cpu", "name": PAYLOADS["svg"]}),
        "published-source-html": lambda: _valid(
            "hostile-source", published={"ACC": {"acc": 50.0, "std": None, "source": JS}}
        ),
        "failed-error-markup": lambda: (
            f"{SUITE}/hostile-failed/seed0-order0.json",
            {
                k: v
                for k, v in dict(
                    _base(),
                    label="hostile-failed",
                    status="failed",
                    error=PAYLOADS["markdown"] + " " + JS + " " + PAYLOADS["latex"],
                ).items()
                if k not in ("R", "E", "timings", "storage_bytes", "metrics")
            },
        ),
    }
)


def build(root: Path) -> Path:
    """The corpus under ``root/results``; returns that folder."""
    results = root / "results"
    shutil.copytree(GOOD, results / SUITE)
    for name, rel in skipped_files().items():
        if name not in SKIPPED:
            continue
        _, rec, keep = SKIPPED[name](name)
        path = results / rel
        if keep:  # edited after its checksum was taken
            write_record(path, _base() | {"label": rec["label"]})
            rec["checksum"] = json.loads(path.read_text())["checksum"]
            path.write_text(json.dumps(rec))
        else:
            write_record(path, rec)
    for make in RAW.values():
        rel, data = make()
        (results / rel).parent.mkdir(parents=True, exist_ok=True)
        (results / rel).write_bytes(data)
    for make in ESCAPED.values():
        rel, rec = make()
        write_record(results / rel, rec)
    # special files: a FIFO (reading it would wait for a writer forever), a link to /dev/zero
    (results / SUITE / "fifo").mkdir()
    os.mkfifo(results / SUITE / "fifo" / "seed0-order0.json")
    (results / SUITE / "zero").mkdir()
    os.symlink("/dev/zero", results / SUITE / "zero" / "seed0-order0.json")
    # one job's file copied under five other labels' folders (it would count 5 times)
    for i in range(5):
        dst = results / SUITE / f"copy{i}" / "seed0-order0.json"
        dst.parent.mkdir()
        shutil.copy(GOOD / "ties" / "seed0-order0.json", dst)
    # MLflow keeps a copy of each result under .cmbench/: never read as a result
    mlflow = root / ".cmbench" / "mlartifacts" / "1" / "abc" / "artifacts"
    mlflow.mkdir(parents=True)
    shutil.copy(GOOD / "ties" / "seed0-order0.json", mlflow / "result.json")
    return results


def skipped_files() -> dict[str, str]:
    """case -> the path (under the results folder) of the file the report must refuse."""
    out = {}
    for name, make in SKIPPED.items():
        rel = make(name)[0]
        out[name] = rel or f"{SUITE}/{name}/seed0-order0.json"
    out.update({name: make()[0] for name, make in RAW.items()})
    out["fifo"] = f"{SUITE}/fifo/seed0-order0.json"
    out["symlink-to-dev-zero"] = f"{SUITE}/zero/seed0-order0.json"
    out.update({f"duplicated-under-five-labels-{i}": f"{SUITE}/copy{i}/seed0-order0.json" for i in range(5)})
    return out
