"""Published numbers to put beside ours (``cmbench/data/published.json``, each block with
its source): the continual CLIP merging table (OPCM's paper), FusionBench's per-task
zero-shot and expert accuracies, P&M's split-ViT table, and the Flan-T5 GLUE stream
(FusionBench's per-task scores, MINGLE's continual table).

A published number applies to a suite when the suite computes the same quantity: the same
backbone weights, the same task set (and, per task, the same expert checkpoint), and for a
method row the same method, LoRA spec and the hyperparameters the source used; for the
split-ViT table also the exact backbone tag and training recipe the source states
(``split_mismatch``: another timm tag of the same architecture is another run). That is
read from the suite and the result files, never from the suite's name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import cast

PUBLISHED = Path(__file__).resolve().parent / "data" / "published.json"


@dataclass(frozen=True)
class Published:
    acc: float  # ACC in %
    std: float | None  # over task orders, where the source gives it
    row: str  # the source's row name
    source: str

    def cell(self) -> str:
        return f"{self.acc:.1f}" + (f" ± {self.std:.1f}" if self.std is not None else "")


@lru_cache(maxsize=1)
def _data() -> dict:
    return json.loads(PUBLISHED.read_text())


def clip_backbone(backbone) -> str | None:
    """The published CLIP a suite's backbone is (``vit-b-32``…), or None."""
    if getattr(backbone, "kind", None) != "open_clip" or getattr(backbone, "config", None) is not None:
        return None
    return _data()["clip"]["backbones"].get(f"{backbone.model}/{backbone.pretrained}")


def text_backbone(backbone) -> str | None:
    """The published text model a suite's backbone is (``flan-t5-base``), or None."""
    if getattr(backbone, "kind", None) != "hf_seq2seq" or backbone.revision is not None:
        return None
    return _data()["text"]["backbones"].get(backbone.model)


def _stream(suite) -> tuple[str, str, str] | None:
    """(block, backbone tag, stream) of a merge stream the published tables cover: a CLIP's
    TA8/TALL14/TALL20, or Flan-T5's eight GLUE tasks."""
    block, tag = ("clip", clip_backbone(suite.backbone))
    if tag is None:
        block, tag = ("text", text_backbone(suite.backbone))
    if tag is None or suite.setting != "merge_stream":
        return None
    datasets = sorted(t.dataset for t in suite.tasks)
    for stream, names in _data()[block]["streams"].items():
        if sorted(names) == datasets:
            return block, tag, stream
    return None


def _clip_stream(suite) -> tuple[str, str] | None:
    got = _stream(suite)
    return (got[1], got[2]) if got and got[0] == "clip" else None


def _split_benchmark(suite) -> str | None:
    """``source/n_tasks`` of a class-incremental ViT-B/16 suite made of one source's splits
    (whichever weights: ``split_mismatch`` says whether its protocol is the source's)."""
    b = suite.backbone
    if suite.setting != "train_then_merge" or b.kind != "timm" or not b.model.startswith("vit_base_patch16_224"):
        return None
    params = [t.params for t in suite.tasks if t.dataset == "class_split"]
    if len(params) != len(suite.tasks) or not params:
        return None
    keys = {(p.get("source"), p.get("n_tasks")) for p in params}
    if len(keys) != 1 or sorted(p.get("index") for p in params) != list(range(len(params))):
        return None
    source, n = keys.pop()
    key = f"{source}/{n}"
    return key if key in _data()["split"]["acc"] and n == len(params) else None


def _matches(spec: dict, method: str, hparams: dict, lora: dict | None, experts: str = "independent") -> bool:
    if spec.get("method") != method or spec.get("experts", "independent") != experts:
        return False
    if any(hparams.get(k) != v for k, v in (spec.get("hparams") or {}).items()):
        return False
    want = spec.get("lora")
    if (want is None) != (lora is None):
        return False
    lora = cast(dict, lora)  # not None where want is not None (checked just above)
    return want is None or (
        lora.get("rank") == want["rank"] and sorted(lora.get("targets", [])) == sorted(want["targets"])
    )


