"""Task datasets: a registry of builders returning fixed train/val/test splits.

Every builder returns a :class:`TaskData` of uint8 image tensors (N, C, H, W) and int64
labels per split. Splits are a function of the *data seed* only, never of the run seed,
so θ0's pretraining, every expert and every method see the same partition and no test
image is ever trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import Tensor

from .. import CmbenchError
from ..catalog import DATASET_PARAMS

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    x: Tensor  # uint8, (N, C, H, W)
    y: Tensor  # int64, (N,)
    aspect: Tensor | None = None  # float (N,): x holds whole images squashed square, of this width/height

    def __len__(self) -> int:
        return len(self.y)

    def float(self) -> Tensor:
        """Images scaled to [-1, 1]."""
        return self.x.float().div_(127.5).sub_(1.0)


class LazySplit(Split):
    """A split built by ``load()`` on first use: decoding a real dataset's train split takes
    minutes and a merge stream of data-free methods never reads it."""

    _split: Split | None

    def __init__(self, load: Callable[[], Split]):  # noqa: D107 - not the dataclass's fields
        self._load, self._split = load, None

    def _get(self) -> Split:
        if self._split is None:
            self._split = self._load()
        return self._split

    # read-only views of the loaded split, in place of the dataclass's fields (never set here)
    @property
    def x(self) -> Tensor:  # type: ignore[override]
        return self._get().x

    @property
    def y(self) -> Tensor:  # type: ignore[override]
        return self._get().y

    @property
    def aspect(self) -> Tensor | None:  # type: ignore[override]
        return self._get().aspect


@dataclass
class TaskData:
    """One task. ``y`` holds local labels 0..C−1; ``class_ids[y]`` are the global class ids
    (shared across the tasks of a class-incremental split)."""

    name: str
    classes: list[str]
    train: Split
    val: Split
    test: Split
    class_ids: list[int] | None = None
    # how many images the test split is drawn from, where that is finite (a fixed dataset: the
    # report's binomial standard error of a cell gets the finite-population correction);
    # None: a generator, unbounded
    test_population: int | None = None
    # the train images whole (full field of view) squashed to size², with `aspect`: what
    # random resized crops are taken from; None: the stored train images are whole already
    train_view: Callable[[int], Split] | None = None

    def __post_init__(self):
        if self.class_ids is None:
            self.class_ids = list(range(len(self.classes)))

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise CmbenchError(f"unknown split {name!r}; allowed: {SPLITS}")
        return getattr(self, name)


Builder = Callable[..., TaskData]
DATASETS: dict[str, Builder] = {}
# dataset -> the version of the code (and data files) that builds it; part of the key of
# every artefact and job that reads the dataset (see each family's *_VERSION constant)
DATASET_VERSIONS: dict[str, int | str] = {}
# dataset -> (train, val, test) images its builder makes from the task's params, for builders
# that generate their data in memory (what a run costs and holds, before it builds anything)
DATASET_SIZES: dict[str, Callable[[dict], tuple[int, int, int]]] = {}


def dataset(name: str, version: int | str, sizes: Callable[[dict], tuple[int, int, int]] | None = None):
    """Register a builder ``fn(task_name, data_seed, img_size, **params) -> TaskData``
    built by code at ``version`` (its family's version constant, plus a fingerprint of any
    data file it reads); ``sizes(params)``: the images per split it makes."""

    def deco(fn: Builder) -> Builder:
        import inspect

        params = {n for n, p in inspect.signature(fn).parameters.items() if p.kind is p.KEYWORD_ONLY}
        if name not in DATASET_PARAMS or params != set(DATASET_PARAMS[name]):
            raise RuntimeError(
                f"dataset {name}: builder parameters {sorted(params)} differ from cmbench/catalog.py "
                f"({sorted(DATASET_PARAMS.get(name, ()))}); list them there"
            )
        DATASETS[name] = fn
        DATASET_VERSIONS[name] = version
        if sizes is not None:
            DATASET_SIZES[name] = sizes
        return fn

    return deco


def param_value(fn: Callable, params: dict, name: str):
    """A builder's parameter ``name`` as it is called with ``params`` (its signature's
    default where the task does not give it)."""
    import inspect

    return params.get(name, inspect.signature(fn).parameters[name].default)


def split_defaults(fn: Callable, params: dict) -> tuple[int, int, int]:
    """``n_train``, ``n_val``, ``n_test`` as a builder is called with ``params``."""
    return param_value(fn, params, "n_train"), param_value(fn, params, "n_val"), param_value(fn, params, "n_test")


def build(name: str, task: str, data_seed: int, img_size: int, params: dict) -> TaskData:
    if name not in DATASETS:
        raise CmbenchError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](task, data_seed, img_size, **params)


from . import micro, vision  # noqa: E402,F401  (register the datasets)
