"""End to end on the nano suite: determinism, caching, resume, Ray, failures, report."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cmbench.store import Store
from cmbench.protocol import run as run_job
from cmbench.report import render_leaderboard
from cmbench.results import load_results
from cmbench.runner import Paths, run_suite
from cmbench.suite import expand, load_suite

from .conftest import NANO, REPO, write_record

QUIET = dict(log=lambda s: None)


def matrices(results_dir):
    return {(r["label"], r["seed"], r["order_index"]): r["R"] for r in load_results(results_dir) if r["status"] == "ok"}


def test_result_files_are_complete(nano_run):
    recs = load_results(Paths(nano_run).results)
    assert len(recs) == 12 and all(r["status"] == "ok" for r in recs)
    r = recs[0]
    T = len(r["tasks"])
    assert len(r["R"]) == T + 1 and all(len(row) == T for row in r["R"])
    assert all(0.0 <= v <= 1.0 for row in r["R"] for v in row)
    assert len(r["E"]) == T and len(r["expert_content_hashes"]) == T
    # row 0 is θ0 and does not depend on the method; E does not either
    same_seed = [x for x in recs if x["seed"] == r["seed"] and x["tasks"] == r["tasks"]]
    assert all(x["R"][0] == r["R"][0] and x["E"] == r["E"] for x in same_seed)
    for k in ("ACC", "AIA", "BWT", "FGT", "FWT", "NACC"):
        assert k in r["metrics"]
    assert {"suite_hash", "key", "hparams", "method_source_hash", "versions", "timings", "storage_bytes"} <= set(r)


def test_same_job_twice_gives_identical_matrix(nano_run):
    suite = load_suite(NANO)
    job = expand(suite, ["ties"], 1, 1)[0]
    store = Store(Paths(nano_run).cache)
    a = run_job(suite, job, store, threads=1)
    b = run_job(suite, job, store, threads=1)
    assert a["R"] == b["R"] and a["E"] == b["E"]
    saved = json.loads((Paths(nano_run).results / job.relpath).read_text())
    assert saved["R"] == a["R"]


def test_rerun_skips_everything(nano_copy):
    summary = run_suite(NANO, out=nano_copy, executor="local", **QUIET)
    assert summary["ran"] == 0 and summary["skipped"] == 12  # (its wall time: `cmbench bench --suite`)


def nano_with_plugin(tmp_path, monkeypatch, name: str, src: str):
    """Write ``plugins/<name>.py``, make it discoverable, return (plugin file, nano suite + it)."""
    plugins = tmp_path / "plugins"
    plugins.mkdir(exist_ok=True)
    plugin = plugins / f"{name}.py"
    plugin.write_text(src)
    monkeypatch.setenv("CMBENCH_BASELINES", str(plugins))
    d = yaml.safe_load(NANO.read_text())
    d["methods"].append({"name": name})
    suite_path = tmp_path / f"nano-{name}.yaml"
    suite_path.write_text(yaml.safe_dump(d))
    return plugin, suite_path


def test_editing_a_method_recomputes_only_that_method(nano_copy, tmp_path, monkeypatch):
    src = (
        "from cmbench.methods import merge_function\n"
        "from cmbench.tensors import combine\n"
        "@merge_function('e2e_halfway', paper='test')\n"
        "def halfway(ctx, merged, incoming, *, w: float = 0.5):\n"
        "    return combine([merged, incoming], lambda m, x: (1 - w) * m + w * x, like=incoming)\n"
    )
    plugin, suite_path = nano_with_plugin(tmp_path, monkeypatch, "e2e_halfway", src)
    first = run_suite(suite_path, out=nano_copy, executor="local", **QUIET)
    assert first["ran"] == 4 and first["skipped"] == 12  # adding a method keeps the others
    # a comment, a docstring and a reformatting change no number: nothing is recomputed
    plugin.write_text(
        '"""A halfway merge."""\n'
        + src.replace(
            "(ctx, merged, incoming, *, w: float = 0.5)", "(ctx,  merged, incoming,\n             *, w: float=0.5)"
        )
        + "# why: nothing\n"
    )
    assert run_suite(suite_path, out=nano_copy, executor="local", **QUIET)["ran"] == 0
    plugin.write_text(src.replace("(1 - w) * m + w * x", "(1 - w) * m + w * x + 0.0"))  # code: recomputed
    second = run_suite(suite_path, out=nano_copy, executor="local", **QUIET)
    assert second["ran"] == 4 and second["skipped"] == 12


@pytest.mark.slow  # 30 s: in make test-slow (the make test budget)
def test_sigkill_at_random_points_then_resume_gives_identical_results(nano_run, tmp_path):
    """Kill `cmbench run` (SIGKILL) at random moments — while θ0/experts are built and while
    jobs run — then finish it: the results equal an uninterrupted run, and no half-written
    file is left or trusted."""
    import random

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "cmbench.cli", "run", str(NANO), "--no-ray", "--out", str(out)]
    rng = random.Random(0)
    for delay in sorted(rng.uniform(2.0, 9.0) for _ in range(3)):
        proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO, start_new_session=True
        )
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert matrices(Paths(out).results) == matrices(Paths(nano_run).results)
    for p in out.rglob("*"):
        if p.is_file() and p.suffix == ".json" and "results" in p.parts:
            json.loads(p.read_text())  # every result parses
    assert not [p for p in out.rglob("*.tmp")]


def test_a_killed_writers_temporary_file_is_removed_when_the_artefact_is_built(tmp_path):
    """A SIGKILL while an artefact's tensors are written leaves a temporary file (at real
    scale, gigabytes); whoever builds that artefact next removes it, and only its own."""
    store = Store(tmp_path)
    tensors_path, _ = store._paths("experts", "k1")
    tensors_path.parent.mkdir(parents=True)
    left = tensors_path.parent / f".{tensors_path.name}.abc123.tmp"
    other = tensors_path.parent / ".k2.safetensors.def456.tmp"
    left.write_bytes(b"partial")
    other.write_bytes(b"another artefact being written")
    import torch

    store.get_or_make("experts", "k1", lambda: ({"w": torch.ones(2)}, {}))
    assert not left.exists() and other.exists()
    assert not list(tensors_path.parent.glob(".k1.*.tmp"))


def test_mlflow_unreachable_still_writes_results(nano_copy, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    shutil.rmtree(Paths(nano_copy).results / "nano-merge" / "weight_average")
    said = []
    summary = run_suite(NANO, out=nano_copy, executor="local", tracking_uri="http://127.0.0.1:9", log=said.append)
    assert summary["ran"] == 4 and summary["failed"] == 0
    assert any("MLflow tracking disabled" in s for s in said)
    assert len(list((Paths(nano_copy).results / "nano-merge" / "weight_average").glob("*.json"))) == 4


# about 1.5 min (Ray start, a killed worker): run by `make test-slow` / .ci/run
@pytest.mark.slow
def test_ray_executor_matches_in_process_and_retries_a_killed_worker(nano_run, nano_copy, tmp_path, monkeypatch):
    """On Ray the results equal the in-process run; a job whose worker process is killed
    (SIGKILL, mid-merge) is retried and finishes with the result it would have had."""
    marker = tmp_path / "killed-once"
    _, suite_path = nano_with_plugin(
        tmp_path,
        monkeypatch,
        "e2e_killer",
        (
            "import os, signal\n"
            "from pathlib import Path\n"
            "from cmbench.methods import merge_function\n"
            "from cmbench.tensors import combine\n"
            "@merge_function('e2e_killer', paper='test')\n"
            "def killer(ctx, merged, incoming, *, marker: str = ''):\n"
            "    if ctx.step == 2 and marker and not Path(marker).exists():\n"
            "        Path(marker).write_text(str(os.getpid()))\n"
            "        os.kill(os.getpid(), signal.SIGKILL)  # the worker dies mid-job\n"
            "    return combine([merged, incoming], lambda m, x: m.lerp(x, 1.0 / ctx.step), like=incoming)\n"
        ),
    )
    d = yaml.safe_load(suite_path.read_text())
    d["methods"][-1]["hparams"] = {"marker": str(marker)}
    suite_path.write_text(yaml.safe_dump(d))
    shutil.rmtree(Paths(nano_copy).results)
    summary = run_suite(suite_path, out=nano_copy, executor="ray", workers=2, seeds=1, **QUIET)
    assert summary["ran"] == 8 and summary["failed"] == 0
    assert marker.exists()  # a worker was killed, and its job was retried
    got = matrices(Paths(nano_copy).results)
    want = matrices(Paths(nano_run).results)
    assert all(got[k] == want[k] for k in want if k in got) and len(got) == 8
    killed = {k: v for k, v in got.items() if "e2e_killer" in k}
    averaged = {("weight_average", seed, order): v for (_, seed, order), v in killed.items()}
    assert killed and all(averaged[k] == want[k] for k in averaged)  # same as running average


def test_nan_merge_fails_that_job_only(nano_copy, tmp_path, monkeypatch):
    _, suite_path = nano_with_plugin(
        tmp_path,
        monkeypatch,
        "e2e_nan",
        (
            "import torch\n"
            "from cmbench.methods import merge_function\n"
            "@merge_function('e2e_nan', paper='test')\n"
            "def nan(ctx, merged, incoming):\n"
            "    out = {k: v.clone() for k, v in incoming.items()}\n"
            "    out['blocks.0.attn.qkv.weight'][0, 0] = float('nan')\n"
            "    return out\n"
        ),
    )
    summary = run_suite(suite_path, out=nano_copy, executor="local", **QUIET)
    assert summary["failed"] == 4 and summary["skipped"] == 12
    failed = [r for r in load_results(Paths(nano_copy).results) if r["status"] == "failed"]
    assert len(failed) == 4
    assert all("blocks.0.attn.qkv.weight" in r["error"] and "after step 1" in r["error"] for r in failed)
    md = render_leaderboard(Paths(nano_copy).results, tmp_path / "lb.md").read_text()
    assert "4 failed job(s)" in md


def test_report_is_deterministic_and_complete(nano_copy, tmp_path):
    from cmbench.report.tables import render_table

    a = render_leaderboard(Paths(nano_copy).results, tmp_path / "a" / "lb.md").read_bytes()
    b = render_leaderboard(Paths(nano_copy).results, tmp_path / "b" / "lb.md").read_bytes()
    files_a = sorted(p.name for p in (tmp_path / "a" / "plots").iterdir() if p.name != ".cmbench-plots")
    assert a == b
    for name in files_a:  # every plot, PNG and SVG, byte-identical
        assert (tmp_path / "a" / "plots" / name).read_bytes() == (tmp_path / "b" / "plots" / name).read_bytes(), name
    kinds = ["accuracy-over-steps", "accuracy-matrices", "forgetting", "pareto", "final-vs-expert"]
    assert files_a == sorted(f"nano-merge-{k}.{ext}" for k in kinds for ext in ("png", "svg"))
    text = a.decode()
    for label in ("weight_average", "task_arithmetic", "ties", "pretrained θ0", "individual experts"):
        assert label in text
    assert "![average accuracy over steps](plots/nano-merge-accuracy-over-steps.png)" in text
    recs = load_results(Paths(nano_copy).results)
    for fmt in ("markdown", "latex", "csv"):
        stream = render_table(recs, "stream", fmt)
        assert "bars" in stream and "BWT" in stream
        assert "nano-merge" in render_table(recs, "benchmarks", fmt)
        assert "ties" in render_table(recs, "ablation", fmt, ["ties"])
        assert render_table(recs, "stream", fmt) == stream
    assert "\\textbf{" in render_table(recs, "stream", "latex")
    assert "**" in render_table(recs, "benchmarks", "markdown")


def test_second_run_on_the_same_output_is_refused_and_unwritable_dir_is_named(nano_copy, tmp_path):
    from filelock import FileLock

    from cmbench import CmbenchError

    shutil.rmtree(Paths(nano_copy).results / "nano-merge" / "ties")
    lock = FileLock(str(Paths(nano_copy).cache.parent / "nano-merge.run.lock"))
    with lock:
        with __import__("pytest").raises(CmbenchError, match="another `cmbench run`"):
            run_suite(NANO, out=nano_copy, executor="local", **QUIET)
    assert run_suite(NANO, out=nano_copy, executor="local", **QUIET)["ran"] == 4
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "results").write_text("a file where the results folder should be")
    with __import__("pytest").raises(CmbenchError, match="results is a file, not a directory"):
        run_suite(NANO, out=ro, executor="local", **QUIET)
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / ".cmbench").write_text("a file where the cache folder should be")
    with __import__("pytest").raises(CmbenchError, match=r"\.cmbench is a file, not a directory"):
        run_suite(NANO, out=blocked, executor="local", **QUIET)


def test_mlflow_parent_and_nested_runs(nano_run):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=Paths(nano_run).tracking_uri)
    exp = client.get_experiment_by_name("nano-merge")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(children) == 12
    child = children[0]
    assert "ACC" in child.data.metrics and child.data.params["method"]
    assert len(client.get_metric_history(child.info.run_id, "avg_seen_acc")) == 3
    names = [a.path for a in client.list_artifacts(child.info.run_id)]
    assert "accuracy_matrix.csv" in names
    assert Path(exp.artifact_location.removeprefix("file://")).is_relative_to(Path(nano_run).resolve())


def test_fsspec_store_shares_artefacts_and_gives_identical_results(nano_run, tmp_path):
    """Artefacts in an fsspec store (here ``memory://``, as a cluster would use s3:// or a
    shared filesystem): the same matrices as the local cache; a second run reuses them."""
    import fsspec

    from cmbench.store import FsspecStore, open_store

    url = "memory://cmbench-test/store"
    out = tmp_path / "o"
    summary = run_suite(NANO, methods=["task_arithmetic"], seeds=1, out=out, executor="local", store=url, **QUIET)
    assert summary["ran"] == 2 and summary["failed"] == 0
    fs = fsspec.filesystem("memory")
    assert fs.ls("/cmbench-test/store/experts") and isinstance(open_store(url), FsspecStore)
    got = matrices(Paths(out).results)
    want = matrices(Paths(nano_run).results)
    assert got and all(got[k] == want[k] for k in got)
    assert not (out / ".cmbench" / "cache" / "experts").exists()  # nothing went to the local cache
    again = run_suite(
        NANO, methods=["task_arithmetic"], seeds=1, out=tmp_path / "o2", executor="local", store=url, **QUIET
    )
    assert again["ran"] == 2 and matrices(Paths(tmp_path / "o2").results) == got


def test_job_key_covers_the_helper_modules_a_method_imports():
    """A method's code identity covers the cmbench modules its file imports, transitively:
    editing cmbench/kernels.py re-keys TIES and MagMax, not weight averaging."""
    import inspect

    from cmbench import registry as R
    from cmbench.fingerprint import import_closure

    R.discover()

    def closure(name):
        return {p.name for p in import_closure(Path(inspect.getsourcefile(R.get(name))))}

    assert "kernels.py" in closure("ties") and "kernels.py" in closure("magmax")
    assert "kernels.py" not in closure("weight_average") and "tensors.py" in closure("weight_average")


def test_leaderboard_shortens_long_hyperparameter_lists(nano_copy, tmp_path):
    """Rows of a method with many hyperparameters (ODE-M: 34) list only what differs from
    the method's first row; short lists are printed in full."""
    results = Paths(nano_copy).results
    src = next(p for p in sorted(results.rglob("*.json")) if "/ties/" in str(p))
    rec = json.loads(src.read_text())
    for label, n in (("many", 10), ("many-variant", 10)):
        r = dict(rec, label=label, method="many", hparams={f"h{i}": i for i in range(n)})
        if label == "many-variant":
            r["hparams"] = dict(r["hparams"], h3=99)
        write_record(results / rec["suite"] / label / src.name, r)
    md = render_leaderboard(results, tmp_path / "lb.md").read_text()
    assert "10 values, listed in the result files" in md
    assert "h3=99; others as many" in md
    assert "k=0.2" in md  # TIES's three values in full


