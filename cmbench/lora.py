"""LoRA (Hu et al. 2022) as a parametrisation of the backbone's matrices: attach, read the
folded weights during training, fold in and remove. Torch only, so a method that reads a
trajectory (TRM) does not import the training loop, the models or the datasets (its code
key is the import closure of its file, ``cmbench.fingerprint``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import CmbenchError

# target -> (parameter name suffix, row block of a fused q/k/v matrix), timm and open_clip names
_TARGET_OF = {
    "q": [("attn.qkv.weight", 0), ("attn.in_proj_weight", 0)],
    "k": [("attn.qkv.weight", 1), ("attn.in_proj_weight", 1)],
    "v": [("attn.qkv.weight", 2), ("attn.in_proj_weight", 2)],
    "proj": [("attn.proj.weight", None), ("attn.out_proj.weight", None)],
    "fc1": [("mlp.fc1.weight", None), ("mlp.c_fc.weight", None)],
    "fc2": [("mlp.fc2.weight", None), ("mlp.c_proj.weight", None)],
}


class LoRADelta(torch.nn.Module):
    """Parametrisation W ↦ W + scale·ΔW, ΔW = B A per target block (rows of a fused qkv).

    B starts at zero, so training starts exactly at the given weights. ``gain`` multiplies
    the current low-rank update (P&M perturbs it by 1 ± ε).
    """

    def __init__(self, shape: tuple[int, int], blocks: list[int | None], rank: int, scale: float, gen: torch.Generator):
        super().__init__()
        out_f, in_f = shape
        n_blocks = 3 if any(b is not None for b in blocks) else 1
        rows = out_f // n_blocks
        self.blocks = blocks
        self.rows = rows
        self.scale = scale
        self.gain = 1.0
        self.A = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.randn(rank, in_f, generator=gen) / math.sqrt(in_f)) for _ in blocks]
        )
        self.B = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.zeros(rows if b is not None else out_f, rank)) for b in blocks]
        )

    def delta(self, like: Tensor) -> Tensor:
        d = torch.zeros_like(like)
        for b, A, B in zip(self.blocks, self.A, self.B):
            if b is None:
                d = d + B @ A
            else:
                d = d.index_add(0, torch.arange(b * self.rows, (b + 1) * self.rows, device=d.device), B @ A)
        return d * (self.scale * self.gain)

    def forward(self, W: Tensor) -> Tensor:
        return W + self.delta(W)


def add_lora(model: torch.nn.Module, rank: int, alpha: float | None, targets: list[str], seed: int) -> list[LoRADelta]:
    """Attach LoRA to every block's target matrices; returns the adapters (their A, B train)."""
    from torch.nn.utils import parametrize

    gen = torch.Generator().manual_seed(seed)
    scale = (alpha if alpha is not None else rank) / rank
    by_param: dict[str, list[int | None]] = {}
    for t in targets:
        for name, block in _TARGET_OF[t]:
            by_param.setdefault(name, []).append(block)
    adapters = []
    for mod_name, module in model.named_modules():
        for pname, blocks in by_param.items():
            owner, leaf = pname.rsplit(".", 1)
            if mod_name.endswith(owner) and isinstance(getattr(module, leaf, None), torch.nn.Parameter):
                W = getattr(module, leaf)
                ad = LoRADelta(tuple(W.shape), blocks, rank, scale, gen)
                parametrize.register_parametrization(module, leaf, ad)
                adapters.append(ad)
    if not adapters:
        raise CmbenchError(f"LoRA targets {targets} match no matrix of the backbone")
    return adapters


def current_weights(model: torch.nn.Module) -> dict[str, Tensor]:
    """The backbone's weights as they stand during training, under the plain names, with
    every LoRA update folded in (what :func:`merge_lora` would leave), on the model's
    device; the model is not changed. ``state_dict()`` of a parametrised model instead holds the frozen
    ``…parametrizations.weight.original`` and the factors A, B separately."""
    from torch.nn.utils import parametrize

    out, skip = {}, []
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            prefix = f"{name}." if name else ""
            skip.append(prefix + "parametrizations.")
            for leaf in module.parametrizations.keys():
                out[prefix + leaf] = getattr(module, leaf)
    for k, v in model.state_dict().items():
        if not k.startswith(tuple(skip)):
            out[k] = v
    return {k: v.detach().clone() for k, v in out.items()}


def merge_lora(model: torch.nn.Module) -> None:
    """Fold every LoRA update into its weight and remove the parametrisation."""
    from torch.nn.utils import parametrize

    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for leaf in list(module.parametrizations.keys()):
                for p in module.parametrizations[leaf]:
                    p.gain = 1.0
                parametrize.remove_parametrizations(module, leaf, leave_parametrized=True)
