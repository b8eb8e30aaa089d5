"""Text-to-text tasks: the eight GLUE tasks of the Flan-T5 merge stream, as FusionBench's
``flan_t5_glue_text_generation`` task pool builds them.

Each example becomes (prompt, target text) through the reference's templates and label words
(``models.seq2seq.glue_pair``). The data are GLUE's hub copy (``nyu-mll/glue``, what
``load_dataset("glue", name)`` resolves to), read from the ``datasets`` cache as the CLIP
tasks' copies are (offline unless downloads are allowed; the arrow files pinned). Test is
the split the reference evaluates: GLUE's validation split (MNLI's ``validation_matched``),
GLUE's own test labels being hidden. Train and validation: FusionBench's hold-out rule on
GLUE's train split (``torch.utils.data.random_split``, 10 %, generator seeded 0), the CLIP
tasks' rule; the published experts were fine-tuned on GLUE's train split, so they have seen
the validation part (as the CLIP hub experts have).
"""

from __future__ import annotations

from functools import partial

import torch

from . import TaskData, TextSplit, dataset, hub_split

# Bump when a change alters any prompt, target or split these builders produce.
TEXT_DATA_VERSION = 1

GLUE_REPO = "nyu-mll/glue"
# (train, evaluated) examples of each task's hub copy: the evaluated split is validation
# (MNLI: validation_matched). Cost estimates and rehearsals use them.
GLUE_SIZES = {
    "cola": (8551, 1043),
    "mnli": (392702, 9815),
    "mrpc": (3668, 408),
    "qnli": (104743, 5463),
    "qqp": (363846, 40430),
    "rte": (2490, 277),
    "sst2": (67349, 872),
    "stsb": (5749, 1500),
}
HOLDOUT = (0.1, 0)  # FusionBench's train/validation rule: (fraction, generator seed)


def _pairs(task: str, split: str) -> tuple[list[str], list[str]]:
    from ..models.seq2seq import glue_pair

    ds = hub_split(f"glue_{task}", {"path": GLUE_REPO, "config": task, "split": split}, extra="text")
    prompts, targets = [], []
    for row in ds:
        p, t = glue_pair(task, row)
        prompts.append(p)
        targets.append(t)
    return prompts, targets


class LazyText(TextSplit):
    """A text split built on first use: a merge stream of data-free methods reads test only,
    and MNLI's and QQP's train splits hold hundreds of thousands of examples."""

    def __init__(self, task: str, load):  # noqa: D107 - not the dataclass's fields
        from ..models.seq2seq import REGRESSION

        self.task, self._load = task, load
        self.metric = "spearman" if task in REGRESSION else "exact_match"
        self._got: tuple[list[str], list[str]] | None = None

    def _get(self) -> tuple[list[str], list[str]]:
        if self._got is None:
            self._got = self._load()
        return self._got

    @property
    def prompts(self) -> list[str]:  # type: ignore[override]
        return self._get()[0]

    @property
    def targets(self) -> list[str]:  # type: ignore[override]
        return self._get()[1]


def _holdout(task: str, part: int) -> tuple[list[str], list[str]]:
    """Part 0 (train) or 1 (validation) of GLUE's train split under the hold-out rule."""
    prompts, targets = _pairs(task, "train")
    n = len(prompts)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(HOLDOUT[1])).tolist()
    k = n - int(n * HOLDOUT[0])
    pick = perm[:k] if part == 0 else perm[k:]
    return [prompts[i] for i in pick], [targets[i] for i in pick]


def _glue_builder(task: str):
    from ..models.seq2seq import GLUE_EVAL_SPLIT, GLUE_TEMPLATES

    def build(name: str, data_seed: int, img_size: int) -> TaskData:
        words = GLUE_TEMPLATES[task]["target_text"]
        return TaskData(
            name,
            list(words.values()) if isinstance(words, dict) else [],  # STS-B: a number, no classes
            train=LazyText(task, partial(_holdout, task, 0)),
            val=LazyText(task, partial(_holdout, task, 1)),
            test=LazyText(task, partial(_pairs, task, GLUE_EVAL_SPLIT[task])),
        )

    build.__doc__ = f"GLUE {task} as text to text (FusionBench's prompts; splits independent of the data seed)."
    return build


for _task in GLUE_SIZES:
    dataset(f"glue_{_task}", TEXT_DATA_VERSION)(_glue_builder(_task))
