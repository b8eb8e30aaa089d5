"""Suite schema, validation with one-line errors, and expansion into jobs.

A suite is a YAML file. Everything that changes a number is in it. Loading it checks
types, unknown keys, task names in orders, dataset names, method names and their
hyperparameters, and reports the first problem as ``FILE: FIELD.PATH: what is allowed``.
"""

from __future__ import annotations

import collections
import copy
import functools
import hashlib
import itertools
import json
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator, model_validator

from . import CmbenchError
from .catalog import DATASET_PARAMS, PARAM_RULES
from .fingerprint import method_fingerprint

Setting = Literal["merge_stream", "train_then_merge"]


class Strict(BaseModel):
    # every number in a suite is finite (`lr: .inf` was taken and trained to NaN)
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class TinyViT(Strict):
    """The tiny timm VisionTransformer used by the micro suites (θ0 pretrained by the harness)."""

    kind: Literal["tiny_vit"] = "tiny_vit"
    img_size: int = Field(16, gt=0, le=512)
    patch_size: int = Field(4, gt=0, le=64)
    # bounded: a micro backbone, never a size that exhausts the machine before a line is said
    in_chans: int = Field(1, gt=0, le=16)
    embed_dim: int = Field(64, gt=0, le=4096)
    depth: int = Field(4, gt=0, le=64)
    num_heads: int = Field(4, gt=0, le=64)
    mlp_ratio: float = Field(2.0, gt=0, le=16, allow_inf_nan=False)
    linearized: bool = Field(False, description="fine-tune and merge the model linearised at θ0 (tangent space)")

    @model_validator(mode="after")
    def _shapes(self):
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size ({self.img_size}) must be a multiple of patch_size ({self.patch_size})")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim ({self.embed_dim}) must be a multiple of num_heads ({self.num_heads})")
        return self

    @property
    def image_size(self) -> int:
        return self.img_size

    @property
    def feature_dim(self) -> int:
        return self.embed_dim


Backbone = TinyViT  # the default kind; ``AnyBackbone`` is the union a suite accepts


@functools.lru_cache(maxsize=1)
def open_clip_configs() -> dict[str, dict]:
    """open_clip's architectures by name, read from the JSON files it ships and registers at
    import (``open_clip/model_configs/*.json`` with embed_dim, vision_cfg and text_cfg), the
    same files without the import: importing open_clip pulls in timm and the Hugging Face
    libraries, seconds that a suite's validation (and its error line) must not wait for."""
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    where = [Path(d) / "model_configs" for d in (spec.submodule_search_locations or [])] if spec else []
    configs = {}
    for f in sorted(p for d in where if d.is_dir() for p in d.glob("*.json")):
        cfg = json.loads(f.read_text())
        if {"embed_dim", "vision_cfg", "text_cfg"} <= set(cfg):
            configs[f.stem] = cfg
    if configs:
        return configs
    import open_clip  # a layout we do not know: ask the library

    return {m: open_clip.get_model_config(m) for m in open_clip.list_models()}


class OpenCLIP(Strict):
    """A CLIP image encoder through open_clip; the merged model is ``visual.*``.

    ``model`` is an open_clip architecture (``ViT-B-32``, ``ViT-B-16``, ``ViT-L-14``) and
    ``pretrained`` its tag (``openai``), loaded from the local open_clip / HF cache (set
    ``CMBENCH_ALLOW_DOWNLOAD=1`` to fetch). ``config`` gives a custom architecture instead
    (an open_clip model config: tiny models in tests); ``pretrained: null`` initialises it
    from the seed. Zero-shot heads come from the text tower (see ``Heads``).
    """

    kind: Literal["open_clip"]
    model: str = Field(min_length=1)
    pretrained: Optional[str] = "openai"
    config: Optional[dict[str, Any]] = Field(
        None, description="open_clip model config (embed_dim, vision_cfg, text_cfg)"
    )
    linearized: bool = False

    @model_validator(mode="after")
    def _known(self):
        if self.config is None:
            if self.model not in open_clip_configs():
                raise ValueError(
                    f"unknown open_clip model {self.model!r}; e.g. ViT-B-32, ViT-B-16, ViT-L-14 (or give `config`)"
                )
        elif not {"embed_dim", "vision_cfg", "text_cfg"} <= set(self.config):
            raise ValueError("config needs embed_dim, vision_cfg and text_cfg (an open_clip model config)")
        return self

    def open_clip_config(self) -> dict:
        return self.config if self.config is not None else copy.deepcopy(open_clip_configs()[self.model])

    @property
    def image_size(self) -> int:
        size = self.open_clip_config()["vision_cfg"].get("image_size", 224)
        return size if isinstance(size, int) else size[0]

    @property
    def feature_dim(self) -> int:
        return int(self.open_clip_config()["embed_dim"])


