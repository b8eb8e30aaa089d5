"""Train then merge: at step t the harness trains on task t from what the method chooses
(default M_{t−1}), with the method's hooks, then the method merges the trained model into
the deployed M_t. One classifier over all classes; task t's rows are trained during task t
(logits masked to the trained classes) and copied, not merged. Cells of tasks not learned
yet are NaN. Class-incremental evaluation predicts over every class seen so far;
task-incremental over the task's own classes.
"""

from __future__ import annotations

import time
from typing import Any, cast

import torch

from .. import CmbenchError, metrics
from ..lora import add_lora, merge_lora
from ..models import check_logits, create_backbone, device_for, feature_dim, features, layout_of
from ..suite import Augment, LoRA, Suite, Training
from ..tensors import StateDict
from ..train import fit
from .loop import Setting
from .recording import check_finite, evaluation_record


class ClassSpace:
    """One classifier over every class of the stream; rows owned by the task introducing them."""

    def __init__(self, tasks: dict, order: list[str]):
        ids = sorted({c for n in order for c in tasks[n].class_ids})
        self.row = {c: i for i, c in enumerate(ids)}
        self.n = len(ids)
        self.rows_of = {n: torch.tensor([self.row[c] for c in tasks[n].class_ids]) for n in order}

    def targets(self, td, y: torch.Tensor) -> torch.Tensor:
        return self.rows_of[td.name][y]

    def rows(self, names: list[str]) -> torch.Tensor:
        return torch.cat([self.rows_of[n] for n in names]) if names else torch.tensor([], dtype=torch.long)