def test_bench_table_reports_failed_methods_and_fidelity():
    """`cmbench bench` keeps a failed method's row (with its reason) and prints the GPU
    precision rows' fidelity beside their throughput."""
    from cmbench.bench import format_bench

    r = {
        "threads": 2,
        "device": "cuda",
        "torch": "x",
        "floor": {"params": 87.8e6, "axpy_s": 0.00036, "gbps": 2900.0},
        "methods": [
            {"method": "ties", "step_s": 0.0657, "peak_mb": 2042.0},
            {"method": "opcm", "error": "bench: _measure_method('opcm', 2, 5, 'cuda') died (exit code 1)"},
        ],
        "eval": [
            {"model": "ViT-B/32 224²", "img_s": 4450.0},
            {"model": "ViT-B/32 224², TF32 matmuls", "img_s": 13951.0, "min_cos_vs_fp32": 0.999996},
        ],
    }
    out = format_bench(r)
    assert "0.36 ms" in out and "| ties | 0.0657 | 182.5 | 2042 |" in out
    assert "| opcm | failed: bench: _measure_method('opcm'" in out
    assert "| ViT-B/32 224², TF32 matmuls | 13951 | (features' min cosine to fp32: 1.00000)" in out


def test_non_finite_logits_fail_the_job_with_one_line(nano_copy, tmp_path, monkeypatch):
    """Finite weights, overflowing logits (every weight × 1e30): argmax would pick class 0 and
    record a plausible accuracy; the job fails instead, and says why."""
    src = (
        "from cmbench.methods import merge_function\n"
        "@merge_function('e2e_overflow', paper='test')\n"
        "def overflow(ctx, merged, incoming):\n"
        "    return {k: v * 1e30 if v.is_floating_point() else v for k, v in incoming.items()}\n"
    )
    _, suite_path = nano_with_plugin(tmp_path, monkeypatch, "e2e_overflow", src)
    summary = run_suite(
        suite_path, out=nano_copy, executor="local", methods=["e2e_overflow"], seeds=1, orders=1, **QUIET
    )
    assert summary["failed"] == 1
    rec = json.loads(next((Paths(nano_copy).results / "nano-merge" / "e2e_overflow").glob("*.json")).read_text())
    assert rec["status"] == "failed" and "logits are not finite" in rec["error"] and "\n" not in rec["error"]


