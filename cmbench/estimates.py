"""Quantities methods estimate from the data they declared (one copy, here)."""

from __future__ import annotations

from typing import Literal

import torch

from .methods import Context
from .tensors import StateDict

FisherKind = Literal["model", "model_batch", "empirical"]


def diagonal_fisher(
    ctx: Context, state: StateDict, n_samples: int = 256, kind: FisherKind = "model", batch_size: int = 32
) -> StateDict:
    """The diagonal Fisher of ``state`` on the current task's train split (the first
    ``n_samples`` of a seeded permutation), in one of three forms. With p(y|x) the model's
    softmax over the task's classes (its frozen head in the merge stream, its classifier
    rows in train then merge) and g_y(x) = ∇_θ log p(y|x):

    * ``"model"`` (Matena & Raffel 2022, eq. 4 and their code): the expectation over the
      model's own predictive distribution, exactly, per example:
      F = 1/N Σ_n Σ_y p(y|x_n) g_y(x_n)²  (one backward pass per example and class);
    * ``"model_batch"`` (FusionBench's ``FisherMergingForCLIPVisionModel``): per batch B of
      ``batch_size`` examples, the square of one gradient,
      F = 1/N Σ_B (Σ_{n∈B} Σ_y √p(y|x_n) g_y(x_n))²: the cross terms between examples and
      classes of a batch stay in, so it is a different and cheaper quantity (one backward
      pass per batch) that grows with the batch size;
    * ``"empirical"``: the true labels instead of the expectation,
      F = 1/N Σ_n g_{y_n}(x_n)²; it measures the fit to the labels, not the curvature of the
      model's own distribution, and is zero where the model is confidently right.

    Only floating-point entries that are parameters of the backbone appear.
    """
    split = ctx.data.current("train")
    perm = torch.randperm(len(split), generator=torch.Generator().manual_seed(ctx.seed))[:n_samples]
    x_all = split.x[perm].float().div(127.5).sub(1.0)
    y_all = split.y[perm]
    module, head = ctx.network(state)
    module.eval()
    params = dict(module.named_parameters())
    fisher = {k: torch.zeros_like(v) for k, v in params.items()}

    def add_squared(outputs, grad_outputs=None):
        g = torch.autograd.grad(outputs, list(params.values()), grad_outputs=grad_outputs, retain_graph=True)
        for k, gk in zip(params, g):
            fisher[k] += gk.detach() ** 2

    if kind == "model_batch":
        for i in range(0, len(y_all), batch_size):
            logp = torch.log_softmax(head(module(x_all[i : i + batch_size])), -1)
            add_squared((logp.detach().exp().sqrt() * logp).sum())
    else:
        # one example at a time: exact per-example gradients for any backbone (vmap cannot
        # trace timm's fused attention)
        for i in range(len(y_all)):
            logp = torch.log_softmax(head(module(x_all[i : i + 1])), -1)[0]
            if kind == "empirical":
                add_squared(logp[y_all[i]])
            else:  # Σ_y p_y g_y² = Σ_y (√p_y g_y)²
                for y, w in enumerate(logp.detach().exp().sqrt()):
                    add_squared(logp[y] * w)
    return {k: v / max(1, len(y_all)) for k, v in fisher.items()}
