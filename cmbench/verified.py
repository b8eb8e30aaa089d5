"""The record ``cmbench verify`` keeps of what it recomputed: ``RESULTS/verified.jsonl``.

One line per checked result file: its path under the results folder, the SHA-256 of its
bytes when it was checked, whether the recomputation agreed, and where (torch, CPU kernels,
commit). The report counts a job as verified when its file still has the bytes of a line that
agreed. Like the checksums, this record is a file anyone can edit: it tells a reader that
someone ran ``cmbench verify`` on these bytes, and only rerunning it proves the numbers.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path
from typing import Callable

from pydantic import BaseModel, Field, StrictBool, ValidationError

from .fingerprint import git_commit
from .record import BadResult, read_bounded

NAME = "verified.jsonl"


class Entry(BaseModel):
    file: str = Field(max_length=400)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    ok: StrictBool
    at: str = Field(max_length=40)
    detail: str = Field("", max_length=2000)
    torch: str = Field("", max_length=60)
    cpu_capability: str = Field("", max_length=40)
    commit: str = Field("", max_length=40)


def file_hash(path: Path) -> str:
    return hashlib.sha256(read_bounded(path)).hexdigest()


class VerifyLog:
    """Appends ``verify``'s outcome for each file it checked to ``RESULTS/verified.jsonl``."""

    def __init__(self, results_dir: Path):
        self.path = Path(results_dir) / NAME
        self._where: dict | None = None

    def _environment(self) -> dict:
        if self._where is None:
            import torch

            self._where = {
                "torch": torch.__version__,
                "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "commit": (git_commit() or "")[:40],
            }
        return self._where

    def add(self, path: Path, rel: str, ok: bool, detail: str) -> None:
        try:
            digest = file_hash(path)
        except BadResult:
            return
        entry = Entry(
            file=rel,
            sha256=digest,
            ok=ok,
            at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            detail=detail[:2000],
            **self._environment(),
        )
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry.model_dump(), sort_keys=True) + "\n")


def verified_files(results_dir: Path, warn: Callable[[str], None] | None = None) -> dict[str, str]:
    """file (relative to the results folder) -> the SHA-256 of its bytes the last time
    ``verify`` found it agreeing (a later disagreement removes it)."""
    path = Path(results_dir) / NAME
    if not path.exists():
        return {}
    try:
        text = read_bounded(path, 64 * 2**20).decode("utf-8", "replace")
    except BadResult as err:
        if warn:
            warn(f"{path}: {err}; no job counts as verified")
        return {}
    out: dict[str, str] = {}
    for i, line in enumerate(text.splitlines(), start=1):
        try:
            e = Entry.model_validate(json.loads(line))
        except (ValueError, ValidationError, RecursionError):
            if warn:
                warn(f"{path}: line {i} is not a verification entry; ignored")
            continue
        if e.ok:
            out[e.file] = e.sha256
        else:
            out.pop(e.file, None)
    return out
