"""Result keys follow what determines the numbers; `cmbench verify` proves them."""

import json
import shutil

import pytest


from cmbench import artefacts, keys
from cmbench.fingerprint import code_fingerprint, normalised_source
from cmbench.record import checksum
from cmbench.results import load_results
from cmbench.runner import Paths, run_suite
from cmbench.suite import load_suite
from cmbench.verify import choose_sample, verify

from .conftest import NANO

QUIET = dict(log=lambda s: None)

CODE = """
def merge(a, b, w=0.5):
    return (1 - w) * a + w * b
"""


def test_normalised_source_ignores_comments_docstrings_and_formatting():
    edited = (
        '"""Module doc."""\n# a comment\n\ndef merge(a,\n          b, w = 0.5):  # why\n'
        '    """Doc."""\n    return ((1 - w) * a\n            + w * b)\n'
    )
    assert normalised_source(edited) == normalised_source(CODE)
    assert normalised_source(CODE.replace("0.5", "0.25")) != normalised_source(CODE)
    assert normalised_source(CODE.replace("(1 - w) * a", "a * (1 - w)")) != normalised_source(CODE)
    # a string that is not a docstring is code
    assert normalised_source(CODE + "NAME = 'x'\n") != normalised_source(CODE + "NAME = 'y'\n")


def test_code_fingerprint_follows_code_not_layout(tmp_path):
    f = tmp_path / "m.py"
    f.write_text(CODE)
    before = code_fingerprint([f])
    f.write_text("# header\n" + CODE.replace("w=0.5", "w = 0.5") + "\n\n")
    assert code_fingerprint([f]) == before
    f.write_text(CODE.replace("w * b", "w * b * 1.0"))
    assert code_fingerprint([f]) != before


def dry(out, **kw):
    return run_suite(NANO, out=out, executor="local", dry_run=True, **QUIET, **kw)


def test_component_versions_rekey_exactly_their_jobs(nano_copy, monkeypatch):
    assert dry(nano_copy)["skipped"] == 12
    monkeypatch.setattr(keys, "MERGE_STREAM_VERSION", keys.MERGE_STREAM_VERSION + 1)
    lines: list[str] = []
    assert run_suite(NANO, out=nano_copy, executor="local", dry_run=True, log=lines.append)["skipped"] == 0
    assert "12 to run (12 inputs differ)" in lines[0]
    assert lines[1].endswith("[inputs differ: components.merge_stream]")
    monkeypatch.undo()
    assert dry(nano_copy)["skipped"] == 12
    # an artefact recipe's version re-keys the artefact, hence every job consuming it
    suite = load_suite(NANO)
    before = artefacts.expert_key(suite, 0, "bars")
    monkeypatch.setattr(artefacts, "EXPERTS_VERSION", artefacts.EXPERTS_VERSION + 1)
    assert artefacts.expert_key(suite, 0, "bars") != before
    assert dry(nano_copy)["skipped"] == 0


def test_changed_artefact_content_rekeys_its_jobs(nano_copy):
    """A store whose expert holds other bytes than the one a result consumed (a replaced
    checkpoint, a rebuild on other hardware) makes that result stale."""
    rec = next(r for r in load_results(Paths(nano_copy).results) if r["seed"] == 0)
    kind_key = next(iter(rec["inputs"]["artefacts"]["experts"].values()))
    meta = Paths(nano_copy).cache / "experts" / f"{kind_key}.json"
    m = json.loads(meta.read_text())
    m["content_hash"] = "0" * 16
    meta.write_text(json.dumps(m))
    s = dry(nano_copy)
    assert s["skipped"] == 6  # the seed-1 jobs


def test_metrics_are_derived_not_keyed(nano_copy):
    """A result's metrics are recomputed from R when read; editing them changes nothing."""
    path = next(Paths(nano_copy).results.rglob("*.json"))
    rec = json.loads(path.read_text())
    want = rec["metrics"]["ACC"]
    rec["metrics"]["ACC"] = 0.0
    path.write_text(json.dumps(rec))
    assert dry(nano_copy)["skipped"] == 12
    got = next(r for r in load_results(Paths(nano_copy).results) if r["_path"] == str(path))
    assert got["metrics"]["ACC"] == want


