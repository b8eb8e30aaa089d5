"""Where artefacts live: a local directory (``Store``, file-locked) or any fsspec URL
(shared filesystem, ``s3://``, ``gs://``, …) so the workers of a cluster share θ0, heads and
experts. Atomic writes live here too: every file cmbench writes goes through them.

Keys are content-addressed (a hash of everything that produces the artefact), so two
workers that build the same artefact concurrently write the same bytes: each writes to a
unique temporary name and renames it into place, tensors first and the JSON sidecar last
(its presence marks completion), and a reader verifies the content hash. No lock is needed
on object stores; the cost of a race is a duplicated build, never a wrong file.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Callable

from filelock import FileLock
from safetensors.torch import load_file, save_file

from . import CmbenchError
from .measure import measured
from .tensors import StateDict, content_hash


def _umask() -> int:
    """The process's umask (read without changing it where Linux says it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates files readable by their owner only; a written file gets the mode any new
# file of the user gets (a store shared by a group or a cluster is readable by it)
FILE_MODE = 0o666 & ~_umask()


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# a sidecar's ``tensors`` when only the sidecar is stored (``Store.get_or_make(reload=...)``)
RELOADED = "reloaded from the source"


def reloaded(meta: dict, reload, where: str) -> StateDict | None:
    """The tensors of an artefact stored as its sidecar alone, re-read with ``reload`` and
    checked against the recorded content hash; None if the artefact stores its tensors."""
    if reload is None or meta.get("tensors") != RELOADED:
        return None
    tensors = reload()
    if content_hash(tensors) != meta["content_hash"]:
        raise CmbenchError(
            f"{where}: its source now gives other tensors than when it was recorded (the file "
            "changed); delete the sidecar to re-measure, or restore the file"
        )
    return tensors


def clear_leftovers(*paths: Path) -> None:
    """Remove the temporary files a killed writer of ``paths`` left (``atomic_write_bytes``
    and ``write_tensors`` write ``.NAME.*.tmp`` beside the target; at real scale, gigabytes).
    Call it under the targets' lock: no other writer of them is then in the middle of one."""
    for path in paths:
        for stale in path.parent.glob(f".{path.name}.*.tmp"):
            stale.unlink(missing_ok=True)


