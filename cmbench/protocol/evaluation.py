"""Evaluation of a merge stream's models: every task's test split with its frozen head (or,
a text task, by the answers the model generates)."""

from __future__ import annotations

import sys
import time

import torch

from .. import published
from ..artefacts import SuiteArtefacts, artefact_key, data_versions, expert_key, heads_key
from ..keys import EVALUATION_VERSION
from ..models import create_backbone, device_for, models_version, numerics, split_score
from ..suite import Suite
from ..tensors import StateDict


class Evaluator:
    """Evaluates a backbone state dict on every task's test split with its frozen head.

    θ0's row is the same for every job of a suite and seed: it is computed once and cached
    (keyed by θ0, the heads and the evaluation settings). With ``evaluation.seen_only`` a
    merged model is evaluated on the tasks seen so far only (other cells NaN).
    """

    def __init__(self, suite: Suite, tasks: dict, heads, order: list[str], theta0: StateDict):
        self.cfg = suite.backbone
        self.model = create_backbone(suite.backbone, theta0).to(device_for(suite))
        self.tasks = tasks
        self.heads, self.order, self.bs = heads, order, suite.evaluation.batch_size
        self.precision = suite.evaluation.precision
        self.seen_only = suite.evaluation.seen_only
        self.seconds, self.images = 0.0, 0

    def accuracies(self, state: StateDict, names: list[str]) -> dict[str, float]:
        t0 = time.perf_counter()
        self.model.load_state_dict(state)
        out = {
            n: split_score(self.cfg, self.model, self.heads.get(n), self.tasks[n].test, self.bs, self.precision)
            for n in names
        }
        self.seconds += time.perf_counter() - t0  # evaluation's cost, reported beside the merge's
        self.images += sum(len(self.tasks[n].test) for n in names)
        return out

    def row(self, state: StateDict, seen: list[str] | None = None) -> list[float]:
        names = [n for n in self.order if not self.seen_only or seen is None or n in seen]
        acc = self.accuracies(state, names)
        return [acc.get(n, float("nan")) for n in self.order]

    def expert_accuracy(
        self, art: SuiteArtefacts, task: str, state: StateDict, meta: dict, after: tuple[str, ...] | None = None
    ) -> float:
        """E of ``task``'s expert (``after``: its sequential chain, as ``SuiteArtefacts.expert``)
        in the evaluation precision: the fp32 value measured when it was built, or measured here
        once per precision (cached like θ0's row)."""
        if self.precision == "fp32":
            return meta["test_accuracy"]
        suite = art.suite
        key = artefact_key(
            "eval-expert",
            {"evaluation": EVALUATION_VERSION},
            numerics(suite),
            expert_key(suite, art.seed, task, after),
            suite.evaluation.batch_size,
        )
        t, _ = art.store.get_or_make(
            "evals",
            key,
            lambda: (
                {"acc": torch.tensor([self.accuracies(state, [task])[task]], dtype=torch.float64)},
                {"task": task},
            ),
        )
        return float(t["acc"][0])

    def theta0_row(self, art: SuiteArtefacts) -> list[float]:
        """θ0's test accuracies depend on θ0, the heads, the test splits and evaluation."""
        names = sorted(self.order)
        suite = art.suite
        key = artefact_key(
            "eval-theta0",
            {
                "evaluation": EVALUATION_VERSION,
                "models": models_version(suite.backbone),
                "data": data_versions(suite.tasks),
            },
            numerics(suite),
            heads_key(suite, art.seed),
            [t.model_dump() for t in suite.tasks],
            suite.evaluation.max_test_per_task,
            suite.evaluation.batch_size,
            *([suite.rehearsal.model_dump(exclude={"caps"})] if suite.rehearsal else []),
        )

        def make():
            acc = self.accuracies(art.theta0(), names)  # once: not once per task (TALL20 evaluated θ0 20 times)
            if not suite.rehearsal:  # against the published zero-shot accuracies, as soon as known
                n_test = {n: len(self.tasks[n].test) for n in names}
                for line in published.warnings(published.setup_check(suite, "theta0", acc, n_test)):
                    print(line, file=sys.stderr, flush=True)
            return {"acc": torch.tensor([acc[n] for n in names], dtype=torch.float64)}, {"tasks": names}

        t, _ = art.store.get_or_make("evals", key, make)
        by_name = dict(zip(names, t["acc"].tolist()))
        return [by_name[n] for n in self.order]