def test_two_suites_with_one_name_do_not_share_an_output_directory(tmp_path):
    """Another file with the same suite name and another environment is refused (its results
    would overwrite the first's); the same file edited in place, or a copy describing the
    same environment (more methods), is the same suite."""
    import pytest

    from cmbench import CmbenchError
    from cmbench.runner import claim_suite_name
    from cmbench.suite import load_suite

    paths = Paths(tmp_path / "out")
    first, copy, other = tmp_path / "a.yaml", tmp_path / "b.yaml", tmp_path / "c.yaml"
    first.write_text(NANO.read_text())
    copy.write_text(NANO.read_text().replace("methods:\n", "methods:\n  - {name: opcm}\n", 1))
    other.write_text(NANO.read_text().replace("seeds: [0, 1]", "seeds: [0]"))
    claim_suite_name(paths, load_suite(first), first)
    claim_suite_name(paths, load_suite(copy), copy)  # same hash: fine
    with pytest.raises(CmbenchError, match=r"suite name 'nano-merge' is already used .* by .*a\.yaml"):
        claim_suite_name(paths, load_suite(other), other)
    first.write_text(NANO.read_text().replace("seeds: [0, 1]", "seeds: [0]"))  # edited in place
    claim_suite_name(paths, load_suite(first), first)