def write_tensors(path: Path, tensors: StateDict) -> None:
    """safetensors written under a temporary name and renamed into place (a reader never
    sees half a file)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp)
        os.chmod(tmp, FILE_MODE)  # after: safetensors writes the file anew
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


class Store:
    """A cache directory of ``<kind>/<key>.safetensors`` + ``<key>.json``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _paths(self, kind: str, key: str) -> tuple[Path, Path]:
        d = self.root / kind
        return d / f"{key}.safetensors", d / f"{key}.json"

    def get_or_make(
        self,
        kind: str,
        key: str,
        make: Callable[[], tuple[StateDict, dict]],
        reload: Callable[[], StateDict] | None = None,
    ) -> tuple[StateDict, dict]:
        """The artefact, built by ``make`` on first use. With ``reload`` (an artefact that is a
        conversion of a file the user keeps, e.g. an expert checkpoint) only the sidecar is
        stored and the tensors are re-read with ``reload`` and checked against its content
        hash: an L/14 TALL20 stream would otherwise keep its 24 GB of experts twice."""
        tensors_path, meta_path = self._paths(kind, key)
        if meta_path.exists():  # the sidecar is written last: its presence marks completion
            try:
                return self._load(tensors_path, meta_path, reload)
            except CorruptArtefact:
                pass  # rebuilt below, under the lock
        tensors_path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(tensors_path) + ".lock"):
            if meta_path.exists():
                try:  # another worker may have built (or rebuilt) it while we waited
                    return self._load(tensors_path, meta_path, reload)
                except CorruptArtefact as e:
                    _warn_rebuild(e)
                    for path in (tensors_path, meta_path):
                        path.unlink(missing_ok=True)
            clear_leftovers(tensors_path, meta_path)
            cost: dict = {}
            with measured(cost, "build"):
                tensors, meta = make()
            tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
            meta = dict(meta, key=key, content_hash=content_hash(tensors), build=cost["build"])
            if reload is not None:
                meta["tensors"] = RELOADED
                atomic_write_bytes(meta_path, json.dumps(meta, indent=1, sort_keys=True).encode())
                return tensors, meta
            write_tensors(tensors_path, tensors)
            atomic_write_bytes(meta_path, json.dumps(meta, indent=1, sort_keys=True).encode())
        return tensors, meta

    def has(self, kind: str, key: str) -> bool:
        return self._paths(kind, key)[1].exists()

    def read(self, kind: str, key: str) -> tuple[StateDict, dict] | None:
        """A finished artefact, checked against its content hash, without ever building or
        writing (a read-only store: shipped artefacts); None if absent, ``CorruptArtefact``
        if damaged."""
        tensors_path, meta_path = self._paths(kind, key)
        if not meta_path.exists():
            return None
        return self._load(tensors_path, meta_path)

    # -- mutable entries (a running job's latest state, replaced at every step) ----------------
    def put(self, kind: str, key: str, tensors: StateDict, meta: dict) -> None:
        """Replace the entry: tensors first, then the sidecar with their content hash (a
        reader that finds the two out of step, after a crash between them, gets nothing)."""
        tensors_path, meta_path = self._paths(kind, key)
        tensors_path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(tensors_path) + ".lock"):
            clear_leftovers(tensors_path, meta_path)
            write_tensors(tensors_path, tensors)
            atomic_write_bytes(meta_path, json.dumps(dict(meta, content_hash=content_hash(tensors))).encode())

    def get(self, kind: str, key: str) -> tuple[StateDict, dict] | None:
        """A mutable entry, or None if absent, unreadable or torn."""
        tensors_path, meta_path = self._paths(kind, key)
        try:
            meta = json.loads(meta_path.read_text())
            tensors = load_file(str(tensors_path))
        except Exception:  # noqa: BLE001 - absent or half-written: as if absent
            return None
        return (tensors, meta) if content_hash(tensors) == meta.get("content_hash") else None

    def delete(self, kind: str, key: str) -> None:
        paths = self._paths(kind, key)
        if not paths[0].parent.is_dir():
            return
        with FileLock(str(paths[0]) + ".lock"):
            clear_leftovers(*paths)
            for path in paths:
                path.unlink(missing_ok=True)

    def content_hash(self, kind: str, key: str) -> str | None:
        """The content hash its sidecar records, or None if the artefact is not here."""
        try:
            return json.loads(self._paths(kind, key)[1].read_text())["content_hash"]
        except (OSError, ValueError, KeyError):
            return None

    @staticmethod
    def _load(tensors_path: Path, meta_path: Path, reload=None) -> tuple[StateDict, dict]:
        meta = _sidecar(meta_path.read_bytes, meta_path)
        tensors = reloaded(meta, reload, str(meta_path))
        if tensors is not None:
            return tensors, meta
        return _checked(meta, lambda: load_file(str(tensors_path)), str(tensors_path)), meta


class CorruptArtefact(CmbenchError):
    """A cached artefact that cannot be read or does not hash to its sidecar: rebuilt."""

    def __init__(self, where, why: str):
        super().__init__(f"{where}: {why}")


