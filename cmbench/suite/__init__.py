"""Suite schema, validation with one-line errors, and expansion into jobs.

A suite is a YAML file. Everything that changes a number is in it. Loading it checks
types, unknown keys, task names in orders, dataset names, method names and their
hyperparameters, and reports the first problem as ``FILE: FIELD.PATH: what is allowed``.

The schema's parts: ``base`` (strict models, the name rule, jobs), ``backbones``,
``recipes`` (training), ``sections`` (tasks, heads, experts, orders, methods, ...),
``model`` (the suite and its cross-checks), ``files`` (reading suite files) and ``jobs``
(expansion).
"""

from __future__ import annotations

from .backbones import AnyBackbone, Backbone, HFSeq2Seq, OpenCLIP, TimmViT, TinyViT, open_clip_configs
from .backbones import keyed as keyed_backbone
from .base import NAME, FieldError, Job, Setting, Strict
from .files import did_you_mean, load_suite, resolve_suite, suite_dirs, suite_named
from .jobs import expand, training_field
from .model import Suite
from .recipes import LATER_RECIPE_FIELDS, Augment, LoRA, TrainRecipe, Training
from .sections import (
    Evaluation,
    ExpertCheckpoint,
    Experts,
    Heads,
    MethodSpec,
    Orders,
    Pretrain,
    Rehearsal,
    Resources,
    Task,
)

__all__ = [
    "keyed_backbone",
    "NAME",
    "LATER_RECIPE_FIELDS",
    "AnyBackbone",
    "Backbone",
    "Augment",
    "Evaluation",
    "ExpertCheckpoint",
    "Experts",
    "FieldError",
    "Heads",
    "Job",
    "LoRA",
    "MethodSpec",
    "OpenCLIP",
    "Orders",
    "Pretrain",
    "Rehearsal",
    "Resources",
    "Setting",
    "Strict",
    "Suite",
    "Task",
    "TimmViT",
    "HFSeq2Seq",
    "TinyViT",
    "Training",
    "TrainRecipe",
    "did_you_mean",
    "expand",
    "load_suite",
    "open_clip_configs",
    "resolve_suite",
    "suite_dirs",
    "suite_named",
    "training_field",
]
