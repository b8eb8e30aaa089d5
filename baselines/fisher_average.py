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
* ``floor="absolute"`` (the reference's): ε is added to F_i as is, so after the 1/‖F_i‖
  weight a very confident expert (tiny ‖F_i‖) carries a floor of ε/‖F_i‖ on every entry,
  which can outweigh every other expert where their Fisher is small: the merge then copies
  that expert there (the diagnostics record on how many entries this happens).
  ``floor="relative"`` scales the floor to each model's Fisher, ε_i = ε ‖F_i‖, so every
  model's floor weighs ε after normalisation (not in the paper or FusionBench: an option to
  show what the absolute floor costs);
* 256 samples (``num_fisher_examples``) from the current task's train split, batches of 32
  for ``model_batch``.
"""

from typing import Literal

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
        floor: Literal["absolute", "relative"] = "absolute",
    ):
        self.n_samples, self.eps, self.fisher, self.normalize, self.batch_size = (
            n_samples,
            eps,
            fisher,
            normalize,
            batch_size,
        )
        self.floor = floor
        self.fisher_sum = None
        self.weighted_sum = None

    def merge(self, ctx, merged, incoming, task):
        F = diagonal_fisher(ctx, incoming, self.n_samples, kind=self.fisher, batch_size=self.batch_size)
        f_norm = norm(F)
        c = 1.0 / (f_norm + self.eps) if self.normalize else 1.0
        eps = self.eps * f_norm if self.floor == "relative" else self.eps  # ε_i
        self._record(ctx, F, f_norm, c, eps)
        F = {k: c * (f + eps) for k, f in F.items()}
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

    def _record(self, ctx, F, f_norm, c, eps):
        """‖F_t‖, and on how many entries the ε floor decides: F_t < ε_t there, and the
        floor's weight c·ε_t outweighs every earlier expert's weight together (the ε floor of
        a confident expert, times a huge 1/‖F_t‖, taking over the average)."""
        n = floor = takes_over = 0
        for k, f in F.items():
            low = f < eps
            n += f.numel()
            floor += int(low.sum())
            if self.fisher_sum is not None and k in self.fisher_sum:
                takes_over += int((low & (c * (f + eps) > self.fisher_sum[k])).sum())
        ctx.record("fisher_norm", f_norm)
        ctx.record("floor_fraction", floor / max(1, n))
        ctx.record("floor_takes_over_fraction", takes_over / max(1, n))