def test_verify_recomputes_cold_and_names_the_first_differing_cell(nano_copy, capsys):
    results = Paths(nano_copy).results
    lines: list[str] = []
    ok = verify(results, methods=["ties"], executor="local", log=lines.append)
    assert ok["checked"] == 4 and not ok["mismatched"] and not ok["stale"], lines
    assert sum("identical" in ln for ln in lines) == 4
    path = results / "nano-merge" / "ties" / "seed0-order1.json"
    rec = json.loads(path.read_text())
    committed = rec["R"][2][1]
    rec["R"][2][1] = committed + 0.01  # a consistent file (checksum too) whose numbers differ: another machine
    rec["checksum"] = checksum(rec)
    path.write_text(json.dumps(rec))
    lines.clear()
    bad = verify(results, methods=["ties"], executor="local", log=lines.append)
    assert bad["mismatched"] == ["nano-merge/ties/seed0-order1.json"] and not bad["stale"]
    (line,) = [ln for ln in lines if "MISMATCH" in ln]
    assert "nano-merge/ties/seed0-order1.json" in line and f"R[2, {rec['tasks'][1]}]" in line
    assert f"{committed:.4f}" in line and "compared exactly" in line


def test_verify_allows_flipped_images_only_where_the_artefacts_came_back_with_other_bytes(nano_copy):
    """A result made from experts fine-tuned on another machine (its recorded content hash is
    not what this machine rebuilds) is compared within the setting's tolerance, saying why;
    one whose artefacts came back byte for byte is still compared exactly."""
    from cmbench.artefacts import load_tasks

    results = Paths(nano_copy).results
    suite = load_suite(NANO)
    files = sorted((results / "nano-merge" / "ties").glob("seed0-order*.json"))
    for i, path in enumerate(files[:2]):
        rec = json.loads(path.read_text())
        n = len(load_tasks(suite, rec["seed"])[rec["tasks"][0]].test)
        rec["R"][0][0] += (1 if rec["R"][0][0] < 0.5 else -1) / n  # one flipped test image
        if i == 0:  # as if its first expert had been fine-tuned elsewhere
            task, _ = next(iter(rec["inputs"]["artefacts"]["experts"].items()))
            rec["inputs"]["content"]["experts"][task] = "f" * 64
            rec["key"] = keys.key_of(rec["inputs"])
        rec["checksum"] = checksum(rec)
        path.write_text(json.dumps(rec))
    lines: list[str] = []
    out = verify(results, methods=["ties"], executor="local", log=lines.append)
    assert out["mismatched"] == [f"nano-merge/ties/{files[1].name}"], lines
    ok = [ln for ln in lines if f"ties/{files[0].name}:" in ln]
    assert len(ok) == 1, lines
    ok = ok[0]
    assert "1 cells differ, by at most 1 test images" in ok and "experts rebuilt here with other bytes" in ok


def test_verify_reports_a_stale_key(nano_copy, monkeypatch):
    monkeypatch.setattr(keys, "EVALUATION_VERSION", keys.EVALUATION_VERSION + 1)
    lines: list[str] = []
    r = verify(Paths(nano_copy).results, methods=["ties"], sample=1, executor="local", log=lines.append)
    assert r["stale"] and any("components.evaluation" in ln and "STALE" in ln for ln in lines)


