"""The merge stream: θ0 and T experts, each fine-tuned independently from θ0 (or, for a row
with sequential experts, from the previous task's expert), arrive one at a time in the job's
order; after every step (and once before any, row 0 = θ0) the merged
model is evaluated on *all* T tasks,

    R[t, j] = accuracy of M_t on task j,   t = 0..T,  j in arrival order,

plus each expert's own accuracy E[j].
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch

from .. import metrics
from ..artefacts import expert_key
from ..models import layout_of, to_device
from ..tensors import StateDict
from .evaluation import Evaluator
from .loop import Setting
from .recording import check_finite, evaluation_record, setup_check


class MergeStream(Setting):
    model_key = "merged"

    def __init__(self, *args) -> None:
        super().__init__(*args)
        ctx = self.ctx
        self.heads = self.art.heads()  # on the CPU, where evaluation's features arrive
        self.ev = Evaluator(self.suite, self.tasks, self.heads, self.order, ctx.theta0)
        ctx.layout = layout_of(self.ev.model)
        # the methods' network is the evaluation model, on the job's device, with device heads
        self.net_heads = (
            self.heads
            if ctx.device.type == "cpu"
            else {n: copy.deepcopy(h).to(ctx.device) for n, h in self.heads.items()}
        )
        ctx.network = self.network
        self.E: list[float] = []
        self.expert_hashes: list[str] = []
        self.step_times: list[float] = []

    def network(self, state, classes: str = "task", task: str | None = None):
        """The backbone loaded with ``state`` and the head of ``task`` (default: the current
        task); ``classes="seen"``: every seen task's head, logits concatenated."""
        self.ev.model.load_state_dict(state)
        if classes == "task":
            return self.ev.model, self.net_heads[task or self.ctx.task]
        return self.ev.model, lambda f: torch.cat([self.net_heads[n](f) for n in self.ctx.seen_tasks], -1)

    def begin(self, theta0: StateDict) -> None:
        self.R = [self.ev.theta0_row(self.art)]

    def resumable(self, saved: dict | None) -> dict | None:
        """A saved state is used only if the experts it merged are still the stored ones."""
        if saved is None:
            return None
        art = self.art
        now = [
            art.store.content_hash("experts", expert_key(art.suite, art.seed, t, self.job.expert_chain(i)))
            for i, t in enumerate(self.order[: saved["step"]], start=1)
        ]
        return saved if now == saved["expert_hashes"] else None

    def restore(self, saved: dict) -> None:
        self.R, self.E, self.expert_hashes, self.step_times = (
            saved[k] for k in ("R", "E", "expert_hashes", "step_times")
        )
        self.ev.seconds, self.ev.images = saved["eval"]

    def step(self, t: int, task: str, model: StateDict) -> StateDict:
        incoming, meta = self.art.expert(task, self.job.expert_chain(t))
        incoming = to_device(incoming, self.ctx.device)
        self.E.append(self.ev.expert_accuracy(self.art, task, incoming, meta, self.job.expert_chain(t)))
        self.expert_hashes.append(meta["content_hash"])
        t0 = time.perf_counter()
        merged = self.method.merge(self.ctx, model, incoming, task)
        self.step_times.append(time.perf_counter() - t0)
        check_finite(merged, self.job, t)
        self.R.append(self.ev.row(merged, self.order[:t]))
        return merged

    def state(self) -> dict[str, Any]:
        return {
            "E": self.E,
            "expert_hashes": self.expert_hashes,
            "step_times": self.step_times,
            "eval": [self.ev.seconds, self.ev.images],
        }

    def evaluate_finished(self, finished: StateDict) -> None:
        self.R[-1] = self.ev.row(finished, self.order)

    def record(self) -> dict[str, Any]:
        order, R, E, ev = self.order, self.R, self.E, self.ev
        return {
            "E": E,
            "expert_content_hashes": self.expert_hashes,
            "evaluation": evaluation_record(self.suite, ev.tasks, order),
            **setup_check(self.suite, order, R[0], E, {n: len(ev.tasks[n].test) for n in order}),
            "metrics": metrics.all_metrics(R, E),
            "timings": {
                "merge_steps_s": self.step_times,
                "merge_total_s": sum(self.step_times),
                "eval_s": ev.seconds,
                "eval_images": ev.images,
            },
        }
