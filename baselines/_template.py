"""TEMPLATE — copy to baselines/<your_method>.py (files starting with "_" are not loaded).

<Method name> (<Authors> <year>, "<title>", arXiv:XXXX.XXXXX).

Write the update as the paper does, e.g.

    M_t = M_{t−1} + λ·(θ_t − θ_0)

and say where the code departs from the paper, and why.
"""

import torch  # noqa: F401 - most methods compute with it

from cmbench.methods import Method, NonNegative, merge_function, register
from cmbench.tensors import apply, task_vector


# 1. A stateless method: one typed function. Keyword-only parameters are the
#    hyperparameters (validated from their annotations when a suite names them); a range is
#    declared in the annotation (NonNegative, Positive, Fraction, Probability, PositiveInt, ...
#    from cmbench.methods), and a suite value outside it is refused with its field named.
@merge_function("my_merge", paper="<Authors> <year>, arXiv:XXXX.XXXXX")
def my_merge(ctx, merged, incoming, *, lam: NonNegative = 0.3):
    # ctx.theta0, ctx.step (1-based), ctx.num_tasks, ctx.task; never modify inputs in place
    return apply(merged, task_vector(incoming, ctx.theta0), lam)


# 2. A method with state across steps: a class. Attributes it keeps between steps are
#    measured as storage. Declare the data it needs: "none", "current_task", "calibration"
#    ("test_inputs": unlabeled test inputs, test-time adaptation; suites must opt in).
@register
class MyStatefulMerge(Method):
    name = "my_stateful_merge"
    paper = "<Authors> <year>, arXiv:XXXX.XXXXX"
    settings = ("merge_stream",)  # and/or "train_then_merge"
    data_access = "none"

    def __init__(self, *, lam: NonNegative = 0.5):
        self.lam = lam
        self.running_sum = None  # kept between steps: counted as storage

    def merge(self, ctx, merged, incoming, task):
        tau = task_vector(incoming, ctx.theta0)
        if self.running_sum is None:
            self.running_sum = tau
        else:
            self.running_sum = {k: s + tau[k] for k, s in self.running_sum.items()}
        return apply(ctx.theta0, self.running_sum, self.lam / ctx.step)

    # optional: finish(ctx, merged) once after the stream; train-then-merge hooks:
    # train_start(ctx, deployed), train_tasks(ctx), lora(ctx, suite_lora),
    # wrap_loss(ctx, loss_fn, model), on_train_step(ctx, step, loss)
