"""A running job's state after each completed step, so that a retried or rerun job resumes
from its last step with the numbers an uninterrupted run gives (a preempted L/14 TALL20
ODE-M job loses one step, not hours).

The state is the merged model, the method's own state (what it keeps between steps, the
attributes :attr:`Method.kept` measures as storage), the rows and timings so far and the
random generators' states. It is stored in the artefact store (shared on a cluster) as one
safetensors file and a JSON skeleton: no pickle, so nothing in it can execute. A method
whose state holds something else than tensors, numbers, strings, lists, tuples, dicts with
string keys and data splits is not checkpointed (it reruns from step 1, as before).
"""

from __future__ import annotations

from typing import Any

import torch

from .data import Split

KIND = "jobstate"


class Unpackable(TypeError):
    pass


def pack(obj: Any, tensors: dict[str, torch.Tensor], _storages: set[int] | None = None) -> Any:
    """A JSON-able skeleton of ``obj``; its tensors go to ``tensors`` (on the CPU; the device
    is recorded). A tensor whose storage an earlier one uses (a view, the same tensor kept
    twice) is copied: safetensors refuses tensors that share memory."""
    storages = set() if _storages is None else _storages
    if isinstance(obj, torch.Tensor):
        name = f"t{len(tensors)}"
        t = obj.detach().cpu()
        storage = t.untyped_storage().data_ptr()
        tensors[name] = t.clone() if storage in storages else t.contiguous()
        storages.add(tensors[name].untyped_storage().data_ptr())
        return {"__tensor__": name, "device": str(obj.device)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, Split):
        return {"__split__": {"x": pack(obj.x, tensors, storages), "y": pack(obj.y, tensors, storages)}}
    if isinstance(obj, dict) and all(isinstance(k, str) for k in obj):
        return {"__dict__": {k: pack(v, tensors, storages) for k, v in obj.items()}}
    if isinstance(obj, (list, tuple)):
        return {"__list__" if isinstance(obj, list) else "__tuple__": [pack(v, tensors, storages) for v in obj]}
    raise Unpackable(type(obj).__name__)


def unpack(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]].to(skeleton["device"])
        if "__split__" in skeleton:
            parts = skeleton["__split__"]
            return Split(x=unpack(parts["x"], tensors), y=unpack(parts["y"], tensors))
        if "__dict__" in skeleton:
            return {k: unpack(v, tensors) for k, v in skeleton["__dict__"].items()}
        if "__list__" in skeleton:
            return [unpack(v, tensors) for v in skeleton["__list__"]]
        if "__tuple__" in skeleton:
            return tuple(unpack(v, tensors) for v in skeleton["__tuple__"])
    return skeleton


def rng_state(generator: torch.Generator | None) -> dict[str, torch.Tensor]:
    """The generators a step may draw from: the job's, torch's global one (and CUDA's)."""
    out = {"global": torch.get_rng_state()}
    if generator is not None:
        out["job"] = generator.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def set_rng_state(state: dict[str, torch.Tensor], generator: torch.Generator | None) -> None:
    torch.set_rng_state(state["global"])
    if generator is not None and "job" in state:
        generator.set_state(state["job"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])


class Checkpoint:
    """One job's latest state in ``store`` under ``key``."""

    def __init__(self, store, key: str):
        self.store, self.key = store, key
        self.enabled = True

    def save(self, state: dict[str, Any]) -> None:
        if not self.enabled:
            return
        tensors: dict[str, torch.Tensor] = {}
        try:
            skeleton = pack(state, tensors)
        except Unpackable as e:  # this method's state cannot be stored safely: rerun from step 1
            self.enabled = False
            self.store.delete(KIND, self.key)
            print(f"cmbench: not checkpointing this job: its method keeps a {e} between steps", flush=True)
            return
        self.store.put(KIND, self.key, tensors, {"state": skeleton})

    def load(self) -> dict[str, Any] | None:
        got = self.store.get(KIND, self.key)
        return None if got is None else unpack(got[1]["state"], got[0])

    def clear(self) -> None:
        self.store.delete(KIND, self.key)
