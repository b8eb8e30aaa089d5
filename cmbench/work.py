"""What a worker runs, each under its limits: building a seed's θ0 and heads, a task's
expert, and one job. Each verifies the hub files it reads against the output directory's
lock (``known``; None: no lock) and returns those it read for the first time; the driver
writes the lock (``cmbench.pins``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from . import limits, pins
from .artefacts import SuiteArtefacts, expert_key, shipped_kinds, theta0_key, to_build
from .executors import drain, wait_for_gpu_memory
from .measure import measured
from .protocol import run
from .store import open_store
from .suite import Job, Suite


def time_limit(seconds: float | None):
    """The job's time limit (``cmbench.limits.time_limit`` with the job's message)."""
    return limits.time_limit(
        seconds,
        f"job exceeded resources.job_time_limit_s ({seconds or 0:g} s); its last completed step is saved: a rerun "
        "resumes there",
    )


def gpu_ready(suite: Suite) -> None:
    if suite.resources.gpus_per_job:
        wait_for_gpu_memory(suite.resources.gpu_memory_gb)


def artefact_limit(suite: Suite, what: str):
    """resources.job_time_limit_s bounds building an artefact too (θ0 of a runaway recipe)."""
    seconds = suite.resources.job_time_limit_s
    return limits.time_limit(
        seconds, f"building {what} exceeded resources.job_time_limit_s ({seconds or 0:g} s); check the suite's recipe"
    )


def prepare_theta0(suite: Suite, seed: int, cache: str, known: dict | None = None) -> dict:
    gpu_ready(suite)
    with pins.session(known) as found, artefact_limit(suite, f"θ0 and heads of seed {seed}"):
        art = SuiteArtefacts(suite, seed, open_store(cache))
        art.theta0()
        if suite.setting == "merge_stream":
            art.heads()
    return found


def prepare_expert(
    suite: Suite, seed: int, task: str, cache: str, known: dict | None = None, after: tuple[str, ...] | None = None
) -> dict:
    """``task``'s expert; a sequential one (``after``) with the chain before it, in one job."""
    gpu_ready(suite)
    what = f"the expert of {task} (seed {seed}" + (f", after {' > '.join(after)})" if after else ")")
    with pins.session(known) as found, artefact_limit(suite, what):
        SuiteArtefacts(suite, seed, open_store(cache)).expert(task, after)
    return found


def run_job(suite: Suite, job: Job, cache: str, threads: int, known: dict | None = None) -> dict:
    cost: dict = {}
    gpu_ready(suite)
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


def prepare_artefacts(
    suite: Suite, jobs: list[Job], store, cache: str, ex, log=None, lock: tuple[Path, dict] | None = None
) -> int:
    """θ0 and heads for the seeds of ``jobs`` and, in the merge stream, every task's expert and
    the sequential experts the jobs merge: built once as jobs on ``ex``, cached by content key
    and shared by every job. Returns how many experts were built; ``log`` (if given) hears how
    many were cached; ``lock``: the output directory and its pinned downloads (verified, and
    extended with what was read first)."""
    known = lock[1] if lock else None
    seeds = sorted({j.seed for j in jobs})
    # what to build, decided from the store before anything is built (an expert's key does
    # not depend on θ0 being built: the key is made of the suite's settings)
    t0 = [(suite, s, cache, known) for s in seeds if not store.has("theta0", theta0_key(suite, s))]
    todo = [
        (suite, s, t, cache, known)
        for s in seeds
        for t in suite.task_names()
        if suite.setting == "merge_stream" and not store.has("experts", expert_key(suite, s, t))
    ]
    build = to_build(suite, jobs, store)
    # a chain is built by one job, from its first missing expert on
    chains = [(suite, s, t, cache, known, after) for s, t, after in build.chain_ends()]
    n_seq = sum(e[2] is not None for e in build.experts)
    # what the store lacks and `to_build` does not (the suite ships it) is read, checked, not built: say so
    ships_theta0 = bool(t0) and not build.theta0
    shipped_note = ""
    if ships_theta0:  # heads too where the suite ships them
        shipped_note = (
            ", read from the shipped copies" if "heads" in shipped_kinds(suite) else ", θ0 read from its shipped copy"
        )
    independent = [e for e in build.experts if e[2] is None]
    ships_experts = bool(todo) and suite.experts.source == "finetune" and not independent
    found = drain(
        ex.map(prepare_theta0, t0),
        f"θ0 and heads ({len(t0)} seeds{shipped_note})",
        len(t0),
    )
    if log is not None:
        verb = "to read from the shipped copies" if ships_experts else "to fine-tune"
        log(f"suite {suite.name}: {len(seeds) * len(suite.tasks) - len(todo)} experts cached, {len(todo)} {verb}")
    verb = "loading experts" if suite.experts.source == "checkpoints" else "fine-tuning experts"
    if ships_experts:
        verb = "reading shipped experts"
    found += drain(ex.map(prepare_expert, todo), f"{verb} ({len(todo)})", len(todo))
    if chains:
        what = f"fine-tuning sequential experts ({n_seq} in {len(chains)} chains)"
        found += drain(ex.map(prepare_expert, chains), what, len(chains))
    for f in found if lock else []:  # one task at a time: two copies of one source are refused
        assert lock is not None
        pins.merge(lock[0], lock[1], f or {})
    return len(todo) + n_seq
