"""The one training loop: AdamW, linear warm-up then cosine decay, seeded shuffling.

Hook points (used by θ0 pretraining, expert fine-tuning and train-then-merge methods):
``loss_fn`` computes the loss of a batch (wrap it to perturb or regularise),
``params`` is the trainable subset, ``after_backward`` runs between the backward pass and
the optimiser step (undo a perturbation there), ``on_step`` after every optimiser step.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch import Tensor

from . import CmbenchError
from .suite import TrainRecipe

# Bump when a change alters any number the training loop produces (optimiser, schedule,
# batching and shuffling, LoRA): θ0 pretraining, every fine-tuned expert and every
# train-then-merge job are then recomputed.
TRAIN_VERSION = 1

LossFn = Callable[[Tensor, Tensor], Tensor]  # (float images in [-1, 1], labels) -> scalar


def fit(params: Iterable[torch.nn.Parameter] | list[dict], loss_fn: LossFn, x: Tensor, y: Tensor,
        recipe: TrainRecipe, seed: int, on_step: Callable[[int, float], None] | None = None,
        what: str = "training", after_backward: Callable[[], None] | None = None) -> list[float]:
    """Train ``params`` on (x uint8, y) for ``recipe.epochs`` (or ``recipe.steps`` optimiser
    steps, cycling through epochs); returns per-epoch mean losses. Batches go to the
    device of the first parameter (the loop is the same on CPU and GPU)."""
    params = list(params)
    if params and isinstance(params[0], dict):  # parameter groups (e.g. a separate head lr)
        groups = [dict(g, params=[p for p in g["params"] if p.requires_grad]) for g in params]
    else:
        groups = [{"params": [p for p in params if p.requires_grad]}]
    opt = torch.optim.AdamW(groups, lr=recipe.lr, weight_decay=recipe.weight_decay)
    n = len(y)
    steps_per_epoch = max(1, math.ceil(n / recipe.batch_size))
    total = recipe.steps or steps_per_epoch * recipe.epochs
    epochs = math.ceil(total / steps_per_epoch)
    device = groups[0]["params"][0].device if groups and groups[0]["params"] else torch.device("cpu")
    warmup = int(recipe.warmup_frac * total)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(seed)
    history, step = [], 0
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen)
        running, done = 0.0, 0
        for i in range(min(steps_per_epoch, total - step)):
            idx = perm[i * recipe.batch_size : (i + 1) * recipe.batch_size]
            xb = x[idx].to(device, non_blocking=True).float().div_(127.5).sub_(1.0)
            loss = loss_fn(xb, y[idx].to(device, non_blocking=True))
            if not torch.isfinite(loss):
                raise CmbenchError(f"{what}: loss is {loss.item()} at epoch {epoch}, step {step} (diverged)")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if after_backward is not None:
                after_backward()
            opt.step()
            sched.step()
            running += loss.item()
            step += 1
            done += 1
            if on_step is not None:
                on_step(step, loss.item())
        history.append(running / max(1, done))
    return history


# -- LoRA ---------------------------------------------------------------------------------

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

    def __init__(self, shape: tuple[int, int], blocks: list[int | None], rank: int, scale: float,
                 gen: torch.Generator):
        super().__init__()
        out_f, in_f = shape
        n_blocks = 3 if any(b is not None for b in blocks) else 1
        rows = out_f // n_blocks
        self.blocks = blocks
        self.rows = rows
        self.scale = scale
        self.gain = 1.0
        self.A = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.randn(rank, in_f, generator=gen) / math.sqrt(in_f)) for _ in blocks])
        self.B = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(rows if b is not None else out_f, rank))
                                         for b in blocks])

    def delta(self, like: Tensor) -> Tensor:
        d = torch.zeros_like(like)
        for b, A, B in zip(self.blocks, self.A, self.B):
            if b is None:
                d = d + B @ A
            else:
                d = d.index_add(0, torch.arange(b * self.rows, (b + 1) * self.rows), B @ A)
        return d * (self.scale * self.gain)

    def forward(self, W: Tensor) -> Tensor:
        return W + self.delta(W)


def add_lora(model: torch.nn.Module, rank: int, alpha: float | None, targets: list[str],
             seed: int) -> list[LoRADelta]:
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
    every LoRA update folded in (what :func:`merge_lora` would leave), on the CPU; the
    model is not changed. ``state_dict()`` of a parametrised model instead holds the frozen
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
    return {k: v.detach().cpu().clone() for k, v in out.items()}


def merge_lora(model: torch.nn.Module) -> None:
    """Fold every LoRA update into its weight and remove the parametrisation."""
    from torch.nn.utils import parametrize

    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for leaf in list(module.parametrizations.keys()):
                for p in module.parametrizations[leaf]:
                    p.gain = 1.0
                parametrize.remove_parametrizations(module, leaf, leave_parametrized=True)
