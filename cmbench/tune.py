"""``cmbench tune SUITE --method M``: choose a method's hyperparameters on validation data.

The search space is the method's ``search`` grid in the suite. Each trial runs the
method's jobs (first ``seeds`` seeds × first ``orders`` orders) exactly as ``cmbench run``
would, except that every accuracy is measured on the tasks' **validation** splits: in a
trial the harness's task loader hands the protocol each task with its test split replaced
by its validation split, and θ0's row is computed afresh instead of read from the cache.
No test split is read (``tests/test_tune.py`` poisons them). Artefacts (θ0, heads,
experts) are built first, as by ``cmbench run``; their own test accuracies are the suite's
reference rows and play no part in the choice.

Scoring on every task's validation data is an **oracle**: the chosen values have seen
tasks that arrive later in the stream. The output says so, and the leaderboard labels
rows run with tuned values (``cmbench run --use-tuned``) as ``tuned (oracle)``.

Trials run as Ray Tune trials (``executor="ray"``, one per worker) or in-process; every
trial is logged to MLflow. The result is ``OUT/tuned/<suite>/<label>.json``.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, Callable, cast

from . import CmbenchError, metrics
from .store import Store, atomic_write_bytes, open_store
from .suite import Job, MethodSpec, Suite, expand, load_suite
from .tuned import tuned_path


class _FreshEvalStore:
    """The suite's artefact store, except that evaluations are recomputed, never cached, and
    job states are not kept: a trial's rows are on validation data and must neither read nor
    write the test run's."""

    def __init__(self, inner: Store):
        self.inner = inner

    def has(self, kind, key):
        return self.inner.has(kind, key)

    def content_hash(self, kind, key):
        return self.inner.content_hash(kind, key)

    def get_or_make(self, kind, key, make):
        if kind == "evals":
            return make()
        return self.inner.get_or_make(kind, key, make)

    # a trial's job state (rows on validation data) is never saved: a real run with the same
    # key must not resume from it, nor a trial from a real run's
    def get(self, kind, key):
        return None

    def put(self, kind, key, tensors, meta):
        pass

    def delete(self, kind, key):
        pass


def _trial_job(suite: Suite, job: Job, cache: str, threads: int) -> dict:
    """One job of a trial, scored on validation splits (see the module docstring)."""
    from .protocol import run

    # _FreshEvalStore has the Store methods the protocol calls
    return run(suite, job, cast(Store, _FreshEvalStore(open_store(cache))), threads, scored_on="val")


def _grid(spec: MethodSpec) -> list[dict[str, Any]]:
    names = sorted(spec.search)
    return [dict(zip(names, values)) for values in itertools.product(*(spec.search[n] for n in names))]


def _trial(
    suite: Suite, spec: MethodSpec, config: dict, seeds: int, orders: int | None, cache: str, threads: int
) -> dict:
    trial_spec = spec.model_copy(update={"hparams": {**spec.hparams, **config}})
    jobs = expand(suite.model_copy(update={"methods": [trial_spec]}), None, seeds, orders)
    from .work import where_ran

    recs = [_trial_job(suite, j, cache, threads) for j in jobs]
    accs = [r["metrics"]["ACC"] for r in recs]
    return {
        "hparams": config,
        "val_acc": metrics.mean_defined(accs),
        "val_acc_per_job": accs,
        "jobs": [{"seed": j.seed, "order_index": j.order_index} for j in jobs],
        "ran_on": where_ran(),
    }


