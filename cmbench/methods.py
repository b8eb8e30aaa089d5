"""The Method interface, the registry and discovery of ``baselines/``.

A method sees parameter dictionaries (state dicts), never the loop: the harness owns
task order, evaluation, logging and checkpointing (``cmbench.protocol``).

Two ways to write one:

* a stateless merge is one typed function under :func:`merge_function`; its keyword-only
  parameters with defaults are the hyperparameters (validated from their annotations)::

      @merge_function("task_arithmetic", paper="Ilharco et al. 2023, arXiv:2212.04089")
      def task_arithmetic(ctx, merged, incoming, *, lam: float = 0.3):
          return apply(merged, task_vector(incoming, ctx.theta0), lam)

  A hyperparameter with a meaningful range declares it in its annotation with one of the
  aliases below (``Positive``, ``Fraction``, ``PositiveInt``, ...) or any
  ``Annotated[float, pydantic.Field(ge=..., le=...)]``.

* a method that carries state across steps subclasses :class:`Method`, decorated with
  :func:`register`; its hyperparameters are the keyword-only arguments of ``__init__``.
  Whatever it keeps in attributes between steps is measured as storage.
"""

from __future__ import annotations

import inspect
import math
import sys
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, ClassVar

import torch
from pydantic import ConfigDict, Field, ValidationError, create_model

from . import CmbenchError
from .layout import Layout
from .tensors import StateDict

# Declared ranges for hyperparameters, used as their annotations (``k: Fraction = 0.2``): a
# suite giving a value outside is refused with the field named. They only refuse values; every
# number is also checked finite and a boolean is never read as a number (cmbench.suite).
Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(gt=0, le=1)]  # a share of entries, of energy, a shrink factor
Probability = Annotated[float, Field(ge=0, le=1)]  # a probability or a convex weight
PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]

SETTINGS = ("merge_stream", "train_then_merge")
# "all_seen" is for reference rows only (multitask joint training sees every seen task's data);
# "test_inputs" is test-time adaptation (unlabeled test inputs of the current task): allowed only
# where a suite opts in, and reported apart from the methods that see no test data
DATA_ACCESS = ("none", "current_task", "calibration", "all_seen", "test_inputs")


@dataclass
class Context:
    """What a method may see at a step. ``step`` counts from 1; ``theta0`` is read-only."""

    theta0: StateDict
    num_tasks: int
    seed: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    setting: str = "merge_stream"
    step: int = 0
    task: str = ""
    seen_tasks: list[str] = field(default_factory=list)
    generator: torch.Generator | None = None
    # what each state-dict entry is (linear weight, embedding, norm, ...), read from the
    # backbone's modules (cmbench.layout): per-matrix methods ask it, never the names
    layout: Layout | None = None
    data: Any = None  # cmbench.protocol.DataAccess: only what the method declared
    # set by the harness while a task trains (train then merge): LoRA adapters, the state
    # training started from, and the trainable backbone parameters by name
    job_lora: str | None = None  # the suite's LoRA spec for this job (JSON)
    adapters: list = field(default_factory=list)
    train_start_state: StateDict | None = None
    trainable: dict = field(default_factory=dict)
    train_model: Any = None
    train_total_steps: int = 0
    # network(state, classes="task", task=None) -> (backbone loaded with state, head(features) -> logits
    # of ``task``, default the current one; classes="seen": over every seen task's classes)
    network: Callable[[StateDict], tuple[torch.nn.Module, Callable]] | None = None
    # what the method recorded for the reader, by step ("1", "2", ..., "finish"): see `record`
    diagnostics: dict[str, dict[str, Any]] = field(default_factory=dict)
    finishing: bool = False  # set by the harness around `Method.finish`

    def record(self, name: str, value: Any) -> None:
        """Record a diagnostic of this step for the reader (P&M's α_t, TRM's coefficients,
        ODE-M's backtracks): a number, or a short vector (a list or tensor of at most
        ``MAX_DIAGNOSTIC_VALUES`` numbers). Stored in the result file under ``diagnostics``
        and shown by ``cmbench report --diagnostics METHOD``; never read back, so it changes
        no number. Recording a name twice in a step keeps the last value."""
        if not (isinstance(name, str) and name.isidentifier() and len(name) <= 40):
            raise CmbenchError(f"diagnostic name {name!r}: use an identifier of at most 40 characters")
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().double().flatten().tolist() if value.numel() != 1 else value.item()
        if isinstance(value, (list, tuple)):
            if len(value) > MAX_DIAGNOSTIC_VALUES:
                raise CmbenchError(
                    f"diagnostic {name}: {len(value)} values; record at most {MAX_DIAGNOSTIC_VALUES} "
                    "(a summary: mean, max, quantiles)"
                )
            value = [_finite_or_none(v) for v in value]
        else:
            value = _finite_or_none(value)
        self.diagnostics.setdefault("finish" if self.finishing else str(self.step), {})[name] = value


MAX_DIAGNOSTIC_VALUES = 64


def _finite_or_none(v: Any) -> float | None:
    """A diagnostic value as the result file holds it: a finite number or None."""
    v = float(v)
    return v if math.isfinite(v) else None


