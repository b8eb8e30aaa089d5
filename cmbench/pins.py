"""Pinned downloads: the sha256 and hub revision of every file cmbench reads from a hub.

The first run of a suite into an output directory records, for each hub file it reads (an
expert checkpoint ``hf://…``, the backbone's weight file, a dataset's arrow files), its
sha256 and the hub revision (the snapshot the Hugging Face cache holds) in
``OUT/cmbench.lock.json``; later runs into that directory verify every such file against
it and refuse a mismatch with one line. A hub repository that was updated, a cache that
holds another snapshot, or a corrupted download is caught before a number is computed.

The driver owns the lock file, and it lives in the output directory because that is the one
place a run may write and the place its results live (copy it beside a suite to pin another
output directory). Jobs run in other processes and on other nodes, each with its own cache:
the driver hands the lock's entries to every task it submits (prepare tasks and jobs), a
task verifies what it reads against them inside :func:`session` and returns what it read
for the first time, and only the driver merges those entries and writes the file. No
worker writes a shared file, so it works without a shared file system.
"""

from __future__ import annotations

import datetime as _dt
import contextvars
import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path

from . import CmbenchError

LOCK_FILE = "cmbench.lock.json"

# {"known": {source: entry}, "found": {source: entry}} while a task runs inside `session`
_SESSION: contextvars.ContextVar[dict | None] = contextvars.ContextVar("cmbench_pins", default=None)


@contextmanager
def session(known: dict[str, dict] | None):
    """Verify hub files read inside against ``known`` (the lock's entries) and collect the
    entries of files read for the first time (the yielded dict). ``None``: no lock (tests,
    rehearsals, library use): nothing is hashed."""
    now = None if known is None else {"known": known, "found": {}}
    token = _SESSION.set(now)
    try:
        yield {} if now is None else now["found"]
    finally:
        _SESSION.reset(token)


def hub_revision(path: Path) -> str | None:
    """The commit of the Hugging Face cache snapshot ``path`` lies in (``…/snapshots/<commit>/…``)."""
    parts = Path(path).parts
    if "snapshots" in parts:
        i = len(parts) - 1 - parts[::-1].index("snapshots")
        return parts[i + 1] if i + 1 < len(parts) else None
    return None


def digest(files: list[Path]) -> str:
    """sha256 of one file, or of the names and sha256s of several (a dataset's arrow files)."""

    def one(p: Path) -> str:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        return h.hexdigest()

    if len(files) == 1:
        return one(files[0])
    h = hashlib.sha256()
    for p in sorted(files, key=lambda p: Path(p).name):
        h.update(f"{Path(p).name}\0{one(p)}\n".encode())
    return h.hexdigest()


def check(kind: str, source: str, files: list[Path], revision: str | None = None) -> None:
    """Verify ``files`` (what ``source`` resolved to) against the lock, or record them."""
    now = _SESSION.get()
    if now is None or not files:
        return
    sha = digest([Path(f) for f in files])
    pinned = now["known"].get(source)
    if pinned is not None and pinned["sha256"] != sha:
        raise CmbenchError(
            f"{source}: sha256 {sha[:16]}… (revision {revision}) differs from the lock's {pinned['sha256'][:16]}… "
            f"(revision {pinned.get('revision')}, recorded {pinned.get('recorded')}): not the copy the first run "
            f"read; restore it, or delete its entry from {LOCK_FILE} in the output directory to accept this one"
        )
    if pinned is None:
        now["found"][source] = {
            "kind": kind,
            "sha256": sha,
            "revision": revision,
            "files": sorted(Path(f).name for f in files),
        }


def read(out: Path) -> dict[str, dict]:
    path = Path(out) / LOCK_FILE
    if not path.exists():
        return {}
    try:
        entries = json.loads(path.read_text())["pins"]
        assert isinstance(entries, dict)
        return entries
    except (ValueError, KeyError, TypeError, AssertionError):
        raise CmbenchError(
            f'{path}: not a cmbench lock file (expected {{"pins": {{source: entry}}}}); '
            "fix or delete it (it is rewritten from the next downloads)"
        ) from None


def merge(out: Path, known: dict[str, dict], found: dict[str, dict]) -> None:
    """Add the entries tasks found to the lock (the driver only). Two tasks that read the
    same source in different copies (two nodes' caches) are refused like a mismatch."""
    new: dict[str, dict] = {}
    for source, entry in found.items():
        seen = known.get(source) or new.get(source)
        if seen is not None:
            if seen["sha256"] != entry["sha256"]:
                raise CmbenchError(
                    f"{source}: two workers read different copies (sha256 {seen['sha256'][:16]}… and "
                    f"{entry['sha256'][:16]}…): their Hugging Face caches differ; clear the stale one"
                )
            continue
        new[source] = {**entry, "recorded": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    if not new:
        return
    known.update(new)
    path = Path(out) / LOCK_FILE
    tmp = path.with_name(f"{LOCK_FILE}.{os.getpid()}.tmp")
    tmp.write_text(
        json.dumps(
            {
                "about": "sha256 and hub revision of every hub file this output directory's runs "
                "read (cmbench/pins.py); verified on every later run",
                "pins": dict(sorted(known.items())),
            },
            indent=1,
        )
        + "\n"
    )
    os.replace(tmp, path)
