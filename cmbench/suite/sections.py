"""The sections of a suite file: tasks, heads, experts, orders, methods, evaluation, resources, rehearsal."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, field_validator, model_validator

from ..catalog import DATASET_PARAMS, PARAM_RULES, colour_error
from .base import NAME, Strict
from .recipes import LoRA, TrainRecipe


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
        if "colour" in self.params and (why := colour_error(self.params["colour"])):
            raise ValueError(why)
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
    ``linear_probe``: logistic regression on the train split. ``generative`` (text
    backbones): no heads; the model answers in text, scored by the task's metric.
    """

    kind: Literal[
        "zero_shot", "template", "prototype", "linear_probe", "class_incremental", "task_incremental", "generative"
    ] = "prototype"
    shots: int = Field(5, gt=0)
    scale: float = Field(20.0, gt=0, le=1000, allow_inf_nan=False)


class ExpertCheckpoint(Strict):
    """Where a task's expert comes from, pinned by its file's sha256.

    ``format``: ``hf_clip_vision`` (a transformers ``CLIPVisionModel`` state dict, e.g. the
    ``tanganke/clip-vit-base-patch32_<task>`` checkpoints used by FusionBench and ODE-M),
    ``open_clip`` (a state dict under open_clip's names, e.g. a local safetensors file),
    ``task_vectors`` (the task-vectors release's pickled ``ImageEncoder``: needs
    ``trust_pickle: true``), ``hf_seq2seq`` (a text backbone's expert: a model repository, or
    a LoRA adapter repository folded into θ0; ``path`` is ``hf://OWNER/REPO`` or a local
    directory, ``sha256`` that of its weight or adapter file). ``path`` is a local file or
    ``hf://OWNER/REPO[/FILE]``.
    """

    format: Literal["hf_clip_vision", "open_clip", "task_vectors", "timm", "hf_seq2seq"] = "open_clip"
    path: str = Field(min_length=1)
    sha256: Optional[str] = Field(None, pattern=r"^[0-9a-f]{64}$")
    trust_pickle: bool = False


class Experts(Strict):
    """``finetune``: the harness fine-tunes θ0 on each task (``cmbench finetune`` or on
    first use). ``checkpoints``: one pinned checkpoint per task (every task needs one).
    Sequential experts (a method's ``experts: sequential``) are always fine-tuned by the
    harness with ``finetune`` (and ``epochs_per_task``), whatever the source."""

    source: Literal["finetune", "checkpoints"] = "finetune"
    finetune: TrainRecipe = Field(default_factory=TrainRecipe)
    checkpoints: dict[str, ExpertCheckpoint] = Field(default_factory=dict)
    epochs_per_task: dict[str, int] = Field(
        default_factory=dict,
        description="a task's fine-tuning epochs over `finetune.epochs` (MagMax and the task-vectors "
        "release train each dataset for its own number of epochs)",
    )

    def recipe_for(self, task: str) -> TrainRecipe:
        """The recipe ``task``'s expert is fine-tuned with."""
        if task not in self.epochs_per_task:
            return self.finetune
        return self.finetune.model_copy(update={"epochs": self.epochs_per_task[task], "steps": None})


class Orders(Strict):
    """Task orders, nested within seeds: the explicit lists, then ``random`` seeded
    permutations per seed. With neither, the listed task order is used."""

    explicit: list[list[str]] = Field(default_factory=list)
    # distinct permutations are drawn one by one: far more than any benchmark reports (10) and
    # few enough to draw at once (random: 10^9 over 10 tasks drew for hours)
    random: int = Field(0, ge=0, le=1000)


ExpertChain = Literal["independent", "sequential"]


class MethodSpec(Strict):
    name: str
    label: Optional[str] = Field(None, pattern=NAME)
    hparams: dict[str, Any] = Field(default_factory=dict)
    experts: ExpertChain = Field(
        "independent",
        description="merge stream: the experts this row merges. independent: each fine-tuned from θ0; "
        "sequential: each fine-tuned from the previous task's expert in the job's order (MagMax's "
        "sequential fine-tuning; task vectors are still taken against θ0)",
    )
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
    """Set by ``cmbench run SUITE --rehearse`` (``cmbench/rehearse/``): the suite's real
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