class TimmViT(Strict):
    """A timm ViT (e.g. ``vit_base_patch16_224.augreg_in21k_ft_in1k``: ImageNet-21k
    pretrained, ImageNet-1k fine-tuned, as in the InfLoRA / P&M line of work). ``kwargs``
    go to ``timm.create_model`` (tiny test models: ``img_size``, ``depth``, …)."""

    kind: Literal["timm"]
    model: str = Field(min_length=1)
    pretrained: bool = True
    kwargs: dict[str, Any] = Field(default_factory=dict)
    linearized: bool = False

    @property
    def image_size(self) -> int:
        return int(self.kwargs.get("img_size", 224))


AnyBackbone = Annotated[Union[TinyViT, OpenCLIP, TimmViT], Field(discriminator="kind")]


class Augment(Strict):
    """Training-time augmentation, torchvision's ``RandomResizedCrop`` then
    ``RandomHorizontalFlip`` as the InfLoRA / PyCIL / MagMax recipes use them. The crop is
    taken from the whole image (its full field of view, decoded at ``view_size``² with its
    aspect ratio kept on record) where the dataset can provide it, else from the stored image."""

    random_resized_crop: bool = True
    scale: tuple[float, float] = Field(
        (0.08, 1.0),
        description="area fraction of the whole image (torchvision's "
        "default; InfLoRA uses 0.05 for ImageNet-A and CUB)",
    )
    ratio: tuple[float, float] = Field((3 / 4, 4 / 3), description="aspect ratio range of the crop")
    hflip: bool = True
    view_size: int = Field(256, gt=0, description="side of the decoded whole image the crops are taken from")

    @model_validator(mode="after")
    def _ranges(self):
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale {list(self.scale)}: give 0 < low <= high <= 1")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio {list(self.ratio)}: give 0 < low <= high")
        return self


# Fields added to the recipe after results were committed: at their defaults they are left out
# of hashes and keys (`keyed`), so results computed before they existed stay valid.
LATER_RECIPE_FIELDS = ("optimizer", "momentum", "warmup_steps", "grad_clip", "augment", "precision")


class TrainRecipe(Strict):
    epochs: int = Field(5, ge=0)
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    batch_size: int = Field(64, gt=0)
    warmup_frac: float = Field(0.1, ge=0, le=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    steps: Optional[int] = Field(None, gt=0, description="optimiser steps (overrides epochs; FusionBench-style)")
    trainable: str = Field(".*", description="regex over parameter names: the trainable subset")
    optimizer: Literal["adamw", "adam", "sgd"] = Field(
        "adamw", description="adam: L2 weight decay in the gradient (torch.optim.Adam, as InfLoRA); adamw: decoupled"
    )
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only")
    warmup_steps: Optional[int] = Field(
        None, ge=0, description="linear warm-up length in steps (overrides warmup_frac; MagMax: 500)"
    )
    grad_clip: Optional[float] = Field(
        None, gt=0, description="clip the gradients' global norm to this (MagMax's fine-tuning: 1.0)"
    )
    augment: Optional[Augment] = None
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: forward and loss under autocast (weights and optimiser state stay fp32)"
    )

    def keyed(self) -> dict:
        """The recipe as hashes and keys see it (later fields dropped at their defaults)."""
        out = self.model_dump(mode="json")
        for f in LATER_RECIPE_FIELDS:
            if getattr(self, f) == type(self).model_fields[f].default:
                del out[f]
        return out

    @field_validator("trainable")
    @classmethod
    def _regex(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"not a valid regular expression: {e}")
        return v


