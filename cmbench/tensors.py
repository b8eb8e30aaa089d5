"""Task-vector helpers shared by every method: one copy, here.

A model is a state dict ``{name: Tensor}``. Only floating-point entries are merged by
arithmetic; integer tensors and buffers the harness marks as frozen are carried over
unchanged from the model a method starts from.
"""

from __future__ import annotations

import hashlib
import math
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
        out[k] = torch.add(v, vector[k], alpha=scale) if k in vector else v.clone()  # one fused pass
    return out


def shift(base: StateDict, a: StateDict, b: StateDict, scale: float = 1.0) -> StateDict:
    """base + scale·(a − b) per mergeable entry (others copied from ``base``), in two passes
    and one new tensor per entry: the task-arithmetic step at memory-bandwidth speed."""
    out = {}
    for k, v in base.items():
        if mergeable(k, v) and k in a:
            d = torch.sub(a[k], b[k])
            out[k] = torch.add(v, d, alpha=scale, out=d)
        else:
            out[k] = v.clone()
    return out


def topk_threshold(values: Iterable[Tensor], rank: int, sample: int = 1 << 18, z: float = 6.0) -> Tensor:
    """The ``rank``-th largest of |v| over all tensors (1-based), exactly, without a sort.

    A uniform sample of |v| brackets the answer (its quantile ± z standard errors); one
    pass counts the entries above the bracket and collects those inside it (about
    2·z·sqrt(q(1−q)/sample) of all entries), and a selection among those gives the exact
    value, equal to ``torch.cat(|v|).sort(descending=True)[rank − 1]``. If the sample was
    unlucky the bracket misses and the exact full selection is used instead.
    """
    flat = [v.reshape(-1) for v in values]
    sizes = torch.tensor([v.numel() for v in flat])
    d = int(sizes.sum())
    if not 1 <= rank <= d:
        raise ValueError(f"rank {rank} not in 1..{d}")
    if d <= 4 * sample:
        return torch.cat(flat).abs().kthvalue(d - rank + 1).values
    gen = torch.Generator().manual_seed(rank)  # deterministic; exactness does not depend on it
    idx = torch.randint(0, d, (sample,), generator=gen)
    ends = torch.cumsum(sizes, 0)
    which = torch.searchsorted(ends, idx, right=True)
    starts = ends - sizes
    picked = torch.cat([flat[i][idx[which == i] - starts[i]] for i in range(len(flat))]).abs()
    picked = picked.sort(descending=True).values
    q = rank / d
    err = z * math.sqrt(q * (1 - q) / sample) + 1 / sample
    hi = float(picked[max(0, int((q - err) * sample))])
    lo = float(picked[min(sample - 1, int((q + err) * sample))])
    n_gt, inside = 0, []
    for v in flat:
        cand = v.abs()
        cand = cand[cand >= lo]
        above = cand > hi
        n_gt += int(above.sum())
        inside.append(cand[~above])
    inside = torch.cat(inside)  # type: ignore[assignment]  # list -> tensor: rename when this file re-keys
    if not n_gt < rank <= n_gt + len(inside):
        return torch.cat(flat).abs().kthvalue(d - rank + 1).values
    return inside.kthvalue(  # type: ignore[attr-defined]  # (the same)
        len(inside) - (rank - n_gt) + 1
    ).values


def combine(models: Iterable[StateDict], fn: Callable[..., Tensor], like: StateDict) -> StateDict:
    """Apply ``fn(*tensors)`` to every mergeable entry; other entries copied from ``like``."""
    models = list(models)
    return {k: fn(*(m[k] for m in models)) if mergeable(k, v) else v.clone() for k, v in like.items()}


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


def norm(sd: StateDict) -> float:
    """Euclidean norm over all entries of a (task-vector) state dict."""
    return float(torch.sqrt(sum((v.double() ** 2).sum() for v in sd.values())))  # type: ignore[arg-type]  # sd non-empty


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
        # flattened first: a size-1 dimension may keep any stride in a "contiguous" tensor (a
        # column sliced from a transposed factor), and only a unit last stride views as bytes
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def first_nonfinite(sd: StateDict) -> str | None:
    """Name of the first entry holding NaN or Inf, else None."""
    for k, v in sd.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            return k
    return None
