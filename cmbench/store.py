"""Where artefacts live: a local directory (``artefacts.Store``, file-locked) or any fsspec
URL (shared filesystem, ``s3://``, ``gs://``, …) so the workers of a cluster share θ0,
heads and experts.

Keys are content-addressed (a hash of everything that produces the artefact), so two
workers that build the same artefact concurrently write the same bytes: each writes to a
unique temporary name and renames it into place, tensors first and the JSON sidecar last
(its presence marks completion), and a reader verifies the content hash. No lock is needed
on object stores; the cost of a race is a duplicated build, never a wrong file.
"""

from __future__ import annotations

import json
import uuid
from typing import Callable

from . import CmbenchError
from .artefacts import RELOADED, Store, reloaded
from .tensors import StateDict, content_hash


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
        self.root = url

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

    def get_or_make(self, kind: str, key: str, make: Callable[[], tuple[StateDict, dict]],
                    reload: Callable[[], StateDict] | None = None) -> tuple[StateDict, dict]:
        from safetensors.torch import load, save

        tensors_path, meta_path = self._fs_paths(kind, key)
        if self.fs.exists(meta_path):
            meta = json.loads(self.fs.cat_file(meta_path))
            tensors = reloaded(meta, reload, f"{self.url}/{kind}/{key}")
            if tensors is not None:
                return tensors, meta
            try:
                tensors = load(self.fs.cat_file(tensors_path))
            except Exception as e:  # noqa: BLE001
                raise CmbenchError(f"{self.url}/{kind}/{key}: unreadable cached artefact ({e}); delete it") from None
            if content_hash(tensors) != meta["content_hash"]:
                raise CmbenchError(f"{self.url}/{kind}/{key}: content hash does not match its sidecar; delete both")
            return tensors, meta
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