class LoRA(Strict):
    """Low-rank adapters: W + (alpha/rank)·B A on the target matrices (q, k, v are rows of
    a fused attention weight and are adapted separately)."""

    rank: int = Field(10, gt=0)
    alpha: Optional[float] = Field(None, gt=0, description="scaling numerator; default = rank")
    targets: list[Literal["q", "k", "v", "proj", "fc1", "fc2"]] = Field(
        default_factory=lambda: ["k", "v"], min_length=1
    )


class Training(TrainRecipe):
    """Train-then-merge: how each task is trained (the harness's loop; methods hook it)."""

    head_lr: Optional[float] = Field(None, gt=0, description="classifier rows' lr; default = lr")
    lora: Optional[LoRA] = None


class Pretrain(TrainRecipe):
    """How θ0 is made when no checkpoint is given (see ``artefacts.make_theta0``)."""

    recipe: Literal["family_rotation", "multitask"] = "family_rotation"
    coarse: int = Field(1, ge=1, description="multitask: pretrain on labels y // coarse (coarser classes)")
    tasks: Optional[list["Task"]] = Field(
        None, description="pretrain on these tasks (other image data) instead of the suite's tasks"
    )
    label_tasks: Optional[list[str]] = Field(
        None, description="multitask: the tasks whose (train) labels θ0 is pretrained on; default all"
    )


# every name that becomes part of a path (suite, task, method label): no separators, no
# "..", no control characters, bounded length (a label `../../x` wrote outside --out)
NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"


class Task(Strict):
    name: str = Field(pattern=NAME)
    dataset: str
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("dataset")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in DATASET_PARAMS:
            raise ValueError(f"unknown dataset {v!r}; known: {', '.join(sorted(DATASET_PARAMS))}")
        return v

    @model_validator(mode="after")
    def _known_params(self):
        """``params`` are the dataset builder's keyword arguments (``cmbench/catalog.py``):
        an unknown one is named here, not later as a TypeError inside the builder."""
        allowed = DATASET_PARAMS[self.dataset]
        unknown = sorted(set(self.params) - set(allowed))
        if unknown:
            raise ValueError(
                f"params: unknown parameter {unknown[0]!r} of dataset {self.dataset}; "
                f"allowed: {', '.join(allowed) or '(none)'}"
            )
        for name, value in self.params.items():  # sizes, rates and indices: type and range
            if name not in PARAM_RULES:
                continue
            kind, low, high = PARAM_RULES[name]
            ok_type = isinstance(value, int) if kind == "int" else isinstance(value, (int, float))
            if isinstance(value, bool) or not ok_type or not (low <= value <= high):  # NaN fails the range too
                raise ValueError(
                    f"params.{name}: {value!r} is not {'an integer' if kind == 'int' else 'a number'} "
                    f"in [{low}, {high}]"
                )
        return self


class Heads(Strict):
    """Per-task heads fixed on θ0 before any expert is trained.

    ``zero_shot`` (CLIP backbones): the text tower's embeddings of every class name in every
    prompt template of the task (normalised, averaged over templates, normalised again,
    times the logit scale), as in the task-vectors / FusionBench releases.
    ``template``: cosine classifier whose class vectors are θ0's embeddings of each class's
    mean train image (one canonical description per class: the micro analogue of the
    zero-shot text heads). ``prototype``: class means of ``shots`` train features per class.
    ``linear_probe``: logistic regression on the train split.
    """

    kind: Literal["zero_shot", "template", "prototype", "linear_probe", "class_incremental", "task_incremental"] = (
        "prototype"
    )
    shots: int = Field(5, gt=0)
    scale: float = Field(20.0, gt=0, le=1000, allow_inf_nan=False)


