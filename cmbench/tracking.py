"""MLflow, logged from the driver only (SQLite locks under concurrent writers).

One parent run per suite run, one nested run per job: parameters, per-step metrics, the
final metrics and the accuracy matrix as a CSV artefact. If MLflow fails (server down,
unwritable store), the run goes on: result files are the record, and a warning says so.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import tempfile
from pathlib import Path
from typing import Callable

from . import metrics
from .suite import Suite


class Tracker:
    def __init__(self, uri: str, suite: Suite, log: Callable[[str], None] = print):
        self.log, self.enabled, self.parent, self.logged = log, True, None, []
        try:
            import mlflow

            for noisy in ("mlflow", "alembic"):  # keep the terminal for progress and errors
                logging.getLogger(noisy).setLevel(logging.WARNING)

            artifacts = None
            if uri.startswith("sqlite:///"):  # artefacts beside the database, not in the cwd
                db_dir = Path(uri.removeprefix("sqlite:///")).parent
                db_dir.mkdir(parents=True, exist_ok=True)
                artifacts = (db_dir / "mlartifacts").resolve().as_uri()
            mlflow.set_tracking_uri(uri)
            if mlflow.get_experiment_by_name(suite.name) is None:
                mlflow.create_experiment(suite.name, artifact_location=artifacts)
            mlflow.set_experiment(suite.name)
            self.parent = mlflow.start_run(run_name=f"{suite.name}", tags={"suite_hash": suite.hash()})
            mlflow.log_param("suite", suite.name)
            self.mlflow = mlflow
        except Exception as e:  # noqa: BLE001 - tracking never fails a run
            self._disable(e, uri)

    def _disable(self, e: Exception, uri: str = "") -> None:
        self.enabled = False
        self.log(
            f"warning: MLflow tracking disabled ({type(e).__name__}: {str(e).splitlines()[0][:200]}) "
            f"{uri}; result files are still written"
        )

    def log_job(self, rec: dict) -> None:
        self.logged.append(rec)
        if not self.enabled:
            return
        mlflow = self.mlflow
        try:
            name = f"{rec['label']}/seed{rec['seed']}/order{rec['order_index']}"
            with mlflow.start_run(
                run_name=name,
                nested=True,
                tags={
                    "status": rec["status"],
                    "key": rec.get("key", ""),
                    "suite_hash": rec.get("suite_hash", ""),
                    "method_source_hash": rec.get("method_source_hash", ""),
                    "git_commit": rec.get("git_commit") or "",
                    "hparams_from": (rec.get("hparam_source") or {}).get("kind", "suite"),
                },
            ):
                mlflow.log_params(
                    {
                        "method": rec["method"],
                        "seed": rec["seed"],
                        "order_index": rec["order_index"],
                        "order": ">".join(rec["tasks"]),
                        **{f"hp.{k}": v for k, v in rec["hparams"].items()},
                    }
                )
                if rec["status"] != "ok":
                    mlflow.set_tag("error", rec.get("error", "")[:500])
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
                    (Path(d) / "result.json").write_text(json.dumps(rec, indent=1, default=str))
                    mlflow.log_artifacts(d)
        except Exception as e:  # noqa: BLE001
            self._disable(e)

    def close(self, results_dir: Path | None = None) -> None:
        """End the parent run with this run's aggregate metrics per method (mean over its
        jobs, ``<label>.<metric>``) and the leaderboard rendered from ``results_dir``."""
        if self.enabled and self.parent is not None:
            try:
                by: dict[str, list[dict]] = {}
                for rec in self.logged:
                    if rec["status"] == "ok":
                        by.setdefault(rec["label"], []).append(rec["metrics"])
                for label, ms in by.items():
                    for k in ms[0]:
                        vals = [m[k] for m in ms if m.get(k) is not None and m[k] == m[k]]
                        if vals:
                            self.mlflow.log_metric(f"{label}.{k}", sum(vals) / len(vals))
                    self.mlflow.log_metric(f"{label}.n", len(ms))
                if results_dir is not None and by:
                    from .report import render_leaderboard

                    with tempfile.TemporaryDirectory() as d:
                        render_leaderboard(results_dir, Path(d) / "leaderboard.md", Path(d) / "plots")
                        self.mlflow.log_artifacts(d)
            except Exception as e:  # noqa: BLE001
                self._disable(e)
            finally:  # whatever failed above, the parent run ends: an active run would block the next one
                try:
                    self.mlflow.end_run()
                except Exception:  # noqa: BLE001, S110 - tracking never fails a run
                    pass
