"""TSV-M: task singular vectors merging (Gargiulo et al. 2025, "Task Singular Vectors:
Reducing Task Interference in Model Merging", arXiv:2412.00081), continual form.

Per weight matrix, each task vector τ_i = U_i Σ_i V_iᵀ keeps its top k = ⌊r/t⌋ singular
triplets (r = min(m, n), t tasks); the kept singular vectors of all tasks are concatenated
and decorrelated by their polar factors (the nearest orthonormal bases), and

    M_t = θ0 + α · polar([U_1,k … U_t,k]) diag(σ) polar([V_1,k … V_t,k]ᵀ)     (weight matrices)
    M_t = θ0 + α · (1/t) Σ_{i≤t} τ_i                                        (every other entry)

The reference is FusionBench's ``TaskSingularVectorMerging``
(fusion_bench/method/task_singular_vector/TSVM.py, utils/TSVM_utils.py
``compute_and_sum_svd_mem_reduction`` at 54c9e8c; config TaskSingularVectorMerging.yaml:
α = 1): 2-D entries of HF CLIP's vision model (linear weights, q, k, v separately, and the
position table) are merged this way, the rest averaged.

Continual form (our choice, exact): task i's truncation only ever shrinks as tasks arrive
(⌊r/t⌋ ≤ ⌊r/i⌋ for t ≥ i), so its top ⌊r/i⌋ triplets are kept when it arrives and M_t is the
one-shot TSV-M of every expert seen so far. Storage grows as Σ_i 1/i (about ln t matrices per
matrix), plus the running sum of the other entries. Matrices are read from the modules
(``cmbench.spectral``); SVDs in float64.
"""

import torch

from cmbench.methods import Method, Positive, register
from cmbench.spectral import is_matrix, matrices
from cmbench.tensors import apply, task_vector


def svd(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The thin SVD of A. LAPACK's divide-and-conquer driver (gesdd, torch's on the CPU) now
    and then fails to converge on a rank-deficient input or one whose singular values cluster
    (Iso-CTS's first-step residual and the stacked singular vectors it orthogonalises, seen on
    Flan-T5-base); then the QR-iteration driver (gesvd) computes the same factorisation."""
    try:
        return torch.linalg.svd(A, full_matrices=False)
    except torch.linalg.LinAlgError:
        if A.device.type == "cuda":
            return torch.linalg.svd(A, full_matrices=False, driver="gesvd")
        import scipy.linalg

        U, s, Vh = scipy.linalg.svd(A.numpy(), full_matrices=False, lapack_driver="gesvd")
        return torch.from_numpy(U), torch.from_numpy(s), torch.from_numpy(Vh)


def polar(A: torch.Tensor) -> torch.Tensor:
    """The orthonormal polar factor U Vᵀ of A = U Σ Vᵀ."""
    U, _, Vh = svd(A)
    return U @ Vh


def tsv_merge(triplets: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], r: int) -> torch.Tensor:
    """The reference's merge of t tasks' triplets (U_i, σ_i, V_iᵀ), each cut to ⌊r/t⌋."""
    k = int(r * (1 / len(triplets)))  # the reference's int(s.shape[0] * sv_reduction)
    U = torch.cat([u[:, :k] for u, _, _ in triplets], dim=1)
    s = torch.cat([s[:k] for _, s, _ in triplets])
    Vh = torch.cat([vh[:k] for _, _, vh in triplets], dim=0)
    return torch.linalg.multi_dot((polar(U), torch.diag(s), polar(Vh)))


@register
class TSVM(Method):
    name = "tsv_m"
    paper = "Gargiulo et al. 2025, arXiv:2412.00081"
    data_access = "none"

    def __init__(self, *, alpha: Positive = 1.0):
        self.alpha = alpha
        self.triplets: dict[str, list[list]] = {}  # matrix entry -> per matrix, each task's top ⌊r/i⌋
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
            kept = self.triplets.setdefault(k, [[] for _ in matrices(layout, k, v)])
            parts = []
            for j, m in enumerate(matrices(layout, k, v)):
                U, s, Vh = svd(m.double())
                keep = int(len(s) * (1 / t))  # what any later step can use of this task
                kept[j].append((U[:, :keep], s[:keep], Vh[:keep]))
                parts.append(tsv_merge(kept[j], len(s)).to(v.dtype))
            out[k] = torch.cat(parts, dim=0)
        return apply(ctx.theta0, out, self.alpha)