def _sidecar(read: Callable[[], bytes], where) -> dict:
    """An artefact's sidecar, read and checked to name a content hash."""
    try:
        meta = json.loads(read())
        meta["content_hash"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CorruptArtefact(where, f"unreadable sidecar ({type(e).__name__}: {e})") from None
    return meta


def _checked(meta: dict, read: Callable[[], StateDict], where: str) -> StateDict:
    try:
        tensors = read()
    except Exception as e:  # noqa: BLE001 - any damage to the file reads as corrupt
        raise CorruptArtefact(where, f"unreadable cached artefact ({type(e).__name__}: {e})") from None
    if content_hash(tensors) != meta["content_hash"]:
        raise CorruptArtefact(where, "content hash does not match its sidecar")
    return tensors


def _warn_rebuild(e: CorruptArtefact) -> None:
    # stderr: a Ray worker's stderr reaches the driver's terminal
    print(f"warning: {e}; rebuilding it", file=sys.stderr, flush=True)


def open_store(where: str) -> Store:
    """``where``: a directory, ``file://DIR``, or an fsspec URL."""
    if "://" not in where:
        return Store(where)
    if where.startswith("file://"):
        return Store(where.removeprefix("file://"))
    return FsspecStore(where)


class FsspecStore(Store):
    def __init__(self, url: str):
        import fsspec

        self.url = url
        self.fs, self.base = fsspec.core.url_to_fs(url)
        # the URL, not a Path: Store's methods that use root as a directory are all overridden
        # here, and the rest of the harness reads it as str(store.root)
        self.root = url  # type: ignore[assignment]

    def _fs_paths(self, kind: str, key: str) -> tuple[str, str]:
        d = f"{self.base.rstrip('/')}/{kind}"
        return f"{d}/{key}.safetensors", f"{d}/{key}.json"

    def has(self, kind: str, key: str) -> bool:
        return self.fs.exists(self._fs_paths(kind, key)[1])

    def content_hash(self, kind: str, key: str) -> str | None:
        try:
            return json.loads(self.fs.cat_file(self._fs_paths(kind, key)[1]))["content_hash"]
        except (OSError, ValueError, KeyError):
            return None

    def put(self, kind: str, key: str, tensors: StateDict, meta: dict) -> None:
        from safetensors.torch import save

        tensors_path, meta_path = self._fs_paths(kind, key)
        self.fs.makedirs(tensors_path.rsplit("/", 1)[0], exist_ok=True)
        self._put(tensors_path, save(tensors))
        self._put(meta_path, json.dumps(dict(meta, content_hash=content_hash(tensors))).encode())

    def get(self, kind: str, key: str) -> tuple[StateDict, dict] | None:
        from safetensors.torch import load

        tensors_path, meta_path = self._fs_paths(kind, key)
        try:
            meta = json.loads(self.fs.cat_file(meta_path))
            tensors = load(self.fs.cat_file(tensors_path))
        except Exception:  # noqa: BLE001 - absent or half-written: as if absent
            return None
        return (tensors, meta) if content_hash(tensors) == meta.get("content_hash") else None

    def delete(self, kind: str, key: str) -> None:
        for path in self._fs_paths(kind, key):
            if self.fs.exists(path):
                self.fs.rm(path)

    def _put(self, path: str, payload: bytes) -> None:
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with self.fs.open(tmp, "wb") as f:
            f.write(payload)
        self.fs.mv(tmp, path)

    def get_or_make(
        self,
        kind: str,
        key: str,
        make: Callable[[], tuple[StateDict, dict]],
        reload: Callable[[], StateDict] | None = None,
    ) -> tuple[StateDict, dict]:
        from safetensors.torch import load, save

        tensors_path, meta_path = self._fs_paths(kind, key)
        if self.fs.exists(meta_path):
            # no lock on an object store: a corrupt entry is rebuilt by whoever finds it, and
            # concurrent rebuilders write the same bytes (the key is content-addressed)
            where = f"{self.url}/{kind}/{key}"
            try:
                meta = _sidecar(lambda: self.fs.cat_file(meta_path), where)
                tensors = reloaded(meta, reload, where)
                if tensors is not None:
                    return tensors, meta
                return _checked(meta, lambda: load(self.fs.cat_file(tensors_path)), where), meta
            except CorruptArtefact as e:
                _warn_rebuild(e)
        self.fs.makedirs(tensors_path.rsplit("/", 1)[0], exist_ok=True)
        tensors, meta = make()
        tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
        meta = dict(meta, key=key, content_hash=content_hash(tensors))
        if reload is not None:  # see artefacts.Store.get_or_make
            meta["tensors"] = RELOADED
            self._put(meta_path, json.dumps(meta, indent=1, sort_keys=True).encode())
            return tensors, meta
        self._put(tensors_path, save(tensors))
        self._put(meta_path, json.dumps(meta, indent=1, sort_keys=True).encode())
        return tensors, meta