def split_mismatch(suite, training) -> str | None:
    """Why a run of one of the split table's benchmarks (trained with ``training``) is not
    the source's run, in a few words; None when every field the source states matches, or
    when the suite is none of its benchmarks (nothing to match)."""
    bench = _split_benchmark(suite)
    if bench is None:
        return None
    p = _data()["split"]["protocol"]
    if suite.backbone.model != p["backbone"]:
        return f"backbone {suite.backbone.model}, the source's {p['backbone']}"
    data, source = p["data"], bench.split("/")[0]
    scaling = [list(suite.backbone.input_mean or []), list(suite.backbone.input_std or [])]
    if scaling != [data["input_mean"], data["input_std"]]:
        return f"inputs scaled by {'the checkpoint config' if not scaling[0] else scaling}, the source's [0, 1]"
    want_data = {
        "class_order": data["class_order"],
        "holdout": data["holdout"],
        "interpolation": data["interpolation"][source],
        "split": data["split"].get(source, "folders"),
    }
    from .data import DATASETS, param_value

    for t in suite.tasks:  # as the builder is called: its signature's default where the task is silent
        for k, v in want_data.items():
            got = param_value(DATASETS[t.dataset], t.params, k)
            if got != v:
                return f"data {k} {got} in task {t.name} (source: {v})"
    want = {**p["recipe"], "epochs": p["epochs_by_source"].get(bench.split("/")[0], p["recipe"]["epochs"])}
    off = [
        f"{k} {getattr(training, k, None)} (source: {v})" for k, v in want.items() if getattr(training, k, None) != v
    ]
    return "recipe " + ", ".join(off) if off else None


def method_acc(
    suite, method: str, hparams: dict, lora: dict | None = None, training=None, experts: str = "independent"
) -> Published | None:
    """The published final ACC of this method row on this suite's benchmark, or None
    (``training``: the row's recipe, which the split table's protocol must match; ``experts``:
    independent or sequential, ``MethodSpec.experts``)."""
    stream = _stream(suite)
    if stream is not None:
        block = _data()[stream[0]]
        values = block["continual"][f"{stream[1]}/{stream[2]}"]
        if stream[0] == "text" and not _text_experts(suite, "finetuned"):
            return None  # the continual rows merged the full fine-tuned experts
    else:
        bench = _split_benchmark(suite)
        if bench is None or split_mismatch(suite, training or suite.training) is not None:
            return None
        block = _data()["split"]
        values = {row: [v, None] for row, v in block["acc"][bench].items()}
    for row, spec in block["rows"].items():
        if spec and "method" in spec and row in values and _matches(spec, method, hparams, lora, experts):
            acc, std = values[row]
            return Published(acc, std, row, block["source"])
    return None


def reference_acc(suite, which: str) -> Published | None:
    """The published mean over tasks of θ0 (``which="theta0"``) or of the individual
    experts (``"experts"``) on this suite's CLIP or text stream, or None."""
    stream = _stream(suite)
    if stream is None or (stream[0] == "text" and which == "experts" and not _text_experts(suite, "finetuned")):
        return None
    block = _data()[stream[0]]
    for row, spec in block["rows"].items():
        if spec and spec.get("reference") == which:
            acc, std = block["continual"][f"{stream[1]}/{stream[2]}"][row]
            return Published(acc, std, row, block["source"])
    return None


def _text_expert_kind(suite, task) -> str | None:
    """``finetuned`` (full) or ``finetuned_lora16`` where ``task``'s checkpoint is FusionBench's
    hub expert for its GLUE task on a published text model, else None."""
    tag = text_backbone(suite.backbone)
    spec = suite.experts.checkpoints.get(task.name) if suite.experts.source == "checkpoints" else None
    if tag is None or spec is None:
        return None
    for kind, pattern in _data()["text"]["experts"][tag].items():
        if str(spec.path) == pattern.format(task=task.dataset.removeprefix("glue_")):
            return kind
    return None


def _text_experts(suite, kind: str) -> bool:
    """Every task's checkpoint is FusionBench's hub expert of ``kind``."""
    return all(_text_expert_kind(suite, t) == kind for t in suite.tasks)


