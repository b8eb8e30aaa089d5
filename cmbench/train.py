"""The one training loop: AdamW (or Adam, SGD), linear warm-up then cosine decay, seeded
shuffling, optional random resized crops and flips, optional bf16 autocast.

Hook points (used by θ0 pretraining, expert fine-tuning and train-then-merge methods):
``loss_fn`` computes the loss of a batch (wrap it to perturb or regularise),
``params`` is the trainable subset, ``after_backward`` runs between the backward pass and
the optimiser step (undo a perturbation there), ``on_step`` after every optimiser step.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, cast

import torch
from torch import Tensor

from . import CmbenchError
from .suite import Augment, TrainRecipe

# Bump when a change alters any number the training loop produces (optimiser, schedule,
# batching and shuffling, LoRA in cmbench/lora.py): θ0 pretraining, every fine-tuned expert and every
# train-then-merge job are then recomputed.
TRAIN_VERSION = 1

LossFn = Callable[[Tensor, Tensor], Tensor]  # (float images in [-1, 1], labels) -> scalar


def _optimizer(groups: list[dict], recipe: TrainRecipe) -> torch.optim.Optimizer:
    if recipe.optimizer == "adam":
        return torch.optim.Adam(groups, lr=recipe.lr, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    return torch.optim.AdamW(groups, lr=recipe.lr, weight_decay=recipe.weight_decay)


def random_resized_crops(x: Tensor, aspect: Tensor | None, aug: Augment, gen: torch.Generator, out_size: int) -> Tensor:
    """torchvision's ``RandomResizedCrop`` (+ ``RandomHorizontalFlip``) on a uint8 batch, as
    floats in [-1, 1] of side ``out_size``. ``x`` holds each whole image squashed to a square
    and ``aspect`` its original width/height (None: the images are what they show): the crop
    box is drawn in the original image's geometry (area fraction in ``scale``, aspect ratio
    log-uniform in ``ratio``, 10 tries, else the centre crop of the clamped ratio) and mapped
    onto the square, so the crop's content is the one torchvision would take. Draws come
    from ``gen`` (the CPU), so CPU and GPU runs crop alike."""
    n, side = len(x), x.shape[-1]
    aspect = torch.ones(n) if aspect is None else aspect.float()
    out = torch.empty(n, x.shape[1], out_size, out_size, device=x.device)
    lo, hi = math.log(aug.ratio[0]), math.log(aug.ratio[1])
    for k in range(n):
        w_img, h_img = float(aspect[k]), 1.0  # the original image in units of its height
        box = None
        if aug.random_resized_crop:
            for _ in range(10):
                area = (
                    w_img
                    * h_img
                    * (aug.scale[0] + (aug.scale[1] - aug.scale[0]) * torch.rand((), generator=gen).item())
                )
                r = math.exp(lo + (hi - lo) * torch.rand((), generator=gen).item())
                w, h = math.sqrt(area * r), math.sqrt(area / r)
                if w <= w_img and h <= h_img:
                    left = (w_img - w) * torch.rand((), generator=gen).item()
                    top = (h_img - h) * torch.rand((), generator=gen).item()
                    box = (left, top, w, h)
                    break
            if box is None:  # torchvision's fallback: the whole image at the nearest allowed ratio
                r = w_img / h_img
                w, h = (
                    (h_img * aug.ratio[0], h_img)
                    if r < aug.ratio[0]
                    else ((w_img, w_img / aug.ratio[1]) if r > aug.ratio[1] else (w_img, h_img))
                )
                box = ((w_img - w) / 2, (h_img - h) / 2, w, h)
        else:
            box = (0.0, 0.0, w_img, h_img)
        # to pixels of the stored square (x scaled by side / w_img, y by side / h_img)
        x0, y0 = box[0] / w_img * side, box[1] / h_img * side
        x1, y1 = x0 + max(box[2] / w_img * side, 1.0), y0 + max(box[3] / h_img * side, 1.0)
        i0, j0 = int(math.floor(y0)), int(math.floor(x0))
        i1, j1 = min(side, max(i0 + 1, int(math.ceil(y1)))), min(side, max(j0 + 1, int(math.ceil(x1))))
        crop = x[k : k + 1, :, i0:i1, j0:j1].float()
        img = torch.nn.functional.interpolate(
            crop, size=(out_size, out_size), mode="bilinear", align_corners=False, antialias=True
        )[0]
        if aug.hflip and torch.rand((), generator=gen).item() < 0.5:
            img = img.flip(-1)
        out[k] = img
    return out.clamp_(0, 255).div_(127.5).sub_(1.0)


def fit(
    params: Iterable[torch.nn.Parameter] | Iterable[dict],
    loss_fn: LossFn,
    x: Tensor,
    y: Tensor,
    recipe: TrainRecipe,
    seed: int,
    on_step: Callable[[int, float], None] | None = None,
    what: str = "training",
    after_backward: Callable[[], None] | None = None,
    aspect: Tensor | None = None,
    out_size: int | None = None,
    images: bool = True,
) -> list[float]:
    """Train ``params`` on (x uint8, y) for ``recipe.epochs`` (or ``recipe.steps`` optimiser
    steps, cycling through epochs); returns per-epoch mean losses. Batches go to the
    device of the first parameter (the loop is the same on CPU and GPU). With
    ``recipe.augment``, batches are random resized crops of side ``out_size`` (default: the
    images' side) of ``x``, whole images with original aspect ratios ``aspect``. ``images=False``:
    ``x`` holds token ids, handed to ``loss_fn`` as they are."""
    params = cast(list[Any], list(params))  # Parameters or parameter groups (dicts)
    if params and isinstance(params[0], dict):  # parameter groups (e.g. a separate head lr)
        groups = [dict(g, params=[p for p in g["params"] if p.requires_grad]) for g in params]
    else:
        groups = [{"params": [p for p in params if p.requires_grad]}]
    opt = _optimizer(groups, recipe)
    n = len(y)
    steps_per_epoch = max(1, math.ceil(n / recipe.batch_size))
    total = recipe.steps or steps_per_epoch * recipe.epochs
    epochs = math.ceil(total / steps_per_epoch)
    device = groups[0]["params"][0].device if groups and groups[0]["params"] else torch.device("cpu")
    warmup = recipe.warmup_steps if recipe.warmup_steps is not None else int(recipe.warmup_frac * total)
    aug_gen = torch.Generator().manual_seed(seed + 7_777_777)  # its own stream: shuffling is as without it
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=recipe.precision == "bf16")

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
            if recipe.augment is not None:
                xb = random_resized_crops(
                    x[idx].to(device, non_blocking=True),
                    None if aspect is None else aspect[idx],
                    recipe.augment,
                    aug_gen,
                    out_size or x.shape[-1],
                )
            elif not images:
                xb = x[idx].to(device, non_blocking=True)
            else:
                xb = x[idx].to(device, non_blocking=True).float().div_(127.5).sub_(1.0)
            with autocast:
                loss = loss_fn(xb, y[idx].to(device, non_blocking=True))
            if not torch.isfinite(loss):
                raise CmbenchError(f"{what}: loss is {loss.item()} at epoch {epoch}, step {step} (diverged)")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if after_backward is not None:
                after_backward()
            if recipe.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_([q for g in groups for q in g["params"]], recipe.grad_clip)
            opt.step()
            sched.step()
            running += loss.item()
            step += 1
            done += 1
            if on_step is not None:
                on_step(step, loss.item())
        history.append(running / max(1, done))
    return history
