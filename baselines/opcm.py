"""OPCM: orthogonal projection continual merging (Tang et al. 2025, "Merging Models on the
Fly Without Retraining", arXiv:2501.09522; continual form as in FusionBench's OPCMForCLIP).

M_1 = θ_1. For t ≥ 2, per linear-layer weight matrix (q, k, v separately when fused),
with the SVD U Σ Vᵀ of the merged task vector so far:

    P = Uᵀ τ_t V;  P_ii = 0;  P[:r, :r] = 0,   r = first index where cumsum(σ)/Σσ > α
    τ̃_t = U P Vᵀ                              (other parameters of leaf modules: τ̃_t = τ_t)
    S_t = S_{t−1} + τ̃_t  (S_1 = τ_1),          M_t = θ0 + S_t · mean_{i≤t}‖τ_i‖ / ‖S_t‖

norms over all entries. Which parameters are which is read from the modules (``ctx.layout``),
as the reference does: it loops over leaf modules, projects ``nn.Linear`` weights and adds
the task vector of every other leaf parameter; a parameter owned by a module with children
(CLIP's ``class_embedding``, a ViT's ``cls_token`` and ``pos_embed``) is never summed, only
rescaled with the rest at each step, so it keeps θ_1's direction and shrinks by each step's
factor (``non_leaf="sum"`` treats it like a leaf parameter instead). Buffers are left as θ_1
has them. Kept between steps: S_t and the list of norms (constant memory).
The thin SVD gives exactly the full-SVD result: the zeroed entries of P involve only the
first min(m, n) singular vectors, so τ̃ = τ − U_k (P_k ⊙ Z) V_kᵀ.
"""

from typing import Literal

import torch

from cmbench.methods import Method, Probability, register
from cmbench.tensors import apply, clone, mergeable, norm, task_vector


def project(S: torch.Tensor, tau: torch.Tensor, alpha: float, ranks: list | None = None) -> torch.Tensor:
    """τ with the diagonal and the top-left r×r block of Uᵀ τ V removed (U, V from S);
    ``ranks`` (if given) receives r."""
    if S.shape[0] < S.shape[1]:  # LAPACK is ~2× faster on tall matrices: svd(Sᵀ) = V Σ Uᵀ
        V, s, Uh = torch.linalg.svd(S.double().T, full_matrices=False)
        U, Vh = Uh.T, V.T
    else:
        U, s, Vh = torch.linalg.svd(S.double(), full_matrices=False)
    r = int((s.cumsum(0) / s.sum() > alpha).float().argmax())
    if ranks is not None:
        ranks.append(r)
    P = U.T @ tau.double() @ Vh.T
    Z = torch.eye(P.shape[0], dtype=torch.bool, device=P.device)
    Z[:r, :r] = True
    return (tau.double() - U @ (P * Z) @ Vh).to(tau.dtype)


def project_batched(S: torch.Tensor, tau: torch.Tensor, alpha: float, ranks: list | None = None) -> torch.Tensor:
    """:func:`project` of a stack of same-shaped tall matrices (B, m, n), m ≥ n, in one
    batched SVD: a GPU runs them together instead of one after another."""
    U, s, Vh = torch.linalg.svd(S.double(), full_matrices=False)
    r = (s.cumsum(-1) / s.sum(-1, keepdim=True) > alpha).float().argmax(-1)[:, None, None]
    if ranks is not None:
        ranks.extend(r.flatten().tolist())
    P = U.mT @ tau.double() @ Vh.mT
    i = torch.arange(P.shape[-1], device=P.device)
    Z = (i[:, None] == i[None, :]) | ((i[:, None] < r) & (i[None, :] < r))
    return (tau.double() - U @ (P * Z) @ Vh).to(tau.dtype)


