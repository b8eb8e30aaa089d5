"""Checkpoint I/O that never executes what it loads.

* ``.safetensors``: read as tensors;
* ``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt``: ``torch.load(weights_only=True)`` (tensors and
  plain containers only); a file that needs full unpickling (e.g. the task-vectors
  release's pickled modules) is refused unless the suite says ``trust_pickle: true``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from .. import CmbenchError
from ..tensors import StateDict


def load_checkpoint(path: str | Path, trust_pickle: bool = False) -> StateDict:
    path = Path(path)
    if not path.exists():
        raise CmbenchError(f"{path}: checkpoint not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001
            raise CmbenchError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as e:
        if not trust_pickle:
            raise CmbenchError(
                f"{path}: refused: the file needs full unpickling, which can run arbitrary code "
                f"({str(e).splitlines()[0][:160]}); convert it to safetensors, or set "
                f"`trust_pickle: true` for this source in the suite if you trust it") from None
        obj = torch.load(path, map_location="cpu", weights_only=False)  # noqa: S614 - explicitly trusted
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CmbenchError(f"{path}: expected a state dict of tensors, got {type(obj).__name__}")
    return obj


def check_matches(state: StateDict, reference: StateDict, what: str) -> None:
    """Raise naming the missing/unexpected keys and shape mismatches against the backbone."""
    missing = sorted(set(reference) - set(state))
    extra = sorted(set(state) - set(reference))
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(reference[k].shape)}"
              for k in sorted(set(state) & set(reference)) if state[k].shape != reference[k].shape]
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' …' if len(missing) > 5 else ''}")
        if extra:
            parts.append(f"unexpected {extra[:5]}{' …' if len(extra) > 5 else ''}")
        if shapes:
            parts.append(f"shape mismatch {shapes[:5]}")
        raise CmbenchError(f"{what}: does not match the backbone: " + "; ".join(parts))
