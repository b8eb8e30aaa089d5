"""The schema's common ground: strict models, the name rule, field errors, method hyperparameters."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Optional
from typing import Literal

from pydantic import BaseModel, ConfigDict


Setting = Literal["merge_stream", "train_then_merge"]


class Strict(BaseModel):
    # every number in a suite is finite (`lr: .inf` was taken and trained to NaN)
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# every name that becomes part of a path (suite, task, method label): no separators, no
# "..", no control characters, bounded length (a label `../../x` wrote outside --out)
NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"


class FieldError(ValueError):
    def __init__(self, field: str, msg: str):
        super().__init__(msg)
        self.field, self.msg = field, msg


def plain_hparams(cls, given: dict) -> dict:
    """The method's hyperparameters validated against its signature and the ranges it declares
    (``Annotated[float, Field(gt=0, le=1)]``), plus two rules for every method: a number is
    finite, and a boolean is not taken for a number (pydantic's lax mode reads ``true`` as 1)."""
    from ..methods import HparamError, validate_hparams

    full = validate_hparams(cls, given)
    for k, v in given.items():
        if isinstance(v, bool) and not isinstance(full.get(k), bool):
            raise HparamError([(k, f"a number is meant, not a boolean (got {v!r})")])
        if isinstance(full.get(k), float) and not math.isfinite(full[k]):
            raise HparamError([(k, f"must be a finite number (got {full[k]!r})")])
    return full


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
    experts: str = "independent"  # merge stream: independent or sequential experts (MethodSpec.experts)

    # LoRA and training fields travel as JSON text (a job is hashable, a dict is not); read
    # them through these
    @property
    def lora_spec(self) -> dict | None:
        return json.loads(self.lora) if self.lora else None

    @property
    def training_fields(self) -> dict:
        return json.loads(self.training) if self.training else {}

    def expert_chain(self, step: int) -> tuple[str, ...] | None:
        """The tasks fine-tuned before the expert of ``step`` (1-based) arrives: None for an
        independent expert (fine-tuned from θ0), the order's first ``step - 1`` tasks for a
        sequential one (fine-tuned from the previous task's expert)."""
        return None if self.experts == "independent" else self.order[: step - 1]

    @property
    def relpath(self) -> str:
        return f"{self.suite}/{self.label}/seed{self.seed}-order{self.order_index}.json"