def per_task(suite) -> dict[str, dict[str, float]]:
    """task name -> {"theta0": %, "expert": %} where published: θ0's zero-shot accuracy for
    this CLIP, and the expert's for a task whose checkpoint is FusionBench's hub expert."""
    tag = text_backbone(suite.backbone)
    if tag is not None:
        text = _data()["text"]["per_task"][tag]
        found: dict[str, dict[str, float]] = {}
        for t in suite.tasks:
            got = {"theta0": text["zero_shot"][t.dataset]} if t.dataset in text["zero_shot"] else {}
            kind = _text_expert_kind(suite, t)
            if kind is not None and t.dataset in text[kind]:
                got["expert"] = text[kind][t.dataset]
            if got:
                found[t.name] = got
        return found
    tag = clip_backbone(suite.backbone)
    if tag is None or suite.heads.kind != "zero_shot":
        return {}
    block = _data()["clip"]
    table, prefix = block["per_task"][tag], block["experts"][tag]
    checkpoints = (suite.experts.checkpoints or {}) if suite.experts.source == "checkpoints" else {}
    out: dict[str, dict[str, float]] = {}
    for t in suite.tasks:
        got = {}
        if t.dataset in table["zero_shot"]:
            got["theta0"] = table["zero_shot"][t.dataset]
        spec = checkpoints.get(t.name)
        hub = prefix + block["hub_names"].get(t.dataset, t.dataset)
        if spec is not None and t.dataset in table["finetuned"] and str(spec.path) == hub:
            got["expert"] = table["finetuned"][t.dataset]
        if got:
            out[t.name] = got
    return out


# -- the setup check -------------------------------------------------------------------------

# Allowed distance, in accuracy points, between a measured and a published per-task accuracy
# beyond the test split's sampling noise: implementation differences between FusionBench's
# transformers pipeline and open_clip's (image resizing and cropping, float precision) move a
# task by well under this, while the mistakes the check exists for move it by far more: a
# wrong normalisation, class names or templates, GELU in place of QuickGELU, another
# checkpoint (5 to 50 points). Chosen, not measured here (no real weights on this machine):
# the first real run's result files record every difference, to tighten it.
TOLERANCE_POINTS = 2.0


def tolerance(published_pct: float, n_test: int, n_full: int | None = None) -> float:
    """Points a measured accuracy may differ from ``published_pct``: ``TOLERANCE_POINTS``
    plus three standard errors of an accuracy measured on ``n_test`` of the split's
    ``n_full`` images (a test cap samples the split; the whole split is the published
    value's own images, so no sampling error: the finite-population correction is 0)."""
    p = min(max(published_pct / 100.0, 0.0), 1.0)
    n = max(1, n_test)
    fpc = 1.0 if not n_full or n_full <= 1 else max(0.0, (n_full - n) / (n_full - 1)) ** 0.5
    return TOLERANCE_POINTS + 300.0 * (p * (1 - p) / n) ** 0.5 * fpc


def setup_check(suite, what: str, accuracies: dict[str, float], n_test: dict[str, int]) -> list[dict]:
    """Compare θ0's (``what="theta0"``) or the experts' (``"expert"``) per-task test
    accuracies (fractions, by task name) with the published ones; one entry per task that
    has a published value, ``ok`` False beyond :func:`tolerance`."""
    from .data.text import GLUE_SIZES
    from .data.vision import SPLIT_SIZES  # the published values are on the whole test splits

    sizes = {**SPLIT_SIZES, **{f"glue_{t}": n for t, n in GLUE_SIZES.items()}}

    dataset = {t.name: t.dataset for t in suite.tasks}
    out = []
    for task, pub in per_task(suite).items():
        if what not in pub or task not in accuracies or accuracies[task] is None:
            continue
        ours = 100.0 * accuracies[task]
        tol = tolerance(pub[what], n_test.get(task, 0), sizes.get(dataset[task], (None, None))[1])
        out.append(
            {
                "what": what,
                "task": task,
                "ours": round(ours, 2),
                "published": pub[what],
                "tolerance": round(tol, 2),
                "n_test": n_test.get(task, 0),
                "ok": abs(ours - pub[what]) <= tol,
            }
        )
    return out


def warnings(checks: list[dict]) -> list[str]:
    """One line per failed check, naming the task, both values and the usual causes."""
    who = {"theta0": "θ0 zero-shot", "expert": "expert"}
    return [
        f"warning: setup check: {who[c['what']]} accuracy on {c['task']} is {c['ours']:.1f}%, published "
        f"{c['published']:.1f}% (tolerance ±{c['tolerance']:.1f}): check the preprocessing, class names and "
        f"templates, or the checkpoint"
        for c in checks
        if not c["ok"]
    ]