def test_tracker_ends_its_parent_run_even_when_the_leaderboard_fails(tmp_path, monkeypatch):
    """A failure while closing (here: rendering the leaderboard artefact) must not leave the
    parent run active: the next run in the process would find it and lose its tracking."""
    from mlflow.tracking import MlflowClient

    from cmbench import report
    from cmbench.tracking import Tracker

    def broken(*a, **k):
        raise ZeroDivisionError("in the report")

    monkeypatch.setattr(report, "render_leaderboard", broken)
    lines: list[str] = []
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    t = Tracker(uri, "nano-merge", log=lines.append)
    t.logged = [{"status": "ok", "label": "x", "metrics": {"ACC": 0.5}}]
    t.close(results_dir=tmp_path)
    assert MlflowClient(tracking_uri=uri).get_run(t.parent_id).info.status == "FINISHED"
    assert any("ZeroDivisionError" in line for line in lines)


def test_a_failed_rerun_keeps_the_result_it_would_replace(nano_copy):
    """A job recomputed (--force, or after its inputs changed) that fails does not lose the
    result it was to replace: that one is kept as NAME.json.previous, out of the report."""
    path = Paths(nano_copy).results / "nano-merge" / "weight_average" / "seed0-order0.json"
    before = json.loads(path.read_text())
    said: list[str] = []
    summary = run_suite(
        NANO,
        methods=["weight_average"],
        seeds=1,
        orders=1,
        out=nano_copy,
        executor="local",
        force=True,
        job_time_limit=0.001,
        log=said.append,
    )
    assert summary["failed"] == 1
    assert json.loads(path.read_text())["status"] == "failed"
    kept = path.with_name(path.name + ".previous")
    assert json.loads(kept.read_text())["R"] == before["R"]
    assert any("kept as" in s for s in said)
    assert not [r for r in load_results(Paths(nano_copy).results) if r["_path"].endswith(".previous")]


