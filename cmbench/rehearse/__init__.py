"""``cmbench run SUITE --rehearse``: the real run at the real sizes on generated stand-ins.

Weights and datasets are downloads; a rehearsal writes stand-ins for exactly those three
things, in their real formats, where the real loaders look for them, and then runs the
suite's unchanged code (zero-shot heads through the text tower, caching, Ray, every
method, evaluation, result files, MLflow):

* **backbone weights**: the suite's architecture initialised from ``rehearsal.seed``,
  saved as the published checkpoint's file in the Hugging Face cache (open_clip's
  ``open_clip_model.safetensors`` of the tag's hub repo; timm's ``model.safetensors``),
  read by ``open_clip.create_model(..., pretrained=TAG)`` / ``timm.create_model(...,
  pretrained=True)`` with downloads disabled;
* **datasets**: images for every task with the real class names, class counts and split
  sizes (``vision.SPLIT_SIZES``, times ``scale``, capped at ``max_per_split``): the CLIP
  tasks as their hub copy's ``datasets`` cache (arrow files and ``dataset_info.json`` of
  the repository and config FusionBench loads), read by ``datasets.load_dataset`` offline;
  the class-incremental sources as image folders under the data root;
* **experts**: θ0 (as the real run loads it) plus a seeded low-rank + sparse perturbation
  per matrix, written in each source's format and place: ``hf_clip_vision`` as a
  transformers ``CLIPVisionModel`` (``model.safetensors`` + ``config.json``) in the HF
  cache, ``open_clip`` as safetensors, ``task_vectors`` as a ``torch.save`` pickle.

Everything lives under the output directory (``HF_HOME`` and ``CMBENCH_DATA_ROOT`` point
there; ``HF_HUB_OFFLINE=1``), so nothing is downloaded and nothing outside it is touched.
The suite gains a ``rehearsal`` section (its seed, sizes, perturbation and ``caps``), which
keys its artefacts and results apart from real ones and watermarks every result file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable


from .. import CmbenchError
from ..config import Config, applied, current
from ..suite import Rehearsal, Suite
from .findings import decode_all, measurements, probe_lines, report_lines, train_step_probe
from .standins import local_experts, rehearsal_of, write_backbone, write_datasets, write_experts


def stand_in_env(root: Path) -> dict[str, str]:
    """Where a rehearsal's stand-ins live and the Hugging Face loaders look: its own HF cache,
    offline. Set before anything imports huggingface_hub (it reads them once)."""
    return {
        "HF_HOME": str(root / "hf"),
        "HF_HUB_CACHE": str(root / "hf" / "hub"),
        "HF_DATASETS_CACHE": str(root / "hf" / "datasets"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }


def default_out(suite_path: Path) -> Path:
    return Path("rehearsals") / Path(suite_path).stem


def use_stand_ins(root: Path) -> Config:
    """Point this process (and the workers it starts) at the stand-ins: the HF caches here,
    and the configuration to hold while rehearsing (its data root, downloads off). The HF libraries read
    their cache paths once, at import: if they were imported with other paths, stop rather
    than let a real loader read (or a stand-in land in) the user's real caches."""
    import sys

    env = stand_in_env(root)
    os.environ.update(env)
    stale = []
    if "huggingface_hub" in sys.modules:
        from huggingface_hub import constants

        if Path(constants.HF_HUB_CACHE) != Path(env["HF_HUB_CACHE"]) or not constants.HF_HUB_OFFLINE:
            stale.append("huggingface_hub")
    if "datasets" in sys.modules:
        import datasets

        if Path(datasets.config.HF_DATASETS_CACHE) != Path(env["HF_DATASETS_CACHE"]):
            stale.append("datasets")
    if stale:
        raise CmbenchError(
            f"rehearsal: {', '.join(stale)} was imported before the stand-in caches were set; "
            "rehearse from a fresh process (`cmbench run SUITE --rehearse`)"
        )
    return current().with_(data_root=root / "data", allow_download=False)


def capped_suite(
    suite: Suite,
    rehearsal: Rehearsal,
    eval_cap: int | None = None,
    train_steps: int | None = None,
    train_batch: int | None = None,
    hparams: dict[str, dict[str, Any]] | None = None,
) -> Suite:
    """The suite as rehearsed: its ``rehearsal`` section set, and what a CPU cannot afford
    lowered through the suite's own fields (recorded in ``rehearsal.caps``): evaluation's
    ``max_test_per_task``, ``training.steps`` / ``batch_size``, method hyperparameters
    (``hparams``: label or method name -> values)."""
    caps: dict[str, Any] = {}
    update: dict[str, Any] = {}
    if eval_cap:
        update["evaluation"] = suite.evaluation.model_copy(update={"max_test_per_task": eval_cap})
        caps["max_test_per_task"] = eval_cap
    if suite.setting == "train_then_merge" and (train_steps or train_batch):
        t = {k: v for k, v in (("steps", train_steps), ("batch_size", train_batch)) if v}
        update["training"] = suite.training.model_copy(update=t)
        # methods with their own recipe are capped too (their fields override the suite's)
        update["methods"] = [
            m.model_copy(update={"training": {**m.training, **t}}) if m.training else m for m in suite.methods
        ]
        caps["training"] = t
    if hparams:
        methods = []
        known = {m.display for m in suite.methods} | {m.name for m in suite.methods}
        unknown = sorted(set(hparams) - known)
        if unknown:
            raise CmbenchError(f"--hparam: {', '.join(unknown)} is no method or label of suite {suite.name}")
        for m in update.get("methods", suite.methods):
            extra = {**hparams.get(m.name, {}), **hparams.get(m.display, {})}
            methods.append(m.model_copy(update={"hparams": {**m.hparams, **extra}}) if extra else m)
        update["methods"] = methods
        caps["hparams"] = hparams
    import torch

    res = {}
    if suite.resources.gpus_per_job and not torch.cuda.is_available():  # a CPU rehearsal of a GPU suite
        res["gpus_per_job"] = 0
    if suite.resources.cpus_per_job > (os.cpu_count() or 1):
        res["cpus_per_job"] = os.cpu_count() or 1
    if res:
        update["resources"] = suite.resources.model_copy(update=res)
        caps["resources"] = res
    update["rehearsal"] = rehearsal.model_copy(update={"caps": caps})
    return Suite.model_validate(suite.model_copy(update=update).model_dump())


