"""Results as data (issue #39): the published JSON Schema of a result file, which every
committed result meets; ``cmbench.results.frame``, one row per job; and
``cmbench report --table jobs``, the same rows as CSV."""

import io
import json
import math
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pandas as pd
import pytest

from cmbench.record import SCHEMA_PATH, read_record, schema_text
from cmbench.results import frame, load_results

from .conftest import write_record

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"
CMBENCH = Path(sys.executable).with_name("cmbench")


def _committed() -> list[Path]:
    """Every committed result file, hidden folders (``.cmbench/``) left out, by glob."""
    return sorted(
        p for p in RESULTS.glob("**/*.json") if not any(part.startswith(".") for part in p.relative_to(RESULTS).parts)
    )


def _strict_loaded(root: Path) -> list[dict]:
    bad: list[str] = []
    recs = load_results(root, on_bad=lambda p, why: bad.append(f"{p}: {why}"))
    assert not bad, bad
    return recs


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(CMBENCH), "report", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


# --- the schema -----------------------------------------------------------------------------


def test_the_published_schema_is_the_one_the_record_model_gives_now():
    published = (REPO / SCHEMA_PATH).read_text(encoding="utf-8")
    assert published == schema_text(), f"{SCHEMA_PATH} is out of date: run python tools/result_schema.py --write"
    schema = json.loads(published)
    assert published == json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    assert schema["title"].startswith("cmbench result file, format version ")
    assert "cmbench" in schema["description"] and schema["type"] == "object"
    assert {"status", "suite", "seed", "order_index", "tasks"} <= set(schema["required"])


def test_every_committed_result_reads_through_the_record_model():
    files = _committed()
    assert files, "no committed results"
    recs = _strict_loaded(RESULTS)  # the hidden-folder rule, placement, checksums, consistency
    assert sorted(Path(r["_path"]) for r in recs) == files
    for p in files:
        read_record(p)  # ResultRecord, bounded read, no non-finite numbers


def test_every_committed_result_meets_the_published_schema():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((REPO / SCHEMA_PATH).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    recs = _strict_loaded(RESULTS)
    assert len(recs) == len(_committed())
    for r in recs:
        raw = json.loads(Path(r["_path"]).read_text(encoding="utf-8"))  # the file, not the loaded dict
        errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(raw)]
        assert not errors, (r["_path"], errors[:3])
    # and it does say no: an accuracy above 1, a name with a space, a negative seed
    raw = json.loads(Path(recs[0]["_path"]).read_text(encoding="utf-8"))
    for field, value in (("R", [[1.5] * len(raw["tasks"])] * (len(raw["tasks"]) + 1)), ("suite", "a b"), ("seed", -1)):
        assert not validator.is_valid({**raw, field: value}), field


# --- frame ----------------------------------------------------------------------------------


def test_frame_has_one_row_per_committed_result_and_the_records_metrics():
    df = frame(RESULTS)
    files = _committed()
    assert len(df) == len(files)
    assert sorted(map(Path, df["path"])) == files
    for col in ("suite", "setting", "method", "label", "seed", "order_index", "status", "ACC", "key"):
        assert col in df.columns, col
    for col in ("suite_hash", "git_commit", "finished_at", "verified", "path"):
        assert col in df.columns, col
    assert df["path"].is_unique and df["key"].notna().all()
    sort = ["suite", "label", "seed", "order_index"]
    assert list(df.index) == list(range(len(df)))
    assert df[sort].values.tolist() == sorted(df[sort].values.tolist())
    # ACC per (suite, label) as the files' own metrics give it (read here without cmbench)
    stored = defaultdict(list)
    for p in files:
        rec = json.loads(p.read_text(encoding="utf-8"))
        stored[(rec["suite"], rec["label"])].append(rec["metrics"]["ACC"])
    means = df.groupby(["suite", "label"])["ACC"].mean()
    assert set(means.index) == set(stored)
    for (suite, label), accs in stored.items():
        assert math.isclose(means[(suite, label)], sum(accs) / len(accs), rel_tol=1e-12), (suite, label)
    # the same row for a file as the record read on its own
    one = read_record(files[0])
    row = df[df["path"] == str(files[0])].iloc[0]
    for col in ("suite", "label", "seed", "key"):
        assert row[col] == one[col], col
    if one.get("device"):
        assert row["device_type"] == one["device"]["type"]


def test_frame_keeps_failed_jobs_and_cli_csv_escapes_their_text(tmp_path):
    src = _committed()[0]
    rec = json.loads(src.read_text(encoding="utf-8"))
    suite, label = rec["suite"], rec["label"]
    root = tmp_path / "results"
    write_record(root / suite / label / "seed0-order0.json", {**rec, "seed": 0, "order_index": 0})
    failed = {k: v for k, v in rec.items() if k not in ("R", "E", "metrics", "timings", "storage_bytes")}
    failed.update(seed=7, order_index=0, status="failed", error='=HYPERLINK("x") out of memory')
    write_record(root / suite / label / "seed7-order0.json", failed)
    df = frame(root)
    assert list(df["status"]) == ["ok", "failed"] and list(df["seed"]) == [0, 7]
    assert math.isnan(df["ACC"].iloc[1]) and not math.isnan(df["ACC"].iloc[0])
    assert df["error"].iloc[1].startswith("=HYPERLINK") and pd.isna(df["error"].iloc[0])
    p = _cli("--results", str(root), "--table", "jobs")
    assert p.returncode == 0, p.stderr
    back = pd.read_csv(io.StringIO(p.stdout))
    assert back.shape == df.shape and list(back.columns) == list(df.columns)
    assert back["error"].iloc[1] == '\'=HYPERLINK("x") out of memory'  # never a formula in a spreadsheet


# --- cmbench report --table jobs --------------------------------------------------------------


@pytest.mark.slow  # renders every committed result (about 11 s): make test-slow
def test_report_table_jobs_is_the_frame_as_csv():
    p = _cli("--table", "jobs")
    assert p.returncode == 0, p.stderr
    back = pd.read_csv(io.StringIO(p.stdout))
    df = frame(RESULTS)
    assert back.shape == df.shape and list(back.columns) == list(df.columns)
    assert list(back["path"]) == [str(Path(x).relative_to(REPO)) for x in df["path"]]  # as --results names them
    assert back["ACC"].tolist() == pytest.approx(df["ACC"].tolist(), rel=1e-15)
    assert back["seed"].tolist() == df["seed"].tolist()
    assert _cli("--table", "jobs", "--format", "csv").stdout == p.stdout


def test_report_table_jobs_is_csv_only():
    p = _cli("--table", "jobs", "--format", "latex")
    lines = p.stderr.strip().splitlines()
    assert p.returncode != 0 and p.stdout == ""
    assert len(lines) == 1 and "CSV only" in lines[0] and "Traceback" not in p.stderr
