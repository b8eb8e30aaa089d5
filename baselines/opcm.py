"""OPCM: orthogonal projection continual merging (Tang et al. 2025, "Merging Models on the
Fly Without Retraining", arXiv:2501.09522; continual form as in FusionBench's OPCMForCLIP).

M_1 = θ_1. For t ≥ 2, per linear-layer weight matrix (q, k, v separately when fused),
with the SVD U Σ Vᵀ of the merged task vector so far:

    P = Uᵀ τ_t V;  P_ii = 0;  P[:r, :r] = 0,   r = first index where cumsum(σ)/Σσ > α
    τ̃_t = U P Vᵀ                              (other parameters: τ̃_t = τ_t)
    S_t = S_{t−1} + τ̃_t  (S_1 = τ_1),          M_t = θ0 + S_t · mean_{i≤t}‖τ_i‖ / ‖S_t‖

norms over all parameters. Kept between steps: S_t and the list of norms (constant memory).
The thin SVD gives exactly the full-SVD result: the zeroed entries of P involve only the
first min(m, n) singular vectors, so τ̃ = τ − U_k (P_k ⊙ Z) V_kᵀ.
"""

import torch

from cmbench.methods import Method, register
from cmbench.tensors import apply, clone, is_matrix, map_matrices, norm, task_vector


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

    def __init__(self, *, alpha: float = 0.5):
        self.alpha = alpha
        self.S = None
        self.norms = []

    def merge(self, ctx, merged, incoming, task):
        tau = task_vector(incoming, ctx.theta0)
        self.norms.append(norm(tau))
        if self.S is None:
            self.S = tau
            return clone(incoming)
        self.S = {
            k: S + (map_matrices(k, lambda a, b: project(a, b, self.alpha), S, tau[k]) if is_matrix(k, S) else tau[k])
            for k, S in self.S.items()
        }
        scale = (sum(self.norms) / len(self.norms)) / norm(self.S)
        return apply(ctx.theta0, self.S, scale)
