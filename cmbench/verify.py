"""``cmbench verify``: recompute committed jobs from scratch and compare them with their files.

Each selected result is recomputed cold in a temporary directory (θ0, heads and experts
rebuilt from the suite's recipes, or read from the copies a suite ships, checked against
their content hashes; then the job itself) and its R and E are compared cell by cell with
the committed ones:

* **identically** when the result was computed with the running torch version on the
  running device type from the artefacts it recorded (byte for byte): jobs are seeded and
  fix their thread count, so a CPU rerun is bitwise the same;
* otherwise (another torch version, other CPU kernels, or artefacts that came back with
  other bytes than the result recorded: built on another machine and not shipped)
  **within ``TOLERANCE_IMAGES`` flipped predictions per cell** (a cell counts
  correct test images, so a flip moves it by 1/n_test: a difference must be a whole number
  of images, |ΔR|·n_test, and at most the setting's tolerance). The bounds are measured,
  not chosen: see ``TOLERANCE_IMAGES``. Results computed on a GPU are always
  compared this way: cuDNN/cuBLAS kernels differ between GPU models and library versions,
  and some are not deterministic run to run, so a GPU result is reproducible only to a
  tolerance.

Verify also checks each result's key against the code as it is now: a result whose inputs
differ (a method or a component version changed, and the result was not recomputed) is
reported **stale**, naming the inputs that differ. Rebuilt artefacts are compared with the
content hashes the results recorded, which is what lets a fresh clone trust those hashes.

Exit status: 0 when every checked job matches and is current, else 1.
"""

from __future__ import annotations

import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import torch

from . import CmbenchError
from . import registry
from .artefacts import load_tasks
from .fingerprint import method_fingerprint
from .models import device_type
from .record import nan_to_none
from .results import load_results
from .executors import make_executor
from .keys import flatten, recorded_content, stale_reason
from .work import prepare_artefacts, run_job
from .store import open_store
from .suite import Job, LoRA, Suite, load_suite, suite_named, training_field
from .verified import VerifyLog

# Largest per-cell difference, in whole test images, accepted when a result is recomputed
# in another environment (another machine's CPU kernels, another torch version) or on a
# GPU, by setting: the largest difference measured, plus a quarter, rounded up. Measured
# (docs/keys.md): the 24 seed-0, order-0 jobs of both micro suites,
# committed from another machine, recomputed cold here with torch 2.15.0 and 2.14.1: at
# most 2 images per cell in the merge stream, 44 in train-then-merge. A merge-stream job
# merges fixed experts, so a rounding difference flips few predictions; a train-then-merge
# job fine-tunes every task from the merged model, and full fine-tuning on 108-image tasks
# amplifies it (the LoRA jobs came back identical). A tolerance is per cell and never
# admits a fraction of an image: that would be another test split, not flipped predictions.
TOLERANCE_IMAGES = {"merge_stream": 3, "train_then_merge": 55}
# the content hash of an artefact a result consumed but did not record (results written
# before keys held content hashes recorded only the experts'); never equal to a real hash
UNRECORDED = "unrecorded"
# how far from a whole number of test images a float32-rounded difference may be
WHOLE_IMAGE_SLACK = 0.05
# a new (suite, seed) in a sample costs its cold artefacts (θ0, heads, experts), unless the
# suite ships them; the merge micro suite's take ≈ 6 min on one core, so the sample prefers
# seeds it already has. A job merging sequential experts also fine-tunes its order's chain
# (never shipped): about as much again (micro-digits-merge, seed 2: 698 s for both).
_NEW_SEED_COST_S = 360.0
_NEW_CHAIN_COST_S = 360.0


_LABEL = {None: "ok", "mismatched": "MISMATCH", "stale": "STALE"}


def requirements(rec: dict) -> set[tuple]:
    """What a sample must cover: every suite, setting and harness component version."""
    comps = (rec.get("inputs") or {}).get("components") or {}
    return {("suite", rec["suite"]), ("setting", rec["setting"]), *flatten(comps, ("component",))}


