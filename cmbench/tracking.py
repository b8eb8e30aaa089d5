"""MLflow, logged from the driver only, and never in the way of the science.

One parent run per suite run, one nested run per job: parameters, per-step metrics, the
final metrics and the accuracy matrix as a CSV artefact; the parent gets each method's mean
metrics and the leaderboard. Result files are the record; tracking is a copy of them:

* every MLflow call runs on one background thread of the tracker, so the run never waits on
  a server; a call that raises, or has not returned after ``CALL_TIMEOUT_S`` (a server that
  accepts connections and never answers), disables the tracker with one warning line, and
  what is still queued is dropped. At the end the run waits for the queue at most as long as
  the call in progress is within its bound, then goes;
* what a run could not log is logged afterwards from the result files: ``cmbench log
  RESULTS`` (:func:`log_results`), which skips jobs the store already holds;
* a SQLite store is written under an inter-process lock beside it (two runs on one ``--out``
  raced on creating MLflow's tables, and one logged nothing);
* a parent or job run left RUNNING by a killed process on this host is marked KILLED when the
  next tracker opens the experiment.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import logging
import os
import queue
import socket
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable

from . import metrics
from .record import printable

# a remote server that has not answered a call in this time is taken as hung; a local store
# (SQLite, files) is not on the network, and its first use (importing MLflow, creating the
# tables) can take tens of seconds on a loaded machine
CALL_TIMEOUT_S = 10.0
LOCAL_CALL_TIMEOUT_S = 120.0
# MLflow's HTTP client retries a refused connection 7 times with exponential back-off (253 s)
# before raising; a tracker that gives up after CALL_TIMEOUT_S needs no more than this
_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


class Tracker:
    """One parent run in ``experiment`` (MLflow at ``uri``), fed from one thread."""

    logged: list[dict]  # the records of log_job

    def __init__(
        self,
        uri: str,
        experiment: str,
        *,
        tags: dict[str, str] | None = None,
        run_name: str | None = None,
        log: Callable[[str], None] = print,
        call_timeout_s: float | None = None,
        missed: str | None = None,
    ):
        local = uri.startswith(("sqlite:", "file:", "/")) or "://" not in uri
        self.uri, self.log = uri, log
        self.call_timeout_s = call_timeout_s or (LOCAL_CALL_TIMEOUT_S if local else CALL_TIMEOUT_S)
        # what the warning tells the user to do about what was not logged
        self.missed = missed or f"log them later with: cmbench log RESULTS --tracking-uri {uri}"
        self.enabled, self.logged = True, []
        self.parent_id: str | None = None
        self._busy_since: float | None = None
        self._queue: queue.Queue = queue.Queue()
        self._lock_path = _sqlite_lock_path(uri)
        for k, v in _HTTP_DEFAULTS.items():
            os.environ.setdefault(k, v)
        # a daemon thread: one stuck in a call that never returns does not keep the process alive
        threading.Thread(target=self._work, name="cmbench-tracking", daemon=True).start()
        self.call(lambda mlflow: self._open(mlflow, experiment, run_name or experiment, tags or {}))

    # -- the thread and its bound ---------------------------------------------------------------
    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:  # closed: the thread ends
                self._queue.task_done()
                return
            fn, fut = item
            try:
                if self.enabled:
                    import mlflow  # on this thread: the run does not wait for the import

                    with self._store_lock():  # waiting for another run's logging is not a hang
                        self._busy_since = time.monotonic()
                        fut.set_result(fn(mlflow))
                else:
                    fut.cancel()
            except Exception as e:  # noqa: BLE001 - tracking never fails a run
                self._disable(f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
                fut.cancel()
            finally:
                self._busy_since = None
                self._queue.task_done()

    def call(self, fn: Callable[[Any], Any]) -> Future:
        """Run ``fn(mlflow)`` on the tracker's thread, inside the parent run (queued; cancelled
        once tracking is disabled)."""
        fut: Future = Future()
        self._check_hung()
        if self.enabled:
            self._queue.put((fn, fut))
        else:
            fut.cancel()
        return fut

    def _check_hung(self) -> bool:
        since = self._busy_since
        if self.enabled and since is not None and time.monotonic() - since > self.call_timeout_s:
            self._disable(f"no answer in {self.call_timeout_s:.0f} s")
        return not self.enabled

    def _disable(self, why: str) -> None:
        if self.enabled:
            self.enabled = False
            self.log(
                f"warning: MLflow tracking disabled ({why}) {self.uri}; result files are still written; {self.missed}"
            )

    def wait(self) -> bool:
        """Wait for what is queued while each call stays within its bound; whether all of it
        was logged."""
        q = self._queue
        with q.all_tasks_done:
            while q.unfinished_tasks and not self._check_hung():
                q.all_tasks_done.wait(0.05)
        return self.enabled

    @contextlib.contextmanager
    def _store_lock(self):
        if self._lock_path is None:
            yield
            return
        self._lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # -- what runs on the thread ----------------------------------------------------------------
    def _open(self, mlflow, experiment: str, run_name: str, tags: dict[str, str]) -> None:
        for noisy in ("mlflow", "alembic"):  # keep the terminal for progress and errors
            logging.getLogger(noisy).setLevel(logging.WARNING)
        artifacts = None
        if self._lock_path is not None:  # artefacts beside the database, not in the cwd
            artifacts = (self._lock_path.parent / "mlartifacts").resolve().as_uri()
        mlflow.set_tracking_uri(self.uri)
        exp = mlflow.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else mlflow.create_experiment(experiment, artifact_location=artifacts)
        mlflow.set_experiment(experiment_id=exp_id)
        _end_runs_of_dead_processes(mlflow, exp_id)
        run = mlflow.start_run(run_name=run_name, tags={**tags, **_owner_tags()})
        self.parent_id, self.experiment_id = run.info.run_id, exp_id

    def log_job(self, rec: dict) -> None:
        self.logged.append(rec)

        def job(mlflow):
            try:
                _log_job(mlflow, rec)
            except mlflow.exceptions.MlflowException as e:
                if getattr(e, "error_code", "") != "INVALID_PARAMETER_VALUE":
                    raise  # the store, not this job: tracking is disabled
                self.log(
                    f"warning: MLflow refused job {rec['label']} seed {rec['seed']} order {rec['order_index']} "
                    f"({printable(str(e).splitlines()[0] if str(e) else '', 160)}); the other jobs are logged"
                )

        self.call(job)

    def logged_jobs(self) -> set[tuple] | None:
        """(label, seed, order index, key) of every job run in the experiment; None when the
        store does not answer."""

        def read(mlflow):
            runs = mlflow.search_runs(experiment_ids=[self.experiment_id], output_format="list")
            return {_job_id(r.data.params, r.data.tags) for r in runs if "mlflow.parentRunId" in r.data.tags}

        fut = self.call(read)
        self.wait()
        return fut.result() if fut.done() and not fut.cancelled() else None

    def close(self, results_dir: Path | None = None) -> bool:
        """End the parent run with this run's aggregate metrics per method (mean over its
        jobs, ``<label>.<metric>``) and the leaderboard rendered from ``results_dir``; wait
        for the thread within its bound. Whether everything was logged."""
        by: dict[str, list[dict]] = {}
        for rec in self.logged:
            if rec["status"] == "ok":
                by.setdefault(rec["label"], []).append(rec["metrics"])
        aggregates: dict[str, float] = {}
        for label, ms in by.items():
            for k in ms[0]:
                vals = [m[k] for m in ms if m.get(k) is not None and m[k] == m[k]]
                if vals:
                    aggregates[f"{label}.{k}"] = sum(vals) / len(vals)
            aggregates[f"{label}.n"] = len(ms)
        board = None
        if self.enabled and results_dir is not None and by:
            board = tempfile.TemporaryDirectory(prefix="cmbench-board-")
            try:
                from .report import render_leaderboard

                render_leaderboard(results_dir, Path(board.name) / "leaderboard.md", Path(board.name) / "plots")
            except Exception as e:  # noqa: BLE001 - the artefact is a courtesy, not the record
                self.log(f"warning: the leaderboard artefact was not logged ({type(e).__name__}: {e})")
                board.cleanup()
                board = None

        def finish(mlflow):
            try:
                if aggregates:
                    mlflow.log_metrics(aggregates)
                if board is not None:
                    mlflow.log_artifacts(board.name)
            finally:  # whatever failed above, the parent run ends: an active run would block the next one
                mlflow.end_run()

        self.call(finish)
        done = self.wait()
        if board is not None and done:
            board.cleanup()
        self._queue.put(None)  # a thread stuck in a call never takes it: it stays, as a daemon
        return done


def _sqlite_lock_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///") + ".lock") if uri.startswith("sqlite:///") else None


def _owner_tags() -> dict[str, str]:
    return {"cmbench.host": socket.gethostname(), "cmbench.pid": str(os.getpid())}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _end_runs_of_dead_processes(mlflow, exp_id: str) -> None:
    """Runs left RUNNING by a process of this host that no longer exists (kill -9) are KILLED."""
    client = mlflow.MlflowClient()
    host = socket.gethostname()
    for r in client.search_runs([exp_id], filter_string="attributes.status = 'RUNNING'"):
        tags = r.data.tags
        if tags.get("cmbench.host") == host and tags.get("cmbench.pid", "").isdigit():
            if not _pid_alive(int(tags["cmbench.pid"])):
                client.set_terminated(r.info.run_id, status="KILLED")


def _job_id(params: dict, tags: dict) -> tuple:
    return (params.get("label"), str(params.get("seed")), str(params.get("order_index")), tags.get("key") or "")


def job_id(rec: dict) -> tuple:
    """How a logged job is recognised: its label, seed, order and key (as MLflow stores them)."""
    return (rec["label"], str(rec["seed"]), str(rec["order_index"]), rec.get("key") or "")


def _param(value) -> str:
    """A parameter value as MLflow stores it: text, within its length limit (500 characters
    in older stores)."""
    text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
    return text if len(text) <= 500 else text[:499] + "…"


def _log_job(mlflow, rec: dict) -> None:
    name = f"{rec['label']}/seed{rec['seed']}/order{rec['order_index']}"
    with mlflow.start_run(
        run_name=name,
        nested=True,
        tags={
            "status": rec["status"],
            "key": rec.get("key") or "",
            "suite_hash": rec.get("suite_hash", ""),
            "method_source_hash": rec.get("method_source_hash", ""),
            "git_commit": rec.get("git_commit") or "",
            "hparams_from": (rec.get("hparam_source") or {}).get("kind", "suite"),
            **_owner_tags(),
        },
    ):
        mlflow.log_params(
            {
                "method": rec["method"],
                "label": rec["label"],
                "seed": rec["seed"],
                "order_index": rec["order_index"],
                "order": _param(">".join(rec["tasks"])),
                **{f"hp.{k}": _param(v) for k, v in rec["hparams"].items()},
            }
        )
        if rec["status"] != "ok":
            mlflow.set_tag("error", (rec.get("error") or "")[:500])
            return
        for t, v in enumerate(metrics.step_average(rec["R"]), start=1):
            mlflow.log_metric("avg_seen_acc", v, step=t)
        for t, row in enumerate(rec["R"]):
            mlflow.log_metric("avg_all_acc", metrics.mean_defined(row), step=t)
        for t, g in enumerate(rec.get("start_grad_norm") or [], start=1):
            mlflow.log_metric("start_grad_norm", g, step=t)
        for t, b in enumerate(rec["storage_bytes"]["per_step"], start=1):
            mlflow.log_metric("storage_bytes", b, step=t)
        mlflow.log_metrics({k: v for k, v in rec["metrics"].items() if v is not None and v == v})
        with tempfile.TemporaryDirectory() as d:
            buf = io.StringIO()
            w = csv.writer(buf)
            w.writerow(["step"] + rec["tasks"])
            for t, row in enumerate(rec["R"]):
                w.writerow([t] + row)
            (Path(d) / "accuracy_matrix.csv").write_text(buf.getvalue())
            clean = {k: v for k, v in rec.items() if not k.startswith("_")}
            (Path(d) / "result.json").write_text(json.dumps(clean, indent=1, default=str))
            mlflow.log_artifacts(d)


def log_results(results_dir: Path, uri: str, log: Callable[[str], None] = print) -> dict[str, int]:
    """Log the result files under ``results_dir`` that the tracking store does not hold yet
    (one parent run per suite, named "SUITE (cmbench log)"); what a run whose tracking was
    down could not log. A file that is not a valid result is skipped with a warning naming it
    (``skipped`` counts them); the rest are logged. Returns counts."""
    from .results import load_results

    skipped: list[str] = []

    def bad(path: Path, why: str) -> None:
        skipped.append(str(path))
        log(f"warning: not logged: {printable(str(path))}: {why}")

    by_suite: dict[str, list[dict]] = {}
    for rec in load_results(results_dir, include_rehearsal=True, on_bad=bad):
        by_suite.setdefault(rec["suite"], []).append(rec)
    counts = {"logged": 0, "already": 0, "skipped": len(skipped)}
    for name, recs in sorted(by_suite.items()):
        tracker = Tracker(
            uri, name, tags={"suite_hash": recs[0].get("suite_hash", "")}, run_name=f"{name} (cmbench log)", log=log
        )
        have = tracker.logged_jobs()
        if have is None:
            tracker.close()
            raise _tracking_error(uri)
        todo = [r for r in recs if job_id(r) not in have]
        counts["already"] += len(recs) - len(todo)
        for rec in todo:
            tracker.log_job(rec)
        if not tracker.close(results_dir):
            raise _tracking_error(uri)
        counts["logged"] += len(todo)
    return counts


def _tracking_error(uri: str):
    from . import CmbenchError

    return CmbenchError(f"MLflow at {uri} did not take the results (see the warning above); nothing more was logged")
