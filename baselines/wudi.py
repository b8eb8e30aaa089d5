"""WUDI merging (Cheng et al. 2025, "Whoever Started the Interference Should End It: Guiding
Data-Free Model Merging via Task Vectors", arXiv:2503.08099), continual form with running sums.

Per weight matrix, the merged task vector τ minimises the interference each task vector sees,
measured on its own rows (task vectors approximately span their task's input subspace):

    L(τ) = Σ_{i≤t} ‖(τ − τ_i) τ_iᵀ‖²_F / ‖τ_i‖²_F,    τ ← Adam(L), from τ = Σ_{i≤t} τ_i,

``iter_num`` steps at learning rate ``lr``; every other entry is the mean of the task vectors;
M_t = θ0 + τ. The reference is FusionBench's ``WUDIMerging`` (fusion_bench/method/wudi/wudi.py
``wudi_merging`` at 54c9e8c; config/method/wudi/wudi.yaml: 400 iterations; Adam lr 1e-5, no
weight decay, in the code): 2-D entries of HF CLIP's vision model (each linear weight, q, k, v
separately, and the position embedding table) are optimised, the rest averaged.

Continual form (our choice, exact): with G_i = τ_iᵀτ_i and w_i = 1/‖τ_i‖², L(τ) =
tr(τ A τᵀ) − 2 tr(τ Bᵀ) + const for A = Σ w_i G_i and B = Σ w_i τ_i G_i, so its gradient
2(τA − B) needs only A, B and Σ τ_i, kept between steps (in × in and out × in per matrix:
constant memory); each step runs the reference's optimisation from Σ τ_i over every expert
seen so far, with that gradient (the reference differentiates the loss itself: the same
gradient, other rounding). Matrices are read from the modules (``ctx.layout``), sums in float64,
the optimisation in the parameters' precision as the reference's.
"""

import torch

from cmbench.methods import Method, Positive, PositiveInt, register
from cmbench.spectral import is_matrix, matrices
from cmbench.tensors import apply, task_vector


@register
class WUDI(Method):
    name = "wudi"
    paper = "Cheng et al. 2025, arXiv:2503.08099"
    data_access = "none"

    def __init__(self, *, iter_num: PositiveInt = 400, lr: Positive = 1e-5):
        self.iter_num, self.lr = iter_num, lr
        self.tau_sum = None  # Σ τ_i
        self.A: dict[str, list[torch.Tensor]] = {}  # Σ w_i τ_iᵀτ_i per matrix (q, k, v apart)
        self.B: dict[str, list[torch.Tensor]] = {}  # Σ w_i τ_i τ_iᵀτ_i per matrix

    def merge(self, ctx, merged, incoming, task):
        layout = ctx.layout
        tau = task_vector(incoming, ctx.theta0)
        self.tau_sum = tau if self.tau_sum is None else {k: s + tau[k] for k, s in self.tau_sum.items()}
        out = {}
        for k, s in self.tau_sum.items():
            if not is_matrix(layout, k, s):
                out[k] = s / ctx.step
                continue
            for j, t in enumerate(matrices(layout, k, tau[k])):
                t = t.double()
                G = t.T @ t / (t**2).sum()
                if j == len(self.A.setdefault(k, [])):
                    self.A[k].append(G)
                    self.B.setdefault(k, []).append(t @ G)
                else:
                    self.A[k][j] = self.A[k][j] + G
                    self.B[k][j] = self.B[k][j] + t @ G
            sums = matrices(layout, k, s)
            out[k] = torch.cat([self.optimise(S, self.A[k][j], self.B[k][j]) for j, S in enumerate(sums)], dim=0)
        return apply(ctx.theta0, out)

    def optimise(self, S: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
        """Adam on L from τ = S, the gradient 2(τA − B) given in closed form."""
        p = torch.nn.Parameter(S.detach().clone())
        opt = torch.optim.Adam([p], lr=self.lr, weight_decay=0)
        A, B = A.to(S.dtype), B.to(S.dtype)
        for _ in range(self.iter_num):
            p.grad = 2 * (p.detach() @ A - B)
            opt.step()
        return p.detach()