def choose_sample(recs: list[dict], n: int, shipped: frozenset[str] = frozenset()) -> list[dict]:
    """At least one job per suite, setting and component version, the cheapest first (a
    job's recorded time, plus the cold artefacts of a seed the sample does not have yet,
    unless its suite is in ``shipped``, and the sequential chain of an order it does not
    have yet); then up to ``n`` jobs, the cheapest of labels not yet checked first (more
    code covered for the same time)."""
    chosen: list[dict] = []
    covered: set[tuple] = set()
    groups: set[tuple] = set()  # (suite, seed) whose artefacts the sample builds
    chains: set[tuple] = set()  # (suite, seed, order) whose sequential chain it fine-tunes
    labels: set[tuple] = set()

    def chain(r: dict) -> tuple | None:
        return (r["suite"], r["seed"], r["order_index"]) if r.get("experts") == "sequential" else None

    def cost(r: dict) -> tuple:
        extra = 0.0 if (r["suite"], r["seed"]) in groups or r["suite"] in shipped else _NEW_SEED_COST_S
        if (c := chain(r)) is not None and c not in chains:
            extra += _NEW_CHAIN_COST_S
        return (r["suite"], r["label"]) in labels, r["timings"]["job_s"] + extra, r["_path"]

    pool = list(recs)
    need = set().union(*(requirements(r) for r in recs)) if recs else set()
    while pool and (covered != need or len(chosen) < n):
        useful = [r for r in pool if requirements(r) - covered] if covered != need else pool
        pick = min(useful, key=cost)
        pool.remove(pick)
        chosen.append(pick)
        covered |= requirements(pick)
        groups.add((pick["suite"], pick["seed"]))
        if (c := chain(pick)) is not None:
            chains.add(c)
        labels.add((pick["suite"], pick["label"]))
    return chosen


