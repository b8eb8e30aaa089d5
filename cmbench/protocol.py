"""The continual loop, owned once by the harness.

Merge stream (``run_merge_stream``): θ0 and T experts, each fine-tuned independently from θ0, arrive one at a
time in the job's order. After every step (and once before any, row 0 = θ0) the merged
model is evaluated on *all* T tasks:

    R[t, j] = accuracy of M_t on task j,   t = 0..T,  j in arrival order,

plus each expert's own accuracy E[j].

Train then merge (``run_train_then_merge``): at step t the harness trains on task t from
what the method chooses (default M_{t−1}), with the method's hooks, then the method merges
the trained model into the deployed M_t. One classifier over all classes; task t's rows are
trained during task t (logits masked to the trained classes) and copied, not merged. Cells
of tasks not learned yet are NaN. Class-incremental evaluation predicts over every class
seen so far; task-incremental over the task's own classes.

Methods never see the loop or any test split; what data they see is what they declared.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import sys
import math
import platform
import time
from typing import Any

import torch

from . import CmbenchError, __version__, jobstate, metrics, published
from . import methods as methods_mod
from . import registry
from .artefacts import SuiteArtefacts, artefact_key, data_versions, expert_key, heads_key, load_tasks, theta0_key
from .models import (
    accuracy,
    check_logits,
    create_backbone,
    device_for,
    feature_dim,
    layout_of,
    models_version,
    numerics,
    to_device,
)
from .store import Store
from .suite import Job, LoRA, Suite, Training
from .tensors import StateDict, first_nonfinite, nbytes
from .train import TRAIN_VERSION

# Versions of the loop's components. Bump one when a change alters any number it produces
# (R, E or anything recorded beside them): every job keyed on it is recomputed, and
# `cmbench verify` on committed results fails until they are.
EVALUATION_VERSION = 1  # Evaluator, Learner.evaluate: which cells are measured, and how
MERGE_STREAM_VERSION = 1  # run_merge_stream: the loop, the methods' context and ctx.network
TRAIN_THEN_MERGE_VERSION = 1  # run_train_then_merge, Learner, ClassSpace: training, classifier rows, the loop
DATA_ACCESS_VERSION = 1  # DataAccess: which samples a method is handed


# -- what a job's numbers depend on ----------------------------------------------------------


def job_components(suite: Suite) -> dict:
    """The versions of every harness component that produces a job's numbers (artefacts
    carry their own in their keys)."""
    out = {
        "evaluation": EVALUATION_VERSION,
        "data_access": DATA_ACCESS_VERSION,
        "models": models_version(suite.backbone),
        "data": data_versions(suite.tasks),
    }
    if suite.setting == "merge_stream":
        out["merge_stream"] = MERGE_STREAM_VERSION
    else:
        out.update(train_then_merge=TRAIN_THEN_MERGE_VERSION, train=TRAIN_VERSION)
    return out


def artefact_keys(suite: Suite, job: Job) -> dict:
    """The cached artefacts a job consumes, by kind (the store's folder names)."""
    keys: dict[str, Any] = {"theta0": theta0_key(suite, job.seed)}
    if suite.setting == "merge_stream":
        keys["heads"] = heads_key(suite, job.seed)
        keys["experts"] = {t: expert_key(suite, job.seed, t) for t in job.order}
    return keys


def job_inputs(suite: Suite, job: Job) -> dict:
    """Everything that determines a job's numbers except its artefacts' content hashes
    (``with_content`` adds them). Metrics are not here: they are derived from R."""
    return {
        "suite_hash": job.suite_hash,
        "method": job.method,
        "label": job.label,
        "hparams": dict(job.hparams),
        "lora": json.loads(job.lora) if job.lora else None,
        "method_code": job.method_hash,
        "seed": job.seed,
        "order": list(job.order),
        "artefacts": artefact_keys(suite, job),
        # the precision is keyed as part of the numerics (fp32 keys are as before the field)
        "evaluation": suite.evaluation.model_dump(mode="json", exclude={"precision"}),
        **numerics(suite),
        "components": job_components(suite),
        # a method's own training recipe (keys of jobs without one are as before the field)
        **({"training": suite.training_of(job).keyed()} if job.training else {}),
    }


def with_content(inputs: dict, content_of) -> dict | None:
    """``inputs`` plus the content hash of each artefact, ``content_of(kind, key)`` (None
    when unknown: then the job's key cannot be formed and it is not up to date)."""
    arts = inputs["artefacts"]
    content: dict[str, Any] = {}
    for kind, key in arts.items():
        if isinstance(key, dict):
            content[kind] = {t: content_of(kind, k) for t, k in key.items()}
            if None in content[kind].values():
                return None
        else:
            content[kind] = content_of(kind, key)
            if content[kind] is None:
                return None
    return {**inputs, "content": content}


def key_of(inputs: dict) -> str:
    """A job's key: the hash of its inputs, content hashes included."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:24]


class Evaluator:
    """Evaluates a backbone state dict on every task's test split with its frozen head.

    θ0's row is the same for every job of a suite and seed: it is computed once and cached
    (keyed by θ0, the heads and the evaluation settings). With ``evaluation.seen_only`` a
    merged model is evaluated on the tasks seen so far only (other cells NaN).
    """

    def __init__(self, suite: Suite, heads, order: list[str], theta0: StateDict, seed: int):
        self.model = create_backbone(suite.backbone, theta0).to(device_for(suite))
        self.tasks = load_tasks(suite, seed)
        self.heads, self.order, self.bs = heads, order, suite.evaluation.batch_size
        self.precision = suite.evaluation.precision
        self.seen_only = suite.evaluation.seen_only
        self.seconds, self.images = 0.0, 0

    def accuracies(self, state: StateDict, names: list[str]) -> dict[str, float]:
        t0 = time.perf_counter()
        self.model.load_state_dict(state)
        out = {
            n: accuracy(self.model, self.heads[n], self.tasks[n].test.x, self.tasks[n].test.y, self.bs, self.precision)
            for n in names
        }
        self.seconds += time.perf_counter() - t0  # evaluation's cost, reported beside the merge's
        self.images += sum(len(self.tasks[n].test) for n in names)
        return out

    def row(self, state: StateDict, seen: list[str] | None = None) -> list[float]:
        names = [n for n in self.order if not self.seen_only or seen is None or n in seen]
        acc = self.accuracies(state, names)
        return [acc.get(n, float("nan")) for n in self.order]

    def expert_accuracy(self, art: SuiteArtefacts, task: str, state: StateDict, meta: dict) -> float:
        """E of ``task``'s expert in the evaluation precision: the fp32 value measured when it
        was built, or measured here once per precision (cached like θ0's row)."""
        if self.precision == "fp32":
            return meta["test_accuracy"]
        suite = art.suite
        key = artefact_key(
            "eval-expert",
            {"evaluation": EVALUATION_VERSION},
            numerics(suite),
            expert_key(suite, art.seed, task),
            suite.evaluation.batch_size,
        )
        t, _ = art.store.get_or_make(
            "evals",
            key,
            lambda: (
                {"acc": torch.tensor([self.accuracies(state, [task])[task]], dtype=torch.float64)},
                {"task": task},
            ),
        )
        return float(t["acc"][0])

    def theta0_row(self, art: SuiteArtefacts) -> list[float]:
        """θ0's test accuracies depend on θ0, the heads, the test splits and evaluation."""
        names = sorted(self.order)
        suite = art.suite
        key = artefact_key(
            "eval-theta0",
            {
                "evaluation": EVALUATION_VERSION,
                "models": models_version(suite.backbone),
                "data": data_versions(suite.tasks),
            },
            numerics(suite),
            heads_key(suite, art.seed),
            [t.model_dump() for t in suite.tasks],
            suite.evaluation.max_test_per_task,
            suite.evaluation.batch_size,
            *([suite.rehearsal.model_dump(exclude={"caps"})] if suite.rehearsal else []),
        )

        def make():
            acc = self.accuracies(art.theta0(), names)  # once: not once per task (TALL20 evaluated θ0 20 times)
            if not suite.rehearsal:  # against the published zero-shot accuracies, as soon as known
                n_test = {n: len(self.tasks[n].test) for n in names}
                for line in published.warnings(published.setup_check(suite, "theta0", acc, n_test)):
                    print(line, file=sys.stderr, flush=True)
            return {"acc": torch.tensor([acc[n] for n in names], dtype=torch.float64)}, {"tasks": names}

        t, _ = art.store.get_or_make("evals", key, make)
        by_name = dict(zip(names, t["acc"].tolist()))
        return [by_name[n] for n in self.order]


def run(suite: Suite, job: Job, store: Store, threads: int) -> dict[str, Any]:
    """Run one (method, seed, order) job in the suite's setting; return its result record."""
    if suite.setting == "train_then_merge":
        return run_train_then_merge(suite, job, store, threads)
    return run_merge_stream(suite, job, store, threads)


def _published(suite: Suite, job: Job, cls) -> dict[str, Any]:
    """The published numbers this job's row and its suite's reference rows compare with
    (``cmbench.published``), recorded so the report needs only the result files; none for
    a rehearsal (random weights) or a suite no source covers."""
    if suite.rehearsal:
        return {}
    full = methods_mod.validate_hparams(cls, dict(job.hparams))
    found = {
        "ACC": published.method_acc(suite, job.method, full, json.loads(job.lora) if job.lora else None),
        "theta0": published.reference_acc(suite, "theta0"),
        "experts": published.reference_acc(suite, "experts"),
    }
    found = {k: dataclasses.asdict(v) for k, v in found.items() if v is not None}
    return {"published": found} if found else {}


def _setup_check(suite: Suite, order: list[str], R0: list[float], E: list[float], n_test: dict[str, int]) -> dict:
    """θ0's and the experts' per-task accuracies against the published ones (recorded; the
    warnings are printed where they are first computed: the θ0 row and the expert artefacts)."""
    if suite.rehearsal:
        return {}
    checks = published.setup_check(suite, "theta0", dict(zip(order, R0)), n_test) + published.setup_check(
        suite, "expert", dict(zip(order, E)), n_test
    )
    return {"setup_check": checks} if checks else {}


def _record_common(suite: Suite, job: Job, method, store: Store) -> dict[str, Any]:
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
        "lora": json.loads(job.lora) if job.lora else None,
        # the method's own training fields over the suite's (shown by the report); the recipe
        # they give is keyed under inputs.training
        **({"training": json.loads(job.training)} if job.training else {}),
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
        **_published(suite, job, cls),
        "device": _device_record(device_for(suite)),
        "versions": {
            "cmbench": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            # CPU kernels differ in rounding by instruction set: `cmbench verify` expects a
            # bitwise rerun only on the same one
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        },
    }


def _device_record(device: torch.device) -> dict[str, Any]:
    """The device a job computed on (its type is also in the key)."""
    if device.type == "cuda":
        return {
            "type": "cuda",
            "name": torch.cuda.get_device_name(device),
            "cuda": torch.version.cuda,
            "deterministic": torch.are_deterministic_algorithms_enabled(),
        }
    return {"type": device.type, "name": torch.backends.cpu.get_cpu_capability()}


def _setup(suite: Suite, job: Job, store: Store, threads: int, tasks: dict):
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


def run_merge_stream(suite: Suite, job: Job, store: Store, threads: int) -> dict[str, Any]:
    order = list(job.order)
    art, theta0, method, ctx, data = _setup(suite, job, store, threads, load_tasks(suite, job.seed))
    heads = art.heads()  # on the CPU, where evaluation's features arrive
    ev = Evaluator(suite, heads, order, theta0, job.seed)
    ctx.layout = layout_of(ev.model)
    # the methods' network is the evaluation model, on the job's device, with device heads
    net_heads = heads if ctx.device.type == "cpu" else {n: copy.deepcopy(h).to(ctx.device) for n, h in heads.items()}

    def network(state, classes: str = "task", task: str | None = None):
        """The backbone loaded with ``state`` and the head of ``task`` (default: the
        current task); ``classes="seen"``: every seen task's head, logits concatenated."""
        ev.model.load_state_dict(state)
        if classes == "task":
            return ev.model, net_heads[task or ctx.task]
        return ev.model, lambda f: torch.cat([net_heads[n](f) for n in ctx.seen_tasks], -1)

    ctx.network = network
    t_start = time.perf_counter()
    method.start(ctx)

    # resume from the last completed step of an earlier attempt (cmbench.jobstate)
    checkpoint = jobstate.Checkpoint(store, key_of(job_inputs(suite, job)))
    saved = _resumable(checkpoint.load(), art, order)
    if saved is None:
        R = [ev.theta0_row(art)]
        E, expert_hashes, step_times, storage = [], [], [], []
        merged, done, earlier_s = theta0, 0, 0.0
    else:
        R, E, expert_hashes, step_times, storage = (
            saved[k] for k in ("R", "E", "expert_hashes", "step_times", "storage")
        )
        merged, done, earlier_s = saved["merged"], saved["step"], saved["job_s"]
        for name, value in saved["method"].items():
            setattr(method, name, value)
        jobstate.set_rng_state(saved["rng"], ctx.generator)
        data.samples_handed, ev.seconds, ev.images = saved["samples_handed"], *saved["eval"]
        ctx.diagnostics = saved.get("diagnostics", {})
    for t, task in enumerate(order, start=1):
        if t <= done:
            continue
        incoming, meta = art.expert(task)
        incoming = to_device(incoming, ctx.device)
        E.append(ev.expert_accuracy(art, task, incoming, meta))
        expert_hashes.append(meta["content_hash"])
        ctx.step, ctx.task, ctx.seen_tasks = t, task, order[:t]
        t0 = time.perf_counter()
        merged = method.merge(ctx, merged, incoming, task)
        step_times.append(time.perf_counter() - t0)
        _check_finite(merged, job, t)
        R.append(ev.row(merged, order[:t]))
        storage.append(measure_storage(method, theta0))
        del incoming
        # after every step, the last too (a job killed in `finish`, ODE-M's refinement, resumes there)
        checkpoint.save(
            {
                "step": t,
                "merged": merged,
                "method": method.kept,
                "R": R,
                "E": E,
                "expert_hashes": expert_hashes,
                "step_times": step_times,
                "storage": storage,
                "rng": jobstate.rng_state(ctx.generator),
                "samples_handed": data.samples_handed,
                "eval": [ev.seconds, ev.images],
                "diagnostics": ctx.diagnostics,
                "job_s": earlier_s + time.perf_counter() - t_start,
            }
        )

    ctx.step, ctx.task, ctx.seen_tasks = len(order), order[-1], list(order)  # also when resumed after the last
    ctx.finishing = True
    finished = method.finish(ctx, merged)
    ctx.finishing = False
    row_before_finish = None
    if finished is not merged:
        _check_finite(finished, job, len(order) + 1)
        row_before_finish = R[-1]
        R[-1] = ev.row(finished, order)

    record = {
        **_record_common(suite, job, method, store),
        "tasks": order,
        "R": R,
        "E": E,
        "R_final_before_finish": row_before_finish,
        "expert_content_hashes": expert_hashes,
        "evaluation": _evaluation_record(suite, ev.tasks, order),
        **_setup_check(suite, order, R[0], E, {n: len(ev.tasks[n].test) for n in order}),
        "metrics": metrics.all_metrics(R, E),
        "data_samples_handed": data.samples_handed,
        "storage_bytes": _storage_record(storage),
        "timings": {
            "merge_steps_s": step_times,
            "merge_total_s": sum(step_times),
            "eval_s": ev.seconds,
            "eval_images": ev.images,
            "job_s": earlier_s + time.perf_counter() - t_start,
            "resumed_after_step": done or None,
        },
        "threads": threads,
        **_diagnostics(ctx),
    }
    checkpoint.clear()
    return record


def _evaluation_record(suite: Suite, tasks: dict, order: list[str]) -> dict[str, Any]:
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
    return out


def _diagnostics(ctx) -> dict[str, Any]:
    """What the method recorded for the reader (``Context.record``), if anything."""
    return {"diagnostics": ctx.diagnostics} if ctx.diagnostics else {}


def _resumable(saved: dict | None, art: SuiteArtefacts, order: list[str]) -> dict | None:
    """A saved state is used only if the experts it merged are still the stored ones."""
    if saved is None:
        return None
    now = [art.store.content_hash("experts", expert_key(art.suite, art.seed, t)) for t in order[: saved["step"]]]
    return saved if now == saved["expert_hashes"] else None


def measure_storage(method, model_keys) -> dict[str, int]:
    """Bytes a method keeps between steps, by kind: ``models`` / ``vectors`` (state dicts
    keyed like the model; a method names its models in ``storage_kinds``), ``samples``
    (data splits), ``other``."""
    from .data import Split

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


def _storage_record(per_step: list[dict[str, int]]) -> dict[str, Any]:
    totals = [sum(d.values()) for d in per_step]
    kinds = sorted({k for d in per_step for k in d})
    return {
        "peak": max(totals, default=0),
        "per_step": totals,
        "peak_by_kind": {k: max(d.get(k, 0) for d in per_step) for k in kinds},
    }


def _check_finite(state: StateDict, job: Job, step: int, what: str = "merged") -> None:
    bad = first_nonfinite(state)
    if bad is not None:
        raise CmbenchError(
            f"{job.label} (seed {job.seed}, order {job.order_index}): "
            f"{what} model has NaN/Inf in {bad!r} after step {step}"
        )


def nan_to_none(x):
    """JSON has no NaN: undefined cells/metrics are written as null."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, list):
        return [nan_to_none(v) for v in x]
    if isinstance(x, dict):
        return {k: nan_to_none(v) for k, v in x.items()}
    return x


# -- data access ------------------------------------------------------------------------------


class OnDevice:
    """A CPU tensor whose slices and index selections arrive on ``device``: how a job on a
    GPU hands a method a whole train split (a real dataset's would not fit beside the model;
    methods compute on batches of it)."""

    def __init__(self, t: torch.Tensor, device: torch.device):
        self.t, self.device = t, device

    def __getitem__(self, i):
        return self.t[i.cpu() if torch.is_tensor(i) else i].to(self.device, non_blocking=True)

    def __len__(self) -> int:
        return len(self.t)

    @property
    def shape(self):
        return self.t.shape

    @property
    def dtype(self):
        return self.t.dtype

    def float(self) -> torch.Tensor:
        return self.t.to(self.device).float()


class DataAccess:
    """Hands a method exactly the data it declared, never a test split, and counts it.

    * ``none``: nothing;
    * ``current_task``: the current task's train/val splits;
    * ``calibration``: nested subsets of seen tasks' train splits (``calibration(task, n)``
      returns the first n samples of a fixed permutation, so smaller budgets are prefixes);
    * ``all_seen``: every seen task's train/val splits (reference rows only).
    """

    def __init__(
        self, method_name: str, declared: str, tasks: dict, seed: int, device: torch.device = torch.device("cpu")
    ):
        self.method, self.declared, self.tasks, self.seed = method_name, declared, tasks, seed
        self.device = device  # splits are handed on the job's device (OnDevice: batch by batch)
        self.ctx: methods_mod.Context | None = None
        self.samples_handed = 0
        self._on_device: dict[tuple[str, str], Any] = {}

    def _deny(self, what: str):
        raise CmbenchError(
            f"method {self.method} declared data_access={self.declared!r} but asked for "
            f"{what}; declare the access it needs in its class"
        )

    def _split(self, task: str, split: str):
        if split == "test":
            raise CmbenchError(f"method {self.method} asked for the test split of {task}: methods never see test data")
        if split not in ("train", "val"):
            raise CmbenchError(f"method {self.method}: unknown split {split!r} (train or val)")
        s = self.tasks[task].split(split)
        if self.device.type == "cpu":
            return s
        if (task, split) not in self._on_device:
            from .data import Split

            self._on_device[task, split] = Split(x=OnDevice(s.x, self.device), y=s.y.to(self.device))
        return self._on_device[task, split]

    def current(self, split: str = "train"):
        if self.declared not in ("current_task", "calibration", "all_seen"):
            self._deny(f"the current task's {split} data")
        s = self._split(self.ctx.task, split)
        self.samples_handed += len(s)
        return s

    def seen(self, task: str, split: str = "train"):
        if self.declared != "all_seen":
            self._deny(f"all data of seen task {task}")
        if task not in self.ctx.seen_tasks:
            raise CmbenchError(f"method {self.method} asked for {task}, which has not arrived yet")
        s = self._split(task, split)
        self.samples_handed += len(s)
        return s

    def calibration(self, task: str, n: int):
        if self.declared != "calibration":
            self._deny(f"calibration samples of {task}")
        if task not in self.ctx.seen_tasks:
            raise CmbenchError(f"method {self.method} asked for calibration data of {task}, which has not arrived yet")
        s = self.tasks[task].split("train")
        perm = torch.randperm(len(s), generator=torch.Generator().manual_seed(self.seed))[: min(n, len(s))]
        self.samples_handed += len(perm)
        from .data import Split

        return Split(x=s.x[perm].to(self.device), y=s.y[perm].to(self.device))


# -- train then merge ----------------------------------------------------------------------------


class ClassSpace:
    """One classifier over every class of the stream; rows owned by the task introducing them."""

    def __init__(self, tasks: dict, order: list[str]):
        ids = sorted({c for n in order for c in tasks[n].class_ids})
        self.row = {c: i for i, c in enumerate(ids)}
        self.n = len(ids)
        self.rows_of = {n: torch.tensor([self.row[c] for c in tasks[n].class_ids]) for n in order}

    def targets(self, td, y: torch.Tensor) -> torch.Tensor:
        return self.rows_of[td.name][y]

    def rows(self, names: list[str]) -> torch.Tensor:
        return torch.cat([self.rows_of[n] for n in names]) if names else torch.tensor([], dtype=torch.long)


def _masked(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    mask = torch.full((logits.shape[-1],), float("-inf"), device=logits.device)
    mask[rows] = 0.0
    return logits + mask


class Learner:
    """Backbone + one linear classifier; trains a task with the method's hooks."""

    def __init__(self, suite: Suite, tasks: dict, space: ClassSpace, recipe: Training):
        self.suite, self.tasks, self.space, self.recipe = suite, tasks, space, recipe
        self.device = device_for(suite)
        self.model = create_backbone(suite.backbone).to(self.device)  # evaluation and the methods' network
        self.bs, self.precision = suite.evaluation.batch_size, suite.evaluation.precision
        self.eval_seconds, self.eval_images = 0.0, 0
        self.train_optimizer_steps: list[int] = []

    def features(self, state: StateDict, x: torch.Tensor) -> torch.Tensor:
        from .models import features

        self.model.load_state_dict(state)
        return features(self.model, x, self.bs, self.precision)

    def evaluate(
        self, state: StateDict, head: dict, order: list[str], learned: list[str], incremental: str
    ) -> tuple[list[float], float, list[float]]:
        """R row (NaN for unlearned tasks), the sample-weighted accuracy over learned tasks,
        and the within-task row (each task over its own classes only, from the same logits:
        with class-incremental heads, the gap to R is what head calibration costs)."""
        t0 = time.perf_counter()
        row, within, correct, total = [], [], 0, 0
        seen_rows = self.space.rows(learned)
        for name in order:
            if name not in learned:
                row.append(float("nan"))
                within.append(float("nan"))
                continue
            td = self.tasks[name]
            logits = self.features(state, td.test.x) @ head["weight"].T + head["bias"]
            check_logits(logits)
            target = self.space.targets(td, td.test.y)
            own = (_masked(logits, self.space.rows_of[name]).argmax(-1) == target).sum().item()
            rows = seen_rows if incremental == "class_incremental" else self.space.rows_of[name]
            hit = (_masked(logits, rows).argmax(-1) == target).sum().item()
            row.append(hit / len(td.test.y))
            within.append(own / len(td.test.y))
            correct, total = correct + hit, total + len(td.test.y)
        self.eval_seconds += time.perf_counter() - t0
        self.eval_images += total
        return row, (correct / total if total else float("nan")), within

    def train(self, ctx, method, start: StateDict, head: dict, names: list[str], seed: int):
        """Train ``start`` (and the rows of ``names``' classes) on those tasks' train data."""
        from .lora import add_lora, merge_lora
        from .train import fit

        suite = self.suite
        recipe = self.recipe
        model = create_backbone(suite.backbone)
        model.load_state_dict(start)
        model.train()
        lin = torch.nn.Linear(feature_dim(suite.backbone), self.space.n)
        with torch.no_grad():
            lin.weight.copy_(head["weight"])
            lin.bias.copy_(head["bias"])
        job_lora = LoRA.model_validate_json(ctx.job_lora) if ctx.job_lora else None
        lora = method.lora(ctx, job_lora)
        if lora is not None:
            for p in model.parameters():
                p.requires_grad_(False)
            adapters = add_lora(model, lora.rank, lora.alpha, list(lora.targets), seed)
            body = [p for a in adapters for p in a.parameters()]
        else:
            adapters, body = [], list(model.parameters())
        model.to(self.device)
        lin.to(self.device)
        ctx.adapters = adapters  # the LoRA adapters of this task (empty: full-parameter)
        ctx.train_start_state = start
        ctx.trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        ctx.train_model = model  # lora.current_weights(model): its weights now, LoRA folded in
        rows = self.space.rows(names)
        xs, ys, aspect = self._train_images(names)
        # as many as `fit` takes (`steps` overrides epochs; no committed suite sets it for training)
        ctx.train_total_steps = recipe.steps or recipe.epochs * -(-len(xs) // recipe.batch_size)

        def loss_fn(xb, yb):
            return torch.nn.functional.cross_entropy(_masked(lin(model(xb)), rows), yb)

        loss_fn = method.wrap_loss(ctx, loss_fn, model)
        groups = [{"params": body}, {"params": list(lin.parameters()), "lr": recipe.head_lr or recipe.lr}]
        fit(
            groups,
            loss_fn,
            xs,
            ys,
            recipe,
            seed,
            on_step=lambda s, loss: method.on_train_step(ctx, s, loss),
            what=f"training on {'+'.join(names)}",
            after_backward=lambda: method.after_backward(ctx),
            aspect=aspect,
            out_size=suite.backbone.image_size,
        )
        self.train_optimizer_steps.append(ctx.train_total_steps)
        merge_lora(model)
        trained_head = {k: v.detach().clone() for k, v in head.items()}
        trained_head["weight"][rows] = lin.weight.detach()[rows].cpu()
        trained_head["bias"][rows] = lin.bias.detach()[rows].cpu()
        return {k: v.detach().clone() for k, v in model.state_dict().items()}, trained_head  # on the device

    def _train_images(self, names: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Images (uint8), targets (rows of the classifier) and aspect ratios training draws
        from: the train splits, or, when the recipe augments, the whole images
        (``TaskData.train_view``) that random resized crops are taken from."""
        aug = self.recipe.augment
        whole = aug is not None and any(self.tasks[n].train_view is not None for n in names)
        splits = [
            self.tasks[n].train_view(aug.view_size) if whole and self.tasks[n].train_view else self.tasks[n].train
            for n in names
        ]
        if whole and (len({s.x.shape[-1] for s in splits}) > 1 or any(s.aspect is None for s in splits)):
            raise CmbenchError(
                f"training on {'+'.join(names)}: some tasks have whole-image views and some "
                "do not; random resized crops need the same kind for every task"
            )
        ys = torch.cat([self.space.targets(self.tasks[n], s.y) for n, s in zip(names, splits)])
        return torch.cat([s.x for s in splits]), ys, (torch.cat([s.aspect for s in splits]) if whole else None)

    def start_grad_norm(self, state: StateDict, head: dict, name: str, n: int = 256) -> float:
        """‖∇θ L‖ at the model training starts from, on task ``name``'s first n train samples:
        small values mean the new task starts where gradients vanish."""
        model = create_backbone(self.suite.backbone)
        model.load_state_dict(state)
        model.to(self.device).train()
        td = self.tasks[name]
        x = td.train.x[:n].to(self.device).float().div(127.5).sub(1.0)
        logits = model(x) @ head["weight"].to(self.device).T + head["bias"].to(self.device)
        loss = torch.nn.functional.cross_entropy(
            _masked(logits, self.space.rows_of[name]), self.space.targets(td, td.train.y[:n]).to(self.device)
        )
        grads = torch.autograd.grad(loss, [p for p in model.parameters()])
        return float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))


def run_train_then_merge(suite: Suite, job: Job, store: Store, threads: int) -> dict[str, Any]:
    order = list(job.order)
    tasks = load_tasks(suite, job.seed)
    art, theta0, method, ctx, data = _setup(suite, job, store, threads, tasks)
    space = ClassSpace(tasks, order)
    learner = Learner(suite, tasks, space, suite.training_of(job))
    gen = torch.Generator().manual_seed(job.seed)
    head = {
        "weight": torch.randn(space.n, feature_dim(suite.backbone), generator=gen) * 0.02,
        "bias": torch.zeros(space.n),
    }
    incremental = suite.heads.kind
    ctx.job_lora = job.lora
    ctx.layout = layout_of(learner.model)

    def network(state, classes: str = "task", task: str | None = None):
        """The backbone loaded with ``state`` and a head over ``task``'s classes (default:
        the current task; ``classes="seen"``: every class seen so far, in seen-task order)."""
        learner.model.load_state_dict(state)
        rows = space.rows_of[task or ctx.task] if classes == "task" else space.rows(ctx.seen_tasks)
        w, b = ctx_head["weight"][rows].to(ctx.device), ctx_head["bias"][rows].to(ctx.device)
        return learner.model, lambda f: f @ w.T + b

    ctx.network = network
    t_start = time.perf_counter()
    method.start(ctx)

    # resume from the last completed step of an earlier attempt (cmbench.jobstate); the
    # steps' training seeds are fixed per step, the generators' states are restored
    checkpoint = jobstate.Checkpoint(store, key_of(job_inputs(suite, job)))
    saved = checkpoint.load()
    if saved is None:
        row0, all0, within0 = learner.evaluate(theta0, head, order, [], incremental)
        R, acc_all, R_within = [row0], [all0], [within0]
        deployed, done, earlier_s = theta0, 0, 0.0
        merge_times, train_times, storage, grad_norms, own = [], [], [], [], []
    else:
        R, acc_all, R_within, merge_times, train_times, storage, grad_norms, own = (
            saved[k] for k in ("R", "acc_all", "R_within", "merge_times", "train_times", "storage", "grad_norms", "own")
        )
        deployed, head, done, earlier_s = saved["deployed"], saved["head"], saved["step"], saved["job_s"]
        for name, value in saved["method"].items():
            setattr(method, name, value)
        jobstate.set_rng_state(saved["rng"], ctx.generator)
        data.samples_handed = saved["samples_handed"]
        learner.train_optimizer_steps, learner.eval_seconds, learner.eval_images = saved["learner"]
        ctx.diagnostics = saved.get("diagnostics", {})
    ctx_head = head  # the methods' network's head: this step's trained rows, once trained
    for t, task in enumerate(order, start=1):
        if t <= done:
            continue
        ctx.step, ctx.task, ctx.seen_tasks = t, task, order[:t]
        start = method.train_start(ctx, deployed)
        names = method.train_tasks(ctx)
        if not set(names) <= set(order[:t]):
            raise CmbenchError(f"{job.method}: train_tasks returned {names}, not all seen by step {t}")
        grad_norms.append(learner.start_grad_norm(start, head, task))
        t0 = time.perf_counter()
        trained, trained_head = learner.train(ctx, method, start, head, names, seed=job.seed * 1000 + t)
        train_times.append(time.perf_counter() - t0)
        _check_finite(trained, job, t, "trained")
        ctx_head = trained_head
        own.append(learner.evaluate(trained, trained_head, [task], [task], "task_incremental")[0][0])
        t0 = time.perf_counter()
        deployed = method.merge(ctx, deployed, trained, task)
        merge_times.append(time.perf_counter() - t0)
        _check_finite(deployed, job, t)
        head = trained_head  # rows of this step's classes come from training; others unchanged
        row, a, within = learner.evaluate(deployed, head, order, order[:t], incremental)
        R.append(row)
        acc_all.append(a)
        R_within.append(within)
        storage.append(measure_storage(method, theta0))
        checkpoint.save(
            {
                "step": t,
                "deployed": deployed,
                "head": head,
                "method": method.kept,
                "R": R,
                "acc_all": acc_all,
                "R_within": R_within,
                "merge_times": merge_times,
                "train_times": train_times,
                "storage": storage,
                "grad_norms": grad_norms,
                "own": own,
                "rng": jobstate.rng_state(ctx.generator),
                "samples_handed": data.samples_handed,
                "learner": [learner.train_optimizer_steps, learner.eval_seconds, learner.eval_images],
                "diagnostics": ctx.diagnostics,
                "job_s": earlier_s + time.perf_counter() - t_start,
            }
        )

    ctx.step, ctx.task, ctx.seen_tasks = len(order), order[-1], list(order)  # also when resumed after the last
    ctx.finishing = True
    finished = method.finish(ctx, deployed)
    ctx.finishing = False
    row_before_finish = None
    if finished is not deployed:
        _check_finite(finished, job, len(order) + 1)
        row_before_finish = R[-1]
        R[-1], acc_all[-1], R_within[-1] = learner.evaluate(finished, head, order, order, incremental)

    record = {
        **_record_common(suite, job, method, store),
        "tasks": order,
        "R": R,
        "E": None,
        "R_final_before_finish": row_before_finish,
        "heads": incremental,
        "evaluation": _evaluation_record(suite, learner.tasks, order),
        "ACC_all_steps": acc_all,
        "R_within": R_within,
        "trained_own_task_acc": own,
        "start_grad_norm": grad_norms,
        "metrics": metrics.all_metrics(R, acc_all=acc_all if incremental == "class_incremental" else None),
        "data_samples_handed": data.samples_handed,
        "storage_bytes": _storage_record(storage),
        "timings": {
            "train_steps_s": train_times,
            "train_total_s": sum(train_times),
            "train_optimizer_steps": learner.train_optimizer_steps,
            "train_batch_size": learner.recipe.batch_size,
            "merge_steps_s": merge_times,
            "merge_total_s": sum(merge_times),
            "eval_s": learner.eval_seconds,
            "eval_images": learner.eval_images,
            "job_s": earlier_s + time.perf_counter() - t_start,
            "resumed_after_step": done or None,
        },
        "threads": threads,
        **_diagnostics(ctx),
    }
    checkpoint.clear()
    return record
