"""Fisher-weighted averaging (Matena & Raffel 2022, "Merging Models with Fisher-Weighted
Averaging", arXiv:2111.09832), continual form with running sums.

With F_i the diagonal Fisher of expert θ_i on task i's train data and c_i its weight,

    M_t = Σ_{i≤t} c_i (F_i + ε) ⊙ θ_i  /  Σ_{i≤t} c_i (F_i + ε),     c_i = 1 / (‖F_i‖ + ε)

kept as two running sums, so no old model is stored; this is exactly the one-shot merge of
every expert seen so far. Defaults follow FusionBench's ``fisher_merging`` for CLIP:

* ``fisher="model"``: the paper's Fisher, the expectation over the model's own predictive
  distribution per example; ``"model_batch"`` is FusionBench's batch-level form and
  ``"empirical"`` the true-label form (how the three differ: ``estimates.diagonal_fisher``);
* ``normalize=True``: each model's Fisher is divided by its L2 norm over all parameters
  (FusionBench's ``normalize_fisher_weight``; the common factor 1/Σ_j c_j cancels), so a
  task whose Fisher is large overall (many classes, a low loss) does not outweigh the rest;
* ε = 1e-6 (``minimal_fisher_weight``): entries no task is sensitive to are averaged;
* 256 samples (``num_fisher_examples``) from the current task's train split, batches of 32
  for ``model_batch``.
"""

from cmbench.estimates import FisherKind, diagonal_fisher
from cmbench.methods import Method, NonNegative, PositiveInt, register
from cmbench.tensors import norm


@register
class FisherAverage(Method):
    name = "fisher_average"
    paper = "Matena & Raffel 2022, arXiv:2111.09832"
    settings = ("merge_stream", "train_then_merge")
    data_access = "current_task"

    def __init__(
        self,
        *,
        n_samples: PositiveInt = 256,
        eps: NonNegative = 1e-6,
        fisher: FisherKind = "model",
        normalize: bool = True,
        batch_size: PositiveInt = 32,
    ):
        self.n_samples, self.eps, self.fisher, self.normalize, self.batch_size = (
            n_samples,
            eps,
            fisher,
            normalize,
            batch_size,
        )
        self.fisher_sum = None
        self.weighted_sum = None

    def merge(self, ctx, merged, incoming, task):
        F = diagonal_fisher(ctx, incoming, self.n_samples, kind=self.fisher, batch_size=self.batch_size)
        c = 1.0 / (norm(F) + self.eps) if self.normalize else 1.0
        F = {k: c * (f + self.eps) for k, f in F.items()}
        if self.fisher_sum is None:
            self.fisher_sum = F
            self.weighted_sum = {k: f * incoming[k] for k, f in F.items()}
        else:
            self.fisher_sum = {k: s + F[k] for k, s in self.fisher_sum.items()}
            self.weighted_sum = {k: s + F[k] * incoming[k] for k, s in self.weighted_sum.items()}
        return {
            k: self.weighted_sum[k] / self.fisher_sum[k] if k in self.fisher_sum else v.clone()
            for k, v in incoming.items()
        }
