"""A corrupt cached artefact is rebuilt once, automatically, with a warning (#26): a damaged
tensors file, a truncated sidecar, a content that does not hash to its sidecar; safely when
several processes find it at once; in the local and the fsspec store; and a run whose θ0 was
damaged finishes its jobs instead of recording them as failed."""

import multiprocessing as mp
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from cmbench.runner import Paths, run_suite
from cmbench.store import Store, open_store

from .conftest import NANO


def _make(counter: Path):
    def make():
        with open(counter, "a") as f:
            f.write("built\n")
        time.sleep(0.3)  # long enough for concurrent finders to meet at the lock
        return {"w": torch.arange(6.0).reshape(2, 3)}, {"what": "test"}

    return make


def _builds(counter: Path) -> int:
    return len(counter.read_text().splitlines()) if counter.exists() else 0


DAMAGE = {
    "garbage tensors": lambda t, m: t.write_bytes(b"not safetensors"),
    "truncated tensors": lambda t, m: t.write_bytes(t.read_bytes()[:20]),
    "other content": lambda t, m: save_file({"w": torch.zeros(2, 3)}, str(t)),
    "truncated sidecar": lambda t, m: m.write_text(m.read_text()[:15]),
    "tensors missing": lambda t, m: t.unlink(),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_artefact_is_rebuilt_once_with_a_warning(tmp_path, capsys, damage):
    store, counter = Store(tmp_path / "cache"), tmp_path / "builds"
    want, _ = store.get_or_make("theta0", "k", _make(counter))
    t, m = store._paths("theta0", "k")
    DAMAGE[damage](t, m)
    got, meta = store.get_or_make("theta0", "k", _make(counter))
    assert torch.equal(got["w"], want["w"]) and _builds(counter) == 2
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "rebuilding it" in err and "/theta0/k." in err
    store.get_or_make("theta0", "k", _make(counter))  # healed: read, not rebuilt
    assert _builds(counter) == 2


def _find(root: str, counter: str, q) -> None:
    tensors, _ = Store(root).get_or_make("theta0", "k", _make(Path(counter)))
    q.put(float(tensors["w"].sum()))


def test_processes_that_find_one_corrupt_artefact_rebuild_it_once(tmp_path):
    root, counter = tmp_path / "cache", tmp_path / "builds"
    Store(root).get_or_make("theta0", "k", _make(counter))
    Store(root)._paths("theta0", "k")[0].write_bytes(b"damaged")
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_find, args=(str(root), str(counter), q)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [q.get(timeout=5) for _ in procs] == [15.0] * 3
    assert _builds(counter) == 2  # the first build and one rebuild


def test_an_fsspec_store_rebuilds_a_corrupt_entry(tmp_path, capsys):
    import fsspec

    store, counter = open_store("memory://cmbench-heal/store"), tmp_path / "builds"
    store.get_or_make("theta0", "k", _make(counter))
    tensors_path, _ = store._fs_paths("theta0", "k")
    fsspec.filesystem("memory").pipe_file(tensors_path, b"damaged")
    got, _ = store.get_or_make("theta0", "k", _make(counter))
    assert float(got["w"].sum()) == 15.0 and _builds(counter) == 2
    assert "rebuilding it" in capsys.readouterr().err


def test_a_run_whose_theta0_was_damaged_rebuilds_it_and_finishes(nano_copy, capsys):
    cache = Paths(nano_copy).cache
    for f in sorted((cache / "theta0").glob("*.safetensors")):
        f.write_bytes(f.read_bytes()[:100])
    shutil.rmtree(Paths(nano_copy).results / "nano-merge" / "weight_average")
    summary = run_suite(NANO, methods=["weight_average"], out=nano_copy, executor="local", log=lambda s: None)
    assert summary["ran"] == 4 and summary["failed"] == 0
    assert "rebuilding it" in capsys.readouterr().err


def test_written_files_get_the_users_default_mode(tmp_path):
    """Cache and result files are not owner-only (mkstemp's 0600): a store shared by a group
    or a cluster must be readable by it. The mode is what umask gives any new file."""
    import os

    from cmbench.store import FILE_MODE, atomic_write_bytes, write_tensors

    mask = os.umask(0)
    os.umask(mask)
    assert FILE_MODE == 0o666 & ~mask
    atomic_write_bytes(tmp_path / "r.json", b"{}")
    write_tensors(tmp_path / "t.safetensors", {"w": torch.ones(2)})
    Store(tmp_path / "cache").get_or_make("theta0", "k", _make(tmp_path / "builds"))
    for f in [tmp_path / "r.json", tmp_path / "t.safetensors", *(tmp_path / "cache" / "theta0").glob("k.*")]:
        assert f.stat().st_mode & 0o777 == FILE_MODE, f
