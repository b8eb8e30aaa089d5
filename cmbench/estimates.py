"""Quantities methods estimate from the data they declared (one copy, here)."""

from __future__ import annotations

import torch

from .methods import Context
from .tensors import StateDict


def diagonal_fisher(ctx: Context, state: StateDict, n_samples: int = 256) -> StateDict:
    """Diagonal empirical Fisher E[(∇_θ log p(y|x; θ))²] of ``state`` on the current task's
    train split (first ``n_samples`` of a seeded permutation).

    The task's labels and its frozen head (merge stream) or its classifier rows (train
    then merge) define p(y|x). Only floating-point entries that are parameters appear.
    """
    split = ctx.data.current("train")
    perm = torch.randperm(len(split), generator=torch.Generator().manual_seed(ctx.seed))[:n_samples]
    x_all = split.x[perm].float().div(127.5).sub(1.0)
    y_all = split.y[perm]
    module, head = ctx.network(state)
    module.eval()
    params = dict(module.named_parameters())
    fisher = {k: torch.zeros_like(v) for k, v in params.items()}
    # one backward per sample: exact per-sample gradients for any backbone (vmap cannot
    # trace timm's fused attention); cheap at micro scale
    for i in range(len(y_all)):
        logits = head(module(x_all[i : i + 1]))
        g = torch.autograd.grad(torch.log_softmax(logits, -1)[0, y_all[i]], list(params.values()))
        for k, gk in zip(params, g):
            fisher[k] += gk.detach() ** 2
    return {k: v / max(1, len(y_all)) for k, v in fisher.items()}
