"""Multitask joint training: the train-then-merge upper reference row (not a merge method).

At step t it retrains from θ0 on the union of every seen task's training data and deploys
the result. It reads all seen tasks' data (``all_seen``), which no continual method may.
"""

from cmbench.methods import Method, register
from cmbench.tensors import clone


@register
class Multitask(Method):
    name = "multitask"
    paper = "reference: joint training on all tasks seen so far"
    settings = ("train_then_merge",)
    data_access = "all_seen"

    def train_start(self, ctx, deployed):
        return ctx.theta0

    def train_tasks(self, ctx):
        return list(ctx.seen_tasks)

    def merge(self, ctx, merged, incoming, task):
        return clone(incoming)
