"""Runs a suite's jobs: artefacts first, then (method × seed × order) jobs, on Ray.

* Ray runs everything by default: a local instance sized by ``--workers``, or a cluster
  via ``--ray-address``. ``executor="local"`` runs in-process (debugging, tests).
* Each job fixes its torch thread count (``resources.cpus_per_job``) and its seeds, so a
  rerun gives the identical matrix whatever the number of workers.
* One JSON result per job, written atomically by the driver as soon as the job ends.
  A job whose result exists with the same key (``protocol.job_inputs``: what determines its
  numbers) is skipped; ``force`` recomputes. A killed run loses only the jobs in flight.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from filelock import FileLock, Timeout
from tqdm import tqdm

from . import CmbenchError, limits, pins
from .artefacts import SuiteArtefacts, expert_key, theta0_key
from .fingerprint import git_commit
from .measure import measured
from .registry import baseline_dirs
from .protocol import job_inputs, key_of, nan_to_none, run, with_content
from .record import BadResult, checksum, integrity, read_record
from .store import Store, atomic_write_bytes, open_store
from .suite import Job, Suite, expand, load_suite


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


def recorded_content(inputs: dict) -> dict[tuple[str, str], str]:
    """(kind, artefact key) -> content hash, as a result's inputs record them."""
    out = {}
    content = inputs.get("content") or {}
    for kind, key in (inputs.get("artefacts") or {}).items():
        if isinstance(key, dict):
            out.update({(kind, k): (content.get(kind) or {}).get(t) for t, k in key.items()})
        else:
            out[(kind, key)] = content.get(kind)
    return out


def current_inputs(suite: Suite, job: Job, store: Store, rec: dict | None = None) -> dict | None:
    """``job``'s inputs now, with each artefact's content hash read from the store, or, where
    the store does not hold that artefact (a fresh clone), the hash ``rec`` recorded for the
    same artefact key (None when neither knows one). ``cmbench verify`` proves such recorded
    hashes by rebuilding."""
    known = recorded_content((rec or {}).get("inputs") or {})
    return with_content(
        job_inputs(suite, job), lambda kind, key: store.content_hash(kind, key) or known.get((kind, key))
    )