class ExpertCheckpoint(Strict):
    """Where a task's expert comes from, pinned by its file's sha256.

    ``format``: ``hf_clip_vision`` (a transformers ``CLIPVisionModel`` state dict, e.g. the
    ``tanganke/clip-vit-base-patch32_<task>`` checkpoints used by FusionBench and ODE-M),
    ``open_clip`` (a state dict under open_clip's names, e.g. a local safetensors file),
    ``task_vectors`` (the task-vectors release's pickled ``ImageEncoder``: needs
    ``trust_pickle: true``). ``path`` is a local file or ``hf://OWNER/REPO[/FILE]``.
    """

    format: Literal["hf_clip_vision", "open_clip", "task_vectors", "timm"] = "open_clip"
    path: str = Field(min_length=1)
    sha256: Optional[str] = Field(None, pattern=r"^[0-9a-f]{64}$")
    trust_pickle: bool = False


class Experts(Strict):
    """``finetune``: the harness fine-tunes θ0 on each task (``cmbench finetune`` or on
    first use). ``checkpoints``: one pinned checkpoint per task (every task needs one)."""

    source: Literal["finetune", "checkpoints"] = "finetune"
    finetune: TrainRecipe = Field(default_factory=TrainRecipe)
    checkpoints: dict[str, ExpertCheckpoint] = Field(default_factory=dict)


class Orders(Strict):
    """Task orders, nested within seeds: the explicit lists, then ``random`` seeded
    permutations per seed. With neither, the listed task order is used."""

    explicit: list[list[str]] = Field(default_factory=list)
    # distinct permutations are drawn one by one: far more than any benchmark reports (10) and
    # few enough to draw at once (random: 10^9 over 10 tasks drew for hours)
    random: int = Field(0, ge=0, le=1000)


class MethodSpec(Strict):
    name: str
    label: Optional[str] = Field(None, pattern=NAME)
    hparams: dict[str, Any] = Field(default_factory=dict)
    lora: Optional[LoRA] = Field(
        None, description="train-then-merge: train this method with LoRA (overrides training.lora)"
    )
    search: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="`cmbench tune`: a grid of values per hyperparameter, scored on validation splits",
    )
    training: dict[str, Any] = Field(
        default_factory=dict,
        description="train-then-merge: this method's own "
        "recipe, fields that override the suite's `training` (its paper's lr, "
        "epochs, optimizer, augmentation)",
    )

    @property
    def display(self) -> str:
        return self.label or self.name


class Evaluation(Strict):
    batch_size: int = Field(1024, gt=0)
    seen_only: bool = Field(
        False, description="evaluate M_t on seen tasks only (unseen cells NaN; FWT undefined); saves T²/2 evaluations"
    )
    max_test_per_task: Optional[int] = Field(
        None, gt=0, description="cap each task's test split at its first N samples of a fixed permutation (data seed)"
    )
    # keyed with the device type as the job's numerics (models.numerics), not as an
    # evaluation setting: fp32 keys stay as they were before the field existed
    precision: Literal["fp32", "tf32", "bf16"] = Field(
        "fp32",
        description="evaluation arithmetic: fp32; tf32 (CUDA matmuls and convolutions in "
        "TensorFloat-32); bf16 (autocast to bfloat16)",
    )


class Resources(Strict):
    cpus_per_job: int = Field(1, gt=0, le=1024)
    # a fraction shares a GPU: Ray packs 1/f jobs onto each GPU
    gpus_per_job: float = Field(0, ge=0)
    gpu_memory_gb: Optional[float] = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="a job's peak GPU memory (measure it with `cmbench run SUITE --rehearse` on a GPU): the "
        "driver refuses a gpus_per_job fraction whose share of a GPU is smaller, and each job "
        "waits until that much is free on its GPU before it starts",
    )
    job_time_limit_s: Optional[float] = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="stop a job that runs longer (it is recorded as failed; its last completed step is "
        "saved, so a rerun resumes there); `cmbench run --job-time-limit` overrides it",
    )