def test_cli_verify_exits_non_zero_with_one_line(nano_copy, tmp_path):
    import subprocess
    import sys

    results = tmp_path / "results"
    shutil.copytree(
        Paths(nano_copy).results / "nano-merge" / "weight_average", results / "nano-merge" / "weight_average"
    )
    path = results / "nano-merge" / "weight_average" / "seed1-order0.json"
    rec = json.loads(path.read_text())
    rec["E"][0] = 1.0 - rec["E"][0]
    path.write_text(json.dumps(rec))
    p = subprocess.run(
        [sys.executable, "-m", "cmbench", "verify", "--results", str(results), "--no-ray"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 1, p.stdout + p.stderr
    (line,) = [ln for ln in p.stdout.splitlines() if "MISMATCH" in ln]
    assert "seed1-order0.json" in line and f"E[{rec['tasks'][0]}]" in line


def test_sample_covers_every_suite_setting_and_component_version_cheapest_first():
    def rec(suite, setting, comp, seed, s, name):
        return {
            "suite": suite,
            "setting": setting,
            "seed": seed,
            "timings": {"job_s": s},
            "_path": name,
            "label": name[0],
            "inputs": {"components": comp},
        }

    recs = [
        rec("a", "merge_stream", {"evaluation": 1, "merge_stream": 1}, 0, 5.0, "a1"),
        rec("a", "merge_stream", {"evaluation": 1, "merge_stream": 1}, 0, 1.0, "a2"),
        rec("a", "merge_stream", {"evaluation": 2, "merge_stream": 1}, 1, 9.0, "a3"),
        rec("b", "train_then_merge", {"evaluation": 1, "train": 1}, 0, 3.0, "b1"),
        rec("b", "train_then_merge", {"evaluation": 1, "train": 1}, 0, 2.0, "b2"),
    ]
    got = [r["_path"] for r in choose_sample(recs, 1)]
    assert sorted(got) == ["a2", "a3", "b2"]
    assert len(choose_sample(recs, 4)) == 4
    # beyond coverage, an unchecked label before a cheaper job of a checked one
    recs.append(dict(rec("a", "merge_stream", {"evaluation": 1, "merge_stream": 1}, 0, 4.0, "c1"), label="c"))
    assert [r["_path"] for r in choose_sample(recs, 4)][3] == "c1"
    # a seed's cold artefacts cost nothing where the suite ships them; a sequential chain always costs
    recs = [
        rec("x", "merge_stream", {"evaluation": 1}, 0, 1.0, "x1"),
        rec("x", "merge_stream", {"evaluation": 1}, 0, 50.0, "x2"),
        rec("x", "merge_stream", {"evaluation": 1}, 1, 10.0, "x3"),
        dict(rec("x", "merge_stream", {"evaluation": 1}, 0, 0.5, "x4"), experts="sequential", order_index=0),
    ]
    assert [r["_path"] for r in choose_sample(recs, 2)] == ["x1", "x2"]
    assert [r["_path"] for r in choose_sample(recs, 2, frozenset({"x"}))] == ["x1", "x3"]


def test_tolerance_accepts_only_whole_flipped_images():
    """Across environments a cell may move by a few whole test images (flipped predictions);
    a fraction of an image means another test split, whatever the tolerance."""
    from cmbench.verify import cell_differences, first_difference

    committed = {"tasks": ["a"], "R": [[250 / 500]], "E": None}

    def check(fresh_acc, tolerance):
        diffs = cell_differences(committed, {"R": [[fresh_acc]]}, {"a": 500})
        return first_difference(diffs, lambda cell: 500, tolerance)

    assert check(252 / 500, 3) is None
    assert "2 of 500 test images; tolerance 1" in check(252 / 500, 1)
    assert "compared exactly" in check(251 / 500, None)
    assert "not a whole number" in check(250 / 499, 3)  # one image fewer in the split
    # an unmeasured cell is NaN in a fresh result and null in its file: equal
    assert cell_differences({"tasks": ["a"], "R": [[None]], "E": None}, {"R": [[float("nan")]]}, {"a": 500}) == []


def test_a_result_whose_R_was_edited_is_stale_and_refused_by_the_report(nano_copy):
    """Results record a checksum of their content: a hand-edited R (still valid JSON) is
    recomputed by the next run and refused by the report with one line naming the file."""
    from cmbench import CmbenchError
    from cmbench.runner import run_suite

    path = next((Paths(nano_copy).results / "nano-merge" / "ties").glob("*.json"))
    rec = json.loads(path.read_text())
    assert "checksum" in rec  # every result written now records it
    rec["R"][-1][0] = 0.99
    path.write_text(json.dumps(rec))
    with pytest.raises(CmbenchError, match="does not match the checksum"):
        load_results(Paths(nano_copy).results)
    summary = run_suite(NANO, out=nano_copy, executor="local", methods=["ties"], log=lambda s: None)
    assert summary["ran"] == 1
    assert json.loads(path.read_text())["R"][-1][0] != 0.99


def test_every_committed_result_rebuilds_to_its_suites_job():
    """What `cmbench verify` recomputes is the job the suite runs: the job rebuilt from each
    committed result (hparams, LoRA, a method's own training fields, seed, order) equals the
    suite's, field for field (a full-parameter row's own lr was once dropped, so verify
    recomputed it with the suite's lr and called the result stale)."""
    from pathlib import Path

    from cmbench.suite import expand, resolve_suite
    from cmbench.verify import job_from_record

    results = Path(__file__).resolve().parents[1] / "results"
    by_suite: dict[str, list[dict]] = {}
    for r in load_results(results):
        by_suite.setdefault(r["suite"], []).append(r)
    checked = 0
    for name, recs in sorted(by_suite.items()):
        suite = load_suite(resolve_suite(name))
        jobs = {j.relpath: j for j in expand(suite)}  # by the result file each job writes
        for r in recs:
            job = jobs.get(Path(r["_path"]).relative_to(results).as_posix())
            if r["status"] != "ok" or job is None or r["suite_hash"] != suite.hash():
                continue  # a label the suite no longer has, or a result of an older suite
            assert job_from_record(suite, r) == job, r["_path"]
            checked += 1
    assert checked > 200 and any(r.get("training") for rs in by_suite.values() for r in rs)
