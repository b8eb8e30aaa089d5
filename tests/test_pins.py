"""Pinned downloads (cmbench.pins): the first run records the sha256 and hub revision of each
hub file it reads in OUT/cmbench.lock.json; a later run refuses another copy in one line."""

import json

import pytest
import torch
import yaml

from cmbench import CmbenchError, pins

from .test_clip_path import TINY_CLIP, hf_from_open_clip, write_folder


def put_in_hub_cache(cache, repo: str, revision: str, tensors: dict) -> None:
    """A file as huggingface_hub's cache holds it: models--o--r/snapshots/<rev>/, refs/main."""
    from safetensors.torch import save_file

    root = cache / ("models--" + repo.replace("/", "--"))
    snap = root / "snapshots" / revision
    snap.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(snap / "model.safetensors"))
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(revision)


def test_lock_records_then_refuses_another_copy(tmp_path, monkeypatch):
    from cmbench.artefacts import SuiteArtefacts
    from cmbench.store import Store
    from cmbench.results import load_results
    from cmbench.runner import run_suite
    from cmbench.suite import load_suite

    import huggingface_hub.constants

    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))  # read at import time
    data = tmp_path / "data"
    write_folder(data, "eurosat", 10, 6, 0)
    monkeypatch.setenv("CMBENCH_DATA_ROOT", str(data))
    suite = {
        "name": "tiny-clip",
        "setting": "merge_stream",
        "backbone": {"kind": "open_clip", "model": "tiny", "pretrained": None, "config": TINY_CLIP},
        "tasks": [{"name": "eurosat", "dataset": "eurosat"}],
        "heads": {"kind": "zero_shot"},
        "experts": {
            "source": "checkpoints",
            "checkpoints": {"eurosat": {"format": "hf_clip_vision", "path": "hf://tester/clip-eurosat"}},
        },
        "methods": [{"name": "weight_average"}],
        "evaluation": {"batch_size": 64, "max_test_per_task": 8},
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(suite))
    theta0 = SuiteArtefacts(load_suite(path), 0, Store(tmp_path / "c0")).theta0()
    g = torch.Generator().manual_seed(0)

    def expert():
        return hf_from_open_clip({k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in theta0.items()}, 2)

    put_in_hub_cache(hub, "tester/clip-eurosat", "a" * 40, expert())
    out = tmp_path / "out"
    assert run_suite(path, out=out, executor="local", log=lambda s: None)["failed"] == 0
    lock = json.loads((out / pins.LOCK_FILE).read_text())["pins"]
    entry = lock["hf://tester/clip-eurosat"]
    assert entry["revision"] == "a" * 40 and entry["kind"] == "expert checkpoint"
    assert entry["sha256"] == pins.digest(
        [hub / "models--tester--clip-eurosat" / "snapshots" / ("a" * 40) / "model.safetensors"]
    )

    # the hub repository moved on: the cache now holds another snapshot of the expert
    put_in_hub_cache(hub, "tester/clip-eurosat", "b" * 40, expert())
    suite["methods"].append({"name": "task_arithmetic"})  # a new job reads the expert again
    path.write_text(yaml.safe_dump(suite))
    summary = run_suite(path, out=out, executor="local", log=lambda s: None)
    assert summary["failed"] == 1
    recs = {r["label"]: r for r in load_results(out / "results")}
    err = recs["task_arithmetic"]["error"]
    assert "hf://tester/clip-eurosat" in err and "differs from the lock" in err and "\n" not in err
    assert recs["weight_average"]["status"] == "ok"  # nothing computed before is lost
    assert json.loads((out / pins.LOCK_FILE).read_text())["pins"] == lock  # the lock is not rewritten


def test_check_outside_a_session_hashes_nothing_and_merge_refuses_two_copies(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"x")
    pins.check("expert checkpoint", "hf://a/b", [f], "r1")  # no session: nothing to verify
    with pins.session({}) as found:
        pins.check("expert checkpoint", "hf://a/b", [f], "r1")
    assert found["hf://a/b"]["sha256"] == pins.digest([f])
    known: dict = {}
    pins.merge(tmp_path, known, found)
    assert pins.read(tmp_path) == known and "recorded" in known["hf://a/b"]
    other = {"hf://a/b": dict(found["hf://a/b"], sha256="0" * 64)}  # another node's cache
    with pytest.raises(CmbenchError, match="two workers read different copies"):
        pins.merge(tmp_path, known, other)
    (tmp_path / pins.LOCK_FILE).write_text("[]")
    with pytest.raises(CmbenchError, match="not a cmbench lock file"):
        pins.read(tmp_path)
