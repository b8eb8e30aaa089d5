"""A suite expanded into jobs: (method, seed, order), each with what keys it."""

from __future__ import annotations

import itertools
import json


from .. import CmbenchError
from ..fingerprint import method_fingerprint
from .files import did_you_mean
from .base import Job
from .model import Suite


# -- expansion into jobs ------------------------------------------------------------------


def training_field(own: dict | None) -> str | None:
    """``Job.training``: a method's own training fields as JSON (None without any)."""
    return json.dumps(own, sort_keys=True) if own else None


def expand(
    suite: Suite,
    methods: list[str] | None = None,
    n_seeds: int | None = None,
    n_orders: int | None = None,
    skip: list[str] | None = None,
) -> list[Job]:
    specs = suite.methods
    known = {m.display for m in specs} | {m.name for m in specs}
    for flag, names in (("--methods", methods), ("--skip", skip)):
        unknown = [m for m in names or [] if m not in known]
        if unknown:
            raise CmbenchError(
                f"{flag}: {unknown[0]!r} is not in suite {suite.name}{did_you_mean(unknown[0], known)} "
                f"(it has: {', '.join(sorted(known))})"
            )
    if methods:
        specs = [m for m in specs if m.display in methods or m.name in methods]
    if skip:
        specs = [m for m in specs if m.display not in skip and m.name not in skip]
    for flag, n, have in (("--seeds", n_seeds, len(suite.seeds)), ("--orders", n_orders, suite.orders_per_seed())):
        if n is not None and not 1 <= n <= have:
            raise CmbenchError(f"{flag} {n}: suite {suite.name} has {have}; give 1 to {have} (the first N are used)")
    seeds = suite.seeds[:n_seeds] if n_seeds else suite.seeds
    suite_hash = suite.hash()
    from .. import registry

    jobs = []
    for spec, seed in itertools.product(specs, seeds):
        cls = registry.get(spec.name)
        orders = suite.orders_for(seed)
        for oi, order in enumerate(orders[:n_orders] if n_orders else orders):
            lora = spec.lora or suite.training.lora if suite.setting == "train_then_merge" else None
            jobs.append(
                Job(
                    suite.name,
                    suite_hash,
                    spec.name,
                    spec.display,
                    tuple(sorted(spec.hparams.items())),
                    lora.model_dump_json() if lora else None,
                    method_fingerprint(cls),
                    seed,
                    oi,
                    tuple(order),
                    training_field(spec.training),
                    spec.experts,
                )
            )
    return jobs
