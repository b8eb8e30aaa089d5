"""The continual loop, owned once by the harness.

Merge stream: θ0 and T experts, each fine-tuned independently from θ0, arrive one at a
time in the job's order. After every step (and once before any, row 0 = θ0) the merged
model is evaluated on *all* T tasks:

    R[t, j] = accuracy of M_t on task j,   t = 0..T,  j in arrival order,

plus each expert's own accuracy E[j]. Methods never see the loop or any test split.
"""

from __future__ import annotations

import math
import platform
import time
from typing import Any

import torch

from . import CmbenchError, __version__, metrics
from . import methods as methods_mod
from .artefacts import SuiteArtefacts, Store, load_tasks
from .models import accuracy, create_backbone
from .suite import Job, Suite
from .tensors import StateDict, first_nonfinite, nbytes


class Evaluator:
    """Evaluates a backbone state dict on every task's test split with its frozen head."""

    def __init__(self, suite: Suite, heads, order: list[str]):
        self.model = create_backbone(suite.backbone)
        self.tasks = load_tasks(suite)
        self.heads, self.order, self.bs = heads, order, suite.evaluation.batch_size

    def row(self, state: StateDict) -> list[float]:
        self.model.load_state_dict(state)
        return [accuracy(self.model, self.heads[n], self.tasks[n].test.x, self.tasks[n].test.y, self.bs)
                for n in self.order]


def run_job(suite: Suite, job: Job, store: Store, threads: int) -> dict[str, Any]:
    """Run one (method, seed, order) job of a merge-stream suite; return its result record."""
    torch.set_num_threads(threads)
    torch.manual_seed(job.seed)
    order = list(job.order)
    art = SuiteArtefacts(suite, job.seed, store)
    theta0 = art.theta0()
    heads = art.heads()
    ev = Evaluator(suite, heads, order)

    method = methods_mod.create(job.method, dict(job.hparams))
    ctx = methods_mod.Context(theta0=theta0, num_tasks=len(order), seed=job.seed,
                              generator=torch.Generator().manual_seed(job.seed))
    t_start = time.perf_counter()
    method.start(ctx)

    R = [ev.row(theta0)]
    E, expert_hashes, step_times, storage = [], [], [], []
    merged = theta0
    for t, task in enumerate(order, start=1):
        incoming, meta = art.expert(task)
        E.append(meta["test_accuracy"])
        expert_hashes.append(meta["content_hash"])
        ctx.step, ctx.task, ctx.seen_tasks = t, task, order[:t]
        t0 = time.perf_counter()
        merged = method.merge(ctx, merged, incoming, task)
        step_times.append(time.perf_counter() - t0)
        _check_finite(merged, job, t)
        R.append(ev.row(merged))
        storage.append(nbytes(method.kept))
        del incoming

    finished = method.finish(ctx, merged)
    refined = finished is not merged
    row_before_finish = None
    if refined:
        _check_finite(finished, job, len(order) + 1)
        row_before_finish = R[-1]
        R[-1] = ev.row(finished)

    m = metrics.all_metrics(R, E)
    return {
        "status": "ok",
        "suite": job.suite,
        "suite_hash": job.suite_hash,
        "setting": suite.setting,
        "key": job.key,
        "method": job.method,
        "label": job.label,
        "hparams": dict(job.hparams),
        "method_source_hash": job.method_hash,
        "paper": type(method).paper,
        "data_access": type(method).data_access,
        "reconstruction": type(method).reconstruction,
        "seed": job.seed,
        "order_index": job.order_index,
        "tasks": order,
        "R": R,
        "E": E,
        "R_final_before_finish": row_before_finish,
        "expert_content_hashes": expert_hashes,
        "metrics": m,
        "storage_bytes": {"peak": max(storage, default=0), "per_step": storage},
        "timings": {"merge_steps_s": step_times, "merge_total_s": sum(step_times),
                    "job_s": time.perf_counter() - t_start},
        "threads": threads,
        "versions": {"cmbench": __version__, "torch": torch.__version__, "python": platform.python_version()},
    }


def _check_finite(state: StateDict, job: Job, step: int) -> None:
    bad = first_nonfinite(state)
    if bad is not None:
        raise CmbenchError(f"{job.label} (seed {job.seed}, order {job.order_index}): "
                           f"merged model has NaN/Inf in {bad!r} after step {step}")


def nan_to_none(x):
    """JSON has no NaN: undefined cells/metrics are written as null."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, list):
        return [nan_to_none(v) for v in x]
    if isinstance(x, dict):
        return {k: nan_to_none(v) for k, v in x.items()}
    return x
