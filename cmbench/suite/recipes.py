"""Training recipes: θ0's pretraining, the experts' fine-tuning, train-then-merge training, LoRA."""

from __future__ import annotations

import re
from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from .base import Strict


LoRATarget = Literal["q", "k", "v", "proj", "fc1", "fc2"]


def _default_lora_targets() -> list[LoRATarget]:
    return ["k", "v"]


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
    targets: list[LoRATarget] = Field(default_factory=_default_lora_targets, min_length=1)


class Training(TrainRecipe):
    """Train-then-merge: how each task is trained (the harness's loop; methods hook it)."""

    head_lr: Optional[float] = Field(None, gt=0, description="classifier rows' lr; default = lr")
    lora: Optional[LoRA] = None
