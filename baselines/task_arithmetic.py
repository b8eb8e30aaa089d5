"""Continual Task Arithmetic (Ilharco et al. 2023, arXiv:2212.04089; continual form as in FusionBench).

    M_0 = θ_0,   M_t = M_{t−1} + λ·(θ_t − θ_0)

so M_T = θ_0 + λ·Σ_t τ_t whatever the order.
"""

from cmbench.methods import NonNegative, merge_function
from cmbench.tensors import shift


@merge_function("task_arithmetic", paper="Ilharco et al. 2023, arXiv:2212.04089")
def task_arithmetic(ctx, merged, incoming, *, lam: NonNegative = 0.3):
    return shift(merged, incoming, ctx.theta0, lam)  # M_{t−1} + λ·(θ_t − θ_0), two passes
