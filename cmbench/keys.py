"""What decides a job's key and whether a result is current: the versions of the harness
components that produce a job's numbers, a job's inputs (its suite's settings, method,
hyperparameters, seed, order and the artefacts it consumes, with their content hashes),
the key formed from them, and why a stored result is stale. One API for the runner,
``cmbench verify``, ``cmbench tune`` and the re-keying tool.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .artefacts import data_versions, expert_key, heads_key, theta0_key
from .models import models_version, numerics
from .record import BadResult, integrity, read_record
from .store import Store
from .suite import Job, Suite
from .train import TRAIN_VERSION

# Versions of the loop's components. Bump one when a change alters any number it produces
# (R, E or anything recorded beside them): every job keyed on it is recomputed, and
# `cmbench verify` on committed results fails until they are.
EVALUATION_VERSION = 1  # Evaluator, Learner.evaluate: which cells are measured, and how
MERGE_STREAM_VERSION = 1  # run_merge_stream: the loop, the methods' context and ctx.network
TRAIN_THEN_MERGE_VERSION = 2  # run_train_then_merge, Learner, ClassSpace: training, classifier rows, the loop
# (2: the start gradient norm accumulated over batches of the recipe's size)
DATA_ACCESS_VERSION = 1  # DataAccess: which samples a method is handed


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
        keys["experts"] = {
            t: expert_key(suite, job.seed, t, job.expert_chain(step)) for step, t in enumerate(job.order, start=1)
        }
    return keys


def job_inputs(suite: Suite, job: Job) -> dict:
    """Everything that determines a job's numbers except its artefacts' content hashes
    (``with_content`` adds them). Metrics are not here: they are derived from R."""
    return {
        "suite_hash": job.suite_hash,
        "method": job.method,
        "label": job.label,
        "hparams": dict(job.hparams),
        "lora": job.lora_spec,
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
        # sequential experts (the artefact keys differ too; independent keys are as before)
        **({"experts": job.experts} if job.experts != "independent" else {}),
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


# -- whether a stored result is current ---------------------------------------------------------


def recorded_content(inputs: dict) -> dict[tuple[str, str], str | None]:
    """(kind, artefact key) -> content hash, as a result's inputs record them (None: none recorded)."""
    out: dict[tuple[str, str], str | None] = {}
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
