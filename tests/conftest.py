import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NANO = REPO / "suites" / "nano-merge.yaml"


@pytest.fixture(scope="session")
def nano_run(tmp_path_factory):
    """The nano suite run once in-process; tests copy its cache/results instead of rebuilding."""
    from cmbench.runner import run_suite

    out = tmp_path_factory.mktemp("nano")
    summary = run_suite(NANO, out=out, executor="local", log=lambda s: None)
    assert summary["failed"] == 0
    return out


@pytest.fixture
def nano_copy(nano_run, tmp_path):
    """A private copy of the nano run's output directory (cache + results)."""
    dst = tmp_path / "out"
    shutil.copytree(nano_run, dst)
    return dst


def write_record(path: Path, rec: dict) -> Path:
    """Write a result record built by a test as the runner writes one (its checksum included)."""
    import json

    from cmbench.record import checksum

    rec = {k: v for k, v in rec.items() if k not in ("checksum", "R_checksum")}
    rec["checksum"] = checksum(rec)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec))
    return path
