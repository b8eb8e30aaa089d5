"""The suite: its sections and the checks across them."""

from __future__ import annotations

import collections
import hashlib
import json
import math
import random
from typing import Annotated, Literal, Optional, Union

from pydantic import Field, StrictInt, ValidationError, field_validator, model_validator

from .. import CmbenchError
from ..catalog import DATASET_PARAMS, TEXT_DATASETS
from .backbones import AnyBackbone
from .backbones import keyed as keyed_backbone
from .base import FieldError, Job, NAME, Setting, Strict, plain_hparams
from .recipes import Training
from .sections import Pretrain, Evaluation, Experts, Heads, MethodSpec, Orders, Rehearsal, Resources, Task


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
    # let methods that adapt on the current task's unlabeled test inputs run (data_access
    # "test_inputs": test-time adaptation, as MINGLE's and C-AdaMerging's papers do): off by
    # default; their rows are reported as a class apart. A permission, not a number: not hashed
    test_time_adaptation: bool = False
    # a folder of artefacts (θ0, heads, experts) shipped with the suite, in the store's layout
    # and under the same keys (tools/ship_artefacts.py writes it): they are read, checked
    # against their content hashes, instead of built, so every machine merges the same experts.
    # Relative to the suite file; no number depends on where it is, so it is not hashed
    shipped: Optional[str] = Field(None, max_length=1000)

    @field_validator("backbone", mode="before")
    @classmethod
    def _default_kind(cls, v):
        return {"kind": "tiny_vit", **v} if isinstance(v, dict) and "kind" not in v else v

    @model_validator(mode="after")
    def _cross_checks(self):
        # cheap checks first: the method registry imports torch and every baseline, and a
        # suite whose other fields are wrong is refused without paying for it
        self._check_names_and_orders()
        self._check_setup()
        self._check_methods()
        return self

    def _check_names_and_orders(self) -> None:
        names = [t.name for t in self.tasks]
        if isinstance(self.data_seed, list) and len(self.data_seed) != len(self.seeds):
            raise FieldError(
                "data_seed", f"give one data seed per seed ({len(self.seeds)}), or per_seed, or one number"
            )
        dup = sorted(n for n, k in collections.Counter(names).items() if k > 1)
        if dup:
            raise FieldError("tasks", f"task names must be unique; repeated: {dup}")
        if len(set(self.seeds)) != len(self.seeds):
            raise FieldError("seeds", "seeds must be unique")
        for i, order in enumerate(self.orders.explicit):
            if sorted(order) != sorted(names):
                unknown = sorted(set(order) - set(names))
                missing = sorted(set(names) - set(order))
                repeated = sorted({n for n in order if order.count(n) > 1})
                raise FieldError(
                    f"orders.explicit.{i}",
                    "an order must list every task exactly once"
                    + (f"; unknown: {unknown}" if unknown else "")
                    + (f"; missing: {missing}" if missing else "")
                    + (f"; repeated: {repeated}" if repeated else ""),
                )
        pre_names = [t.name for t in self.pretrain.tasks] if self.pretrain.tasks else names
        unknown = sorted(set(self.pretrain.label_tasks or []) - set(pre_names))
        if unknown:
            raise FieldError("pretrain.label_tasks", f"unknown tasks {unknown}; pretraining tasks are {pre_names}")
        if self.resources.gpu_memory_gb is not None and self.resources.gpus_per_job == 0:
            raise FieldError("resources.gpu_memory_gb", "applies to GPU jobs only; set resources.gpus_per_job")
        if self.evaluation.precision == "tf32" and self.resources.gpus_per_job == 0:
            raise FieldError(
                "evaluation.precision",
                "tf32 changes CUDA arithmetic only and this suite runs on "
                "the CPU (resources.gpus_per_job: 0); use fp32 or bf16",
            )

    def _check_setup(self) -> None:
        """Heads, experts and resources that fit the setting and the backbone."""
        names = [t.name for t in self.tasks]
        if self.backbone.kind == "hf_seq2seq":
            self._check_text()
            return
        for i, t in enumerate(self.tasks):
            if t.dataset in TEXT_DATASETS:
                raise FieldError(
                    f"tasks.{i}.dataset", f"{t.dataset} is a text task; it needs a text backbone (kind: hf_seq2seq)"
                )
        stream_heads = ("zero_shot", "template", "prototype", "linear_probe")
        cl_heads = ("class_incremental", "task_incremental")
        allowed = stream_heads if self.setting == "merge_stream" else cl_heads
        if self.heads.kind not in allowed:
            raise FieldError(
                "heads.kind", f"{self.heads.kind!r} does not fit setting {self.setting}; use one of {allowed}"
            )
        if (self.heads.kind == "zero_shot") != (self.backbone.kind == "open_clip" and self.setting == "merge_stream"):
            raise FieldError(
                "heads.kind",
                "zero_shot heads go with an open_clip backbone in the merge stream "
                f"(backbone is {self.backbone.kind}, heads {self.heads.kind})",
            )
        if self.experts.source == "checkpoints":
            unknown = sorted(set(self.experts.checkpoints) - set(names))
            missing = [n for n in names if n not in self.experts.checkpoints]
            if unknown or missing:
                raise FieldError(
                    "experts.checkpoints",
                    "one checkpoint per task"
                    + (f"; unknown tasks: {unknown}" if unknown else "")
                    + (f"; missing: {missing}" if missing else ""),
                )
        if self.backbone.kind == "tiny_vit":  # a micro task's images: grey, or three channels with a colour
            for where, tasks in (("tasks", self.tasks), ("pretrain.tasks", self.pretrain.tasks or [])):
                for i, t in enumerate(tasks):
                    channels = 3 if "colour" in t.params else 1
                    if channels != self.backbone.in_chans and "colour" in DATASET_PARAMS[t.dataset]:
                        raise FieldError(
                            f"{where}.{i}.params.colour",
                            f"task {t.name} has {channels} channel(s), the backbone in_chans {self.backbone.in_chans}; "
                            "give every micro task a colour and in_chans: 3, or none and in_chans: 1",
                        )
        for task, epochs in self.experts.epochs_per_task.items():
            if task not in names:
                raise FieldError(f"experts.epochs_per_task.{task}", f"not a task of this suite (tasks: {names})")
            if epochs < 1:
                raise FieldError(f"experts.epochs_per_task.{task}", f"{epochs}: give at least 1 epoch")

    def _check_text(self) -> None:
        """A text backbone: a merge stream of its hub experts, scored on generated answers."""
        if self.setting != "merge_stream":
            raise FieldError("setting", "a text backbone (hf_seq2seq) runs the merge stream only; set merge_stream")
        if self.heads.kind != "generative":
            raise FieldError("heads.kind", f"{self.heads.kind!r}: a text backbone answers in text; use generative")
        names = [t.name for t in self.tasks]
        micro = self.backbone.config is not None  # type: ignore[union-attr]  # hf_seq2seq here
        if micro:  # pretrained by the harness on other generated text tasks; experts fine-tuned
            if not self.pretrain.tasks:
                raise FieldError("pretrain.tasks", "a micro text model is pretrained on text tasks: list them")
            for i, t in enumerate(self.pretrain.tasks):
                if t.dataset not in TEXT_DATASETS:
                    raise FieldError(f"pretrain.tasks.{i}.dataset", f"{t.dataset!r} is not a text task")
        if self.experts.source != "checkpoints":
            if micro:
                return self._check_text_tasks()
            raise FieldError(
                "experts.source", "a text backbone merges published experts; give experts.source: checkpoints"
            )
        for n in names:
            spec = self.experts.checkpoints.get(n)
            if spec is None:
                raise FieldError("experts.checkpoints", f"one checkpoint per task; missing: {n}")
            if spec.format != "hf_seq2seq":
                raise FieldError(f"experts.checkpoints.{n}.format", f"{spec.format!r}: use hf_seq2seq for a text model")
        unknown = sorted(set(self.experts.checkpoints) - set(names))
        if unknown:
            raise FieldError("experts.checkpoints", f"one checkpoint per task; unknown tasks: {unknown}")
        self._check_text_tasks()

    def _check_text_tasks(self) -> None:
        for i, t in enumerate(self.tasks):
            if t.dataset not in TEXT_DATASETS:
                raise FieldError(f"tasks.{i}.dataset", f"{t.dataset!r} is not a text task; e.g. glue_cola, glue_sst2")

    def _check_methods(self) -> None:
        """Unique labels; each method known, fit for the setting, with valid hyperparameters,
        training fields and search grid."""
        labels = [m.display for m in self.methods]
        dup = sorted({n for n in labels if labels.count(n) > 1})
        if dup:
            raise FieldError("methods", f"method labels must be unique (set `label`); repeated: {dup}")
        from .. import methods as methods_mod  # torch and every baseline: only now

        for i, m in enumerate(self.methods):
            cls = self._method_class(i, m)
            self._check_training(i, m)
            if self.backbone.kind == "hf_seq2seq" and (cls.data_access != "none" or m.experts != "independent"):
                raise FieldError(
                    f"methods.{i}.name",
                    f"{m.display} reads data ({cls.data_access}) or merges sequential experts ({m.experts}): "
                    "text suites run data-free merges of the published experts for now; remove the row",
                )
            if cls.data_access == "test_inputs" and not self.test_time_adaptation:
                raise FieldError(
                    f"methods.{i}.name",
                    f"{m.display} adapts on unlabeled test inputs (test-time adaptation); "
                    "set `test_time_adaptation: true` in the suite to allow it (its rows are reported apart)",
                )
            if m.experts != "independent" and self.setting != "merge_stream":
                raise FieldError(
                    f"methods.{i}.experts", "sequential experts belong to the merge stream; remove the field"
                )
            for hp, values in m.search.items():
                if not values:
                    raise FieldError(f"methods.{i}.search.{hp}", "give at least one value")
                for v in values:
                    try:
                        plain_hparams(cls, {**m.hparams, hp: v})
                    except methods_mod.HparamError as e:
                        raise FieldError(f"methods.{i}.search.{hp}", e.errors[0][1])

    def _method_class(self, i: int, m: MethodSpec):
        """Method i's class, its hyperparameters validated (and completed) against it."""
        from .. import methods as methods_mod
        from .. import registry

        try:
            cls = registry.get(m.name)
        except CmbenchError as e:
            raise FieldError(f"methods.{i}.name", str(e))
        if self.setting not in cls.settings:
            raise FieldError(f"methods.{i}.name", f"{m.name} supports {cls.settings}, not {self.setting}")
        try:
            m.hparams = plain_hparams(cls, m.hparams)
        except methods_mod.HparamError as e:
            field, msg = e.errors[0]
            raise FieldError(f"methods.{i}.hparams.{field}", msg)
        return cls

    def _check_training(self, i: int, m: MethodSpec) -> None:
        """A method's own training fields: train-then-merge only, a valid recipe over the suite's."""
        if not m.training:
            return
        if self.setting != "train_then_merge":
            raise FieldError(
                f"methods.{i}.training",
                "a method's own training recipe applies to train_then_merge suites only",
            )
        if "lora" in m.training:
            raise FieldError(f"methods.{i}.training.lora", f"give a method's LoRA as methods.{i}.lora")
        try:
            self.training_of(m)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(x) for x in err["loc"])
            raise FieldError(f"methods.{i}.training.{where}", err["msg"])

    def training_of(self, spec: MethodSpec | Job) -> Training:
        """The recipe a method (or a job) trains with: the suite's, the method's own fields over it."""
        own = spec.training if isinstance(spec, MethodSpec) else spec.training_fields
        if not own:
            return self.training
        return Training.model_validate({**self.training.model_dump(), **own})

    # -- identity --------------------------------------------------------------------
    def environment(self) -> dict:
        """Everything that changes numbers except the method list (adding a method does
        not invalidate the other methods' results)."""
        env = self.model_dump(
            exclude={"name", "description", "methods", "shipped", "test_time_adaptation"}, mode="json"
        )
        if env["rehearsal"] is None:  # a real suite hashes as it did before rehearsals existed
            del env["rehearsal"]
        if env["evaluation"]["precision"] == "fp32":  # ... and before evaluation.precision existed
            del env["evaluation"]["precision"]
        for k in ("gpu_memory_gb", "job_time_limit_s"):  # placement and limits: no number depends on them
            del env["resources"][k]
        env["training"], env["pretrain"] = self.training.keyed(), self.pretrain.keyed()
        env["backbone"] = keyed_backbone(self.backbone, mode="json")
        env["experts"]["finetune"] = self.experts.finetune.keyed()
        if not env["experts"]["epochs_per_task"]:  # hashes as before the field existed
            del env["experts"]["epochs_per_task"]
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
