"""DOP: dual orthogonal projections (Yuan et al., "Continual Model Merging without Data:
Dual Projections for Balancing Stability and Plasticity", NeurIPS 2025; continual form and
defaults as in FusionBench's ContinualDOPForCLIP and config/method/dop/dop.yaml).

M_1 = θ_1. For t ≥ 2, each linear weight matrix W (q, k, v separately when fused) is
optimised from the average of the two models, W ← ½(W_{t−1} + W_t), to stay close to both
the previous merged model (stability) and the new expert (plasticity) *in their own task
subspaces*: with τ_i = W_i − W_0 = U_i Σ_i V_iᵀ truncated to the energy fraction ε,

    L_i(W) = ‖Σ_i U_iᵀ (W − W_i)‖²_F + ‖(W − W_i) V_i Σ_i‖²_F,      i ∈ {merged, new}

minimised by Adam (lr, num_steps) on Σ_i w_i L_i, where w comes from MGDA (the min-norm
point of the two loss-normalised gradients), smoothed by an EMA started at (α, 1 − α).
Which entries are linear weights is read from the modules (``ctx.layout``), as the
reference loops over leaf modules: every other entry of a leaf module (biases, norms,
embedding tables, convolutions) is the plain average ½(M_{t−1} + θ_t). The reference builds
each merged model from a copy of θ0 and never visits a parameter owned by a module with
children (CLIP's ``class_embedding``, a ViT's ``cls_token``), so from step 2 on such
entries are θ0's (``non_leaf="average"`` averages them instead).
Data-free; nothing is kept between steps but the merged model.
"""

from typing import Literal

import torch

from cmbench.methods import Fraction, NonNegativeInt, Positive, Probability, merge_function


def _subspace(tv: torch.Tensor, eps: float, space: str):
    """The loss's two sides for τ = U Σ Vᵀ truncated to the energy fraction ε, each as its
    cheaper exact operator (computed once per matrix): the Gram matrix U Σ² Uᵀ (m × m) or the
    factor Σ Uᵀ (r × m) on the left, V Σ² Vᵀ (n × n) or V Σ (n × r) on the right."""
    u, s, vh = torch.linalg.svd(tv, full_matrices=False)  # the first min(m, n) vectors are all r can use
    r = int(torch.searchsorted(s.cumsum(0) / s.sum(), torch.tensor(min(eps, 1.0), dtype=s.dtype, device=s.device)))
    (m, n), su, vs = tv.shape, s[:r, None] * u[:, :r].T, vh[:r].T * s[:r]
    # a step costs m²n with the Gram matrix, 2rmn with the factor (and n²m against 2rmn)
    left = None if space == "v" else ("gram", su.T @ su) if m <= 2 * r else ("factor", su)
    right = None if space == "u" else ("gram", vs @ vs.T) if n <= 2 * r else ("factor", vs)
    return left, right


def loss_and_grad(delta, left, right):
    """L(W) = ‖Σ Uᵀ Δ‖²_F + ‖Δ V Σ‖²_F at Δ = W − W_i and ∇_W L = 2 U Σ² Uᵀ Δ + 2 Δ V Σ² Vᵀ, in
    closed form: two or four matrix products a step where autograd's forward and three
    backward passes (one per task, one for the weighted sum) take about twenty."""
    loss, grad = delta.new_zeros(()), torch.zeros_like(delta)
    if left is not None:
        kind, op = left
        a = op @ delta
        if kind == "gram":  # ‖Σ Uᵀ Δ‖² = ⟨Δ, U Σ² Uᵀ Δ⟩
            loss, grad = loss + (delta * a).sum(), grad + 2 * a
        else:
            loss, grad = loss + (a * a).sum(), grad + 2 * (op.T @ a)
    if right is not None:
        kind, op = right
        b = delta @ op
        if kind == "gram":
            loss, grad = loss + (delta * b).sum(), grad + 2 * b
        else:
            loss, grad = loss + (b * b).sum(), grad + 2 * (b @ op.T)
    return loss, grad


