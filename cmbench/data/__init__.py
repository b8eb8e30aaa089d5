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

    def take(self, index: Tensor) -> Split:
        """The examples at ``index`` (a test cap's subset)."""
        return Split(x=self.x[index], y=self.y[index])


def images(split: Split | TextSplit) -> Split:
    """``split`` as images: what training and heads read (a text task never reaches them:
    text suites merge published experts, checked when the suite is read)."""
    if not isinstance(split, Split):
        raise CmbenchError(f"text task {split.task}: no images to train or fit heads on")
    return split


@dataclass
class TextSplit:
    """A text-to-text split (``data.text``): prompts and the answers a model should generate,
    scored by ``task``'s metric (``models.seq2seq.score``)."""

    task: str  # what the examples ask (a GLUE task, a generated task)
    prompts: list[str]
    targets: list[str]
    metric: str = "exact_match"  # or "spearman": rank correlation of the numbers answered

    def __len__(self) -> int:
        return len(self.prompts)

    def take(self, index: Tensor) -> TextSplit:
        i = index.tolist()
        return TextSplit(self.task, [self.prompts[k] for k in i], [self.targets[k] for k in i], self.metric)


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
    train: Split | TextSplit
    val: Split | TextSplit
    test: Split | TextSplit
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


def hub_split(source: str, spec: dict, why: str = "", extra: str = "real"):
    """One split of a dataset's hub copy (``spec``: its ``path``, ``config`` and ``split``)
    through the ``datasets`` library: from its local cache, downloading only with
    ``CMBENCH_ALLOW_DOWNLOAD=1``; the arrow files read are pinned. ``why``: what was looked
    for before the hub copy, for the error line; ``extra``: the install extra with ``datasets``."""
    import os
    from pathlib import Path

    from .. import pins
    from ..config import current

    where = f"{spec['path']}" + (f" ({spec['config']})" if spec.get("config") else "") + f" split {spec['split']}"
    try:
        import datasets
    except ImportError:
        raise CmbenchError(
            f"dataset {source}: {why}the `datasets` library is not installed to read the hub copy {where}: "
            f"pip install 'cmbench[{extra}]'"
        ) from None
    if not current().allow_download:
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    datasets.logging.set_verbosity_error()  # its offline notices, twice per split, drown the progress bars
    try:
        ds = datasets.load_dataset(spec["path"], spec.get("config"), split=spec["split"])
    except Exception as e:  # noqa: BLE001
        raise CmbenchError(
            f"dataset {source}: cannot load the hub copy {where} ({type(e).__name__}); "
            "rerun with --allow-download to fetch it" + (", or provide an image folder" if why else "")
        ) from None
    arrows = [Path(f["filename"]) for f in ds.cache_files]
    pins.check("dataset", f"hf-dataset://{where}", arrows, arrows[0].parent.name if arrows else None)
    return ds


def build(name: str, task: str, data_seed: int, img_size: int, params: dict) -> TaskData:
    if name not in DATASETS:
        raise CmbenchError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](task, data_seed, img_size, **params)


from . import micro, text, text_micro, vision  # noqa: E402,F401  (register the datasets)
