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
# batching and shuffling, LoRA in cmbench/lora.py): θ0 pretraining, every fine-tuned expert and every
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