class Rehearsal(Strict):
    """Set by ``cmbench run SUITE --rehearse`` (``cmbench/rehearse.py``): the suite's real
    code on generated stand-ins for its three downloads, in the output directory: backbone
    weights initialised from ``seed``, images with the real class names and split sizes
    (times ``scale``, at most ``max_per_split`` per split), and experts θ0 + a low-rank
    plus sparse perturbation per matrix. ``caps`` are what it lowered for a CPU (evaluation,
    training, method hyperparameters). Its results are watermarked with this section, and
    ``cmbench report`` refuses them unless asked (``--include-rehearsal``)."""

    seed: int = 0
    scale: float = Field(1.0, gt=0, le=1)
    max_per_split: Optional[int] = Field(None, gt=0)
    max_train_per_split: Optional[int] = Field(None, gt=0, description="train splits only (default: max_per_split)")
    expert_rank: int = Field(8, gt=0, description="rank of each matrix's low-rank perturbation")
    expert_lowrank: float = Field(0.03, ge=0, description="its Frobenius norm relative to the matrix's")
    expert_density: float = Field(0.005, gt=0, le=1, description="fraction of entries in the sparse part")
    expert_sparse: float = Field(0.01, ge=0, description="its Frobenius norm relative to the matrix's")
    expert_vector: float = Field(0.01, ge=0, description="dense perturbation of 1-d parameters (relative norm)")
    caps: dict[str, Any] = Field(default_factory=dict)