class Method:
    """Base class. Subclasses set the class attributes and implement :meth:`merge`."""

    name: ClassVar[str] = ""
    settings: ClassVar[tuple[str, ...]] = ("merge_stream",)
    data_access: ClassVar[str] = "none"
    paper: ClassVar[str] = ""
    reconstruction: ClassVar[bool] = False
    # attribute -> storage kind ("models", "vectors", "samples"); unnamed attributes are
    # classified by shape (see protocol.measure_storage)
    storage_kinds: ClassVar[dict[str, str]] = {}

    def __init__(self, **hparams: Any):
        self.hparams = hparams

    # -- the steps ---------------------------------------------------------------
    def start(self, ctx: Context) -> None:
        """Once per run, before the first step."""

    def merge(self, ctx: Context, merged: StateDict, incoming: StateDict, task: str) -> StateDict:
        """Return M_t from M_{t-1} (``merged``; θ0 at step 1) and the incoming expert.

        Must not modify its inputs in place.
        """
        raise NotImplementedError

    def finish(self, ctx: Context, merged: StateDict) -> StateDict:
        """Once after the last step; the result is evaluated as the final row."""
        return merged

    # -- train-then-merge hooks (the harness owns the training loop) ----------------
    merges_heads: ClassVar[bool] = False  # False: classifier rows are copied, not merged

    def train_start(self, ctx: Context, deployed: StateDict) -> StateDict:
        """What training on task t starts from (default: the deployed M_{t−1})."""
        return deployed

    def train_tasks(self, ctx: Context) -> list[str]:
        """Whose training data step t trains on (default: the current task only)."""
        return [ctx.task]

    def lora(self, ctx: Context, suite_lora):
        """The LoRA spec this method trains with (default: the suite's for this method, or
        None: full-parameter)."""
        return suite_lora

    def wrap_loss(self, ctx: Context, loss_fn: Callable, model: torch.nn.Module) -> Callable:
        """Wrap the batch loss (perturb, regularise); called once per task before training."""
        return loss_fn

    def after_backward(self, ctx: Context) -> None:
        """Called between each backward pass and its optimiser step (undo perturbations)."""

    def on_train_step(self, ctx: Context, step: int, loss: float) -> None:
        """Called after every optimiser step of the task's training."""

    # -- introspection ------------------------------------------------------------
    @classmethod
    def hparam_parameters(cls) -> list[inspect.Parameter]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY]

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {p.name: p.default for p in cls.hparam_parameters() if p.default is not p.empty}

    @property
    def kept(self) -> dict[str, Any]:
        """State carried between steps (counted as storage): every attribute but hparams."""
        return {k: v for k, v in vars(self).items() if k != "hparams"}


# name -> method class, filled by `register` (cmbench.registry finds and imports method files)
REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: add a Method subclass to the registry under ``cls.name``."""
    if not cls.name:
        raise CmbenchError(f"{cls.__qualname__}: a method needs a non-empty `name`")
    bad = set(cls.settings) - set(SETTINGS)
    if bad:
        raise CmbenchError(f"method {cls.name}: unknown settings {sorted(bad)}; allowed: {SETTINGS}")
    if cls.data_access not in DATA_ACCESS:
        raise CmbenchError(f"method {cls.name}: data_access must be one of {DATA_ACCESS}")
    old = REGISTRY.get(cls.name)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise CmbenchError(f"method name {cls.name!r} is registered twice: {old.__module__} and {cls.__module__}")
    REGISTRY[cls.name] = cls
    return cls


def merge_function(
    name: str, *, paper: str = "", settings: tuple[str, ...] = ("merge_stream",)
) -> Callable[[Callable], type[Method]]:
    """Turn ``fn(ctx, merged, incoming, *, hparam=default, ...)`` into a registered Method."""

    def deco(fn: Callable) -> type[Method]:
        params = [p for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY]

        def merge(self, ctx, merged, incoming, task):
            return fn(ctx, merged, incoming, **self.hparams)

        cls = type(
            fn.__name__,
            (Method,),
            {
                "name": name,
                "paper": paper,
                "settings": settings,
                "__doc__": fn.__doc__,
                "__module__": fn.__module__,
                "merge": merge,
                "hparam_parameters": classmethod(lambda c: params),
                "function": staticmethod(fn),
            },
        )
        cls.__qualname__ = fn.__qualname__
        return register(cls)

    return deco


def validate_hparams(cls: type[Method], given: dict[str, Any]) -> dict[str, Any]:
    """Check names and types against the method's signature; return defaults filled in.

    Raises ValueError with ``(field, message)`` pairs so the suite loader can name the path.
    """
    fields = {}
    for p in cls.hparam_parameters():
        ann = p.annotation if p.annotation is not p.empty else Any
        if isinstance(ann, str):  # postponed annotations
            ann = eval(ann, vars(sys.modules[cls.__module__]))  # noqa: S307 - our own code
        fields[p.name] = (ann, ... if p.default is p.empty else p.default)
    model = create_model(  # type: ignore[call-overload]  # fields are (annotation, default) pairs, as documented
        f"{cls.name}_hparams", __config__=ConfigDict(extra="forbid", strict=False), **fields
    )
    try:
        return model(**given).model_dump()
    except ValidationError as e:
        raise HparamError(
            [(".".join(str(x) for x in err["loc"]), _hparam_msg(err, fields)) for err in e.errors()]  # type: ignore[arg-type]
        ) from None


def _hparam_msg(err: dict, fields: dict) -> str:
    if err["type"] == "extra_forbidden":
        return f"unknown hyperparameter; allowed: {', '.join(fields) or '(none)'}"
    return f"{err['msg']} (got {err.get('input')!r})"


class HparamError(ValueError):
    def __init__(self, errors: list[tuple[str, str]]):
        super().__init__("; ".join(f"{f}: {m}" for f, m in errors))
        self.errors = errors
