"""MagMax (Marczak et al. 2024, "MagMax: Leveraging Model Merging for Seamless Continual
Learning", arXiv:2407.06322).

Per parameter entry keep the task-vector value of largest magnitude over the tasks seen
(ties go to the later task), then add it to θ0 with a scale λ:

    τ_max,t = τ_t where |τ_t| ≥ |τ_max,t−1| else τ_max,t−1,     M_t = θ0 + λ·τ_max,t

Merge stream: τ_t are the independent experts' task vectors; only τ_max is kept.
Train then merge (the paper's sequential fine-tuning + merging): task t is trained from the
method's own chain θ_{t−1} (not from the deployed merge), so the chain is kept too (counted).

Ties go to the later task, as in the public code (danielm1405/magmax), which keeps the new
entry where its magnitude is ``>=`` the kept one.
"""

import torch

from cmbench import kernels
from cmbench.methods import Method, NonNegative, register
from cmbench.tensors import apply, task_vector


@register
class MagMax(Method):
    name = "magmax"
    paper = "Marczak et al. 2024, arXiv:2407.06322"
    settings = ("merge_stream", "train_then_merge")
    storage_kinds = {"chain": "models", "tau_max": "vectors"}

    def __init__(self, *, lam: NonNegative = 0.5):
        self.lam = lam
        self.tau_max = None
        self.chain = None  # train then merge: the sequentially fine-tuned model θ_{t−1}

    def train_start(self, ctx, deployed):
        return ctx.theta0 if self.chain is None else self.chain

    def merge(self, ctx, merged, incoming, task):
        if ctx.setting == "train_then_merge":
            self.chain = incoming
        if self.tau_max is None:
            self.tau_max = task_vector(incoming, ctx.theta0)
        elif kernels.use_kernels(self.tau_max, incoming, ctx.theta0):  # large models: one pass
            kernels.magmax_update(incoming, ctx.theta0, self.tau_max)
        else:  # τ_max ← the larger-magnitude entry (ties to the later task), updated in place
            for k, v in task_vector(incoming, ctx.theta0).items():
                m = self.tau_max[k]
                torch.where(v.abs() >= m.abs(), v, m, out=m)
        return apply(ctx.theta0, self.tau_max, self.lam)
