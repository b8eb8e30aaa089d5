"""The datasets a suite may name, with the keyword parameters of each one's builder, readable
without importing the modules that build them (torch, PIL, ``datasets``).

The suite schema (``cmbench.suite``) checks task entries against it; ``cmbench.data``
registers every builder against it and refuses one that is missing here or takes other
parameters, so the two cannot drift.
"""

from __future__ import annotations

import json
import random
from functools import lru_cache
from pathlib import Path

_GENERATED = ("n_train", "n_val", "n_test", "noise", "colour")  # every generated micro task's sizes, noise, colour


@lru_cache(maxsize=1)
def clip_tasks() -> dict[str, dict]:
    """The CLIP tasks (``data/clip_tasks.json``): FusionBench's names, hub copies, class names."""
    return json.loads((Path(__file__).parent / "data" / "clip_tasks.json").read_text())["tasks"]


# what a value of a parameter may be, by name (the same meaning in every dataset that takes it)
PARAM_RULES: dict[str, tuple[str, float, float]] = {  # name -> (kind, low, high), both inclusive
    "n_train": ("int", 1, 10**7),
    "n_val": ("int", 1, 10**7),
    "n_test": ("int", 1, 10**7),
    "n_classes": ("int", 1, 10**5),
    "n_tasks": ("int", 1, 10**4),
    "index": ("int", 0, 10**4),
    "first": ("int", 1, 10**5),
    "order_seed": ("int", 0, 2**31 - 1),
    "noise": ("float", 0.0, 1.0),
    "val_frac": ("float", 0.0, 0.9),
    "test_frac": ("float", 0.05, 0.9),
    "crop_pct": ("float", 0.05, 1.0),
    "holdout": ("float", 0.0, 0.5),
}


def colour_error(colour) -> str | None:
    """Why a micro task's ``colour`` is malformed (None: it is ``random`` or
    ``{fg: [r, g, b], bg: [r, g, b]}`` with values in [0, 1])."""
    if colour == "random":
        return None
    ok = isinstance(colour, dict) and set(colour) == {"fg", "bg"}
    ok = ok and all(
        isinstance(c, list)
        and len(c) == 3
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in c)
        for c in colour.values()
    )
    if ok:
        return None
    return f"params.colour: {colour!r} is neither 'random' nor {{fg: [r, g, b], bg: [r, g, b]}} in [0, 1]"


# the text-to-text tasks (cmbench/data/text.py), for text backbones only
TEXT_DATASETS = (
    *(f"glue_{t}" for t in ("cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2", "stsb")),
    "text_micro",  # generated (cmbench/data/text_micro.py): the micro text suite
)

DATASET_PARAMS: dict[str, tuple[str, ...]] = {
    # micro (cmbench/data/micro.py)
    "digits": ("val_frac", "test_frac", "noise", "classes", "colour"),
    "shapes": _GENERATED,
    "bars": _GENERATED,
    "dots": _GENERATED,
    "stripes": _GENERATED + ("freqs",),
    "quadrant": _GENERATED,
    "sizes": _GENERATED,
    "texture": _GENERATED,
    "glyphs": ("n_classes", "classes", "domain", "renditions", "n_train", "n_val", "n_test", "noise", "colour"),
    # image folders and hub copies (cmbench/data/vision.py): class-incremental splits, the CLIP tasks
    "class_split": (
        "source",
        "n_tasks",
        "index",
        "order_seed",
        "first",
        "crop_pct",
        "class_order",
        "holdout",
        "interpolation",
        "split",
    ),
    **{name: () for name in clip_tasks()},
    # GLUE as text to text (cmbench/data/text.py): the Flan-T5 merge stream
    **{name: () for name in TEXT_DATASETS if name != "text_micro"},
    "text_micro": ("task", "n_train", "n_val", "n_test"),
}


def ode_m_reference_order(tasks: list[str]) -> list[str]:
    """The task order ODE-M's public code merges in (yohbii/ODE-M, on FusionBench:
    ``clip_ode_merging.py``, ``select_model_names`` then ``run``): the model pool's names
    (FusionBench's, e.g. ``stanford-cars``) sorted, then ``random.seed(42)``;
    ``random.shuffle``. Returned in cmbench's task names."""
    fb = {clip_tasks()[t]["fusionbench"]: t for t in tasks}
    names = sorted(fb)
    random.Random(42).shuffle(names)  # the same draws as random.seed(42), without reseeding the global generator
    return [fb[n] for n in names]
