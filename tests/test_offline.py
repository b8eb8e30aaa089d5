"""Offline by default (issue #40): a real suite whose weights, data and experts are not on
this machine fails before anything runs, in one untruncated line that lists them and names
--allow-download, and no network connection is attempted."""

import socket
import time

from cmbench.cli import main

from .conftest import REPO


def test_a_real_suite_without_its_downloads_fails_fast_listing_them(tmp_path, monkeypatch, capsys):
    suite = tmp_path / "ta8.yaml"  # a CPU copy: the first message used to be about GPUs
    suite.write_text(
        (REPO / "suites" / "clip-vit-b32-ta8.yaml").read_text().replace("gpus_per_job: 1\n", "gpus_per_job: 0\n")
    )
    for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "CMBENCH_ALLOW_DOWNLOAD"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no caches
    monkeypatch.setenv("CMBENCH_DATA_ROOT", str(tmp_path / "data"))
    attempts = []

    def refuse(self, address, *a, **k):
        attempts.append(address)
        raise OSError("the test allows no network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    t0 = time.perf_counter()
    assert main(["run", str(suite), "--out", str(tmp_path / "out"), "--no-ray"]) == 2
    took = time.perf_counter() - t0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cmbench: error:"), err
    line = err[0]
    assert "--allow-download" in line and "CMBENCH_ALLOW_DOWNLOAD" not in line
    for what in ("open_clip ViT-B-32", "tanganke/sun397", "tanganke/dtd", "clip-vit-base-patch32_mnist"):
        assert what in line, what
    assert line.endswith("lists each)")  # not cut
    assert "pip install datasets" not in line  # datasets is installed with the test extras
    assert attempts == []
    assert took < 60  # a hang guard: it takes a few seconds
    assert not (tmp_path / "out" / ".cmbench" / "cache" / "theta0").exists()


def test_the_cli_says_what_it_can_do(tmp_path, monkeypatch, capsys):
    """`cmbench` alone prints its help, `--version` its version; a misspelt method is answered
    with the closest one; a suite path that does not exist suggests names that work from any
    directory; a suite without a backbone is refused like any other missing field."""
    assert main([]) == 0 and "usage: cmbench" in capsys.readouterr().out
    assert main(["--version"]) == 0 and capsys.readouterr().out.startswith("cmbench ")
    assert main(["run", "quick-merge", "--methods", "tie", "--dry-run"]) == 2
    assert "did you mean 'ties'?" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    assert main(["run", "suites/quick-merge.yaml", "--dry-run"]) == 2
    assert "did you mean `cmbench run quick-merge`" in capsys.readouterr().err
    (tmp_path / "s.yaml").write_text("name: s\ntasks: [{name: a, dataset: bars}]\nmethods: [{name: ties}]\n")
    assert main(["run", str(tmp_path / "s.yaml"), "--dry-run"]) == 2
    assert "backbone: required field is missing" in capsys.readouterr().err
