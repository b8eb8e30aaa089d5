"""Fisher-weighted averaging (Matena & Raffel 2022, "Merging Models with Fisher-Weighted
Averaging", arXiv:2111.09832), continual form with running sums.

With F_i the diagonal empirical Fisher of model θ_i on task i's train data,

    M_t = Σ_{i≤t} (F_i + ε) ⊙ θ_i  /  Σ_{i≤t} (F_i + ε)

kept as two running sums, so no old model is stored. ε (the paper's Fisher floor) makes
entries no task is sensitive to a plain average. Uses the current task's data only.
"""

from cmbench.estimates import diagonal_fisher
from cmbench.methods import Method, register


@register
class FisherAverage(Method):
    name = "fisher_average"
    paper = "Matena & Raffel 2022, arXiv:2111.09832"
    settings = ("merge_stream", "train_then_merge")
    data_access = "current_task"

    def __init__(self, *, n_samples: int = 256, eps: float = 1e-6):
        self.n_samples, self.eps = n_samples, eps
        self.fisher_sum = None
        self.weighted_sum = None

    def merge(self, ctx, merged, incoming, task):
        F = diagonal_fisher(ctx, incoming, self.n_samples)
        F = {k: f + self.eps for k, f in F.items()}
        if self.fisher_sum is None:
            self.fisher_sum = F
            self.weighted_sum = {k: f * incoming[k] for k, f in F.items()}
        else:
            self.fisher_sum = {k: s + F[k] for k, s in self.fisher_sum.items()}
            self.weighted_sum = {k: s + F[k] * incoming[k] for k, s in self.weighted_sum.items()}
        return {k: self.weighted_sum[k] / self.fisher_sum[k] if k in self.fisher_sum else v.clone()
                for k, v in incoming.items()}
