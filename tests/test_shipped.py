"""Artefacts shipped with a suite: read (checked) instead of built, the jobs unchanged."""

import json
import subprocess
import sys

import pytest
import yaml

from cmbench import CmbenchError

from .conftest import NANO, REPO


def _shipped_suite(tmp_path, nano_run):
    """nano-merge with its artefacts shipped beside a copy of the suite file."""
    suites = tmp_path / "suites"
    suites.mkdir()
    path = suites / "nano-merge.yaml"
    data = yaml.safe_load(NANO.read_text())
    data["shipped"] = "../artefacts/nano-merge"  # relative to the suite file
    path.write_text(yaml.safe_dump(data))
    p = subprocess.run(
        [sys.executable, str(REPO / "tools" / "ship_artefacts.py"), str(path), str(nano_run / ".cmbench" / "cache"),
         str(tmp_path / "artefacts" / "nano-merge")],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "nano-merge: 10 artefacts" in p.stdout  # 2 seeds × (θ0, heads, 3 experts)
    return path


def test_a_fresh_run_reads_the_shipped_artefacts_and_builds_nothing(tmp_path, nano_run, monkeypatch):
    from cmbench import artefacts
    from cmbench.results import load_results
    from cmbench.runner import run_suite
    from cmbench.suite import load_suite

    path = _shipped_suite(tmp_path, nano_run)
    assert load_suite(path).hash() == load_suite(NANO).hash()  # where it ships from is not hashed

    def refuse(*a, **k):
        raise AssertionError("an artefact was built although it is shipped")

    for name in ("make_theta0", "make_heads", "make_expert"):
        monkeypatch.setattr(artefacts, name, refuse)
    out = tmp_path / "fresh"
    assert run_suite(path, out=out, executor="local", log=lambda s: None)["failed"] == 0
    fresh = {(r["label"], r["seed"], r["order_index"]): r for r in load_results(out / "results")}
    first = {(r["label"], r["seed"], r["order_index"]): r for r in load_results(nano_run / "results")}
    assert fresh.keys() == first.keys()
    for k, r in fresh.items():  # the same keys (the same artefacts, by content) and the same numbers
        assert (r["key"], r["R"], r["E"]) == (first[k]["key"], first[k]["R"], first[k]["E"]), k


def test_a_damaged_shipped_artefact_is_one_error_never_rebuilt(tmp_path, nano_run):
    from cmbench.runner import run_suite

    path = _shipped_suite(tmp_path, nano_run)
    theta0 = sorted((tmp_path / "artefacts" / "nano-merge" / "theta0").glob("*.json"))[0]
    meta = json.loads(theta0.read_text())
    theta0.write_text(json.dumps({**meta, "content_hash": "0" * 64}))
    with pytest.raises(CmbenchError, match=r"shipped artefact .*content hash does not match.*git checkout"):
        run_suite(path, out=tmp_path / "fresh", executor="local", log=lambda s: None)


def test_shipping_refuses_what_is_not_built_and_what_is_too_large(tmp_path, nano_run):
    sys.path.insert(0, str(REPO / "tools"))
    try:
        from ship_artefacts import ship
    finally:
        sys.path.pop(0)
    with pytest.raises(CmbenchError, match="not in this store.*cmbench finetune"):
        ship(NANO, tmp_path / "empty", tmp_path / "dest", 40)
    with pytest.raises(CmbenchError, match="above --max-mb 0.001"):
        ship(NANO, nano_run / ".cmbench" / "cache", tmp_path / "dest", 0.001)
    assert not (tmp_path / "dest").exists()  # nothing half-shipped


def test_every_committed_suite_that_ships_holds_its_artefacts():
    """A suite that names `shipped:` has each of its seeds' θ0, heads and independent experts
    there (or each of the kinds it ships, for every seed), under the keys the code forms
    now, intact (a recipe change that re-keys them must ship them again, or every clone
    would quietly rebuild them)."""
    from cmbench.artefacts import shipped_keys, shipped_kinds
    from cmbench.store import Store
    from cmbench.suite import load_suite

    shipping = [load_suite(p) for p in sorted((REPO / "suites").glob("*.yaml")) if "\nshipped:" in p.read_text()]
    assert {s.name: shipped_kinds(s) for s in shipping} == {
        "micro-colour-merge": ("theta0", "heads", "experts"),
        "micro-colour-merge20": ("theta0",),  # its heads and experts are rebuilt (the suite file says why)
        "micro-text-merge": ("theta0", "heads", "experts"),
    }
    for suite in shipping:
        store, wanted = Store(suite.shipped), shipped_keys(suite, shipped_kinds(suite))
        per_seed = {"theta0": 1, "heads": 1, "experts": len(suite.tasks)}
        assert len(wanted) == len(suite.seeds) * sum(per_seed[k] for k in shipped_kinds(suite))
        for kind, key in wanted:
            assert store.read(kind, key) is not None, (suite.name, kind, key)
