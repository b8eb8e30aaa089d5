"""The loop both settings share: set the job up, resume from its last completed step, run
each step, checkpoint after it, let the method finish, and write the record. What a step
does is the setting's (:class:`Setting`: ``stream.MergeStream``, ``ttm.TrainThenMerge``).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch

from .. import jobstate, registry
from .. import methods as methods_mod
from ..artefacts import SuiteArtefacts, load_tasks
from ..keys import job_inputs, key_of
from ..models import device_for, to_device
from ..store import Store
from ..suite import Job, Suite
from ..tensors import StateDict
from .access import DataAccess
from .recording import check_finite, diagnostics_record, measure_storage, record_common, storage_record


class Setting:
    """One setting's part of a job. Built after the job's set-up (its construction may draw
    from torch's global generator: the order is part of the job's numbers), before
    ``method.start``. It owns R (one row per step, row 0 before any) and what else it records."""

    model_key = "merged"  # the checkpoint's name for the model carried from step to step

    def __init__(self, suite: Suite, job: Job, art: SuiteArtefacts, tasks: dict, method, ctx, data: DataAccess):
        self.suite, self.job, self.art, self.tasks = suite, job, art, tasks
        self.method, self.ctx, self.data = method, ctx, data
        self.order = list(job.order)
        self.R: list[list[float]] = []

    def begin(self, theta0: StateDict) -> None:
        """A fresh start: row 0 and empty logs."""
        raise NotImplementedError

    def resumable(self, saved: dict | None) -> dict | None:
        return saved

    def restore(self, saved: dict) -> None:
        """The setting's part of a saved state (its ``state()``)."""
        raise NotImplementedError

    def step(self, t: int, task: str, model: StateDict) -> StateDict:
        """Step t (from 1): the model deployed after it, evaluated into a new row of R."""
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the setting after a step."""
        raise NotImplementedError

    def evaluate_finished(self, finished: StateDict) -> None:
        """Replace the last row (and what is measured beside it) by the finished model's."""
        raise NotImplementedError

    def record(self) -> dict[str, Any]:
        """The setting's fields of the result record, ``timings`` included."""
        raise NotImplementedError


def set_up(suite: Suite, job: Job, store: Store, threads: int, tasks: dict):
    """What every job starts with: threads and seeds fixed, θ0 on the job's device (merges
    compute where their inputs are: state dicts are moved there once), the method and its
    context. Random draws stay on the CPU generators, so they are the same on any device."""
    torch.set_num_threads(threads)
    torch.manual_seed(job.seed)
    art = SuiteArtefacts(suite, job.seed, store)
    device = device_for(suite)
    theta0 = to_device(art.theta0(), device)
    method = registry.create(job.method, dict(job.hparams))
    data = DataAccess(job.method, type(method).data_access, tasks, job.seed, device)
    ctx = methods_mod.Context(
        theta0=theta0,
        num_tasks=len(job.order),
        seed=job.seed,
        device=device,
        setting=suite.setting,
        generator=torch.Generator().manual_seed(job.seed),
        data=data,
    )
    data.ctx = ctx
    return art, theta0, method, ctx, data


def run_job(
    suite: Suite, job: Job, store: Store, threads: int, setting_type: type[Setting], scored_on: str = "test"
) -> dict[str, Any]:
    """One job of ``setting_type``'s setting, from set-up (or its last checkpoint) to its
    record. ``scored_on="val"``: R is measured on the validation splits (``cmbench tune``:
    hyperparameters are chosen without test data)."""
    order = list(job.order)
    tasks = load_tasks(suite, job.seed)
    if scored_on == "val":
        tasks = {n: dataclasses.replace(td, test=td.val) for n, td in tasks.items()}
    art, theta0, method, ctx, data = set_up(suite, job, store, threads, tasks)
    setting = setting_type(suite, job, art, tasks, method, ctx, data)
    t_start = time.perf_counter()
    method.start(ctx)

    # resume from the last completed step of an earlier attempt (cmbench.jobstate); each
    # step's training seeds are fixed, the generators' states are restored
    checkpoint = jobstate.Checkpoint(store, key_of(job_inputs(suite, job)))
    saved = setting.resumable(checkpoint.load())
    if saved is None:
        setting.begin(theta0)
        model, done, earlier_s, storage = theta0, 0, 0.0, []
    else:
        _restore(saved, setting)
        model, done, earlier_s, storage = saved[setting.model_key], saved["step"], saved["job_s"], saved["storage"]
    for t, task in enumerate(order, start=1):
        if t <= done:
            continue
        ctx.step, ctx.task, ctx.seen_tasks = t, task, order[:t]
        model = setting.step(t, task, model)
        storage.append(measure_storage(method, theta0))
        # after every step, the last too (a job killed in `finish`, ODE-M's refinement, resumes there)
        checkpoint.save(
            {
                "step": t,
                setting.model_key: model,
                "method": method.kept,
                "R": setting.R,
                **setting.state(),
                "storage": storage,
                "rng": jobstate.rng_state(ctx.generator),
                "samples_handed": data.samples_handed,
                "diagnostics": ctx.diagnostics,
                "job_s": earlier_s + time.perf_counter() - t_start,
            }
        )

    ctx.step, ctx.task, ctx.seen_tasks = len(order), order[-1], list(order)  # also when resumed after the last
    ctx.finishing = True
    finished = method.finish(ctx, model)
    ctx.finishing = False
    row_before_finish = None
    if finished is not model:
        check_finite(finished, job, len(order) + 1)
        row_before_finish = setting.R[-1]
        setting.evaluate_finished(finished)

    fields = setting.record()
    record = {
        **record_common(suite, job, method, store),
        "tasks": order,
        "R": setting.R,
        "R_final_before_finish": row_before_finish,
        **fields,
        "data_samples_handed": data.samples_handed,
        "storage_bytes": storage_record(storage),
        "timings": {
            **fields["timings"],
            "job_s": earlier_s + time.perf_counter() - t_start,
            "resumed_after_step": done or None,
        },
        "threads": threads,
        **diagnostics_record(ctx),
    }
    checkpoint.clear()
    return record


def _restore(saved: dict, setting: Setting) -> None:
    """A checkpoint's state back in place: the setting's, the method's kept attributes, the
    generator, the data counter and the diagnostics."""
    setting.restore(saved)
    for name, value in saved["method"].items():
        setattr(setting.method, name, value)
    jobstate.set_rng_state(saved["rng"], setting.ctx.generator)
    setting.data.samples_handed = saved["samples_handed"]
    setting.ctx.diagnostics = saved.get("diagnostics", {})