def inexact_because(rec: dict, suite: Suite) -> str | None:
    """Why a recomputation of ``rec`` here need not be bitwise identical, or None when it
    must be: on the CPU, with the torch version and the CPU kernels (the instruction set
    torch dispatches to) the result was made with."""
    if rec["inputs"]["device"] != "cpu" or device_type(suite) != "cpu":
        return f"computed on {rec['inputs']['device']}, recomputed on {device_type(suite)}"
    here = {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    for k, v in here.items():
        then = rec["versions"].get(k)
        if then != v:
            return f"{k} {then} committed, {v} here" if then else f"{k} not recorded in the result, {v} here"
    return None


def rebuilt_because(rec: dict, store) -> str | None:
    """Why a recomputation of ``rec`` need not be bitwise identical although torch and the
    CPU kernels match: artefacts it consumed were rebuilt here with other bytes than it
    recorded (fine-tuned on another machine: CPUs of one instruction set still round the
    last bits differently), or None when every recorded artefact came back byte for byte."""
    known, _ = _recorded_hashes([rec])
    differ = sorted({kind for (kind, key), h in known.items() if h is not None and store.content_hash(kind, key) != h})
    return f"{', '.join(differ)} rebuilt here with other bytes than the result recorded" if differ else None


def job_from_record(suite: Suite, rec: dict) -> Job:
    """The job a result file describes, with the method's code as it is now."""
    lora = LoRA.model_validate(rec["lora"]).model_dump_json() if rec.get("lora") else None
    return Job(
        suite.name,
        rec["suite_hash"],
        rec["method"],
        rec["label"],
        tuple(sorted(rec["hparams"].items())),
        lora,
        method_fingerprint(registry.get(rec["method"])),
        rec["seed"],
        rec["order_index"],
        tuple(rec["tasks"]),
        # the method's own training fields (a full-parameter row's lr), as the result recorded them
        training_field(rec.get("training")),
        rec.get("experts", "independent"),
    )


def cell_differences(committed: dict, fresh: dict, n_test: dict[str, int]) -> list[tuple[str, float, float, float]]:
    """Every cell of R (row by row), then of E, where the two results differ:
    (cell, committed, recomputed, |difference| in test images; -1 where one is undefined)."""
    fresh = nan_to_none(fresh)  # as its file would hold it: an unmeasured cell is null
    if len(fresh["R"]) != len(committed["R"]):
        return [(f"R ({len(committed['R'])} rows committed, {len(fresh['R'])} recomputed)", 0.0, 0.0, -1.0)]
    tasks = committed["tasks"]
    cells = [
        (f"R[{t}, {task}]", row_c[j], row_f[j], task)
        for t, (row_c, row_f) in enumerate(zip(committed["R"], fresh["R"]))
        for j, task in enumerate(tasks)
    ]
    if committed.get("E") is not None:
        cells += [(f"E[{task}]", c, f, task) for task, c, f in zip(tasks, committed["E"], fresh.get("E") or [])]
    return [
        (name, c, f, -1.0 if c is None or f is None else abs(c - f) * n_test[task])
        for name, c, f, task in cells
        if c != f
    ]


def _whole(images: float) -> bool:
    # accuracies are stored as float32 means: c/n to ~1e-7, a few hundredths of an image at n = 50k
    return abs(images - round(images)) < WHOLE_IMAGE_SLACK


def first_difference(
    diffs: list[tuple[str, float, float, float]], n_test_of: Callable[[str], int], tolerance: int | None
) -> str | None:
    """The first cell the rule rejects, in one line (None: all accepted). ``tolerance`` None:
    any difference; else a difference must be a whole number of flipped test images, at
    most ``tolerance`` (a cell moved by a fraction of an image was measured on another
    test split, not on the same images with a few predictions flipped)."""
    for name, c, f, images in diffs:
        if images < 0:
            return f"{name}: committed {c}, recomputed {f}"
        if tolerance is None or not _whole(images) or round(images) > tolerance:
            amount = (
                f"{round(images)} of {n_test_of(name)} test images"
                if _whole(images)
                else f"{images:.2f} of {n_test_of(name)} test images, not a whole number"
            )
            rule = "compared exactly" if tolerance is None else f"tolerance {tolerance} whole images"
            return f"{name}: committed {c:.4f}, recomputed {f:.4f} ({amount}; {rule})"
    return None


def verify(
    results_dir: str | Path = "results",
    *,
    suites: list[str] | None = None,
    methods: list[str] | None = None,
    sample: int | None = None,
    workers: int | None = None,
    executor: str = "ray",
    log: Callable[[str], None] = print,
) -> dict:
    """Recompute the selected committed jobs cold and compare them (see the module doc)."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise CmbenchError(f"{results_dir}: no results directory; pass --results DIR")
    # --suite: names, or suite files (the only places a suite is loaded from besides suites/)
    files = [Path(x) for x in suites or [] if x.endswith((".yaml", ".yml")) or Path(x).is_file()]
    names = {x for x in suites or [] if Path(x) not in files} | {load_suite(f).name for f in files}
    # a file that is not a valid result is refused; one whose content differs from its checksum
    # is what verify exists to catch: compared, not refused
    recs = [r for r in load_results(results_dir, check_r=False) if r["status"] == "ok"]
    if suites:
        recs = [r for r in recs if r["suite"] in names]
    if methods:
        recs = [r for r in recs if r["label"] in methods or r["method"] in methods]
    if not recs:
        wanted = " and ".join(f"{flag} {','.join(v)}" for flag, v in (("--suite", suites), ("--methods", methods)) if v)
        raise CmbenchError(
            f"{results_dir}: no finished results"
            + (f" match {wanted}" if wanted else "")
            + " (its folders are <suite>/<label>/)"
        )
    total = len(recs)
    if sample is not None:
        ships = frozenset(n for n in {r["suite"] for r in recs} if suite_named(n, files)[1].shipped)
        recs = choose_sample(recs, sample, ships)
    t0 = time.perf_counter()
    log(
        f"verify: {len(recs)} of {total} committed jobs, recomputed cold (θ0, heads, experts rebuilt, or read "
        "from the suite's shipped copies); "
        f"here torch {torch.__version__}"
    )
    by_suite: dict[str, list[dict]] = defaultdict(list)
    for r in recs:
        by_suite[r["suite"]].append(r)
    # each job's outcome, counted once: stale (its key no longer matches the code) before a
    # mismatch of its recomputed numbers
    outcome: dict[str, str] = {}
    record = VerifyLog(results_dir)
    with tempfile.TemporaryDirectory(prefix="cmbench-verify-") as tmp:
        for name, rs in sorted(by_suite.items()):
            _verify_suite(name, rs, files, Path(tmp) / name, workers, executor, log, outcome, record)
    counts = {k: sorted(f for f, v in outcome.items() if v == k) for k in ("mismatched", "stale")}
    log(
        f"verify: {len(recs) - len(outcome)} ok, {len(counts['mismatched'])} mismatched, "
        f"{len(counts['stale'])} stale, in {time.perf_counter() - t0:.0f} s; recorded in {record.path}"
    )
    return {"checked": len(recs), **counts}


def _verify_suite(
    name: str, recs: list[dict], files: list[Path], tmp: Path, workers, executor, log, outcome, record
) -> None:
    path, suite = suite_named(name, files)
    rel = {r["_path"]: str(Path(r["_path"]).relative_to(Path(r["_path"]).parents[2])) for r in recs}

    def report(r: dict, kind: str | None, line: str) -> None:
        f = rel[r["_path"]]
        if kind:
            outcome.setdefault(f, kind)
        log(f"  {_LABEL[kind]:<10}{f}: {line}")
        record.add(Path(r["_path"]), f, kind is None and f not in outcome, line)

    if any(r["suite_hash"] != suite.hash() for r in recs):
        for r in recs:
            report(r, "stale", f"suite hash {r['suite_hash']}, {path} now hashes to {suite.hash()}")
        return
    store = open_store(str(tmp / "cache"))
    jobs: dict[Job, dict] = {}
    for r in recs:
        if not r.get("inputs"):
            report(r, "stale", "no inputs recorded (written before results were keyed by them)")
            continue
        orders = suite.orders_for(r["seed"]) if r["seed"] in suite.seeds else []
        if r["order_index"] >= len(orders) or list(orders[r["order_index"]]) != r["tasks"]:
            why = (
                f"seed {r['seed']} is not a seed of suite {suite.name} ({suite.seeds})"
                if not orders
                else f"order {r['order_index']} of seed {r['seed']} is not {' > '.join(r['tasks'])} in {path}"
            )
            report(r, "mismatched", f"not a job of the suite: {why}")
            continue
        job = job_from_record(suite, r)
        reason = stale_reason(Path(r["_path"]), suite, job, store)
        if reason:
            report(r, "stale", f"its key no longer matches the code ({reason})")
        jobs[job] = r
    if not jobs:
        return
    threads = suite.resources.cpus_per_job
    ex = make_executor(suite, workers, threads, None, executor)
    try:
        seeds = sorted({j.seed for j in jobs})
        t0 = time.perf_counter()
        prepare_artefacts(suite, list(jobs), store, str(store.root), ex)
        log(f"  {name}: artefacts of seed(s) {seeds} ready in {time.perf_counter() - t0:.0f} s")
        _compare_artefacts(suite, list(jobs.values()), store, log)
        n_test = {n: len(td.test) for n, td in load_tasks(suite, seeds[0]).items()}  # sizes: any seed's

        def n_test_of(cell: str) -> int:
            return n_test[cell.split("[")[1].rstrip("]").split(", ")[-1]]

        for args, fresh, err in ex.map(run_job, [(suite, j, str(store.root), threads) for j in jobs]):
            r = jobs[args[1]]
            if err is not None:
                report(r, "mismatched", f"recomputing failed: {type(err).__name__}: {err}")
                continue
            because = inexact_because(r, suite) or rebuilt_because(r, store)
            diffs = cell_differences(r, fresh, n_test)
            tolerance = TOLERANCE_IMAGES[suite.setting]
            bad = first_difference(diffs, n_test_of, None if because is None else tolerance)
            if bad:
                report(r, "mismatched", bad + (f"; {because}" if because else ""))
            elif not diffs:
                report(r, None, f"identical ({fresh['timings']['job_s']:.0f} s)")
            else:
                report(
                    r,
                    None,
                    f"{len(diffs)} cells differ, by at most {max(d[3] for d in diffs):.0f} test images "
                    f"(tolerance {tolerance}: {because}) ({fresh['timings']['job_s']:.0f} s)",
                )
    finally:
        ex.close()


def _recorded_hashes(recs: list[dict]) -> tuple[dict[tuple[str, str], str | None], list[str]]:
    """The content hashes ``recs`` recorded for their artefacts, (kind, key) -> hash (None:
    unknown), and the kinds they consumed without recording one (``UNRECORDED``)."""
    known: dict[tuple[str, str], str | None] = {}
    for r in recs:
        known.update(recorded_content(r.get("inputs") or {}))
    unrecorded = sorted({kind for (kind, _), h in known.items() if h == UNRECORDED})
    return {k: h for k, h in known.items() if h != UNRECORDED}, unrecorded


def _compare_artefacts(suite: Suite, recs: list[dict], store, log) -> None:
    """Say whether the rebuilt (or shipped) artefacts have the content hashes the results recorded."""
    for seed in sorted({r["seed"] for r in recs}):
        known, unrecorded = _recorded_hashes([r for r in recs if r["seed"] == seed])
        # an unknown hash (None) never counts as the same as a missing artefact's
        same = sum(h is not None and store.content_hash(kind, key) == h for (kind, key), h in known.items())
        parts = []
        if known:
            kinds = ", ".join(sorted({kind for kind, _ in known}))
            how = "shipped or rebuilt" if suite.shipped else "rebuilt"
            parts.append(
                f"{same} of {len(known)} {how} artefacts ({kinds}) have the recorded content hash"
                + ("" if same == len(known) else " (bytes differ; the jobs' numbers are compared below)")
            )
        if unrecorded:
            parts.append(f"{', '.join(unrecorded)}: no content hash recorded (results predate content keys)")
        log(f"  {suite.name} seed {seed}: " + "; ".join(parts))


__all__ = ["verify", "choose_sample", "first_difference", "TOLERANCE_IMAGES"]
