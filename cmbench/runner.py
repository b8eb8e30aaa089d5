"""Runs a suite's jobs: artefacts first, then (method × seed × order) jobs, on Ray.

* Ray runs everything by default: a local instance sized by ``--workers``, or a cluster
  via ``--ray-address``. ``executor="local"`` runs in-process (debugging, tests).
* Each job fixes its torch thread count (``resources.cpus_per_job``) and its seeds, so a
  rerun gives the identical matrix whatever the number of workers.
* One JSON result per job, written atomically by the driver as soon as the job ends.
  A job whose result exists with the same key (``keys.job_inputs``: what determines its
  numbers) is skipped; ``force`` recomputes. A killed run loses only the jobs in flight.
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, cast

from filelock import FileLock, Timeout
from tqdm import tqdm

from . import CmbenchError, pins
from .artefacts import SuiteArtefacts, to_build
from .config import Config, applied, current
from .fingerprint import git_commit
from .executors import make_executor
from .keys import stale_reason
from .protocol import failure_record
from .record import error_line, keep_previous_result, write_result
from .store import atomic_write_bytes, open_store
from .suite import Job, Suite, expand, load_suite
from .work import prepare_artefacts, run_job


@dataclass
class Paths:
    out: Path
    store_url: str | None = None  # an fsspec URL shared by a cluster; default: the local cache

    @property
    def store(self) -> str:
        return self.store_url or str(self.cache.resolve())

    @property
    def results(self) -> Path:
        return self.out / "results"

    @property
    def cache(self) -> Path:
        return self.out / ".cmbench" / "cache"

    @property
    def tracking_uri(self) -> str:
        db = (self.out / ".cmbench" / "mlflow.db").resolve()
        return f"sqlite:///{db}"


# -- the run --------------------------------------------------------------------------------


def _lock_of(suite: Suite, out: Path) -> tuple[Path, dict] | None:
    """The output directory's lock and its entries; none for a rehearsal (its stand-ins are
    generated, not downloaded)."""
    return None if suite.rehearsal else (out, pins.read(out))


def claim_suite_name(paths: Paths, suite: Suite, suite_file: Path) -> None:
    """What a suite is in an output directory: its name, read from one file. A suite edited in
    place is the same suite (its changed jobs are recomputed); another file with the same name
    is another suite, whose results would overwrite the first's, unless it describes the same
    environment (the same suite hash: e.g. a copy with more methods, whose result files sit
    beside the first's). The first run records the file and hash; another existing file with
    another hash is refused (a recorded file that no longer exists, e.g. a moved checkout,
    hands the name over)."""
    record = paths.cache.parent / "suites" / f"{suite.name}.json"
    here, now = str(suite_file.resolve()), suite.hash()
    try:
        owner = json.loads(record.read_text())
        owner_file, owner_hash = owner["file"], owner["hash"]
    except (OSError, ValueError, KeyError, TypeError):
        owner_file = owner_hash = None
    if owner_file and owner_file != here and owner_hash != now and Path(owner_file).exists():
        raise CmbenchError(
            f"{suite_file}: suite name {suite.name!r} is already used in {paths.out} by {owner_file}, another suite "
            f"(hash {owner_hash}, this one {now}); its results would be overwritten: rename this suite or use "
            "another --out"
        )
    if owner_file in (None, here) or not Path(owner_file).exists():
        atomic_write_bytes(record, json.dumps({"file": here, "hash": now}).encode() + b"\n")


@dataclass(frozen=True)
class RunOptions:
    """How a suite is run (``cmbench run``'s flags); what its jobs compute is the suite's.

    ``use_tuned``: also run ``<label>-tuned`` rows with the values ``cmbench tune`` chose;
    ``retries``: times a job is retried after its worker dies; ``prepare_only``: build the
    artefacts (θ0, heads, experts) the jobs need and stop; ``job_time_limit``: seconds,
    overrides the suite's ``resources.job_time_limit_s``; ``add``: method entries (as in a
    suite's ``methods:``) added to this run, validated as the suite's are; only they run
    unless ``methods`` names others; ``config``: where data and method files are read from and
    whether downloads are allowed (``config.Config``; None: the current one), handed to every job."""

    methods: list[str] | None = None
    skip: list[str] | None = None
    seeds: int | None = None
    orders: int | None = None
    workers: int | None = None
    ray_address: str | None = None
    out: str | Path = "."
    force: bool = False
    dry_run: bool = False
    tracking_uri: str | None = None
    executor: str = "ray"
    use_tuned: bool = False
    retries: int = 2
    prepare_only: bool = False
    store: str | None = None
    log: Callable[[str], None] = print
    dashboard: bool = False
    job_time_limit: float | None = None
    add: list[dict] | None = None
    accept_cost: bool = False
    config: Config | None = None


def run_suite(suite_path: str | Path, options: RunOptions | None = None, **fields: Any) -> dict[str, Any]:
    """Run a suite's jobs (``RunOptions``, given as one object or as its fields)."""
    o = options or RunOptions(**fields)
    with applied(o.config or current()):
        return _run_suite(suite_path, o)


def _run_suite(suite_path: str | Path, o: RunOptions) -> dict[str, Any]:
    suite, methods, sources = _suite_as_run(suite_path, o)
    jobs = expand(suite, methods, o.seeds, o.orders, o.skip)
    paths = Paths(Path(o.out), o.store)
    store = open_store(paths.store)
    why = {job: "--force" if o.force else stale_reason(paths.results / job.relpath, suite, job, store) for job in jobs}
    todo = [job for job in jobs if why[job] is not None]
    skipped = len(jobs) - len(todo)
    counts = Counter(cast(str, why[j]).split(":")[0] for j in todo)  # todo: why is not None
    o.log(
        f"suite {suite.name} (hash {suite.hash()}): {len(jobs)} jobs, {skipped} up to date, {len(todo)} to run"
        + (f" ({', '.join(f'{n} {r}' for r, n in counts.most_common())})" if todo else "")
    )
    if methods or o.skip:  # a method's name selects all its rows: say which were selected
        o.log(f"  rows selected: {', '.join(dict.fromkeys(j.label for j in jobs)) or '(none)'}")
    nothing = {"jobs": len(jobs), "skipped": skipped, "ran": 0, "failed": 0}
    if o.prepare_only and not o.dry_run:
        todo = list(jobs)  # the artefacts of every job, whether or not its result exists
    build = to_build(suite, todo, store)  # θ0s and experts not cached yet
    if o.dry_run:
        from .plan import describe

        for job in todo:
            o.log(
                f"  would run {job.label} seed={job.seed} order={job.order_index}: {' > '.join(job.order)} [{why[job]}]"
            )
        for line in describe(suite, todo, build):
            o.log(line)
        return nothing
    if not todo:
        return nothing
    from .plan import preflight

    preflight(
        suite, todo, build, allow_download=current().allow_download, accept_cost=o.accept_cost, local=not o.ray_address
    )
    _check_writable(paths)
    lock = FileLock(str(paths.cache.parent / f"{suite.name}.run.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise CmbenchError(
            f"another `cmbench run` is running suite {suite.name} in {paths.out}; "
            f"wait for it to finish or use another --out"
        ) from None
    try:
        claim_suite_name(paths, suite, Path(suite_path))
        return _run(suite, todo, len(jobs), skipped, paths, o, sources)
    finally:
        lock.release()


def _suite_as_run(suite_path: str | Path, o: RunOptions) -> tuple[Suite, list[str] | None, dict[str, dict]]:
    """The suite with this run's additions (``--add``, ``--job-time-limit``, tuned rows), the
    methods to run, and where each tuned row's values come from."""
    suite, methods = load_suite(suite_path), o.methods
    if o.add:
        suite = with_methods(suite, o.add, suite_path)
        methods = methods or [m.get("label") or m["name"] for m in o.add]
    if o.job_time_limit is not None:
        if not o.job_time_limit > 0:
            raise CmbenchError(f"--job-time-limit {o.job_time_limit}: give a positive number of seconds")
        suite = suite.model_copy(
            update={"resources": suite.resources.model_copy(update={"job_time_limit_s": o.job_time_limit})}
        )
    sources: dict[str, dict] = {}
    if o.use_tuned:
        from .tuned import tuned_specs

        extra = tuned_specs(suite, o.out)
        if not extra:
            raise CmbenchError(
                f"--use-tuned: no tuned values for suite {suite.name} under {Path(o.out) / 'tuned'}; "
                f"run `cmbench tune {suite.name} --method M` first"
            )
        suite = suite.model_copy(update={"methods": [*suite.methods, *(s for s, _ in extra)]})
        sources = {s.display: src for s, src in extra}
        if methods:
            methods = [*methods, *(f"{m}-tuned" for m in methods if f"{m}-tuned" in sources)]
    return suite, methods, sources


def _check_writable(paths: Paths) -> None:
    """Fail before computing anything if the results or the cache cannot be written."""
    for where in (paths.results, paths.cache):
        try:
            where.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=where):
                pass
        except OSError as e:
            blocked = next((p for p in (where, *where.parents) if p.exists() and not p.is_dir()), None)
            why = f"{blocked} is a file, not a directory" if blocked else e.strerror
            raise CmbenchError(f"{where}: not writable ({why}); use another --out DIR") from None


def finetune_experts(
    suite_path: str | Path,
    *,
    seeds: int | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
    out: str | Path = ".",
    executor: str = "ray",
    store: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """``cmbench finetune``: build θ0, heads and every expert the suite needs (Ray jobs,
    cached); ``cmbench run`` then finds them."""
    suite = load_suite(suite_path)
    if suite.setting != "merge_stream":
        raise CmbenchError(f"{suite_path}: setting {suite.setting} trains inside each job; nothing to fine-tune")
    if suite.experts.source != "finetune":
        raise CmbenchError(
            f"{suite_path}: experts.source is {suite.experts.source}; set it to finetune "
            "to fine-tune experts with the suite's recipe"
        )
    paths = Paths(Path(out), store)
    paths.cache.mkdir(parents=True, exist_ok=True)
    cache = paths.store
    cache_store = open_store(cache)  # the parameter `store` is its location
    threads = suite.resources.cpus_per_job
    ex = make_executor(suite, workers, threads, ray_address, executor)
    seed_list = suite.seeds[:seeds] if seeds else suite.seeds
    try:
        jobs = [j for j in expand(suite) if j.seed in seed_list]
        trained = prepare_artefacts(suite, jobs, cache_store, cache, ex, log, lock=_lock_of(suite, paths.out))
    finally:
        ex.close()
    for s in seed_list:
        for t in suite.task_names():
            _, meta = SuiteArtefacts(suite, s, cache_store).expert(t)
            log(f"  seed {s} {t}: test accuracy {100 * meta['test_accuracy']:.1f}")
    return {"experts": len(seed_list) * len(suite.tasks), "trained": trained}


def _run(
    suite: Suite, todo: list[Job], n_jobs: int, skipped: int, paths: Paths, o: RunOptions, sources: dict
) -> dict[str, Any]:
    lock = _lock_of(suite, paths.out)
    cache, threads = paths.store, suite.resources.cpus_per_job
    store = open_store(cache)
    ex = make_executor(suite, o.workers, threads, o.ray_address, o.executor, o.retries, cache, o.dashboard)
    from .tracking import Tracker

    tracker = Tracker(o.tracking_uri or paths.tracking_uri, suite.name, tags={"suite_hash": suite.hash()}, log=o.log)
    failed, finished = 0, []
    try:
        # 1. artefacts, built once per seed and shared by every job (cached by content key);
        # every hub file read is verified against the output directory's lock, or pinned in it
        prepare_artefacts(suite, todo, store, cache, ex, lock=lock)
        if o.prepare_only:
            return {"jobs": n_jobs, "skipped": skipped, "ran": 0, "failed": 0}
        # 2. the jobs; each result is written the moment it arrives
        commit = git_commit()
        argsets = [(suite, job, cache, threads, lock[1] if lock else None) for job in todo]
        bar = tqdm(total=len(argsets), desc="jobs", unit="job", file=sys.stderr)
        for args, record, err in ex.map(run_job, argsets):
            job = args[1]
            path = paths.results / job.relpath
            if err is not None:
                failed += 1
                record = failure_record(suite, job, err)
                kept = keep_previous_result(path)
                o.log(
                    f"job failed: {job.label} seed={job.seed} order={job.order_index}: {error_line(err)}"
                    + (f" (its earlier result is kept as {kept})" if kept else "")
                )
            if lock and record.get("downloads"):
                pins.merge(lock[0], lock[1], record.pop("downloads"))
            record.update(hparam_source=sources.get(job.label, {"kind": "suite"}))
            record.update(
                git_commit=commit, finished_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            )
            write_result(path, record)
            tracker.log_job(record)
            finished.append(record)
            bar.update(1)
        bar.close()
    finally:
        tracker.close(paths.results if finished else None)
        ex.close()
    o.log(
        f"done: {len(todo) - failed} ran, {failed} failed, {skipped} skipped; results in {paths.results / suite.name}"
    )
    for line in run_summary(finished, paths):
        o.log(line)
    return {"jobs": n_jobs, "skipped": skipped, "ran": len(todo) - failed, "failed": failed}


def with_methods(suite: Suite, add: list[dict], where) -> Suite:
    """``suite`` with more method entries, validated exactly as the suite file's."""
    from pydantic import ValidationError

    data = suite.model_dump(mode="json")
    data["methods"] = [*data["methods"], *add]
    try:
        return Suite.model_validate(data)
    except ValueError as e:  # pydantic's ValidationError and the suite's field errors are ValueErrors
        msg = e.errors()[0]["msg"] if isinstance(e, ValidationError) else str(e).splitlines()[0]
        raise CmbenchError(f"--add: {msg.removeprefix('Value error, ')} (suite {where})") from None


def run_summary(records: list[dict], paths: Paths) -> list[str]:
    """This run's jobs per label (mean ACC and BWT over its seeds and orders), best first,
    and the command that renders the full report."""
    by: dict[str, list[dict]] = {}
    for r in records:
        if r.get("status") == "ok":
            by.setdefault(r["label"], []).append(r["metrics"])
    if not by:
        return []
    mean = lambda ms, k: sum(m[k] for m in ms) / len(ms)  # noqa: E731
    width = max(len(k) for k in by)
    lines = ["", f"{'method':<{width}}  {'n':>2}  {'ACC':>6}  {'BWT':>6}   (this run, %)"]
    for label, ms in sorted(by.items(), key=lambda kv: -mean(kv[1], "ACC")):
        lines.append(f"{label:<{width}}  {len(ms):>2}  {100 * mean(ms, 'ACC'):6.1f}  {100 * mean(ms, 'BWT'):6.1f}")
    from .report.outputs import is_default_results

    default = is_default_results(paths.results)
    lines += [
        "",
        "next: cmbench report"
        + ("" if default else f" --results {paths.out}")
        + "   (leaderboard.md and plots/"
        + ("" if default else f" in {paths.out}")
        + ")",
    ]
    return lines


__all__ = ["run_suite", "load_suite", "Paths"]
