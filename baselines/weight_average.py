"""Continual weight averaging (model soups, Wortsman et al. 2022, arXiv:2203.05482).

    M_1 = θ_1,   M_t = ((t − 1)·M_{t−1} + θ_t) / t

so M_t is the uniform average of the experts seen so far, kept as one running model. In
train-then-merge suites θ_t is the model trained on task t from M_{t−1} (P&M's "model
averaging" baseline).
"""

import torch

from cmbench.methods import merge_function
from cmbench.tensors import combine


@merge_function(
    "weight_average", paper="Wortsman et al. 2022, arXiv:2203.05482", settings=("merge_stream", "train_then_merge")
)
def weight_average(ctx, merged, incoming):
    t = ctx.step
    # ((t − 1)·M + θ)/t = M + (θ − M)/t: one fused pass (lerp)
    return combine([merged, incoming], lambda m, x: torch.lerp(m, x, 1.0 / t), like=incoming)
