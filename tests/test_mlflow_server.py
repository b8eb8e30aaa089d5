"""MLflow against a real tracking server on 127.0.0.1: parent and nested runs, tags,
per-step metrics and artefacts read back with the client."""

import socket
import subprocess
import sys
import time
import urllib.request

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'srv.db'}",
            "--artifacts-destination",
            str(tmp_path / "srv-artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(url + "/health", timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail("mlflow server exited at start")
                time.sleep(0.25)
        else:
            pytest.fail("mlflow server did not answer within 60 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow  # starts an MLflow server (about 25 s): make test-slow
def test_runs_are_tracked_on_a_remote_server(nano_copy, mlflow_server):
    from mlflow.tracking import MlflowClient

    from cmbench.results import load_results
    from cmbench.runner import run_suite
    from tests.conftest import NANO

    run_suite(
        NANO,
        methods=["weight_average"],
        seeds=1,
        out=nano_copy,
        force=True,
        executor="local",
        tracking_uri=mlflow_server,
        log=lambda s: None,
    )
    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("nano-merge")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    recs = {f"{r['label']}/seed{r['seed']}/order{r['order_index']}": r for r in load_results(nano_copy / "results")}
    for c in children:
        rec = recs[c.info.run_name]
        assert c.data.tags["suite_hash"] == rec["suite_hash"]
        assert c.data.tags["method_source_hash"] == rec["method_source_hash"]
        assert c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert abs(c.data.metrics["ACC"] - rec["metrics"]["ACC"]) < 1e-9
        steps = client.get_metric_history(c.info.run_id, "avg_seen_acc")
        assert [m.step for m in steps] == list(range(1, len(rec["tasks"]) + 1))
        files = {f.path for f in client.list_artifacts(c.info.run_id)}
        assert {"accuracy_matrix.csv", "result.json"} <= files
