"""The one training loop: AdamW, linear warm-up then cosine decay, seeded shuffling.

Hook points (used by θ0 pretraining, expert fine-tuning and train-then-merge methods):
``loss_fn`` computes the loss of a batch (wrap it to perturb or regularise),
``params`` is the trainable subset, ``on_step`` is called after every optimiser step.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch import Tensor

from . import CmbenchError
from .suite import TrainRecipe

LossFn = Callable[[Tensor, Tensor], Tensor]  # (float images in [-1, 1], labels) -> scalar


def fit(params: Iterable[torch.nn.Parameter], loss_fn: LossFn, x: Tensor, y: Tensor,
        recipe: TrainRecipe, seed: int, on_step: Callable[[int, float], None] | None = None,
        what: str = "training") -> list[float]:
    """Train ``params`` on (x uint8, y) for ``recipe.epochs``; returns per-epoch mean losses."""
    params = [p for p in params if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    n = len(y)
    steps_per_epoch = max(1, math.ceil(n / recipe.batch_size))
    total = steps_per_epoch * recipe.epochs
    warmup = int(recipe.warmup_frac * total)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(seed)
    history, step = [], 0
    for epoch in range(recipe.epochs):
        perm = torch.randperm(n, generator=gen)
        running = 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * recipe.batch_size : (i + 1) * recipe.batch_size]
            xb = x[idx].float().div_(127.5).sub_(1.0)
            loss = loss_fn(xb, y[idx])
            if not torch.isfinite(loss):
                raise CmbenchError(f"{what}: loss is {loss.item()} at epoch {epoch}, step {step} (diverged)")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += loss.item()
            step += 1
            if on_step is not None:
                on_step(step, loss.item())
        history.append(running / steps_per_epoch)
    return history
