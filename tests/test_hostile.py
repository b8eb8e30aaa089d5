"""Result files from strangers, output folders that are not cmbench's, suites that ask for the
impossible, broken method files: each case handled in one line, never a traceback, a hang, a
silent wrong output or lost data (issue #36). The corpus is ``tests/hostile.py``."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cmbench import CmbenchError, limits
from cmbench.cli import main
from cmbench.report import escape

from . import hostile
from .conftest import NANO, REPO, write_record

HANG_GUARD_S = 120  # a hang guard, not a speed target


def _cli(*argv: str) -> int:
    with limits.time_limit(HANG_GUARD_S, f"hung: cmbench {' '.join(argv)}"):
        return main(list(argv))


def _raw_payloads(text: str, markdown: bool = True) -> list[str]:
    """Markup from the corpus that reached an output unescaped (a newline is markup only in
    markdown)."""
    found = [p for p in ("<img src=x", "<script>window", "<svg onload") if p in text]
    return found + (["a line of its own"] if markdown and "\n## injected" in text else [])


def test_hostile_results_are_refused_or_escaped_in_every_format(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    hostile.build(run)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # `../../escaped` from a result file would land in tmp_path

    assert _cli("report", "--results", str(run)) == 0
    err = capsys.readouterr().err
    warnings = [ln for ln in err.splitlines() if ln.startswith("cmbench: warning: skipped ")]
    board = (run / "leaderboard.md").read_text()

    tally = {"cases": 0, "handled": 0, "tracebacks": 0, "hangs": 0, "silent wrong": 0, "data lost": 0}
    wrong = []
    for case, rel in hostile.skipped_files().items():
        tally["cases"] += 1
        named = [w for w in warnings if rel in w]
        if len(named) == 1:
            tally["handled"] += 1
        else:
            tally["silent wrong"] += 1
            wrong.append((case, named))
    # the genuine rows, each job once: the copies under other folders and MLflow's are not counted
    for label in ("ties", "weight_average", "task_arithmetic", "opcm"):
        assert re.search(rf"^\| {label} \| 1 × 1 \| ", board, re.M), label  # one job each: no copy counted
    section = board[board.index("## quick-merge") :]
    lines = section.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| Method |"))
    table = lines[start : lines.index("", start)]  # the leaderboard table of the suite
    header = table[0]
    for case, make in hostile.ESCAPED.items():
        tally["cases"] += 1
        label = make()[1]["label"]
        rows = [ln for ln in table if ln.startswith(f"| {label} |")]
        failed_line = [ln for ln in section.splitlines() if ln.startswith(f"- {label} seed")]
        ok_shape = all(len(re.findall(r"(?<!\\)\|", r)) == len(re.findall(r"\|", header)) for r in rows)
        if (rows or failed_line) and ok_shape:
            tally["handled"] += 1
        else:
            tally["silent wrong"] += 1
            wrong.append((case, rows or failed_line))
    assert not _raw_payloads(board), _raw_payloads(board)
    assert len(err.strip().splitlines()) == len(warnings) + 1  # the warnings and their count, nothing else

    # paper tables: the same files, every format
    for fmt in ("markdown", "latex", "csv"):
        for table in ("stream", "benchmarks"):
            assert _cli("report", "--results", str(run), "--format", fmt, "--table", table) == 0
            out = capsys.readouterr().out
            assert out and not _raw_payloads(out) and "\\input{" not in out, (fmt, table)
    # the site
    assert _cli("report", "--results", str(run), "--site", str(tmp_path / "site")) == 0
    for page in (tmp_path / "site").rglob("*.html"):
        assert not _raw_payloads(page.read_text(), markdown=False), page
    capsys.readouterr()
    # nothing was written outside the output folders
    assert not (tmp_path / "escaped").exists() and not Path("/tmp/cmbench-absolute-escape").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "run", "site"]
    assert list((tmp_path / "cwd").iterdir()) == []
    print("hostile results:", tally)
    assert not wrong, wrong
    assert tally["handled"] == tally["cases"] and tally["cases"] >= 40


def test_every_format_escapes_what_it_prints():
    assert escape.md("a | b\n# c <img> *x* _y_ weight_average") == (
        "a \\| b \\# c &lt;img&gt; \\*x\\* \\_y\\_ weight_average"
    )
    assert escape.latex("\\input{/etc/passwd} $x$ 100% a_b #1 & ~^") == (
        "\\textbackslash{}input\\{/etc/passwd\\} \\$x\\$ 100\\% a\\_b \\#1 \\& \\textasciitilde{}\\textasciicircum{}"
    )
    for cell in ("=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"):
        assert escape.csv_text(cell) == "'" + cell
    assert escape.csv_text("ties") == "ties"
    page = escape.json_in_html({"x": "</script><!--", "y": float("inf"), "z": "\u2028"})
    assert "<" not in page and ">" not in page and "Infinity" not in page and "\u2028" not in page
    assert json.loads(page) == {"x": "</script><!--", "y": None, "z": "\u2028"}


def test_output_folders_are_never_deleted_or_overwritten(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    shutil.copytree(REPO / "results" / "quick-merge", run / "results" / "quick-merge")
    # --site on a folder that holds other things (here: the results themselves, and more)
    (run / "notes.txt").write_text("mine")
    assert _cli("report", "--results", str(run / "results"), "--site", str(run)) == 2
    assert (run / "notes.txt").read_text() == "mine" and (run / "results" / "quick-merge").is_dir()
    # --site on a file
    (tmp_path / "file").write_text("mine")
    assert _cli("report", "--results", str(run), "--site", str(tmp_path / "file")) == 2
    assert (tmp_path / "file").read_text() == "mine"
    # a site folder is re-rendered: its own files replaced, a file someone added kept
    assert _cli("report", "--results", str(run), "--site", str(tmp_path / "site")) == 0
    (tmp_path / "site" / "mine.txt").write_text("mine")
    assert _cli("report", "--results", str(run), "--site", str(tmp_path / "site")) == 0
    assert (tmp_path / "site" / "mine.txt").read_text() == "mine"
    # --output over a file the report did not write; --plots into a folder it did not write
    (tmp_path / "notes.md").write_text("# my notes\n")
    assert _cli("report", "--results", str(run), "--output", str(tmp_path / "notes.md")) == 2
    assert (tmp_path / "notes.md").read_text() == "# my notes\n"
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "holiday.png").write_text("x")
    assert _cli("report", "--results", str(run), "--plots", str(tmp_path / "pics")) == 2
    assert sorted(p.name for p in (tmp_path / "pics").iterdir()) == ["holiday.png"]
    err = capsys.readouterr().err
    assert err.count("cmbench: error:") == 4 and "Traceback" not in err


@pytest.mark.slow  # two full reports with figures (about 15 s): make test-slow
def test_report_of_a_run_folder_or_its_results_is_the_same_and_stays_inside(tmp_path, monkeypatch, capsys):
    """`--results OUT` and `--results OUT/results` read each job once (never MLflow's copies
    under .cmbench/) and write into OUT; `--results x` from a repository's root leaves its
    committed leaderboard and plots alone."""
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "results" / "quick-merge", repo / "results" / "quick-merge")
    monkeypatch.chdir(repo)
    assert _cli("report") == 0
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run(["git", "add", "-A"], check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"], check=True)
    before = (repo / "leaderboard.md").read_bytes()

    run = repo / "out"
    shutil.copytree(REPO / "results" / "quick-merge", run / "results" / "quick-merge")
    copy = run / ".cmbench" / "mlartifacts" / "1" / "r" / "artifacts" / "result.json"
    copy.parent.mkdir(parents=True)
    shutil.copy(REPO / "results" / "quick-merge" / "ties" / "seed0-order0.json", copy)
    assert _cli("report", "--results", "out") == 0
    a = (run / "leaderboard.md").read_bytes()
    assert _cli("report", "--results", "out/results") == 0
    assert (run / "leaderboard.md").read_bytes() == a
    assert re.search(rb"^\| ties \| 1 \xc3\x97 1 \| ", a, re.M)
    # a stranger's results folder at the root, not named results: its report goes inside it
    shutil.copytree(REPO / "results" / "quick-merge", repo / "x" / "quick-merge")
    assert _cli("report", "--results", "x") == 0
    assert (repo / "x" / "leaderboard.md").exists()
    assert (repo / "leaderboard.md").read_bytes() == before
    status = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, check=True).stdout
    assert sorted(status.split()) == ["??", "??", "out/", "x/"], status
    capsys.readouterr()


def _suite(tmp_path: Path, name: str, body: str) -> Path:
    p = tmp_path / f"{name}.yaml"
    backbone = "" if "backbone:" in body else "backbone: {kind: tiny_vit}\n"  # required
    p.write_text(f"name: {name}\n{backbone}{body}")
    return p


IMPOSSIBLE = {
    # valid by the schema, but a job would need hundreds of CPU-hours or GiB: refused before θ0
    "huge-backbone": (
        "backbone: {kind: tiny_vit, embed_dim: 4096, depth: 64, num_heads: 64}\n"
        "tasks: [{name: a, dataset: shapes}, {name: b, dataset: bars}]\nmethods: [{name: weight_average}]\n",
        "above 100",
    ),
    "ten-million-images": (
        "tasks: [{name: a, dataset: shapes, params: {n_train: 10000000}}, {name: b, dataset: bars}]\n"
        "methods: [{name: weight_average}]\n",
        "more than this machine's",
    ),
    "billion-pretraining-epochs": (
        "pretrain: {epochs: 1000000000}\ntasks: [{name: a, dataset: shapes}, {name: b, dataset: bars}]\n"
        "methods: [{name: weight_average}]\n",
        "above 100",
    ),
    "2000-seeds": (
        "seeds: [" + ", ".join(map(str, range(2000))) + "]\n"
        "tasks: [{name: a, dataset: shapes}, {name: b, dataset: bars}]\nmethods: [{name: weight_average}]\n",
        "seeds",
    ),
    "billion-random-orders": (
        "orders: {random: 1000000000}\n"
        "tasks: [{name: a, dataset: shapes}, {name: b, dataset: bars}]\nmethods: [{name: weight_average}]\n",
        "orders.random",
    ),
    "million-cpus": (
        "resources: {cpus_per_job: 1000000}\ntasks: [{name: a, dataset: shapes}, {name: b, dataset: bars}]\n"
        "methods: [{name: weight_average}]\n",
        "cpus_per_job",
    ),
    "more-cpus-than-this-machine": (
        f"resources: {{cpus_per_job: {(os.cpu_count() or 1) + 1}}}\n"
        "tasks: [{name: a, dataset: shapes}, {name: b, dataset: bars}]\nmethods: [{name: weight_average}]\n",
        "cores",
    ),
    "infinite-pretraining-lr": (
        "pretrain: {lr: .inf}\ntasks: [{name: a, dataset: shapes}, {name: b, dataset: bars}]\n"
        "methods: [{name: weight_average}]\n",
        "pretrain.lr",
    ),
}


@pytest.mark.parametrize("case", sorted(IMPOSSIBLE))
def test_an_impossible_suite_is_refused_in_one_line_before_anything_is_built(case, tmp_path, capsys):
    body, said = IMPOSSIBLE[case]
    path = _suite(tmp_path, case, body)
    assert _cli("run", str(path), "--out", str(tmp_path / "out"), "--no-ray") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cmbench: error:") and said in err[0], err
    assert not (tmp_path / "out" / ".cmbench" / "cache" / "theta0").exists()


def test_five_thousand_tasks_plan_in_linear_time(tmp_path, monkeypatch, capsys):
    """A job's inputs name every task's expert, and an expert's key hashes θ0's, which hashes
    the whole task list: formed once per suite and seed, planning is linear in the tasks
    (it was quadratic: 5,000 tasks planned for minutes)."""
    from cmbench import artefacts

    calls = []
    real = artefacts._theta0_key
    monkeypatch.setattr(artefacts, "_theta0_key", lambda suite, seed: calls.append(seed) or real(suite, seed))
    small = "{n_train: 10, n_val: 2, n_test: 10}"
    tasks = ", ".join(f"{{name: t{i}, dataset: shapes, params: {small}}}" for i in range(5000))
    path = _suite(tmp_path, "wide", f"tasks: [{tasks}]\nmethods: [{{name: weight_average}}]\n")
    assert _cli("run", str(path), "--out", str(tmp_path / "out"), "--dry-run") == 0  # within the hang guard
    assert "1 jobs" in capsys.readouterr().out
    assert calls == [0]  # θ0's key formed once for the one seed, not once per expert


def test_the_job_time_limit_bounds_building_theta0(tmp_path, capsys):
    path = _suite(
        tmp_path,
        "slow-theta0",
        "pretrain: {epochs: 100000}\ntasks: [{name: a, dataset: shapes}, {name: b, dataset: bars}]\n"
        "methods: [{name: weight_average}]\nresources: {job_time_limit_s: 2}\n",
    )
    assert _cli("run", str(path), "--out", str(tmp_path / "out"), "--no-ray", "--accept-cost") == 2
    err = capsys.readouterr().err
    assert "building θ0 and heads of seed 0 exceeded resources.job_time_limit_s (2 s)" in err


BROKEN_FILES = {
    "syntax.py": "def broken(:\n",
    "exits.py": "import sys\nsys.exit(3)\n",
    "sleeps.py": "import time\ntime.sleep(3600)\n",
    "raises.py": "raise RuntimeError('no GPU here')\n",
}


def test_a_broken_method_file_is_reported_once_and_blocks_nothing_else(tmp_path, monkeypatch, capsys):
    from cmbench import registry as R

    for name, text in BROKEN_FILES.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "fine.py").write_text(
        "from cmbench.methods import merge_function\n\n"
        "@merge_function('hostile_fine')\ndef fine(ctx, merged, incoming):\n    return incoming\n"
    )
    monkeypatch.setattr(R, "IMPORT_LIMIT_S", 1.0)
    monkeypatch.setattr(R.METHODS, "broken", {})
    with limits.time_limit(HANG_GUARD_S, "discover hung"):
        found = R.discover([tmp_path])
        R.discover([tmp_path])  # a second look reports nothing more
    err = capsys.readouterr().err.splitlines()
    assert "hostile_fine" in found and "ties" in R.discover()
    for name in BROKEN_FILES:
        said = [ln for ln in err if f"{tmp_path / name}" in ln]
        assert len(said) == 1 and said[0].startswith("cmbench: warning: method file"), (name, err)
    assert "sys.exit(3)" in next(ln for ln in err if "exits.py" in ln)
    assert "still importing after 1 s" in next(ln for ln in err if "sleeps.py" in ln)
    with pytest.raises(CmbenchError, match="not loaded, and may define it: .*syntax.py"):
        R.get("defined_in_the_broken_file")
    for name in BROKEN_FILES:
        sys.modules.pop(f"cmbench_baselines.{Path(name).stem}", None)


def test_a_stranger_plugin_file_does_not_block_the_cli(tmp_path, monkeypatch):
    """`cmbench list methods` and a dry run with a broken file in ./baselines: exit 0."""
    (tmp_path / "baselines").mkdir()
    (tmp_path / "baselines" / "exits.py").write_text("import sys\nsys.exit(3)\n")
    for argv in (["list", "methods"], ["run", str(NANO), "--dry-run", "--out", "o"]):
        p = subprocess.run(
            [sys.executable, "-m", "cmbench", *argv], cwd=tmp_path, capture_output=True, text=True, timeout=HANG_GUARD_S
        )
        assert p.returncode == 0, p.stderr
        assert p.stderr.count("exits.py not loaded: it calls sys.exit(3)") == 1 and "Traceback" not in p.stderr


def test_verify_loads_no_suite_a_result_file_names_and_refuses_jobs_the_suite_lacks(nano_copy, monkeypatch):
    from cmbench.runner import Paths
    from cmbench.verify import verify

    results = Paths(nano_copy).results
    # a result whose `suite` is a file name: nothing in cwd is loaded as a suite
    monkeypatch.chdir(nano_copy)
    (nano_copy / "evil.yaml").write_text("name: evil.yaml\n")
    src = json.loads((results / "nano-merge" / "ties" / "seed0-order0.json").read_text())
    write_record(results / "evil.yaml" / "ties" / "seed0-order0.json", dict(src, suite="evil.yaml"))
    with pytest.raises(CmbenchError, match="no suite named 'evil.yaml'"):
        verify(results, executor="local", log=lambda s: None)
    shutil.rmtree(results / "evil.yaml")
    # an order the suite does not have: refused, counted once, not recomputed
    write_record(results / "nano-merge" / "ties" / "seed0-order99.json", dict(src, order_index=99))
    lines: list[str] = []
    r = verify(results, methods=["ties"], executor="local", log=lines.append)
    assert r["mismatched"] == ["nano-merge/ties/seed0-order99.json"] and not r["stale"]
    assert sum("seed0-order99" in ln for ln in lines) == 1
    assert "not a job of the suite" in next(ln for ln in lines if "seed0-order99" in ln)
    # verify's record: the four genuine jobs agreed with these bytes, the planted one did not
    from cmbench.results import load_results

    recs = load_results(results, on_bad=lambda p, w: None)
    verified = {Path(r["_path"]).name for r in recs if r["label"] == "ties" and r["verified"]}
    assert verified == {f"seed{s}-order{o}.json" for s in (0, 1) for o in (0, 1)}


def test_log_skips_a_file_it_cannot_read_and_logs_the_rest(nano_copy, tmp_path):
    from cmbench.runner import Paths
    from cmbench.tracking import log_results

    results = Paths(nano_copy).results
    bad = results / "nano-merge" / "ties" / "seed0-order0.json"
    rec = json.loads(bad.read_text())
    rec["hparams"] = "not a mapping"
    bad.write_text(json.dumps(rec))
    said: list[str] = []
    counts = log_results(results, f"sqlite:///{tmp_path / 'm.db'}", log=said.append)
    assert counts["skipped"] == 1 and counts["logged"] == 11
    assert any("not logged" in s and "seed0-order0.json" in s and "hparams" in s for s in said)


def test_a_job_whose_artefacts_vanish_fails_in_one_line(nano_copy, monkeypatch):
    from cmbench.protocol import loop
    from cmbench.runner import Paths, run_suite

    real = loop.record_common

    def vanish(suite, job, method, store):
        shutil.rmtree(store.root)  # the cache deleted under the running job
        return real(suite, job, method, store)

    monkeypatch.setattr(loop, "record_common", vanish)
    said: list[str] = []
    summary = run_suite(
        NANO, out=nano_copy, executor="local", methods=["ties"], force=True, seeds=1, orders=1, log=said.append
    )
    assert summary["failed"] == 1
    path = Paths(nano_copy).results / "nano-merge" / "ties" / "seed0-order0.json"
    rec = json.loads(path.read_text())
    assert rec["status"] == "failed" and "no longer in the store" in rec["error"]
    assert (path.with_name(path.name + ".previous")).exists()  # the computed result it replaced is kept