def tune_method(
    suite_path: str | Path,
    method: str,
    *,
    out: str | Path = ".",
    seeds: int = 1,
    orders: int | None = None,
    workers: int | None = None,
    executor: str = "ray",
    tracking_uri: str | None = None,
    store: str | None = None,
    ray_address: str | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    from .runner import Paths, run_suite

    suite = load_suite(suite_path)
    specs = [m for m in suite.methods if method in (m.display, m.name)]
    if len(specs) != 1:
        raise CmbenchError(
            f"--method {method}: expected one method of suite {suite.name} with that name or label, "
            f"found {len(specs)}; labels: {[m.display for m in suite.methods]}"
        )
    spec = specs[0]
    if not spec.search:
        raise CmbenchError(
            f"{suite_path}: methods.{suite.methods.index(spec)}.search: {spec.display} declares no "
            "search space; add e.g. `search: {lam: [0.1, 0.2, 0.3]}`"
        )
    from .data import DATASETS, param_value

    if any(
        t.dataset == "class_split" and param_value(DATASETS[t.dataset], t.params, "holdout") == 0 for t in suite.tasks
    ):
        raise CmbenchError(
            f"{suite_path}: its tasks train on all of each train split, as the published runs do "
            "(holdout: 0), so there is no validation data to tune on; tune on a copy of the suite with "
            "`holdout: 0.1` in every task's params, and report this suite's rows"
        )
    paths = Paths(Path(out), store)
    # artefacts exactly as `cmbench run` builds them (θ0, heads, experts), before any trial
    run_suite(
        suite_path,
        methods=[spec.display],
        seeds=seeds,
        orders=orders,
        out=out,
        workers=workers,
        executor=executor,
        dry_run=False,
        prepare_only=True,
        store=store,
        log=lambda s: None,
        ray_address=ray_address,
    )
    cache = paths.store
    threads = suite.resources.cpus_per_job
    grid = _grid(spec)
    log(
        f"tuning {spec.display} on {suite.name}: {len(grid)} trials × {seeds} seed(s) × "
        f"{orders or len(suite.orders_for(suite.seeds[0]))} order(s), scored on validation splits"
    )
    if executor == "ray":
        trials = _ray_tune(suite, spec, grid, seeds, orders, cache, threads, workers, paths, ray_address)
    else:
        trials = [_trial(suite, spec, c, seeds, orders, cache, threads) for c in grid]
    best = max(trials, key=lambda t: t["val_acc"])
    result = {
        "suite": suite.name,
        "suite_hash": suite.hash(),
        "method": spec.name,
        "label": spec.display,
        "defaults": spec.hparams,
        "search": spec.search,
        "seeds": suite.seeds[:seeds],
        "orders": orders,
        "scored_on": "validation splits of every task of the stream",
        "oracle": True,
        "trials": trials,
        "best": best["hparams"],
        "best_val_acc": best["val_acc"],
    }
    path = tuned_path(out, suite.name, spec.display)
    atomic_write_bytes(path, json.dumps(result, indent=1, sort_keys=True).encode() + b"\n")
    _log_trials(tracking_uri or paths.tracking_uri, suite, spec, trials, log)
    for t in sorted(trials, key=lambda t: -t["val_acc"]):
        log(f"  {t['hparams']}: val ACC {100 * t['val_acc']:.2f}")
    log(f"best {best['hparams']} (oracle: all tasks' validation data) -> {path}")
    return result


def _ray_tune(suite, spec, grid, seeds, orders, cache, threads, workers, paths, ray_address=None) -> list[dict]:
    import os
    import tempfile

    import ray
    from ray import tune

    from .config import applied, current
    from .executors import connect_ray, ship_baselines, worker_env

    env, cfg = worker_env(), current()
    staging = None
    if ray_address:  # on a cluster the method files travel with the trials, as with `cmbench run`
        staging = tempfile.TemporaryDirectory(prefix="cmbench-methods-")
        cfg = cfg.with_(baselines=ship_baselines(Path(staging.name)))
        connect_ray(ray_address, logging_level="ERROR", runtime_env={"working_dir": staging.name, "env_vars": env})
    else:
        ray.init(
            num_cpus=(workers or max(1, (os.cpu_count() or 1) // threads)) * threads,
            include_dashboard=False,
            logging_level="ERROR",  # type: ignore[arg-type]  # annotated int; Ray's default is a name too
            runtime_env={"env_vars": env},
        )
    try:

        def trainable(config):
            with applied(cfg):  # the run's configuration travels with the trial, as with a job
                return _trial(suite, spec, config["hparams"], seeds, orders, cache, threads)

        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": threads, "gpu": suite.resources.gpus_per_job}),
            param_space={"hparams": tune.grid_search(grid)},
            tune_config=tune.TuneConfig(metric="val_acc", mode="max"),
            run_config=tune.RunConfig(
                storage_path=str((paths.cache.parent / "tune").resolve()),
                name=f"{suite.name}-{spec.display}",
                verbose=0,
            ),
        )
        results = tuner.fit()
        out = []
        for r in results:  # type: ignore[attr-defined]  # ResultGrid: __len__ and __getitem__, no __iter__
            if r.error:
                raise CmbenchError(f"tune trial {r.config} failed: {r.error}")
            m = r.metrics
            out.append({k: m[k] for k in ("hparams", "val_acc", "val_acc_per_job", "jobs", "ran_on")})
        return sorted(out, key=lambda t: json.dumps(t["hparams"], sort_keys=True))
    finally:
        ray.shutdown()
        if staging is not None:
            staging.cleanup()


def _log_trials(uri: str, suite: Suite, spec: MethodSpec, trials: list[dict], log) -> None:
    from .tracking import Tracker

    tracker = Tracker(
        uri,
        f"{suite.name}-tune",
        run_name=f"tune {spec.display}",
        tags={"suite_hash": suite.hash(), "oracle": "true"},
        log=log,
        missed="the sweep is saved in tuned/",
    )

    def trial_runs(mlflow) -> None:
        for t in trials:
            with mlflow.start_run(run_name=json.dumps(t["hparams"], sort_keys=True), nested=True):
                mlflow.log_params({f"hp.{k}": v for k, v in t["hparams"].items()})
                mlflow.log_metric("val_acc", t["val_acc"])

    tracker.call(trial_runs)
    tracker.close()
