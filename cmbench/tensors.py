"""Task-vector helpers shared by every method: one copy, here.

A model is a state dict ``{name: Tensor}``. Only floating-point entries are merged by
arithmetic; integer tensors and buffers the harness marks as frozen are carried over
unchanged from the model a method starts from.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Dict, Iterable

import torch
from torch import Tensor

StateDict = Dict[str, Tensor]


def mergeable(name: str, value: Tensor) -> bool:
    """Whether a state-dict entry takes part in merge arithmetic."""
    return value.is_floating_point()


def clone(sd: StateDict) -> StateDict:
    return {k: v.detach().clone() for k, v in sd.items()}


def task_vector(model: StateDict, base: StateDict) -> StateDict:
    """τ = model − base over mergeable entries."""
    return {k: model[k] - base[k] for k, v in model.items() if mergeable(k, v)}


def apply(base: StateDict, vector: StateDict, scale: float = 1.0) -> StateDict:
    """base + scale·vector; entries absent from ``vector`` are copied from ``base``."""
    out = {}
    for k, v in base.items():
        out[k] = v + scale * vector[k] if k in vector else v.clone()
    return out


def combine(models: Iterable[StateDict], fn: Callable[..., Tensor], like: StateDict) -> StateDict:
    """Apply ``fn(*tensors)`` to every mergeable entry; other entries copied from ``like``."""
    models = list(models)
    return {
        k: fn(*(m[k] for m in models)) if mergeable(k, v) else v.clone() for k, v in like.items()
    }


def flatten(sd: StateDict, keys: list[str] | None = None) -> Tensor:
    """Concatenate entries (sorted names unless ``keys`` given) into one 1-D vector."""
    keys = sorted(sd) if keys is None else keys
    return torch.cat([sd[k].reshape(-1) for k in keys])


def unflatten(vec: Tensor, like: StateDict, keys: list[str] | None = None) -> StateDict:
    keys = sorted(like) if keys is None else keys
    out, i = {}, 0
    for k in keys:
        n = like[k].numel()
        out[k] = vec[i : i + n].view_as(like[k]).clone()
        i += n
    return out


FUSED_ATTENTION = ("qkv.weight", "in_proj_weight")  # timm, open_clip: q, k, v stacked by rows


def is_matrix(name: str, value: Tensor) -> bool:
    """A linear layer's weight: 2-D, named ``*.weight`` / ``in_proj_weight``, and not an
    embedding table (HF ``position_embedding.weight``); conv kernels are 4-D."""
    module = name.rsplit(".", 1)[0] if "." in name else ""
    return (value.ndim == 2 and value.is_floating_point()
            and (name.endswith(".weight") or name.endswith("in_proj_weight"))
            and "embed" not in module.rsplit(".", 1)[-1])


def matrices(name: str, value: Tensor) -> list[Tensor]:
    """The per-matrix views of a linear weight: a fused attention weight is q, k, v.

    Views share storage, so writing into them writes into ``value``; per-matrix methods
    (SVD projections, LoRA targets) give the same result on fused and separate layouts.
    """
    if name.endswith(FUSED_ATTENTION) and value.shape[0] == 3 * value.shape[1]:
        return list(value.chunk(3, dim=0))
    return [value]


def map_matrices(name: str, fn: Callable[..., Tensor], *values: Tensor) -> Tensor:
    """Apply ``fn`` matrix by matrix (q, k, v separately when fused); returns a new tensor."""
    parts = zip(*(matrices(name, v) for v in values))
    return torch.cat([fn(*p) for p in parts], dim=0)


def norm(sd: StateDict) -> float:
    """Euclidean norm over all entries of a (task-vector) state dict."""
    return float(torch.sqrt(sum((v.double() ** 2).sum() for v in sd.values())))


def nbytes(obj) -> int:
    """Bytes held in tensors reachable from ``obj`` (dicts, lists, tuples, attributes)."""
    seen: set[int] = set()

    def walk(o) -> int:
        if id(o) in seen:
            return 0
        seen.add(id(o))
        if isinstance(o, Tensor):
            return o.numel() * o.element_size()
        if isinstance(o, dict):
            return sum(walk(v) for v in o.values())
        if isinstance(o, (list, tuple, set)):
            return sum(walk(v) for v in o)
        if hasattr(o, "__dict__") and not isinstance(o, type):
            return sum(walk(v) for v in vars(o).values())
        return 0

    return walk(obj)


def content_hash(sd: StateDict) -> str:
    """SHA-256 over names, dtypes, shapes and bytes: pins a checkpoint to its content."""
    h = hashlib.sha256()
    for k in sorted(sd):
        t = sd[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def first_nonfinite(sd: StateDict) -> str | None:
    """Name of the first entry holding NaN or Inf, else None."""
    for k, v in sd.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            return k
    return None