def min_norm_2(g1: torch.Tensor, g2: torch.Tensor) -> float:
    """Weight γ on g1 of the min-norm point of the segment [g2, g1] (MGDA, two tasks)."""
    v11, v12, v22 = float(g1 @ g1), float(g1 @ g2), float(g2 @ g2)
    if v12 >= v11:
        return 0.999
    if v12 >= v22:
        return 0.001
    return -(v12 - v22) / (v11 + v22 - 2 * v12)


def optimise(w0, w_merged, w_new, *, lr, num_steps, mgda, ema, ema_beta, alpha, eps, space, trace=None):
    """W minimising the weighted subspace losses to both models; ``trace`` (if given)
    receives the last step's two losses and the weight on the merged model's."""
    targets = [w_merged, w_new]
    subspaces = [_subspace(w - w0, eps, space) for w in targets]
    W = torch.nn.Parameter((w_merged + w_new) / 2)
    opt = torch.optim.Adam([W], lr=lr)
    weights = [alpha, 1 - alpha]
    for _ in range(num_steps):
        losses, grads = zip(*(loss_and_grad(W.detach() - t, *sub) for t, sub in zip(targets, subspaces)))
        if mgda:
            # each gradient normalised by its loss value (the reference's "loss" normaliser).
            # Where W already equals W_i the loss is zero and the reference stops with an error
            # (its min-norm solver finds no point below a NaN or 1e8 cost); a zero loss has a
            # zero gradient, which we keep instead
            unit = [g.flatten() / max(float(loss_i), 1e-30) for g, loss_i in zip(grads, losses)]
            gamma = min_norm_2(unit[0], unit[1])
            sol = [gamma, 1 - gamma]
            weights = [ema_beta * w + (1 - ema_beta) * s_ for w, s_ in zip(weights, sol)] if ema else sol
        W.grad = weights[0] * grads[0] + weights[1] * grads[1]  # ∇ of the weighted sum
        opt.step()
    if trace is not None and num_steps:
        trace.append((float(losses[0]), float(losses[1]), float(weights[0])))
    return W.detach()


@merge_function("dop", paper="Yuan et al., NeurIPS 2025 (Continual Model Merging without Data: Dual Projections)")
def dop(
    ctx,
    merged,
    incoming,
    *,
    lr: Positive = 1e-4,
    num_steps: NonNegativeInt = 200,
    mgda: bool = True,
    ema: bool = True,
    ema_beta: Probability = 0.999,
    alpha: Probability = 0.8,
    svd_epsilon: Fraction = 0.99999,
    svd_proj_space: Literal["uv", "u", "v"] = "uv",
    non_leaf: Literal["theta0", "average"] = "theta0",
):
    if ctx.step == 1:
        return {k: v.clone() for k, v in incoming.items()}
    hp = dict(
        lr=lr,
        num_steps=num_steps,
        mgda=mgda,
        ema=ema,
        ema_beta=ema_beta,
        alpha=alpha,
        eps=svd_epsilon,
        space=svd_proj_space,
    )
    layout, out, trace = ctx.layout, {}, []
    hp["trace"] = trace
    with torch.no_grad():  # gradients in closed form (loss_and_grad)
        for k, w in merged.items():
            if not w.is_floating_point():
                out[k] = w.clone()
            elif not layout[k].leaf and non_leaf == "theta0":
                out[k] = ctx.theta0[k].clone()
            elif layout.is_linear(k):
                out[k] = layout.map_matrices(k, lambda a, b, c: optimise(a, b, c, **hp), ctx.theta0[k], w, incoming[k])
            else:
                out[k] = (w + incoming[k]) / 2
    if trace:  # the final losses to the merged and to the new model, and the weight on the first
        for i, name in enumerate(("loss_merged", "loss_new", "weight_merged")):
            values = [t[i] for t in trace]
            ctx.record(f"{name}_mean", sum(values) / len(values))
            ctx.record(f"{name}_max", max(values))
    return out
