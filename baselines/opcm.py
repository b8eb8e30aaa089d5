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

from cmbench.methods import Method, register
from cmbench.tensors import apply, clone, norm, task_vector


def project(S: torch.Tensor, tau: torch.Tensor, alpha: float) -> torch.Tensor:
    """τ with the diagonal and the top-left r×r block of Uᵀ τ V removed (U, V from S)."""
    if S.shape[0] < S.shape[1]:  # LAPACK is ~2× faster on tall matrices: svd(Sᵀ) = V Σ Uᵀ
        V, s, Uh = torch.linalg.svd(S.double().T, full_matrices=False)
        U, Vh = Uh.T, V.T
    else:
        U, s, Vh = torch.linalg.svd(S.double(), full_matrices=False)
    r = int((s.cumsum(0) / s.sum() > alpha).float().argmax())
    P = U.T @ tau.double() @ Vh.T
    Z = torch.eye(P.shape[0], dtype=torch.bool, device=P.device)
    Z[:r, :r] = True
    return (tau.double() - U @ (P * Z) @ Vh).to(tau.dtype)


@register
class OPCM(Method):
    name = "opcm"
    paper = "Tang et al. 2025, arXiv:2501.09522"

    def __init__(self, *, alpha: float = 0.5, non_leaf: Literal["rescale", "sum"] = "rescale"):
        self.alpha, self.non_leaf = alpha, non_leaf
        self.S = None  # S_t; entries that are only rescaled hold their merged task vector
        self.norms = []

    def merge(self, ctx, merged, incoming, task):
        tau = task_vector(incoming, ctx.theta0)
        self.norms.append(norm(tau))
        if self.S is None:
            self.S = tau
            return clone(incoming)
        layout, S = ctx.layout, {}
        for k, s in self.S.items():
            role = layout[k]
            if role.kind == "buffer" or (not role.leaf and self.non_leaf == "rescale"):
                S[k] = s
            elif role.kind == "linear":
                S[k] = s + layout.map_matrices(k, lambda a, b: project(a, b, self.alpha), s, tau[k])
            else:
                S[k] = s + tau[k]
        scale = (sum(self.norms) / len(self.norms)) / norm(S)
        out = apply(ctx.theta0, S, scale)
        for k, s in S.items():
            role = layout[k]
            if role.kind == "buffer":
                out[k] = merged[k].clone()
            elif not role.leaf and self.non_leaf == "rescale":
                S[k] = s * scale  # its merged task vector, rescaled again next step
        self.S = S
        return out