def test_a_method_file_may_import_another_read_after_it(tmp_path):
    """``from cmbench_baselines.z_helper import ...`` in a_user.py works although the registry
    reads a_user.py first, z_helper.py is imported once, and the helper is in a_user's key."""
    import subprocess
    import sys

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "a_user.py").write_text(
        "from cmbench.methods import merge_function\n"
        "from cmbench_baselines.z_helper import halfway_of\n"
        "@merge_function('x_user', paper='test')\n"
        "def user(ctx, merged, incoming):\n"
        "    return halfway_of(merged, incoming)\n"
    )
    (plugins / "z_helper.py").write_text(
        "from cmbench.methods import merge_function\n"
        "from cmbench.tensors import combine\n"
        "IMPORTS = []\n"
        "IMPORTS.append(1)\n"
        "def halfway_of(a, b):\n"
        "    return combine([a, b], lambda m, x: (m + x) / 2, like=b)\n"
        "@merge_function('x_helper', paper='test')\n"
        "def helper(ctx, merged, incoming):\n"
        "    return halfway_of(merged, incoming)\n"
    )
    code = (
        "import sys\n"
        "from cmbench import registry as R\n"
        "from cmbench.fingerprint import import_closure\n"
        "import inspect\n"
        "from pathlib import Path\n"
        "known = R.discover()\n"
        "assert 'x_user' in known and 'x_helper' in known, sorted(known)\n"
        "assert sys.modules['cmbench_baselines.z_helper'].IMPORTS == [1]\n"
        "closure = [p.name for p in import_closure(Path(inspect.getsourcefile(known['x_user'])))]\n"
        "assert 'z_helper.py' in closure, closure\n"
        "print('ok')\n"
    )
    env = {**__import__("os").environ, "CMBENCH_BASELINES": str(plugins)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
    assert "not loaded" not in out.stderr, out.stderr[-2000:]
