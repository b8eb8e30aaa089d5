"""Where a run's tasks execute: in this process (``LocalExecutor``) or on Ray, a local
instance or a cluster (``RayExecutor``: connection, shipping the method files, GPU
placement). Both map a function over argument tuples and yield (args, value, error) as
tasks finish; a task's failure is reported, never raised, so one job never stops a run.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, cast

from tqdm import tqdm

from . import CmbenchError
from .config import Config, applied, current
from .record import error_line
from .registry import baseline_dirs
from .suite import Suite


def worker_env() -> dict[str, str]:
    """What a worker needs from the driver's environment: the Hugging Face libraries' caches
    and offline switches, which those libraries read from the environment (cmbench's own
    settings travel as the job's ``Config``)."""
    env = {}
    for k in (
        "HF_HOME",
        "HF_HUB_CACHE",
        "HF_DATASETS_CACHE",
        "HF_HUB_OFFLINE",
        "HF_DATASETS_OFFLINE",
    ):
        if k in os.environ:
            env[k] = os.environ[k]
    return env


def _call(fn: Callable, args: tuple, threads: int, env: dict[str, str], config: Config) -> Any:
    """Worker-side wrapper: fix threads, hold the run's configuration (data root, downloads,
    method folders) for the job."""
    import warnings

    import torch

    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecations drown progress
    os.environ.update(env)
    torch.set_num_threads(threads)
    with applied(config):
        return fn(*args)


class LocalExecutor:
    def __init__(self, threads: int, config: Config | None = None):
        self.threads, self.config = threads, config or current()

    def map(self, fn: Callable, argsets: list[tuple]) -> Iterator[tuple[tuple, Any, BaseException | None]]:
        env = worker_env()
        for args in argsets:
            try:
                yield args, _call(fn, args, self.threads, env, self.config), None
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


def ship_baselines(staging: Path) -> tuple[Path, ...]:
    """Copy every folder methods are discovered in (``registry.baseline_dirs``) into
    ``staging`` (Ray uploads it as the jobs' working directory); the workers' method folders,
    relative to that directory."""
    import shutil

    rel = []
    for i, d in enumerate(baseline_dirs()):
        shutil.copytree(d, staging / "cmbench_methods" / str(i), ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        rel.append(Path(f"cmbench_methods/{i}"))
    return tuple(rel)


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
        config: Config | None = None,
    ):
        import ray

        self.ray = ray
        env, config = worker_env(), config or current()
        kwargs: dict[str, Any] = dict(logging_level="ERROR", log_to_driver=True, configure_logging=True)
        if address:
            # the user's method files travel with the jobs (Ray's runtime_env), not as driver paths
            self._staging = tempfile.TemporaryDirectory(prefix="cmbench-methods-")
            config = config.with_(baselines=ship_baselines(Path(self._staging.name)))
            connect_ray(address, runtime_env={"working_dir": self._staging.name}, **kwargs)
        else:
            if dashboard:
                _dashboard_available()
            ray.init(
                num_cpus=workers * threads,
                include_dashboard=dashboard,
                **cast(dict[str, Any], {"num_gpus": num_gpus} if num_gpus is not None else {}),
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
        strategy: Literal["SPREAD", "DEFAULT"] = "SPREAD" if address else "DEFAULT"
        self.remote = ray.remote(num_cpus=threads, num_gpus=gpus, max_retries=retries, scheduling_strategy=strategy)(
            _call
        )
        self.threads, self.env, self.config = threads, env, config

    def map(self, fn: Callable, argsets: list[tuple]):
        pending = {self.remote.remote(fn, args, self.threads, self.env, self.config): args for args in argsets}
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


def make_executor(
    suite: Suite,
    workers: int | None,
    threads: int,
    ray_address: str | None,
    executor: str,
    retries: int = 2,
    store: str | None = None,
    dashboard: bool = False,
):
    """The executor a run uses, its jobs holding the current configuration; on a cluster,
    ``store`` (the artefact store) must be one every node sees."""
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


def drain(results: Iterable, desc: str, total: int) -> list:
    """The tasks' return values, in completion order; the first failure stops the run."""
    if not total:
        return []
    out = []
    for _, value, err in tqdm(results, total=total, desc=desc, file=sys.stderr):
        if err is not None:
            raise CmbenchError(f"{desc}: {error_line(err)}")
        out.append(value)
    return out
