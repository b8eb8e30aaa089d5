"""The fields of a job's result record that both settings share, and the helpers that
measure them (storage, finiteness, the published numbers to compare with)."""

from __future__ import annotations

import dataclasses
import platform
import traceback
from typing import Any

import torch

from .. import CmbenchError, __version__, published
from .. import methods as methods_mod
from ..data import Split, TextSplit
from ..keys import job_inputs, key_of, with_content
from ..models import device_for
from ..record import error_line
from ..store import Store
from ..suite import Job, Suite
from ..tensors import StateDict, first_nonfinite, nbytes


def published_rows(suite: Suite, job: Job, cls) -> dict[str, Any]:
    """The published numbers this job's row and its suite's reference rows compare with
    (``cmbench.published``), recorded so the report needs only the result files; none for
    a rehearsal (random weights) or a suite no source covers."""
    if suite.rehearsal:
        return {}
    full = methods_mod.validate_hparams(cls, dict(job.hparams))
    training = suite.training_of(job)
    found: dict[str, Any] = {  # Published rows, then their dicts
        "ACC": published.method_acc(suite, job.method, full, job.lora_spec, training, job.experts),
        "theta0": published.reference_acc(suite, "theta0"),
        "experts": published.reference_acc(suite, "experts"),
    }
    found = {k: dataclasses.asdict(v) for k, v in found.items() if v is not None}
    # a benchmark the split table covers, run another way: say why its numbers are not beside ours
    why = published.split_mismatch(suite, training)
    unmatched = {"published_unmatched": why} if why else {}
    return ({"published": found} if found else {}) | unmatched


def setup_check(suite: Suite, order: list[str], R0: list[float], E: list[float], n_test: dict[str, int]) -> dict:
    """θ0's and the experts' per-task accuracies against the published ones (recorded; the
    warnings are printed where they are first computed: the θ0 row and the expert artefacts)."""
    if suite.rehearsal:
        return {}
    checks = published.setup_check(suite, "theta0", dict(zip(order, R0)), n_test) + published.setup_check(
        suite, "expert", dict(zip(order, E)), n_test
    )
    return {"setup_check": checks} if checks else {}


def record_common(suite: Suite, job: Job, method, store: Store) -> dict[str, Any]:
    """The fields every result shares, with the job's inputs and key: the artefacts it
    consumed are in the store now, so their content hashes are known."""
    cls = type(method)
    inputs = with_content(job_inputs(suite, job), store.content_hash)
    if inputs is None:  # the cache was deleted or pruned under the running job
        raise CmbenchError(
            f"the artefacts this job computed from (θ0, heads, experts) are no longer in the store "
            f"{store.root}; its numbers cannot be keyed: rerun the suite (it rebuilds them)"
        )
    return {
        "status": "ok",
        "suite": job.suite,
        "suite_hash": job.suite_hash,
        "setting": suite.setting,
        "inputs": inputs,
        "key": key_of(inputs),
        "method": job.method,
        "label": job.label,
        "hparams": dict(job.hparams),
        "method_source_hash": job.method_hash,
        "lora": job.lora_spec,
        # the method's own training fields over the suite's (shown by the report); the recipe
        # they give is keyed under inputs.training
        **({"training": job.training_fields} if job.training else {}),
        **({"experts": job.experts} if job.experts != "independent" else {}),
        "paper": cls.paper,
        "data_access": cls.data_access,
        "reconstruction": cls.reconstruction,
        "seed": job.seed,
        "order_index": job.order_index,
        # the datasets' seed (the suite's data_seed for this seed): the same in every job of a
        # suite unless it varies with the seed, which decides how the report counts test error
        "data_seed": suite.data_seed_for(job.seed),
        # a rehearsal's results (random weights, generated data) carry its section: the report refuses them
        **({"rehearsal": suite.rehearsal.model_dump(mode="json")} if suite.rehearsal else {}),
        **published_rows(suite, job, cls),
        "device": device_record(device_for(suite)),
        "versions": {
            "cmbench": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            # CPU kernels differ in rounding by instruction set: `cmbench verify` expects a
            # bitwise rerun only on the same one
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        },
    }


def device_record(device: torch.device) -> dict[str, Any]:
    """The device a job computed on (its type is also in the key)."""
    if device.type == "cuda":
        return {
            "type": "cuda",
            "name": torch.cuda.get_device_name(device),
            "cuda": torch.version.cuda,
            "deterministic": torch.are_deterministic_algorithms_enabled(),
        }
    return {"type": device.type, "name": torch.backends.cpu.get_cpu_capability()}


def evaluation_record(suite: Suite, tasks: dict, order: list[str]) -> dict[str, Any]:
    """How R's cells were measured: the test images per task (and, for a fixed dataset, how
    many its test split was drawn from): what the report's test-set error is computed from."""
    out: dict[str, Any] = {
        "seen_only": suite.evaluation.seen_only,
        "max_test_per_task": suite.evaluation.max_test_per_task,
        "test_samples": {n: len(tasks[n].test) for n in order},
    }
    population = {n: tasks[n].test_population for n in order if tasks[n].test_population is not None}
    if population:
        out["test_population"] = population
    metric = {n: tasks[n].test.metric for n in order if isinstance(tasks[n].test, TextSplit)}
    if metric:  # the metric of each text task (an image task's is accuracy)
        out["metric"] = metric
    return out


def diagnostics_record(ctx) -> dict[str, Any]:
    """What the method recorded for the reader (``Context.record``), if anything."""
    return {"diagnostics": ctx.diagnostics} if ctx.diagnostics else {}


def measure_storage(method, model_keys) -> dict[str, int]:
    """Bytes a method keeps between steps, by kind: ``models`` / ``vectors`` (state dicts
    keyed like the model; a method names its models in ``storage_kinds``), ``samples``
    (data splits), ``other``."""
    declared = getattr(type(method), "storage_kinds", {})
    out: dict[str, int] = {}
    for name, value in method.kept.items():
        if name in declared:
            kind = declared[name]
        elif isinstance(value, Split) or (
            isinstance(value, (list, tuple, dict))
            and value
            and all(isinstance(v, Split) for v in (value.values() if isinstance(value, dict) else value))
        ):
            kind = "samples"
        elif isinstance(value, dict) and value and set(value) <= set(model_keys):
            kind = "vectors"
        elif (
            isinstance(value, (list, tuple))
            and value
            and all(isinstance(v, dict) and set(v) <= set(model_keys) for v in value)
        ):
            kind = "vectors"
        else:
            kind = "other"
        b = nbytes(value)
        if b:
            out[kind] = out.get(kind, 0) + b
    return out


def storage_record(per_step: list[dict[str, int]]) -> dict[str, Any]:
    totals = [sum(d.values()) for d in per_step]
    kinds = sorted({k for d in per_step for k in d})
    return {
        "peak": max(totals, default=0),
        "per_step": totals,
        "peak_by_kind": {k: max(d.get(k, 0) for d in per_step) for k in kinds},
    }


def check_finite(state: StateDict, job: Job, step: int, what: str = "merged") -> None:
    bad = first_nonfinite(state)
    if bad is not None:
        raise CmbenchError(
            f"{job.label} (seed {job.seed}, order {job.order_index}): "
            f"{what} model has NaN/Inf in {bad!r} after step {step}"
        )


def failure_record(suite: Suite, job: Job, err: BaseException) -> dict[str, Any]:
    """What a failed job's file says: why, and the inputs it was run with (no key)."""
    return {
        "status": "failed",
        "error": error_line(err),
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