def flatten(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Nested dicts as (key, ..., leaf) tuples, sorted."""
    if isinstance(value, dict):
        return [x for k, v in sorted(value.items()) for x in flatten(v, prefix + (k,))]
    return [prefix + (value,)]


def differing_inputs(now: dict, then: dict) -> list[str]:
    """The dotted names of the inputs (content hashes included) that differ."""
    a, b = ({x[:-1]: x[-1] for x in flatten(d)} for d in (now, then))
    return sorted(".".join(map(str, k)) for k in set(a) | set(b) if a.get(k) != b.get(k))


def stale_reason(path: Path, suite: Suite, job: Job, store: Store) -> str | None:
    """None when ``path`` holds a finished result of ``job`` as it would be computed now;
    otherwise why it must be (re)computed, in a few words."""
    if not path.exists() and not path.is_symlink():
        return "no result"
    try:
        rec = read_record(path)
    except BadResult:
        return "unreadable result"  # never trusted: recompute
    if rec["status"] != "ok":
        return "failed before"
    if integrity(rec) == "edited":
        return "content does not match its checksum"
    now = current_inputs(suite, job, store, rec)
    if now is not None and rec.get("key") == key_of(now):
        return None
    diff = differing_inputs(now or job_inputs(suite, job), rec.get("inputs") or {})
    return "inputs differ: " + (
        ", ".join(diff[:3]) + (f" and {len(diff) - 3} more" if len(diff) > 3 else "") if diff else "none recorded"
    )


def write_result(path: Path, record: dict) -> None:
    # through JSON once, so the checksum is of what a reader parses (tuples as lists, ...)
    record = json.loads(json.dumps(nan_to_none(record)))
    record.pop("R_checksum", None)
    record["checksum"] = checksum(record)
    payload = json.dumps(record, indent=1, sort_keys=True).encode() + b"\n"
    try:
        atomic_write_bytes(path, payload)
    except OSError as e:
        raise CmbenchError(f"{path}: cannot write result: {e.strerror}") from None


def keep_previous_result(path: Path) -> Path | None:
    """Before a failed job's record replaces a result that was computed (for other inputs: a
    changed suite or code), move that result aside as ``NAME.json.previous``: a failure never
    loses a computed result, and the report, which reads ``*.json``, does not show it as current."""
    try:
        ok = json.loads(path.read_text()).get("status") == "ok"
    except (OSError, ValueError, AttributeError):
        return None
    if not ok:
        return None
    kept = path.with_name(path.name + ".previous")
    os.replace(path, kept)
    return kept


# -- executors ----------------------------------------------------------------------------


def worker_env() -> dict[str, str]:
    """What a worker needs from the driver's environment: the project's baselines, the data
    root and whether downloads are allowed (so a cluster node sees the driver's settings)."""
    env = {"CMBENCH_BASELINES": os.pathsep.join(str(d) for d in baseline_dirs())}
    for k in (
        "CMBENCH_DATA_ROOT",
        "CMBENCH_ALLOW_DOWNLOAD",
        "HF_HOME",
        "HF_HUB_CACHE",
        "HF_DATASETS_CACHE",
        "HF_HUB_OFFLINE",
        "HF_DATASETS_OFFLINE",
    ):
        if k in os.environ:
            env[k] = os.environ[k]
    return env


def _call(fn: Callable, args: tuple, threads: int, env: dict[str, str]) -> Any:
    """Worker-side wrapper: fix threads, make the project's baselines discoverable."""
    import warnings

    import torch

    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecations drown progress
    os.environ.update(env)
    torch.set_num_threads(threads)
    return fn(*args)


class LocalExecutor:
    def __init__(self, threads: int):
        self.threads = threads

    def map(self, fn: Callable, argsets: list[tuple]) -> Iterator[tuple[tuple, Any, BaseException | None]]:
        env = worker_env()
        for args in argsets:
            try:
                yield args, _call(fn, args, self.threads, env), None
            except Exception as e:  # noqa: BLE001 - reported per job
                yield args, None, e

    def close(self):
        pass


# -- GPU placement ---------------------------------------------------------------------------
# Ray packs jobs onto GPUs by the fraction each asks for (gpus_per_job 0.25: four per GPU).
# Whether they fit is sized from a measured peak (resources.gpu_memory_gb): the driver
# refuses a fraction whose share of a GPU is smaller than the peak, and a job waits at start
# until its peak is free on its GPU (memory that Ray does not account for: another user's
# process, a neighbour outside the run).


def check_gpu_share(gpus_per_job: float, need_gb: float | None, gpu_gb: list[float]) -> None:
    """Refuse a placement in which a job's share of the smallest GPU is below its peak."""
    if not need_gb or not gpu_gb or not gpus_per_job:
        return
    share = min(gpus_per_job, 1.0) * min(gpu_gb)
    if share < need_gb:
        fit = max(1, int(min(gpu_gb) // need_gb))
        raise CmbenchError(
            f"resources.gpu_memory_gb is {need_gb:g} but gpus_per_job {gpus_per_job:g} of a "
            f"{min(gpu_gb):.0f} GB GPU is {share:.1f} GB; set gpus_per_job to {1 / fit:g} or more"
        )


def wait_for_gpu_memory(
    need_gb: float | None,
    timeout_s: float = 600.0,
    poll_s: float = 5.0,
    mem_get_info: Callable[[], tuple[int, int]] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> float:
    """Block until ``need_gb`` is free on this worker's GPU; seconds waited. One clear error
    after ``timeout_s``."""
    if not need_gb:
        return 0.0
    if mem_get_info is None:
        import torch

        mem_get_info = torch.cuda.mem_get_info
    waited = 0.0
    while True:
        free = mem_get_info()[0] / 2**30
        if free >= need_gb:
            return waited
        if waited >= timeout_s:
            raise CmbenchError(
                f"resources.gpu_memory_gb: {need_gb:g} GB never came free on this job's GPU within "
                f"{timeout_s:.0f} s ({free:.1f} GB free); lower gpus_per_job's sharing or free the GPU"
            )
        sleep(poll_s)
        waited += poll_s


def local_gpu_gb() -> list[float]:
    """The memory of each GPU this process sees (none without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_properties(i).total_memory / 2**30 for i in range(torch.cuda.device_count())]


def ship_baselines(staging: Path) -> str:
    """Copy every folder methods are discovered in (``registry.baseline_dirs``) into
    ``staging`` (Ray uploads it as the jobs' working directory); the worker-side
    CMBENCH_BASELINES, relative to that directory."""
    import shutil

    rel = []
    for i, d in enumerate(baseline_dirs()):
        shutil.copytree(d, staging / "cmbench_methods" / str(i), ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        rel.append(f"cmbench_methods/{i}")
    return os.pathsep.join(rel)


def _dashboard_available() -> None:
    try:
        import aiohttp  # noqa: F401 - what `ray[default]` adds for the dashboard
        import ray.dashboard  # noqa: F401
    except ImportError:
        raise CmbenchError(
            "--dashboard needs Ray's dashboard: pip install 'cmbench[dashboard]' (ray[default])"
        ) from None


def connect_ray(address: str, **kwargs) -> None:
    """Join a running Ray cluster, or fail within seconds with one line: nothing answering
    at the address, a missing or wrong authentication token, another Ray version."""
    import socket

    import ray

    if address != "auto":
        hostport = address.split("://", 1)[-1]
        host, _, port = hostport.rpartition(":")
        if not host or not port.isdigit():
            raise CmbenchError(f"--ray-address {address!r}: write HOST:PORT (the address `ray start --head` printed)")
        try:
            socket.create_connection((host, int(port)), timeout=3).close()
        except OSError as e:
            raise CmbenchError(
                f"--ray-address {address}: nothing answers there ({e.strerror or e}); start the head "
                "with `ray start --head` and pass the address it prints"
            ) from None
    # Ray enables token authentication only when it finds the cluster itself (address "auto");
    # against an explicit address a token cluster answers InvalidAuthToken until told to use
    # one: do what ray.init does for "auto" (Ray's own helper, tested with the pinned range)
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available as enable_token,
        )

        enable_token(warn_if_disabled=False)
    except ImportError:
        pass
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError) as e:
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "version" in str(e).lower():
            raise CmbenchError(
                f"--ray-address {address}: {text} (install the cluster's Ray version here, or "
                f"start the cluster with this Ray, {ray.__version__})"
            ) from None
        how = (
            "with the token from "
            + (
                "RAY_AUTH_TOKEN"
                if os.environ.get("RAY_AUTH_TOKEN")
                else os.environ.get("RAY_AUTH_TOKEN_PATH") or "~/.ray/auth_token"
            )
            if os.environ.get("RAY_AUTH_MODE") == "token"
            else "without an authentication token"
        )
        raise CmbenchError(
            f"--ray-address {address}: the cluster refused this driver ({how}); if it requires "
            "authentication, set RAY_AUTH_TOKEN to the output of `ray get-auth-token` on its head "
            f"node; Ray here is {ray.__version__}, and the cluster's must match"
        ) from None


class RayExecutor:
    """Jobs as Ray tasks: ``threads`` CPUs and ``gpus`` (fractions allowed) each, placed by
    Ray; a job whose worker process dies is retried ``retries`` times (an exception the job
    raises itself is not retried: it is recorded as failed with its reason). ``num_gpus``
    overrides the GPUs a local instance detects (tests simulate GPUs with it)."""

    def __init__(
        self,
        workers: int,
        threads: int,
        gpus: float,
        address: str | None,
        retries: int = 2,
        num_gpus: int | None = None,
        dashboard: bool = False,
    ):
        import ray

        self.ray = ray
        env = worker_env()
        kwargs: dict[str, Any] = dict(logging_level="ERROR", log_to_driver=True, configure_logging=True)
        if address:
            # the user's method files travel with the jobs (Ray's runtime_env), not as driver paths
            self._staging = tempfile.TemporaryDirectory(prefix="cmbench-methods-")
            env["CMBENCH_BASELINES"] = ship_baselines(Path(self._staging.name))
            connect_ray(address, runtime_env={"working_dir": self._staging.name}, **kwargs)
        else:
            if dashboard:
                _dashboard_available()
            ray.init(
                num_cpus=workers * threads,
                include_dashboard=dashboard,
                **({"num_gpus": num_gpus} if num_gpus is not None else {}),
                **kwargs,
            )
        most = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=0)
        if threads > most:  # Ray would wait for such a node forever
            ray.shutdown()
            raise CmbenchError(
                f"resources.cpus_per_job is {threads} but the largest node of the Ray cluster has {most:g} CPUs; "
                "lower it, or add a node that large"
            )
        have = ray.cluster_resources().get("GPU", 0)
        if gpus and have < min(gpus, 1.0):  # Ray would wait for a GPU forever
            ray.shutdown()
            raise CmbenchError(
                f"resources.gpus_per_job is {gpus:g} but the Ray cluster has {have:g} GPUs; "
                "run where GPUs are, or set gpus_per_job: 0"
            )
        # on a cluster, jobs are spread over the nodes (Ray's SPREAD) rather than packed onto the
        # first with a free CPU: every node works from the start, and a node lost costs fewer jobs
        strategy = "SPREAD" if address else "DEFAULT"
        self.remote = ray.remote(num_cpus=threads, num_gpus=gpus, max_retries=retries, scheduling_strategy=strategy)(
            _call
        )
        self.threads, self.env = threads, env

    def map(self, fn: Callable, argsets: list[tuple]):
        pending = {self.remote.remote(fn, args, self.threads, self.env): args for args in argsets}
        while pending:
            done, _ = self.ray.wait(list(pending), num_returns=1)
            ref = done[0]
            args = pending.pop(ref)
            try:
                yield args, self.ray.get(ref), None
            except Exception as e:  # noqa: BLE001 - reported per job
                cause = getattr(e, "cause", None)
                yield args, None, cause if isinstance(cause, BaseException) else e

    def check_store(self, store: str) -> None:
        """A directory store must be seen by every node of the cluster (a shared mount); an
        fsspec URL is shared by design. Refused with one line otherwise, before any job runs."""
        if "://" in store:
            return
        nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        if len(nodes) < 2:
            return
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        marker = Path(store) / f".node-check-{os.getpid()}-{time.time_ns()}"
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("")
        try:
            probe = self.ray.remote(num_cpus=0)(os.path.exists)
            seen = self.ray.get(
                [
                    probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
                        str(marker)
                    )
                    for n in nodes
                ],
                timeout=120,
            )
        finally:
            marker.unlink(missing_ok=True)
        blind = [n["NodeManagerAddress"] for n, ok in zip(nodes, seen) if not ok]
        if blind:
            raise CmbenchError(
                f"artefact store {store} is a directory of this machine that nodes {', '.join(blind)} "
                "do not see; pass --store a directory every node mounts, or an fsspec URL (s3://…)"
            )

    def close(self):
        self.ray.shutdown()
        if getattr(self, "_staging", None) is not None:
            self._staging.cleanup()


# -- the run --------------------------------------------------------------------------------


# Each task verifies the hub files it reads against the lock's entries (``known``; None: no
# lock) and returns those it read for the first time; the driver writes the lock (cmbench.pins).


def time_limit(seconds: float | None):
    """The job's time limit (``cmbench.limits.time_limit`` with the job's message)."""
    return limits.time_limit(
        seconds,
        f"job exceeded resources.job_time_limit_s ({seconds or 0:g} s); its last completed step is saved: a rerun "
        "resumes there",
    )


def _gpu_ready(suite: Suite) -> None:
    if suite.resources.gpus_per_job:
        wait_for_gpu_memory(suite.resources.gpu_memory_gb)


def _artefact_limit(suite: Suite, what: str):
    """resources.job_time_limit_s bounds building an artefact too (θ0 of a runaway recipe)."""
    seconds = suite.resources.job_time_limit_s
    return limits.time_limit(
        seconds, f"building {what} exceeded resources.job_time_limit_s ({seconds or 0:g} s); check the suite's recipe"
    )


def _prepare_theta0(suite: Suite, seed: int, cache: str, known: dict | None = None) -> dict:
    _gpu_ready(suite)
    with pins.session(known) as found, _artefact_limit(suite, f"θ0 and heads of seed {seed}"):
        art = SuiteArtefacts(suite, seed, open_store(cache))
        art.theta0()
        if suite.setting == "merge_stream":
            art.heads()
    return found


def _prepare_expert(suite: Suite, seed: int, task: str, cache: str, known: dict | None = None) -> dict:
    _gpu_ready(suite)
    with pins.session(known) as found, _artefact_limit(suite, f"the expert of {task} (seed {seed})"):
        SuiteArtefacts(suite, seed, open_store(cache)).expert(task)
    return found


def _run_job(suite: Suite, job: Job, cache: str, threads: int, known: dict | None = None) -> dict:
    cost: dict = {}
    _gpu_ready(suite)
    with pins.session(known) as found, measured(cost, "job"), time_limit(suite.resources.job_time_limit_s):
        record = run(suite, job, open_store(cache), threads)
    return {**record, "resources": cost["job"], "ran_on": where_ran(), **({"downloads": found} if found else {})}


def where_ran() -> dict[str, str]:
    """The machine (and Ray node) a job ran on: provenance, never part of a key."""
    import socket

    out = {"host": socket.gethostname()}
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        out["ray_node"] = ray.get_runtime_context().get_node_id()
    return out


def _lock_of(suite: Suite, out: Path) -> tuple[Path, dict] | None:
    """The output directory's lock and its entries; none for a rehearsal (its stand-ins are
    generated, not downloaded)."""
    return None if suite.rehearsal else (out, pins.read(out))


def _error_line(e: BaseException) -> str:
    if isinstance(e, CmbenchError):
        return str(e)
    return f"{type(e).__name__}: {e}"


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


def run_suite(
    suite_path: str | Path,
    *,
    methods: list[str] | None = None,
    skip: list[str] | None = None,
    seeds: int | None = None,
    orders: int | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
    out: str | Path = ".",
    force: bool = False,
    dry_run: bool = False,
    tracking_uri: str | None = None,
    executor: str = "ray",
    use_tuned: bool = False,
    retries: int = 2,
    prepare_only: bool = False,
    store: str | None = None,
    log: Callable[[str], None] = print,
    dashboard: bool = False,
    job_time_limit: float | None = None,
    add: list[dict] | None = None,
    accept_cost: bool = False,
    allow_download: bool | None = None,
) -> dict[str, Any]:
    """Run a suite's jobs. ``use_tuned``: also run ``<label>-tuned`` rows with the values
    ``cmbench tune`` chose; ``retries``: times a job is retried after its worker dies;
    ``prepare_only``: build the artefacts (θ0, heads, experts) the jobs need and stop;
    ``job_time_limit``: seconds, overrides the suite's ``resources.job_time_limit_s``;
    ``add``: method entries (as in a suite's ``methods:``) added to this run, validated as
    the suite's are; only they run unless ``methods`` names others."""
    suite = load_suite(suite_path)
    if add:
        suite = with_methods(suite, add, suite_path)
        methods = methods or [m.get("label") or m["name"] for m in add]
    if job_time_limit is not None:
        if not job_time_limit > 0:
            raise CmbenchError(f"--job-time-limit {job_time_limit}: give a positive number of seconds")
        suite = suite.model_copy(
            update={"resources": suite.resources.model_copy(update={"job_time_limit_s": job_time_limit})}
        )
    sources: dict[str, dict] = {}
    if use_tuned:
        from .tuned import tuned_specs

        extra = tuned_specs(suite, out)
        if not extra:
            raise CmbenchError(
                f"--use-tuned: no tuned values for suite {suite.name} under {Path(out) / 'tuned'}; "
                f"run `cmbench tune {suite.name} --method M` first"
            )
        suite = suite.model_copy(update={"methods": [*suite.methods, *(s for s, _ in extra)]})
        sources = {s.display: src for s, src in extra}
        if methods:
            methods = [*methods, *(f"{m}-tuned" for m in methods if f"{m}-tuned" in sources)]
    jobs = expand(suite, methods, seeds, orders, skip)
    paths = Paths(Path(out), store)
    threads = suite.resources.cpus_per_job

    todo, skipped, why = [], 0, {}
    store = open_store(paths.store)
    for job in jobs:
        why[job] = "--force" if force else stale_reason(paths.results / job.relpath, suite, job, store)
        if why[job] is None:
            skipped += 1
        else:
            todo.append(job)
    counts = Counter(why[j].split(":")[0] for j in todo)
    log(
        f"suite {suite.name} (hash {suite.hash()}): {len(jobs)} jobs, {skipped} up to date, {len(todo)} to run"
        + (f" ({', '.join(f'{n} {r}' for r, n in counts.most_common())})" if todo else "")
    )
    if dry_run:
        from .plan import describe

        for job in todo:
            log(
                f"  would run {job.label} seed={job.seed} order={job.order_index}: {' > '.join(job.order)} [{why[job]}]"
            )
        for line in describe(suite, todo, store):
            log(line)
        return {"jobs": len(jobs), "skipped": skipped, "ran": 0, "failed": 0}
    if prepare_only:
        todo = list(jobs)  # the artefacts of every job, whether or not its result exists
    if not todo:
        return {"jobs": len(jobs), "skipped": skipped, "ran": 0, "failed": 0}
    from . import plan

    # downloads first: offline unless allowed, and a run that needs what is not here says all
    # of it at once instead of failing on the first file a worker cannot find
    if allow_download is None:
        from .models.clip import allow_download as allowed

        allow_download = allowed()
    missing = [] if allow_download else plan.missing_downloads(suite)
    if missing:
        raise CmbenchError(
            f"suite {suite.name} reads what is not on this machine, and downloads are off: "
            + "; ".join(m.replace(" (--allow-download)", "") for m in missing)
            + f". Rerun with --allow-download to fetch them, or put them in the local caches "
            f"(`cmbench run {suite.name} --dry-run` lists each)"
        )
    # what the run would cost and hold, refused before anything is built when it cannot be
    # meant (a cluster's nodes are not this machine: the memory check is for local runs)
    if suite.rehearsal is None:  # a rehearsal measures at capped sizes: its cost is its point
        plan.check_cost(suite, plan.total_cost(suite, todo, store), accept_cost)
    if not ray_address:
        plan.check_memory(suite, plan.memory_estimate(suite))

    for where in (paths.results, paths.cache):  # fail before computing anything if either cannot be written
        try:
            where.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=where):
                pass
        except OSError as e:
            blocked = next((p for p in (where, *where.parents) if p.exists() and not p.is_dir()), None)
            why = f"{blocked} is a file, not a directory" if blocked else e.strerror
            raise CmbenchError(f"{where}: not writable ({why}); use another --out DIR") from None
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
    except BaseException:
        lock.release()
        raise
    try:
        return _run(
            suite,
            todo,
            jobs,
            skipped,
            paths,
            workers,
            threads,
            ray_address,
            executor,
            tracking_uri,
            log,
            sources,
            retries,
            prepare_only,
            dashboard,
        )
    finally:
        lock.release()


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
    store = open_store(cache)
    threads = suite.resources.cpus_per_job
    ex = _executor(suite, workers, threads, ray_address, executor)
    seed_list = suite.seeds[:seeds] if seeds else suite.seeds
    try:
        trained = _prepare_artefacts(suite, seed_list, store, cache, ex, log, lock=_lock_of(suite, paths.out))
    finally:
        ex.close()
    for s in seed_list:
        for t in suite.task_names():
            _, meta = SuiteArtefacts(suite, s, store).expert(t)
            log(f"  seed {s} {t}: test accuracy {100 * meta['test_accuracy']:.1f}")
    return {"experts": len(seed_list) * len(suite.tasks), "trained": trained}


def _executor(
    suite: Suite,
    workers: int | None,
    threads: int,
    ray_address: str | None,
    executor: str,
    retries: int = 2,
    store: str | None = None,
    dashboard: bool = False,
):
    """The executor a run uses; on a cluster, ``store`` (the artefact store) must be one every
    node sees."""
    workers = workers or max(1, (os.cpu_count() or 1) // threads)
    if not ray_address:  # a cluster's GPUs are not visible from here; each job still waits for its peak
        check_gpu_share(suite.resources.gpus_per_job, suite.resources.gpu_memory_gb, local_gpu_gb())
        if threads > (os.cpu_count() or 1):
            raise CmbenchError(
                f"resources.cpus_per_job is {threads} but this machine has {os.cpu_count()} cores; lower it, or "
                "run on a cluster whose nodes have that many (--ray-address)"
            )
    if executor == "ray":
        ex = RayExecutor(workers, threads, suite.resources.gpus_per_job, ray_address, retries, dashboard=dashboard)
        if store is not None:
            try:
                ex.check_store(store)
            except BaseException:
                ex.close()
                raise
        return ex
    return LocalExecutor(threads)


def _prepare_artefacts(
    suite: Suite, seeds: list[int], store, cache: str, ex, log=None, lock: tuple[Path, dict] | None = None
) -> int:
    """θ0 and heads for ``seeds`` and, in the merge stream, every task's expert: built once
    as jobs on ``ex``, cached by content key and shared by every job. Returns how many
    experts were built; ``log`` (if given) hears how many were cached; ``lock``: the output
    directory and its pinned downloads (verified, and extended with what was read first)."""
    known = lock[1] if lock else None
    t0 = [(suite, s, cache, known) for s in seeds if not store.has("theta0", theta0_key(suite, s))]
    found = _drain(ex.map(_prepare_theta0, t0), f"θ0 and heads ({len(t0)} seeds)", len(t0))
    todo = [
        (suite, s, t, cache, known)
        for s in seeds
        for t in suite.task_names()
        if suite.setting == "merge_stream" and not store.has("experts", expert_key(suite, s, t))
    ]
    if log is not None:
        log(f"suite {suite.name}: {len(seeds) * len(suite.tasks) - len(todo)} experts cached, {len(todo)} to fine-tune")
    verb = "loading experts" if suite.experts.source == "checkpoints" else "fine-tuning experts"
    found += _drain(ex.map(_prepare_expert, todo), f"{verb} ({len(todo)})", len(todo))
    for f in found if lock else []:  # one task at a time: two copies of one source are refused
        pins.merge(lock[0], lock[1], f or {})
    return len(todo)


def _run(
    suite,
    todo,
    jobs,
    skipped,
    paths,
    workers,
    threads,
    ray_address,
    executor,
    tracking_uri,
    log,
    sources=None,
    retries=2,
    prepare_only=False,
    dashboard=False,
):
    cache = paths.store
    store = open_store(cache)
    ex = _executor(suite, workers, threads, ray_address, executor, retries, store=cache, dashboard=dashboard)
    from .tracking import Tracker

    tracker = Tracker(tracking_uri or paths.tracking_uri, suite.name, tags={"suite_hash": suite.hash()}, log=log)
    failed, finished = 0, []
    try:
        # 1. artefacts, built once per seed and shared by every job (cached by content key);
        # every hub file read is verified against the output directory's lock, or pinned in it
        lock = _lock_of(suite, paths.out)
        _prepare_artefacts(suite, sorted({j.seed for j in todo}), store, cache, ex, lock=lock)

        if prepare_only:
            return {"jobs": len(jobs), "skipped": skipped, "ran": 0, "failed": 0}
        # 2. the jobs; each result is written the moment it arrives
        commit = git_commit()
        argsets = [(suite, job, cache, threads, lock[1] if lock else None) for job in todo]
        bar = tqdm(total=len(argsets), desc="jobs", unit="job", file=sys.stderr)
        for args, record, err in ex.map(_run_job, argsets):
            job = args[1]
            path = paths.results / job.relpath
            if err is not None:
                failed += 1
                record = {
                    "status": "failed",
                    "error": _error_line(err),
                    "suite": job.suite,
                    "suite_hash": job.suite_hash,
                    "method": job.method,
                    "label": job.label,
                    "hparams": dict(job.hparams),
                    "seed": job.seed,
                    "order_index": job.order_index,
                    "tasks": list(job.order),
                    "setting": suite.setting,
                    "key": None,
                    "inputs": job_inputs(suite, job),
                    "traceback": "".join(traceback.format_exception(err))[-4000:],
                }
                kept = keep_previous_result(path)
                log(
                    f"job failed: {job.label} seed={job.seed} order={job.order_index}: {_error_line(err)}"
                    + (f" (its earlier result is kept as {kept})" if kept else "")
                )
            if lock and record.get("downloads"):
                pins.merge(lock[0], lock[1], record.pop("downloads"))
            record.update(hparam_source=(sources or {}).get(job.label, {"kind": "suite"}))
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
    log(f"done: {len(todo) - failed} ran, {failed} failed, {skipped} skipped; results in {paths.results / suite.name}")
    for line in run_summary(finished, paths):
        log(line)
    return {"jobs": len(jobs), "skipped": skipped, "ran": len(todo) - failed, "failed": failed}


def with_methods(suite: Suite, add: list[dict], where) -> Suite:
    """``suite`` with more method entries, validated exactly as the suite file's."""
    from pydantic import ValidationError

    from .suite import _FieldError

    data = suite.model_dump(mode="json")
    data["methods"] = [*data["methods"], *add]
    try:
        return Suite.model_validate(data)
    except (ValidationError, _FieldError, ValueError) as e:
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


def _drain(results: Iterable, desc: str, total: int) -> list:
    """The tasks' return values, in completion order; the first failure stops the run."""
    if not total:
        return []
    out = []
    for _, value, err in tqdm(results, total=total, desc=desc, file=sys.stderr):
        if err is not None:
            raise CmbenchError(f"{desc}: {_error_line(err)}")
        out.append(value)
    return out


__all__ = ["run_suite", "load_suite", "Paths"]
