"""Consensus Task Arithmetic (Wang et al. 2024, "Localizing Task Information for Improved
Model Merging and Compression", arXiv:2405.07813; TALL masks as in its public code).

With the multi-task vector τ_MTL = Σ_i τ_i over the tasks seen so far, task i's TALL mask
keeps the entries where τ_i matters more than what the other tasks add:

    m_i = |τ_i| > λ_tall · |τ_MTL − τ_i|          (= |θ0 − θ_i| > λ_tall·|θ_MTL − θ_i|)

the consensus mask keeps entries active in at least k tasks, and

    M_t = θ0 + λ · (consensus ⊙ τ_MTL).

Continual form (cmbench's): the masks depend on every τ_i, so the method keeps every task
vector seen (storage grows linearly with t, and is counted); at step t < k the threshold is
min(k, t), so M_1 is Task Arithmetic with one task. λ_tall = 0.6 is the largest value of
the paper's validation grid (no validation data is used here).
"""

import torch

from cmbench.methods import Method, NonNegative, PositiveInt, register
from cmbench.tensors import apply, task_vector


@register
class ConsensusTA(Method):
    name = "consensus_ta"
    paper = "Wang et al. 2024, arXiv:2405.07813"

    def __init__(self, *, lam: NonNegative = 0.3, k: PositiveInt = 2, tall_lambda: NonNegative = 0.6):
        self.lam, self.k, self.tall_lambda = lam, k, tall_lambda
        self.task_vectors = []

    def merge(self, ctx, merged, incoming, task):
        self.task_vectors.append(task_vector(incoming, ctx.theta0))
        k_eff = min(self.k, len(self.task_vectors))
        out = {}
        for name in self.task_vectors[0]:
            taus = torch.stack([tv[name] for tv in self.task_vectors])
            mtl = taus.sum(0)
            votes = (taus.abs() > self.tall_lambda * (mtl - taus).abs()).sum(0)
            out[name] = mtl * (votes >= k_eff)
        return apply(ctx.theta0, out, self.lam)
