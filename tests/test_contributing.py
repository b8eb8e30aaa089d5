"""CONTRIBUTING.md's flow, walked on a fresh copy of the repository with a new method file:
the file, `cmbench check`, the suite entry, `cmbench run`, `cmbench report`, `cmbench verify`
(the nano suite stands in for quick-merge to keep the test short; the commands are the same)."""

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

HALFWAY = '''"""Half-way merge (test):  M_t = M_{t-1} + lam * (theta_t - M_{t-1})."""
from cmbench.methods import Probability, merge_function
from cmbench.tensors import shift


@merge_function("halfway", paper="test")
def halfway(ctx, merged, incoming, *, lam: Probability = 0.5):
    return shift(merged, incoming, merged, lam)
'''


def _cmbench(*args, cwd):
    r = subprocess.run([str(Path(sys.executable).parent / "cmbench"), *args], cwd=cwd, capture_output=True, text=True)
    assert r.returncode == 0, f"cmbench {' '.join(args)}:\n{r.stdout}\n{r.stderr}"
    return r.stdout + r.stderr


@pytest.mark.slow  # about 100 s: a clone, a nano run and the full report of the committed results
def test_contribution_flow(tmp_path):
    clone = tmp_path / "cmbench"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    (clone / "baselines" / "halfway.py").write_text(HALFWAY)  # 1. the method file
    assert "halfway: ok" in _cmbench("check", "halfway", cwd=clone)  # 2. the conformance kit
    suite = clone / "suites" / "nano-merge.yaml"  # 3. into a suite
    suite.write_text(suite.read_text().replace("methods:\n", "methods:\n  - {name: halfway, hparams: {lam: 0.5}}\n", 1))
    out = _cmbench("run", "suites/nano-merge.yaml", "--methods", "halfway", "--no-ray", cwd=clone)  # 4. run
    assert "halfway" in out and "next: cmbench report" in out
    _cmbench("report", cwd=clone)
    board = (clone / "leaderboard.md").read_text()
    assert "| halfway |" in board and (clone / "results" / "nano-merge" / "halfway").is_dir()
    out = _cmbench("verify", "--suite", "nano-merge", "--methods", "halfway", "--no-ray", cwd=clone)  # 5. reproduce
    assert "0 mismatched" in out and "0 stale" in out