class Suite(Strict):
    name: str = Field(pattern=NAME)
    description: str = ""
    setting: Setting = "merge_stream"
    seeds: list[Annotated[StrictInt, Field(ge=0, le=2**31 - 1)]] = Field(
        default_factory=lambda: [0], min_length=1, max_length=1000
    )
    # the seed of the datasets' splits and generated images: one for every seed (the same test
    # images everywhere: the report adds their sampling error to the intervals), ``per_seed``
    # (seed s uses data seed s: test sampling enters the seeds' spread), or one per seed
    data_seed: Union[Annotated[StrictInt, Field(ge=0, le=2**31 - 1)], Literal["per_seed"], list[StrictInt]] = 0
    backbone: AnyBackbone  # required: a suite says what it merges (no silent default)
    pretrain: Pretrain = Field(default_factory=Pretrain)
    tasks: list[Task] = Field(min_length=1)
    heads: Heads = Field(default_factory=Heads)
    experts: Experts = Field(default_factory=Experts)
    training: Training = Field(default_factory=Training)
    orders: Orders = Field(default_factory=Orders)
    methods: list[MethodSpec] = Field(min_length=1)
    evaluation: Evaluation = Field(default_factory=Evaluation)
    resources: Resources = Field(default_factory=Resources)
    rehearsal: Optional[Rehearsal] = None

    @field_validator("backbone", mode="before")
    @classmethod
    def _default_kind(cls, v):
        return {"kind": "tiny_vit", **v} if isinstance(v, dict) and "kind" not in v else v

    @model_validator(mode="after")
    def _cross_checks(self):
        names = [t.name for t in self.tasks]
        if isinstance(self.data_seed, list) and len(self.data_seed) != len(self.seeds):
            raise _FieldError(
                "data_seed", f"give one data seed per seed ({len(self.seeds)}), or per_seed, or one number"
            )
        dup = sorted(n for n, k in collections.Counter(names).items() if k > 1)
        if dup:
            raise _FieldError("tasks", f"task names must be unique; repeated: {dup}")
        if len(set(self.seeds)) != len(self.seeds):
            raise _FieldError("seeds", "seeds must be unique")
        for i, order in enumerate(self.orders.explicit):
            if sorted(order) != sorted(names):
                unknown = sorted(set(order) - set(names))
                missing = sorted(set(names) - set(order))
                repeated = sorted({n for n in order if order.count(n) > 1})
                raise _FieldError(
                    f"orders.explicit.{i}",
                    "an order must list every task exactly once"
                    + (f"; unknown: {unknown}" if unknown else "")
                    + (f"; missing: {missing}" if missing else "")
                    + (f"; repeated: {repeated}" if repeated else ""),
                )
        pre_names = [t.name for t in self.pretrain.tasks] if self.pretrain.tasks else names
        unknown = sorted(set(self.pretrain.label_tasks or []) - set(pre_names))
        if unknown:
            raise _FieldError("pretrain.label_tasks", f"unknown tasks {unknown}; pretraining tasks are {pre_names}")
        if self.resources.gpu_memory_gb is not None and self.resources.gpus_per_job == 0:
            raise _FieldError("resources.gpu_memory_gb", "applies to GPU jobs only; set resources.gpus_per_job")
        if self.evaluation.precision == "tf32" and self.resources.gpus_per_job == 0:
            raise _FieldError(
                "evaluation.precision",
                "tf32 changes CUDA arithmetic only and this suite runs on "
                "the CPU (resources.gpus_per_job: 0); use fp32 or bf16",
            )
        stream_heads = ("zero_shot", "template", "prototype", "linear_probe")
        cl_heads = ("class_incremental", "task_incremental")
        allowed = stream_heads if self.setting == "merge_stream" else cl_heads
        if self.heads.kind not in allowed:
            raise _FieldError(
                "heads.kind", f"{self.heads.kind!r} does not fit setting {self.setting}; use one of {allowed}"
            )
        if (self.heads.kind == "zero_shot") != (self.backbone.kind == "open_clip" and self.setting == "merge_stream"):
            raise _FieldError(
                "heads.kind",
                "zero_shot heads go with an open_clip backbone in the merge stream "
                f"(backbone is {self.backbone.kind}, heads {self.heads.kind})",
            )
        if self.experts.source == "checkpoints":
            unknown = sorted(set(self.experts.checkpoints) - set(names))
            missing = [n for n in names if n not in self.experts.checkpoints]
            if unknown or missing:
                raise _FieldError(
                    "experts.checkpoints",
                    "one checkpoint per task"
                    + (f"; unknown tasks: {unknown}" if unknown else "")
                    + (f"; missing: {missing}" if missing else ""),
                )
        labels = [m.display for m in self.methods]
        dup = sorted({n for n in labels if labels.count(n) > 1})
        if dup:
            raise _FieldError("methods", f"method labels must be unique (set `label`); repeated: {dup}")
        # the method registry imports torch and every baseline: a suite whose other fields are
        # wrong has been refused above without paying for it
        from . import methods as methods_mod
        from . import registry

        for i, m in enumerate(self.methods):
            try:
                cls = registry.get(m.name)
            except CmbenchError as e:
                raise _FieldError(f"methods.{i}.name", str(e))
            if self.setting not in cls.settings:
                raise _FieldError(f"methods.{i}.name", f"{m.name} supports {cls.settings}, not {self.setting}")
            try:
                m.hparams = _plain_hparams(cls, m.hparams)
            except methods_mod.HparamError as e:
                field, msg = e.errors[0]
                raise _FieldError(f"methods.{i}.hparams.{field}", msg)
            if m.training:
                if self.setting != "train_then_merge":
                    raise _FieldError(
                        f"methods.{i}.training",
                        "a method's own training recipe applies to train_then_merge suites only",
                    )
                if "lora" in m.training:
                    raise _FieldError(f"methods.{i}.training.lora", "give a method's LoRA as methods.{i}.lora")
                try:
                    self.training_of(m)
                except ValidationError as e:
                    err = e.errors()[0]
                    where = ".".join(str(x) for x in err["loc"])
                    raise _FieldError(f"methods.{i}.training.{where}", err["msg"])
            for hp, values in m.search.items():
                if not values:
                    raise _FieldError(f"methods.{i}.search.{hp}", "give at least one value")
                for v in values:
                    try:
                        _plain_hparams(cls, {**m.hparams, hp: v})
                    except methods_mod.HparamError as e:
                        raise _FieldError(f"methods.{i}.search.{hp}", e.errors[0][1])
        return self

    def training_of(self, spec: MethodSpec | Job) -> Training:
        """The recipe a method (or a job) trains with: the suite's, the method's own fields over it."""
        own = spec.training if isinstance(spec, MethodSpec) else json.loads(spec.training or "{}")
        if not own:
            return self.training
        return Training.model_validate({**self.training.model_dump(), **own})

    # -- identity --------------------------------------------------------------------
    def environment(self) -> dict:
        """Everything that changes numbers except the method list (adding a method does
        not invalidate the other methods' results)."""
        env = self.model_dump(exclude={"name", "description", "methods"}, mode="json")
        if env["rehearsal"] is None:  # a real suite hashes as it did before rehearsals existed
            del env["rehearsal"]
        if env["evaluation"]["precision"] == "fp32":  # ... and before evaluation.precision existed
            del env["evaluation"]["precision"]
        for k in ("gpu_memory_gb", "job_time_limit_s"):  # placement and limits: no number depends on them
            del env["resources"][k]
        env["training"], env["pretrain"] = self.training.keyed(), self.pretrain.keyed()
        env["experts"]["finetune"] = self.experts.finetune.keyed()
        return env

    def hash(self) -> str:
        blob = json.dumps(self.environment(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def data_seed_for(self, seed: int) -> int:
        """The data seed of ``seed``'s jobs and artefacts."""
        if self.data_seed == "per_seed":
            return seed
        if isinstance(self.data_seed, list):
            return self.data_seed[self.seeds.index(seed)]
        return self.data_seed

    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def orders_per_seed(self) -> int:
        """How many orders ``orders_for`` gives each seed."""
        explicit = len(self.orders.explicit)
        return max(1, explicit + min(self.orders.random, max(0, math.factorial(len(self.tasks)) - explicit)))

    def orders_for(self, seed: int) -> list[list[str]]:
        names = self.task_names()
        out = [list(o) for o in self.orders.explicit]
        # distinct permutations (and distinct from the explicit ones), up to all T! of them
        rng = random.Random(f"order-{seed}")
        # distinct from each other and from the explicit ones: never more than T! in all
        target = len(out) + min(self.orders.random, math.factorial(len(names)) - len(out))
        seen = {tuple(o) for o in out}
        while len(out) < target:
            perm = rng.sample(names, len(names))
            if tuple(perm) not in seen:
                seen.add(tuple(perm))
                out.append(perm)
        return out or [names]


def _plain_hparams(cls, given: dict) -> dict:
    """The method's hyperparameters validated against its signature and the ranges it declares
    (``Annotated[float, Field(gt=0, le=1)]``), plus two rules for every method: a number is
    finite, and a boolean is not taken for a number (pydantic's lax mode reads ``true`` as 1)."""
    from .methods import HparamError, validate_hparams

    full = validate_hparams(cls, given)
    for k, v in given.items():
        if isinstance(v, bool) and not isinstance(full.get(k), bool):
            raise HparamError([(k, f"a number is meant, not a boolean (got {v!r})")])
        if isinstance(full.get(k), float) and not math.isfinite(full[k]):
            raise HparamError([(k, f"must be a finite number (got {full[k]!r})")])
    return full


class _FieldError(ValueError):
    def __init__(self, field: str, msg: str):
        super().__init__(msg)
        self.field, self.msg = field, msg


def _fmt_loc(loc: tuple) -> str:
    if len(loc) > 1 and loc[0] == "backbone" and loc[1] in ("tiny_vit", "open_clip", "timm"):
        loc = loc[:1] + loc[2:]  # the union's tag is not a field the user wrote

    def part(x) -> str:
        x = str(x)
        return x if x and x.isprintable() and "." not in x else repr(x)

    return ".".join(part(x) for x in loc) or "(top level)"


def _pydantic_message(err: dict) -> tuple[str, str]:
    loc = _fmt_loc(err["loc"])
    ctx_err = (err.get("ctx") or {}).get("error")
    if isinstance(ctx_err, _FieldError):
        return ctx_err.field, ctx_err.msg
    kind = err["type"]
    if kind == "extra_forbidden":
        return loc, "unknown key; remove it or check its spelling"
    if kind == "missing":
        return loc, "required field is missing"
    msg = err["msg"].removeprefix("Value error, ")
    if "input" in err and not isinstance(err["input"], (dict, list)):
        msg += f" (got {err['input']!r})"
    return loc, msg


def did_you_mean(name: str, known) -> str:
    """ "; did you mean 'x'?" for the closest of ``known``, or nothing."""
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def suite_dirs() -> list[Path]:
    """Where suites are found by name: ./suites, then the repository's suites/."""
    dirs = [Path.cwd() / "suites", Path(__file__).resolve().parents[1] / "suites"]
    return [d for i, d in enumerate(dirs) if d.is_dir() and d.resolve() not in [x.resolve() for x in dirs[:i]]]


def resolve_suite(arg: str) -> Path:
    """A suite file from a path or a name (``micro-digits-merge`` → ``suites/micro-digits-merge.yaml``)."""
    p = Path(arg)
    if p.exists() or p.suffix in (".yaml", ".yml"):
        return p
    for d in suite_dirs():
        if (d / f"{arg}.yaml").exists():
            return d / f"{arg}.yaml"
    return p


def suite_named(name: str, files: list[Path] | None = None) -> tuple[Path, "Suite"]:
    """The suite called ``name``: among ``files`` (suite files the user named), else
    ``suites/NAME.yaml`` in the suite folders. Never a path taken from elsewhere (a result
    file's ``suite`` field names a suite; it is not a path to load)."""
    for f in files or []:
        s = load_suite(f)
        if s.name == name:
            return Path(f), s
    if re.fullmatch(NAME, name):
        for d in suite_dirs():
            if (d / f"{name}.yaml").is_file():
                s = load_suite(d / f"{name}.yaml")
                if s.name == name:
                    return d / f"{name}.yaml", s
    raise CmbenchError(
        f"no suite named {name!r} in "
        + (", ".join(str(f) for f in files) + " or " if files else "")
        + "suites/; name its file with --suite FILE"
    )


class _SafeLoader(yaml.SafeLoader):
    """SafeLoader: no tag constructs a Python object; a key given twice in one mapping is an
    error (YAML would keep the last silently); aliases are limited (an alias bomb would expand
    to billions of nodes when the suite is hashed: see ``_expanded_size``)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _expanded_size(obj, memo: dict | None = None) -> int:
    """Nodes ``obj`` has once its aliases are expanded, counted without expanding them."""
    memo = {} if memo is None else memo
    if id(obj) in memo:
        return memo[id(obj)]
    memo[id(obj)] = 1  # a cycle counts once
    children = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list) else ()
    memo[id(obj)] = n = 1 + sum(_expanded_size(c, memo) for c in children)
    return n


def load_suite(path: str | Path) -> Suite:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        import difflib

        names = sorted({f.stem for d in suite_dirs() for f in d.glob("*.yaml")})
        close = (
            difflib.get_close_matches(Path(path).stem, names, n=3, cutoff=0.4)
            or [n for n in names if Path(path).stem in n][:3]
        )
        hint = (  # by name: that works from any directory
            f"; did you mean {' or '.join(f'`cmbench run {c}`' for c in close)}?"
            if close
            else "; `cmbench list suites` lists them"
        )
        raise CmbenchError(f"{path}: suite file not found{hint}") from None
    except UnicodeDecodeError as e:
        raise CmbenchError(f"{path}: not UTF-8 text (byte {e.start}); save the suite as UTF-8") from None
    except OSError as e:
        raise CmbenchError(f"{path}: cannot read suite: {e.strerror}") from None
    try:
        raw = yaml.load(text, Loader=_SafeLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise CmbenchError(f"{path}: invalid YAML: nested too deeply") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise CmbenchError(f"{path}: invalid YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise CmbenchError(f"{path}: (top level): a suite is a mapping of keys (name, tasks, methods, ...)")
    if _expanded_size(raw) > 100_000:
        raise CmbenchError(f"{path}: invalid YAML: its aliases (*name) expand to more than 100000 values")
    try:
        return Suite.model_validate(raw)
    except ValidationError as e:
        field, msg = _pydantic_message(e.errors()[0])
        raise CmbenchError(f"{path}: {field}: {msg}".replace("\n", "\\n")) from None


# -- expansion into jobs ------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    suite: str
    suite_hash: str
    method: str
    label: str
    hparams: tuple  # sorted (name, value) pairs, hashable
    lora: Optional[str]  # the LoRA spec this job trains with (JSON), or None
    method_hash: str  # the method's code (fingerprint.method_fingerprint)
    seed: int
    order_index: int
    order: tuple[str, ...]
    training: Optional[str] = None  # the method's own training fields (JSON), over the suite's

    @property
    def relpath(self) -> str:
        return f"{self.suite}/{self.label}/seed{self.seed}-order{self.order_index}.json"


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
    from . import registry

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
                )
            )
    return jobs


Pretrain.model_rebuild()
Suite.model_rebuild()
