"""Tracking never blocks the science (#26): a refused port or a server that never answers
costs a run at most the tracker's bound; what was missed is logged afterwards from the result
files (`cmbench log`); runs on one SQLite store do not race; a killed run's MLflow runs end."""

import shutil
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from .conftest import NANO

from cmbench.cli import main
from cmbench.runner import Paths, run_suite
from cmbench.tracking import Tracker, log_results

QUIET = {"log": lambda s: None}


def _child_runs(uri, experiment):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id]) if exp else []
    return [r for r in runs if "mlflow.parentRunId" in r.data.tags], [
        r for r in runs if "mlflow.parentRunId" not in r.data.tags
    ]


def _rerun_weight_average(out, uri, said):
    shutil.rmtree(Paths(out).results / "nano-merge" / "weight_average")
    t0 = time.perf_counter()
    summary = run_suite(NANO, methods=["weight_average"], out=out, executor="local", tracking_uri=uri, log=said.append)
    return summary, time.perf_counter() - t0


@pytest.fixture
def silent_server():
    """A port that accepts connections (the kernel completes the handshake) and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    yield f"http://127.0.0.1:{s.getsockname()[1]}"
    s.close()


def _refused_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # closed again: connections are refused


@pytest.mark.parametrize("server", ["refused", pytest.param("silent", marks=pytest.mark.slow)])  # each ~20 s
def test_a_down_or_hung_tracker_costs_the_run_at_most_its_bound(nano_copy, tmp_path, server, request):
    """The same jobs with a working SQLite store, then with MLflow down (refused port) or hung
    (accepts, never answers): results complete, one warning, wall time within 15 s of the
    working run; then `cmbench log` fills a store from the result files, once."""
    sqlite = f"sqlite:///{tmp_path / 'ok.db'}"
    said: list[str] = []
    summary, base_s = _rerun_weight_average(nano_copy, sqlite, said)
    assert summary["ran"] == 4 and not [s for s in said if "warning" in s]

    uri = _refused_port() if server == "refused" else request.getfixturevalue("silent_server")
    said = []
    summary, down_s = _rerun_weight_average(nano_copy, uri, said)
    assert summary["ran"] == 4 and summary["failed"] == 0
    warnings = [s for s in said if "MLflow tracking disabled" in s]
    assert len(warnings) == 1 and "cmbench log" in warnings[0], said
    assert down_s < base_s + 15, (down_s, base_s)
    assert len(list((Paths(nano_copy).results / "nano-merge" / "weight_average").glob("*.json"))) == 4

    later = f"sqlite:///{tmp_path / 'later.db'}"
    counts = log_results(Paths(nano_copy).results, later, log=said.append)
    assert counts == {"logged": 12, "already": 0, "skipped": 0}
    children, parents = _child_runs(later, "nano-merge")
    assert len(children) == 12 and len(parents) == 1
    assert {r.data.params["label"] for r in children} >= {"weight_average", "task_arithmetic"}
    assert main(["log", str(Paths(nano_copy).results), "--tracking-uri", later]) == 0  # nothing new
    assert len(_child_runs(later, "nano-merge")[0]) == 12


def test_cmbench_log_defaults_to_the_runs_store_and_skips_what_it_holds(nano_copy, capsys):
    """A run's own store already holds its jobs: `cmbench log OUT/results` adds nothing."""
    assert main(["log", str(Paths(nano_copy).results)]) == 0
    assert "logged 0 jobs" in capsys.readouterr().out
    assert main(["log", str(nano_copy / "nothing")]) == 2


_LOG_ONE = textwrap.dedent(
    """
    import sys
    from cmbench.tracking import Tracker
    rec = {"label": "x", "method": "x", "seed": int(sys.argv[2]), "order_index": 0, "tasks": ["a"],
           "hparams": {}, "status": "ok", "R": [[0.5], [0.9]], "storage_bytes": {"per_step": [0]},
           "metrics": {"ACC": 0.9}}
    said = []
    t = Tracker(sys.argv[1], "race", log=said.append)
    t.log_job(rec)
    ok = t.close()
    print("OK" if ok and not said else "FAILED " + " ".join(said))
    """
)


@pytest.mark.slow  # concurrent processes on one store (about 12 s): make test-slow
def test_runs_started_together_on_one_sqlite_store_all_log(tmp_path):
    """Several processes open a fresh SQLite store at once (MLflow creates its tables on the
    first connection): every one logs its job."""
    uri = f"sqlite:///{tmp_path / 'shared.db'}"
    procs = [
        subprocess.Popen([sys.executable, "-c", _LOG_ONE, uri, str(i)], stdout=subprocess.PIPE, text=True)
        for i in range(3)
    ]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert outs == ["OK"] * 3, outs
    children, parents = _child_runs(uri, "race")
    assert len(children) == 3 and len(parents) == 3


def test_a_killed_runs_mlflow_runs_are_marked_killed_by_the_next(tmp_path):
    uri = f"sqlite:///{tmp_path / 'k.db'}"
    killed = _LOG_ONE.replace("ok = t.close()", "t.wait(); import os; os._exit(9)")
    subprocess.run([sys.executable, "-c", killed, uri, "0"], timeout=120)
    children, parents = _child_runs(uri, "race")
    assert [r.info.status for r in parents] == ["RUNNING"]
    Tracker(uri, "race", log=print).close()
    children, parents = _child_runs(uri, "race")
    assert sorted(r.info.status for r in parents) == ["FINISHED", "KILLED"]
