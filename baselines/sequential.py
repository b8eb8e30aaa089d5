"""Sequential lower bound. Merge stream: keep the newest expert, M_t = θ_t (no merging).

In train-then-merge suites the same rule deploys the model just trained, i.e. plain
sequential fine-tuning from M_{t−1}: the forgetting lower bound.
"""

from cmbench.methods import merge_function
from cmbench.tensors import clone


@merge_function("sequential", paper="lower bound (no merging)", settings=("merge_stream", "train_then_merge"))
def sequential(ctx, merged, incoming):
    return clone(incoming)
