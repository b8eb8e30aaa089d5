"""Iso-C: isotropic merging in the common subspace (Marczak et al. 2025, "No Task Left
Behind: Isotropic Model Merging with Common and Task-Specific Subspaces", arXiv:2502.04959),
continual form with a running sum.

With τ_i = θ_i − θ0 and, per weight matrix, the SVD U Σ Vᵀ of their sum,

    M_t = θ0 + α · iso(Σ_{i≤t} τ_i),   iso(S) = U (mean(σ) I) Vᵀ      (weight matrices)
    M_t = θ0 + α · (1/t) Σ_{i≤t} τ_i                                  (every other entry)

the spectrum of the summed task matrix flattened to its mean, so no direction of the common
subspace dominates. The reference is FusionBench's ``ISO_C_Merge``
(fusion_bench/method/isotropic_merging/iso_utils.py ``iso_c``, iso.py, at 54c9e8c; config
``config/method/isotropic_merging/iso_c.yaml``: α = 1.0; FusionBench's documented ViT-B/32
runs use 1.5): every 2-D entry of HF CLIP's vision model gets the isotropic treatment, which
is each linear layer's weight (q, k, v, out, fc1, fc2 separately) and the position
embedding table; the rest is averaged.

Continual form (our choice; the one-shot merge needs only the sum of the task vectors, so it is
exact): Σ τ_i is kept between steps and M_t is the one-shot Iso-C of every expert seen so far.
Which entries are matrices is read from the modules (``ctx.layout``: linear weights, q, k, v
separately when fused, and 2-D embedding tables), not from names; SVDs in float64.
"""

import torch

from cmbench.methods import Method, Positive, register
from cmbench.spectral import is_matrix, matrices
from cmbench.tensors import apply, task_vector


def isotropic(S: torch.Tensor) -> torch.Tensor:
    """U (mean σ) Vᵀ of the thin SVD of S."""
    U, s, Vh = torch.linalg.svd(S.double(), full_matrices=False)
    return (s.mean() * (U @ Vh)).to(S.dtype)


@register
class IsoC(Method):
    name = "iso_c"
    paper = "Marczak et al. 2025, arXiv:2502.04959"
    data_access = "none"

    def __init__(self, *, alpha: Positive = 1.0):
        self.alpha = alpha
        self.tau_sum = None  # Σ τ_i

    def merge(self, ctx, merged, incoming, task):
        tau = task_vector(incoming, ctx.theta0)
        self.tau_sum = tau if self.tau_sum is None else {k: s + tau[k] for k, s in self.tau_sum.items()}
        layout, out = ctx.layout, {}
        for k, s in self.tau_sum.items():
            if is_matrix(layout, k, s):
                out[k] = torch.cat([isotropic(m) for m in matrices(layout, k, s)], dim=0)
            else:
                out[k] = s / ctx.step
        return apply(ctx.theta0, out, self.alpha)