def project_all(
    layout,
    S: dict,
    tau: dict,
    keys: list[str],
    alpha: float,
    chunk: int = 32,
    batched: bool | None = None,
    ranks: list | None = None,
) -> dict:
    """The projected τ of every linear weight in ``keys`` (q, k, v separately when fused).
    On the CPU matrix by matrix (:func:`project`); on a GPU the matrices are grouped by shape
    (wide ones transposed: projecting τᵀ against Sᵀ gives the transpose) and projected
    ``chunk`` at a time (:func:`project_batched`); ``batched`` overrides the choice."""
    if batched is None:
        batched = bool(keys) and S[keys[0]].device.type != "cpu"
    if not batched:
        return {k: layout.map_matrices(k, lambda a, b: project(a, b, alpha, ranks), S[k], tau[k]) for k in keys}
    blocks = [
        (k, i, a.shape[0] < a.shape[1], a, b)
        for k in keys
        for i, (a, b) in enumerate(zip(layout.matrices(k, S[k]), layout.matrices(k, tau[k])))
    ]
    groups: dict[tuple, list] = {}
    for blk in blocks:
        a = blk[3].mT if blk[2] else blk[3]
        groups.setdefault(tuple(a.shape), []).append(blk)
    done = {}
    for group in groups.values():
        for j in range(0, len(group), chunk):
            part = group[j : j + chunk]
            orient = lambda t, wide: t.mT if wide else t  # noqa: E731
            out = project_batched(
                torch.stack([orient(a, w) for _, _, w, a, _ in part]),
                torch.stack([orient(b, w) for _, _, w, _, b in part]),
                alpha,
                ranks,
            )
            for (k, i, w, _, _), o in zip(part, out):
                done[k, i] = orient(o, w)
    return {k: torch.cat([done[k, i] for i in range(layout[k].split)], dim=0) for k in keys}


@register
class OPCM(Method):
    name = "opcm"
    paper = "Tang et al. 2025, arXiv:2501.09522"

    def __init__(self, *, alpha: Probability = 0.5, non_leaf: Literal["rescale", "sum"] = "rescale"):
        self.alpha, self.non_leaf = alpha, non_leaf
        self.S = None  # S_t; entries that are only rescaled hold their merged task vector
        self.norms = []

    def merge(self, ctx, merged, incoming, task):
        if self.S is None:
            tau = task_vector(incoming, ctx.theta0)
            self.norms.append(norm(tau))
            self.S = tau
            return clone(incoming)
        layout, ranks = ctx.layout, []
        keys = [k for k, v in incoming.items() if mergeable(k, v)]  # τ_t's entries, in task_vector's order
        eligible = {k for k in keys if layout[k].kind == "linear" and (layout[k].leaf or self.non_leaf == "sum")}
        # τ_t one entry at a time on the CPU (S_t updated in place, ‖τ_t‖² summed as `norm` sums
        # it): no second model-sized dict; a GPU projects all matrices at once (project_all)
        on_cpu = next(iter(incoming.values())).device.type == "cpu"
        sq = 0.0
        for group in [[k] for k in keys] if on_cpu else [keys]:
            tau = {k: incoming[k] - ctx.theta0[k] for k in group}
            for k in group:
                sq = sq + (tau[k].double() ** 2).sum()
            projected = project_all(layout, self.S, tau, [k for k in group if k in eligible], self.alpha, ranks=ranks)
            for k in group:
                role = layout[k]
                if role.kind == "buffer" or (not role.leaf and self.non_leaf == "rescale"):
                    continue  # S keeps it
                self.S[k] = self.S[k] + (projected[k] if role.kind == "linear" else tau[k])
            del tau, projected
        self.norms.append(float(torch.sqrt(sq)))  # type: ignore[arg-type]  # a tensor once a key is summed
        S = self.S
        scale = (sum(self.norms) / len(self.norms)) / norm(S)
        ctx.record("lambda", float(scale))  # λ_t: mean task-vector norm over ‖S_t‖
        if ranks:  # r per projected matrix: the protected top singular directions
            ctx.record("rank_mean", sum(ranks) / len(ranks))
            ctx.record("rank_min", min(ranks))
            ctx.record("rank_max", max(ranks))
        out = apply(ctx.theta0, S, scale)
        for k, s in S.items():
            role = layout[k]
            if role.kind == "buffer":
                out[k] = merged[k].clone()
            elif not role.leaf and self.non_leaf == "rescale":
                S[k] = s * scale  # its merged task vector, rescaled again next step
        return out