def _masked(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    mask = torch.full((logits.shape[-1],), float("-inf"), device=logits.device)
    mask[rows] = 0.0
    return logits + mask


class Learner:
    """Backbone + one linear classifier; trains a task with the method's hooks."""

    def __init__(self, suite: Suite, tasks: dict, space: ClassSpace, recipe: Training):
        self.suite, self.tasks, self.space, self.recipe = suite, tasks, space, recipe
        self.device = device_for(suite)
        self.model = create_backbone(suite.backbone).to(self.device)  # evaluation and the methods' network
        self.bs, self.precision = suite.evaluation.batch_size, suite.evaluation.precision
        self.eval_seconds, self.eval_images = 0.0, 0
        self.train_optimizer_steps: list[int] = []

    def features(self, state: StateDict, x: torch.Tensor) -> torch.Tensor:
        self.model.load_state_dict(state)
        return features(self.model, x, self.bs, self.precision)

    def evaluate(
        self, state: StateDict, head: dict, order: list[str], learned: list[str], incremental: str
    ) -> tuple[list[float], float, list[float]]:
        """R row (NaN for unlearned tasks), the sample-weighted accuracy over learned tasks,
        and the within-task row (each task over its own classes only, from the same logits:
        with class-incremental heads, the gap to R is what head calibration costs)."""
        t0 = time.perf_counter()
        correct: float  # a sum of .item()s
        row, within, correct, total = [], [], 0, 0
        seen_rows = self.space.rows(learned)
        for name in order:
            if name not in learned:
                row.append(float("nan"))
                within.append(float("nan"))
                continue
            td = self.tasks[name]
            logits = self.features(state, td.test.x) @ head["weight"].T + head["bias"]
            check_logits(logits)
            target = self.space.targets(td, td.test.y)
            own = (_masked(logits, self.space.rows_of[name]).argmax(-1) == target).sum().item()
            rows = seen_rows if incremental == "class_incremental" else self.space.rows_of[name]
            hit = (_masked(logits, rows).argmax(-1) == target).sum().item()
            row.append(hit / len(td.test.y))
            within.append(own / len(td.test.y))
            correct, total = correct + hit, total + len(td.test.y)
        self.eval_seconds += time.perf_counter() - t0
        self.eval_images += total
        return row, (correct / total if total else float("nan")), within

    def train(self, ctx, method, start: StateDict, head: dict, names: list[str], seed: int):
        """Train ``start`` (and the rows of ``names``' classes) on those tasks' train data."""
        suite = self.suite
        recipe = self.recipe
        model = create_backbone(suite.backbone)
        model.load_state_dict(start)
        model.train()
        lin = torch.nn.Linear(feature_dim(suite.backbone), self.space.n)
        with torch.no_grad():
            lin.weight.copy_(head["weight"])
            lin.bias.copy_(head["bias"])
        job_lora = LoRA.model_validate_json(ctx.job_lora) if ctx.job_lora else None
        lora = method.lora(ctx, job_lora)
        if lora is not None:
            for p in model.parameters():
                p.requires_grad_(False)
            adapters = add_lora(model, lora.rank, lora.alpha, list(lora.targets), seed)
            body = [p for a in adapters for p in a.parameters()]
        else:
            adapters, body = [], list(model.parameters())
        model.to(self.device)
        lin.to(self.device)
        ctx.adapters = adapters  # the LoRA adapters of this task (empty: full-parameter)
        ctx.train_start_state = start
        ctx.trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        ctx.train_model = model  # lora.current_weights(model): its weights now, LoRA folded in
        rows = self.space.rows(names)
        xs, ys, aspect = self._train_images(names)
        # as many as `fit` takes (`steps` overrides epochs; no committed suite sets it for training)
        ctx.train_total_steps = recipe.steps or recipe.epochs * -(-len(xs) // recipe.batch_size)

        def loss_fn(xb, yb):
            return torch.nn.functional.cross_entropy(_masked(lin(model(xb)), rows), yb)

        loss_fn = method.wrap_loss(ctx, loss_fn, model)
        groups: list[dict] = [{"params": body}, {"params": list(lin.parameters()), "lr": recipe.head_lr or recipe.lr}]
        fit(
            groups,
            loss_fn,
            xs,
            ys,
            recipe,
            seed,
            on_step=lambda s, loss: method.on_train_step(ctx, s, loss),
            what=f"training on {'+'.join(names)}",
            after_backward=lambda: method.after_backward(ctx),
            aspect=aspect,
            out_size=suite.backbone.image_size,
        )
        self.train_optimizer_steps.append(ctx.train_total_steps)
        merge_lora(model)
        trained_head = {k: v.detach().clone() for k, v in head.items()}
        trained_head["weight"][rows] = lin.weight.detach()[rows].cpu()
        trained_head["bias"][rows] = lin.bias.detach()[rows].cpu()
        return {k: v.detach().clone() for k, v in model.state_dict().items()}, trained_head  # on the device

    def _train_images(self, names: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Images (uint8), targets (rows of the classifier) and aspect ratios training draws
        from: the train splits, or, when the recipe augments, the whole images
        (``TaskData.train_view``) that random resized crops are taken from."""
        aug = self.recipe.augment
        whole = aug is not None and any(self.tasks[n].train_view is not None for n in names)
        splits = [
            # whole: aug is not None
            self.tasks[n].train_view(cast(Augment, aug).view_size)
            if whole and self.tasks[n].train_view
            else self.tasks[n].train
            for n in names
        ]
        if whole and (len({s.x.shape[-1] for s in splits}) > 1 or any(s.aspect is None for s in splits)):
            raise CmbenchError(
                f"training on {'+'.join(names)}: some tasks have whole-image views and some "
                "do not; random resized crops need the same kind for every task"
            )
        ys = torch.cat([self.space.targets(self.tasks[n], s.y) for n, s in zip(names, splits)])
        return torch.cat([s.x for s in splits]), ys, (torch.cat([s.aspect for s in splits]) if whole else None)

    def start_grad_norm(self, state: StateDict, head: dict, name: str, n: int = 256) -> float:
        """‖∇θ L‖ at the model training starts from, on task ``name``'s first n train samples:
        small values mean the new task starts where gradients vanish. The mean loss's gradient
        is accumulated over batches of the recipe's size (256 ViT-B/16 images at once hold
        ~30 GB of activations)."""
        model = create_backbone(self.suite.backbone)
        model.load_state_dict(state)
        model.to(self.device).train()
        td = self.tasks[name]
        params = [p for p in model.parameters()]
        w, b = head["weight"].to(self.device), head["bias"].to(self.device)
        total = min(n, len(td.train))
        grads: list[torch.Tensor] | None = None
        for i in range(0, total, self.recipe.batch_size):
            j = min(total, i + self.recipe.batch_size)
            x = td.train.x[i:j].to(self.device).float().div(127.5).sub(1.0)
            loss = (
                torch.nn.functional.cross_entropy(
                    _masked(model(x) @ w.T + b, self.space.rows_of[name]),
                    self.space.targets(td, td.train.y[i:j]).to(self.device),
                    reduction="sum",
                )
                / total
            )
            g = torch.autograd.grad(loss, params)
            grads = list(g) if grads is None else [a + c for a, c in zip(grads, g)]
        assert grads is not None  # a task has training data
        return float(torch.sqrt(cast(torch.Tensor, sum((g.double() ** 2).sum() for g in grads))))


class TrainThenMerge(Setting):
    model_key = "deployed"

    def __init__(self, *args) -> None:
        super().__init__(*args)
        suite, job, ctx = self.suite, self.job, self.ctx
        self.space = ClassSpace(self.tasks, self.order)
        self.learner = Learner(suite, self.tasks, self.space, suite.training_of(job))
        gen = torch.Generator().manual_seed(job.seed)
        self.head = {
            "weight": torch.randn(self.space.n, feature_dim(suite.backbone), generator=gen) * 0.02,
            "bias": torch.zeros(self.space.n),
        }
        self.ctx_head = self.head  # the methods' network's head: this step's trained rows, once trained
        self.incremental = suite.heads.kind
        ctx.job_lora = job.lora
        ctx.layout = layout_of(self.learner.model)
        ctx.network = self.network
        self.acc_all: list[float] = []
        self.R_within: list[list[float]] = []
        self.merge_times: list[float] = []
        self.train_times: list[float] = []
        self.grad_norms: list[float] = []
        self.own: list[float] = []

    def network(self, state, classes: str = "task", task: str | None = None):
        """The backbone loaded with ``state`` and a head over ``task``'s classes (default:
        the current task; ``classes="seen"``: every class seen so far, in seen-task order)."""
        ctx, space = self.ctx, self.space
        self.learner.model.load_state_dict(state)
        rows = space.rows_of[task or ctx.task] if classes == "task" else space.rows(ctx.seen_tasks)
        w, b = self.ctx_head["weight"][rows].to(ctx.device), self.ctx_head["bias"][rows].to(ctx.device)
        return self.learner.model, lambda f: f @ w.T + b

    def begin(self, theta0: StateDict) -> None:
        row0, all0, within0 = self.learner.evaluate(theta0, self.head, self.order, [], self.incremental)
        self.R, self.acc_all, self.R_within = [row0], [all0], [within0]

    def restore(self, saved: dict) -> None:
        keys = ("R", "acc_all", "R_within", "merge_times", "train_times", "grad_norms", "own")
        self.R, self.acc_all, self.R_within, self.merge_times, self.train_times, self.grad_norms, self.own = (
            saved[k] for k in keys
        )
        self.head = self.ctx_head = saved["head"]
        learner = self.learner
        learner.train_optimizer_steps, learner.eval_seconds, learner.eval_images = saved["learner"]

    def step(self, t: int, task: str, model: StateDict) -> StateDict:
        ctx, method, job, learner, order = self.ctx, self.method, self.job, self.learner, self.order
        start = method.train_start(ctx, model)
        names = method.train_tasks(ctx)
        if not set(names) <= set(order[:t]):
            raise CmbenchError(f"{job.method}: train_tasks returned {names}, not all seen by step {t}")
        self.grad_norms.append(learner.start_grad_norm(start, self.head, task))
        t0 = time.perf_counter()
        trained, trained_head = learner.train(ctx, method, start, self.head, names, seed=job.seed * 1000 + t)
        self.train_times.append(time.perf_counter() - t0)
        check_finite(trained, job, t, "trained")
        self.ctx_head = trained_head
        self.own.append(learner.evaluate(trained, trained_head, [task], [task], "task_incremental")[0][0])
        t0 = time.perf_counter()
        deployed = method.merge(ctx, model, trained, task)
        self.merge_times.append(time.perf_counter() - t0)
        check_finite(deployed, job, t)
        self.head = trained_head  # rows of this step's classes come from training; others unchanged
        row, a, within = learner.evaluate(deployed, self.head, order, order[:t], self.incremental)
        self.R.append(row)
        self.acc_all.append(a)
        self.R_within.append(within)
        return deployed

    def state(self) -> dict[str, Any]:
        learner = self.learner
        return {
            "head": self.head,
            "acc_all": self.acc_all,
            "R_within": self.R_within,
            "merge_times": self.merge_times,
            "train_times": self.train_times,
            "grad_norms": self.grad_norms,
            "own": self.own,
            "learner": [learner.train_optimizer_steps, learner.eval_seconds, learner.eval_images],
        }

    def evaluate_finished(self, finished: StateDict) -> None:
        order = self.order
        self.R[-1], self.acc_all[-1], self.R_within[-1] = self.learner.evaluate(
            finished, self.head, order, order, self.incremental
        )

    def record(self) -> dict[str, Any]:
        learner, incremental = self.learner, self.incremental
        return {
            "E": None,
            "heads": incremental,
            "evaluation": evaluation_record(self.suite, learner.tasks, self.order),
            "ACC_all_steps": self.acc_all,
            "R_within": self.R_within,
            "trained_own_task_acc": self.own,
            "start_grad_norm": self.grad_norms,
            "metrics": metrics.all_metrics(
                self.R, acc_all=self.acc_all if incremental == "class_incremental" else None
            ),
            "timings": {
                "train_steps_s": self.train_times,
                "train_total_s": sum(self.train_times),
                "train_optimizer_steps": learner.train_optimizer_steps,
                "train_batch_size": learner.recipe.batch_size,
                "merge_steps_s": self.merge_times,
                "merge_total_s": sum(self.merge_times),
                "eval_s": learner.eval_seconds,
                "eval_images": learner.eval_images,
            },
        }
