"""Iso-CTS: isotropic merging in the common and task-specific subspaces (Marczak et al. 2025,
"No Task Left Behind: Isotropic Model Merging with Common and Task-Specific Subspaces",
arXiv:2502.04959), continual form.

Per weight matrix (r = min(m, n), t tasks), with U Σ Vᵀ the SVD of the summed task matrix
Σ_i τ_i:

    c   = r − t·round((r − ⌊f·r⌋) / t)           the common subspace's size (f = 0.8)
    k   = (r − c) / t                             directions per task
    τ_i⊥ = τ_i − U_c U_cᵀ τ_i                     task i without the common subspace
    U'  = [U_{1⊥,k} … U_{t⊥,k}  U_c],  V'ᵀ = [V_{1⊥,k}ᵀ; …; V_{t⊥,k}ᵀ; V_cᵀ]
    M_t = θ0 + α · polar(U') · mean(σ') I · polar(V'ᵀ)         (weight matrices)
    M_t = θ0 + α · (1/t) Σ_{i≤t} τ_i                            (every other entry)

σ' the kept singular values (Σ's top c and each τ_i⊥'s top k), flattened to their mean as in
Iso-C; polar(A) = the orthonormal factor of A's SVD, which decorrelates the stacked bases.
The reference is FusionBench's ``ISO_CTS_Merge`` (fusion_bench/method/isotropic_merging/
iso_utils.py ``iso_cts``, iso.py, at 54c9e8c; config ``config/method/isotropic_merging/
iso_cts.yaml``: α = 1.0, common_space_fraction = 0.8), on the 2-D entries of HF CLIP's
vision model (each linear weight with q, k, v separate, and the position table).

Continual form (our choice, exact): the common subspace moves with every task, and each
τ_i⊥ is τ_i projected off the *current* one, so every seen task matrix is kept between steps
(storage grows linearly in t, like OPCM's per-task bases would not) and M_t is the one-shot
Iso-CTS of every expert seen so far. Matrices are read from the modules (``cmbench.spectral``);
SVDs in float64.
"""

import torch

from cmbench.methods import Fraction, Method, Positive, register
from cmbench.spectral import is_matrix, matrices
from cmbench.tensors import apply, task_vector
from cmbench_baselines.tsv_m import polar, svd


def iso_cts(taus: list[torch.Tensor], fraction: float) -> torch.Tensor:
    """The reference's merge of the t task matrices ``taus`` (float64)."""
    t, r = len(taus), min(taus[0].shape)
    c = r - round((r - int(r * fraction)) / t) * t  # so that the task-specific part splits evenly
    k = (r - c) // t
    U, s, Vh = svd(sum(taus))
    Uc, sc, Vhc = U[:, :c], s[:c], Vh[:c]
    Us, ss, Vhs = [], [], []
    for tau in taus:
        Ui, si, Vhi = svd(tau - Uc @ (Uc.T @ tau))
        Us.append(Ui[:, :k])
        ss.append(si[:k])
        Vhs.append(Vhi[:k])
    s_all = torch.cat(ss + [sc])
    return s_all.mean() * (polar(torch.cat(Us + [Uc], dim=1)) @ polar(torch.cat(Vhs + [Vhc], dim=0)))


@register
class IsoCTS(Method):
    name = "iso_cts"
    paper = "Marczak et al. 2025, arXiv:2502.04959"
    data_access = "none"
    storage_kinds = {"taus": "vectors", "rest_sum": "vectors"}

    def __init__(self, *, alpha: Positive = 1.0, common_space_fraction: Fraction = 0.8):
        self.alpha = alpha
        self.fraction = common_space_fraction
        self.taus: dict[str, list[list[torch.Tensor]]] = {}  # matrix entry -> per matrix, each τ_i
        self.rest_sum = None  # Σ τ_i of the other entries

    def merge(self, ctx, merged, incoming, task):
        layout, t = ctx.layout, ctx.step
        tau = task_vector(incoming, ctx.theta0)
        rest = {k: v for k, v in tau.items() if not is_matrix(layout, k, v)}
        self.rest_sum = rest if self.rest_sum is None else {k: s + rest[k] for k, s in self.rest_sum.items()}
        out = {k: s / t for k, s in self.rest_sum.items()}
        for k, v in tau.items():
            if k in rest:
                continue
            kept = self.taus.setdefault(k, [[] for _ in matrices(layout, k, v)])
            parts = []
            for j, m in enumerate(matrices(layout, k, v)):
                kept[j].append(m.double())
                parts.append(iso_cts(kept[j], self.fraction).to(v.dtype))
            out[k] = torch.cat(parts, dim=0)
        return apply(ctx.theta0, out, self.alpha)