def prepare(suite: Suite, root: Path, log: Callable[[str], None] = print) -> dict[str, float]:
    """Write the suite's stand-ins under ``root`` (idempotent: what exists is kept).
    Returns seconds per part. The caller has set :func:`stand_in_env` (``root``)."""
    import time

    r = rehearsal_of(suite)
    times = {}
    t = time.perf_counter()
    write_backbone(suite, r.seed)
    times["weights"] = time.perf_counter() - t
    t = time.perf_counter()
    n = write_datasets(suite, r)
    times["datasets"] = time.perf_counter() - t
    log(f"rehearsal: stand-in datasets ready ({n} images written, {times['datasets']:.0f} s)")
    if suite.setting == "merge_stream" and suite.experts.source == "checkpoints":
        t = time.perf_counter()
        write_experts(suite, r, root)
        times["experts"] = time.perf_counter() - t
    return times


# -- the rehearsal run and what it measured ----------------------------------------------------


def rehearse(
    suite_path: Path,
    *,
    out: Path | None = None,
    rehearsal: Rehearsal,
    eval_cap: int | None = None,
    train_steps: int | None = None,
    train_batch: int | None = None,
    hparams: dict[str, dict[str, Any]] | None = None,
    log: Callable[[str], None] = print,
    **run_kwargs,
) -> dict[str, Any]:
    """Prepare the stand-ins, run the suite on them (``run_kwargs`` go to ``run_suite``),
    and write ``OUT/rehearsal.md`` / ``.json``: what each phase cost and the projection."""
    import yaml

    from ..suite import load_suite

    out = Path(out or default_out(suite_path))
    root = (out / ".cmbench" / "stand-ins").resolve()
    with applied(use_stand_ins(root)):
        suite = load_suite(suite_path)
        rehearsed = local_experts(capped_suite(suite, rehearsal, eval_cap, train_steps, train_batch, hparams), root)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{suite.name}.rehearsal.yaml"
        path.write_text(
            f"# {suite.name} as rehearsed (cmbench run {suite_path} --rehearse): stand-ins under "
            f"{root}\n" + yaml.safe_dump(rehearsed.model_dump(mode="json"), sort_keys=False)
        )
        phases: dict[str, Any] = {}
        from ..measure import measured

        with measured(phases, "stand-ins"):
            parts = prepare(rehearsed, root, log)
        phases["stand-ins"]["parts_s"] = parts
        from ..runner import run_suite
        from ..suite import expand

        jobs = expand(
            rehearsed,
            run_kwargs.get("methods"),
            run_kwargs.get("seeds"),
            run_kwargs.get("orders"),
            run_kwargs.get("skip"),
        )
        if not run_kwargs.get("dry_run"):
            with measured(phases, "data preparation"):
                counts = decode_all(rehearsed, {j.method for j in jobs})
            phases["data preparation"].update(counts)
            # kept now: a rehearsal stopped during its jobs still has its preparation's figures
            (out / "rehearsal-phases.json").write_text(json.dumps(phases, indent=1))
            log(
                f"rehearsal: data prepared in {phases['data preparation']['s']:.0f} s "
                f"({json.dumps({k: v for k, v in counts.items()})})"
            )
        summary = run_suite(path, out=out, log=log, **run_kwargs)
        if run_kwargs.get("dry_run"):
            return summary
        report = measurements(rehearsed, out, phases, root, {j.label for j in jobs})
        if rehearsed.setting == "train_then_merge" and rehearsed.training.batch_size < suite.training.batch_size:
            b = rehearsed.training.batch_size
            report["train_step_probe"] = train_step_probe(suite, (b, 2 * b, 4 * b), rehearsed.resources.cpus_per_job)
        (out / "rehearsal.json").write_text(json.dumps(report, indent=1, sort_keys=True))
        from ..plan import projection_lines

        lines = report_lines(rehearsed, report) + projection_lines(load_suite(suite_path), report)
        if "train_step_probe" in report:
            lines += probe_lines(report["train_step_probe"])
        (out / "rehearsal.md").write_text("\n".join(lines) + "\n")
        for line in lines:
            log(line)
        return {**summary, "report": report}
