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

import io
import json
import math
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import CmbenchError
from .suite import Rehearsal, Suite

# the stand-ins' fixed commit in the HF cache layout (a real cache holds the repo's sha)
COMMIT = "0" * 40


def stand_in_env(root: Path) -> dict[str, str]:
    """Where a rehearsal's stand-ins live and the loaders look: its own HF cache and data
    root, downloads off. Set before anything imports huggingface_hub (it reads them once)."""
    return {
        "HF_HOME": str(root / "hf"),
        "HF_HUB_CACHE": str(root / "hf" / "hub"),
        "HF_DATASETS_CACHE": str(root / "hf" / "datasets"),
        "CMBENCH_DATA_ROOT": str(root / "data"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "CMBENCH_ALLOW_DOWNLOAD": "0",
    }


def default_out(suite_path: Path) -> Path:
    return Path("rehearsals") / Path(suite_path).stem


def use_stand_ins(root: Path) -> None:
    """Point this process (and the workers it starts) at the stand-ins. The HF libraries read
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

    r = suite.rehearsal
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


# -- backbone weights ------------------------------------------------------------------------


def hub_file(repo: str, filename: str, repo_type: str = "model") -> Path:
    """The path ``hf_hub_download(repo, filename)`` resolves offline (``refs/main`` -> snapshot)."""
    folder = Path(os.environ["HF_HUB_CACHE"]) / f"{repo_type}s--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(COMMIT)
    path = folder / "snapshots" / COMMIT / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _save(state: dict, path: Path) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")  # renamed into place: a killed writer leaves no file
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    os.replace(tmp, path)


def write_backbone(suite: Suite, seed: int) -> Path | None:
    """The suite's architecture at random (seeded), as the pretrained tag's checkpoint file."""
    import torch

    b = suite.backbone
    if b.kind == "open_clip" and b.pretrained and b.config is None:
        import open_clip

        hub = (open_clip.get_pretrained_cfg(b.model, b.pretrained) or {}).get("hf_hub", "").strip("/")
        if not hub:
            raise CmbenchError(f"rehearsal: open_clip {b.model}/{b.pretrained} has no hub repo to stand in for")
        path = hub_file(hub, "open_clip_model.safetensors")
        if not path.exists():
            quick = bool(open_clip.get_pretrained_cfg(b.model, b.pretrained).get("quick_gelu"))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = open_clip.create_model(b.model, pretrained=None, force_quick_gelu=quick)
            _save(model.state_dict(), path)
        return path
    if b.kind == "timm" and b.pretrained:
        import timm

        hub = timm.models.get_pretrained_cfg(b.model).hf_hub_id
        path = hub_file(hub, "model.safetensors")
        if not path.exists():
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = timm.create_model(b.model, pretrained=False, **b.kwargs)
            _save(model.state_dict(), path)
        return path
    return None  # random init or harness-pretrained already: nothing is downloaded


# -- datasets ---------------------------------------------------------------------------------


def split_size(source: str, split: str, r: Rehearsal) -> int:
    from .data.vision import SPLIT_SIZES

    n = math.ceil(SPLIT_SIZES[source][0 if split == "train" else 1] * r.scale)
    cap = (r.max_train_per_split or r.max_per_split) if split == "train" else r.max_per_split
    return min(n, cap) if cap else n


def _image(rng: np.random.Generator, label: int, n_classes: int, side: int, mode: str) -> bytes:
    """A class-coloured noisy image at the source's native size, encoded as the source is."""
    from PIL import Image

    hue = np.array([(label * 97) % 256, (label * 57 + 80) % 256, (label * 31 + 160) % 256], dtype=np.float32)
    img = np.clip(hue + rng.normal(0, 40, (side, side, 3)), 0, 255).astype(np.uint8)
    im = Image.fromarray(img if mode == "RGB" else img[..., 0])
    buf = io.BytesIO()
    im.save(buf, "PNG" if side <= 96 else "JPEG", quality=90)
    return buf.getvalue()


def write_datasets(suite: Suite, r: Rehearsal) -> int:
    """Every source the suite's tasks read: CLIP tasks as their hub copy's datasets cache,
    class-incremental sources as image folders. Returns the number of images written."""
    from .data.vision import CIL_SOURCES, clip_tasks

    sources = []
    for t in suite.tasks:
        src = t.params.get("source") if t.dataset == "class_split" else t.dataset
        if src not in sources:
            sources.append(src)
    n = 0
    for src in sources:
        if src in clip_tasks():
            n += _write_hub_copy(src, r)
        elif src in CIL_SOURCES:
            n += _write_folder(src, r)
        else:
            raise CmbenchError(f"rehearsal: dataset {src!r} has no known split sizes to stand in for")
    return n


def _write_hub_copy(source: str, r: Rehearsal) -> int:
    """The ``datasets`` cache a real ``load_dataset(path, config)`` leaves behind:
    ``HF_DATASETS_CACHE/<ns>___<name>/<config>/0.0.0/<sha>/{name-split.arrow,dataset_info.json}``."""
    import datasets
    from datasets.arrow_writer import ArrowWriter
    from datasets.naming import camelcase_to_snakecase

    from .data.vision import NATIVE_IMAGE, clip_tasks

    meta = clip_tasks()[source]
    names = meta["classnames"]
    side, mode = NATIVE_IMAGE[source]
    written = 0
    by_repo: dict[tuple, list[tuple[str, str]]] = {}
    for split in ("train", "test"):
        spec = meta["hub"][split]
        by_repo.setdefault((spec["path"], spec.get("config")), []).append((split, spec["split"]))
    for (repo, config), splits in by_repo.items():
        parts = repo.split("/")
        name = camelcase_to_snakecase(parts[-1])
        d = Path(os.environ["HF_DATASETS_CACHE"]).joinpath(
            "___".join(parts[:-1] + [name]), config or "default", "0.0.0", COMMIT
        )
        if (d / "dataset_info.json").exists():
            continue
        cols = meta["hub"]["test"].get("columns", {})
        img_col, lab_col = cols.get("image", "image"), cols.get("label", "label")
        features = datasets.Features({img_col: datasets.Image(), lab_col: datasets.ClassLabel(names=names)})
        d.mkdir(parents=True, exist_ok=True)
        infos = datasets.SplitDict()
        for ours, theirs in splits:
            n = split_size(source, ours, r)
            rng = np.random.default_rng([r.seed, ours == "test", len(names)])
            w = ArrowWriter(features=features, path=str(d / f"{name}-{theirs}.arrow"))
            for i in range(n):
                label = i % len(names)
                w.write({img_col: {"bytes": _image(rng, label, len(names), side, mode), "path": None}, lab_col: label})
            count, nbytes = w.finalize()
            w.close()
            infos.add(datasets.SplitInfo(name=theirs, num_examples=count, num_bytes=nbytes, dataset_name=name))
            written += n
        # written last: its presence marks a complete copy (for us and for `datasets`)
        datasets.DatasetInfo(
            features=features, splits=infos, config_name=config or "default", dataset_name=name, version="0.0.0"
        ).write_to_directory(str(d))
    return written


def _write_folder(source: str, r: Rehearsal) -> int:
    """``ROOT/<source>/{train,test}/<class>/<i>.jpg`` (class names: CIFAR-100's real ones,
    else ``class_000``…: the real folder names of ImageNet-R/A, DomainNet and CUB are not
    known here; only their number matters to the code)."""
    from .data.vision import CIL_SOURCES, NATIVE_IMAGE, clip_tasks, data_root

    c = CIL_SOURCES[source]
    names = clip_tasks()[source]["classnames"] if source in clip_tasks() else [f"class_{i:03d}" for i in range(c)]
    side, mode = NATIVE_IMAGE[source]
    written = 0
    for split in ("train", "test"):
        d = data_root() / source / split
        done = d.parent / f".{split}.complete"
        if done.exists():
            continue
        rng = np.random.default_rng([r.seed, split == "test", c])
        for i in range(split_size(source, split, r)):
            label = i % c
            (d / names[label]).mkdir(parents=True, exist_ok=True)
            data = _image(rng, label, c, side, mode)
            ext = "png" if data.startswith(b"\x89PNG") else "jpg"
            (d / names[label] / f"{i}.{ext}").write_bytes(data)
            written += 1
        done.touch()
    return written


# -- experts ----------------------------------------------------------------------------------


def perturbation(theta0: dict, r: Rehearsal, index: int) -> dict:
    """θ0 + Δ_index: for every weight matrix (conv kernels as out × rest) a rank-``expert_rank``
    product plus a sparse matrix (``expert_density`` of the entries), each with a Frobenius
    norm relative to the matrix's; 1-d parameters get a small dense perturbation. Not the
    projection ``visual.proj``: FusionBench's fine-tuning leaves it at θ0."""
    import torch

    gen = torch.Generator().manual_seed(r.seed * 100003 + index)
    out = {}
    for k, w in theta0.items():
        if not w.is_floating_point() or k == "visual.proj":
            out[k] = w.clone()
            continue
        norm = float(w.float().norm()) or 1.0
        if w.ndim >= 2:
            m = w.reshape(w.shape[0], -1)
            u = torch.randn(m.shape[0], r.expert_rank, generator=gen)
            v = torch.randn(r.expert_rank, m.shape[1], generator=gen)
            low = u @ v
            delta = low * (r.expert_lowrank * norm / float(low.norm()))
            nnz = max(1, int(r.expert_density * m.numel()))
            idx = torch.randint(0, m.numel(), (nnz,), generator=gen)
            vals = torch.randn(nnz, generator=gen)
            delta.view(-1).index_add_(0, idx, vals * (r.expert_sparse * norm / float(vals.norm())))
            out[k] = (m.float() + delta).reshape(w.shape).to(w.dtype)
        else:
            noise = torch.randn(w.shape, generator=gen)
            out[k] = (w.float() + noise * (r.expert_vector * norm / float(noise.norm()))).to(w.dtype)
    return out


def write_experts(suite: Suite, r: Rehearsal, root: Path) -> None:
    """Each task's expert in its checkpoint's format, where its ``path`` resolves: ``hf://``
    in the stand-in HF cache, a local path under ``root/experts`` (the suite is pointed
    there)."""
    import torch

    from .artefacts import make_theta0
    from .models.checkpoint import open_clip_to_hf_clip_vision

    theta0 = None
    for i, task in enumerate(suite.task_names()):
        spec = suite.experts.checkpoints[task]
        path = expert_path(spec.path, root)
        if path.exists():
            continue
        if theta0 is None:  # θ0 exactly as the run loads it (the stand-in weights, read back)
            theta0 = make_theta0(suite, suite.seeds[0])[0]
        state = perturbation(theta0, r, i)
        if spec.format == "hf_clip_vision":
            _save(open_clip_to_hf_clip_vision(state), path)
            (path.parent / "config.json").write_text(json.dumps(_hf_vision_config(suite), indent=1))
        elif spec.format == "task_vectors":
            tmp = path.with_name(path.name + ".tmp")
            torch.save({"model." + k: v for k, v in state.items()}, tmp)
            os.replace(tmp, path)
        else:  # open_clip / timm: the state dict under the backbone's own names
            _save(state, path)
        del state


def expert_path(path: str, root: Path) -> Path:
    """Where a rehearsal writes the expert the suite names ``path``."""
    if path.startswith("hf://"):
        parts = path[len("hf://") :].split("/")
        return hub_file("/".join(parts[:2]), "/".join(parts[2:]) or "model.safetensors")
    return root / "experts" / Path(path).name


def local_experts(suite: Suite, root: Path) -> Suite:
    """Local expert paths pointed at the rehearsal's copies (hub paths resolve by themselves)."""
    if suite.experts.source != "checkpoints":
        return suite
    ck = {
        t: s.model_copy(
            update={
                "sha256": None,  # stand-ins have their own bytes
                "path": s.path if s.path.startswith("hf://") else str(expert_path(s.path, root)),
            }
        )
        for t, s in suite.experts.checkpoints.items()
    }
    return suite.model_copy(update={"experts": suite.experts.model_copy(update={"checkpoints": ck})})


def _hf_vision_config(suite: Suite) -> dict:
    from .models import feature_dim

    v = suite.backbone.open_clip_config()["vision_cfg"]
    return {
        "architectures": ["CLIPVisionModel"],
        "model_type": "clip_vision_model",
        "hidden_size": v["width"],
        "intermediate_size": int(v["width"] * v.get("mlp_ratio", 4.0)),
        "num_hidden_layers": v["layers"],
        "num_attention_heads": v["width"] // v.get("head_width", 64),
        "image_size": suite.backbone.image_size,
        "patch_size": v["patch_size"],
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": feature_dim(suite.backbone),
    }


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

    from .suite import load_suite

    out = Path(out or default_out(suite_path))
    root = (out / ".cmbench" / "stand-ins").resolve()
    use_stand_ins(root)
    suite = load_suite(suite_path)
    rehearsed = local_experts(capped_suite(suite, rehearsal, eval_cap, train_steps, train_batch, hparams), root)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{suite.name}.rehearsal.yaml"
    path.write_text(
        f"# {suite.name} as rehearsed (cmbench run {suite_path} --rehearse): stand-ins under "
        f"{root}\n" + yaml.safe_dump(rehearsed.model_dump(mode="json"), sort_keys=False)
    )
    phases: dict[str, Any] = {}
    from .measure import measured

    with measured(phases, "stand-ins"):
        parts = prepare(rehearsed, root, log)
    phases["stand-ins"]["parts_s"] = parts
    from .runner import run_suite
    from .suite import expand

    jobs = expand(
        rehearsed, run_kwargs.get("methods"), run_kwargs.get("seeds"), run_kwargs.get("orders"), run_kwargs.get("skip")
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
    from .plan import projection_lines

    lines = report_lines(rehearsed, report) + projection_lines(load_suite(suite_path), report)
    if "train_step_probe" in report:
        lines += probe_lines(report["train_step_probe"])
    (out / "rehearsal.md").write_text("\n".join(lines) + "\n")
    for line in lines:
        log(line)
    return {**summary, "report": report}


def decode_all(suite: Suite, methods: set[str]) -> dict[str, Any]:
    """Decode (or map) what the jobs will read, once, before they fan out: every test split,
    and the train splits when one of ``methods`` reads training data."""
    from .artefacts import load_tasks
    from .registry import discover

    cls = discover()
    reads_train = suite.setting == "train_then_merge" or any(cls[m].data_access != "none" for m in methods)
    tasks = load_tasks(suite, suite.seeds[0])
    n = {"test_images": sum(len(td.test) for td in tasks.values())}
    if reads_train:
        n["train_images"] = sum(len(td.train) + len(td.val) for td in tasks.values())
    from .data.vision import data_root
    from .measure import disk_bytes

    n["decoded_bytes"] = disk_bytes(data_root() / ".decoded")
    return n


def measurements(suite: Suite, out: Path, phases: dict, root: Path, labels: set[str]) -> dict[str, Any]:
    """Per phase and per method, from the rehearsal's result files (of ``labels``) and
    artefact sidecars, and the cost model checked against them."""
    from .measure import disk_bytes
    from .plan import backbone_gflops, backbone_params
    from .results import load_results
    from .runner import Paths

    paths = Paths(out)
    recs = [
        r
        for r in load_results(paths.results / suite.name, include_rehearsal=True)
        if r.get("status") == "ok" and r["label"] in labels and r.get("key")
    ]
    art: dict[str, list] = {}
    used = {
        (kind, k)
        for r in recs
        for kind, key in r["inputs"]["artefacts"].items()
        for k in (key.values() if isinstance(key, dict) else [key])
    }
    for kind in ("theta0", "heads", "experts", "evals"):
        for side in sorted((paths.cache / kind).glob("*.json")):
            if kind != "evals" and (kind, side.stem) not in used:
                continue  # another rehearsal's (other sizes or caps)
            build = json.loads(side.read_text()).get("build")
            if build:
                art.setdefault(kind, []).append(build)
    methods: dict[str, Any] = {}
    for r in recs:
        t = r["timings"]
        m = methods.setdefault(r["label"], {"jobs": 0})
        m["jobs"] += 1
        m["merge_step_s"] = t["merge_total_s"] / max(1, len(t["merge_steps_s"]))
        m["hparams"] = r["hparams"]  # as rehearsed (--hparam): a projection uses only matching ones
        m["merge_steps_s"] = t["merge_steps_s"]
        m["storage_peak_bytes"] = r["storage_bytes"]["peak"]
        m["eval_s"], m["eval_images"] = t.get("eval_s"), t.get("eval_images")
        if t.get("train_steps_s"):
            steps = t.get("train_optimizer_steps") or []
            m["train_s"] = sum(t["train_steps_s"])
            m["train_optimizer_steps"] = sum(steps)
            m["train_batch_size"] = t.get("train_batch_size")
        m["job_s"] = t["job_s"]
        m["data_access"] = r.get("data_access")
        m.update({k: v for k, v in (r.get("resources") or {}).items() if k.startswith("peak")})
    evals = [(m["eval_s"], m["eval_images"]) for m in methods.values() if m.get("eval_s")]
    return {
        "backbone": {"params": backbone_params(suite), "gflops": backbone_gflops(suite)},
        "check": model_check(suite, recs),
        "suite": suite.name,
        "rehearsal": suite.rehearsal.model_dump(mode="json"),
        "phases": phases,
        "artefacts": {
            k: {"count": len(v), "s": sum(b["s"] for b in v), "peak_rss_bytes": max(b["peak_rss_bytes"] for b in v)}
            for k, v in art.items()
        },
        "methods": methods,
        "eval_images_per_s": (sum(i for _, i in evals) / sum(s for s, _ in evals)) if evals else None,
        "disk_bytes": {
            "stand-ins": disk_bytes(root),
            "decoded data": disk_bytes(root / "data" / ".decoded"),
            "artefact store": disk_bytes(paths.cache),
            "results": disk_bytes(paths.results),
        },
        "host": {"cpus": os.cpu_count(), "threads_per_job": suite.resources.cpus_per_job},
    }


def _gb(b: float | None) -> str:
    return "-" if b is None else f"{b / 2**30:.2f}"


def report_lines(suite: Suite, rep: dict) -> list[str]:
    r = suite.rehearsal
    lines = [
        f"# rehearsal of {suite.name} (random weights, generated data)",
        "",
        f"sizes: scale {r.scale}, at most {r.max_per_split or '-'} images per split; caps: "
        f"{json.dumps(r.caps) if r.caps else 'none'}",
        "",
        "| phase | wall s | peak host GB (private) | notes |",
        "|---|---|---|---|",
    ]
    for name, p in rep["phases"].items():
        notes = ", ".join(
            f"{k} {v:.0f}" if isinstance(v, float) else f"{k} {v}"
            for k, v in p.items()
            if k not in ("s", "peak_rss_bytes", "peak_private_bytes", "parts_s", "decoded_bytes")
        )
        if "parts_s" in p:
            notes = ", ".join(f"{k} {v:.1f} s" for k, v in p["parts_s"].items())
        if "decoded_bytes" in p:
            notes += f", decoded cache {_gb(p['decoded_bytes'])} GB"
        lines.append(
            f"| {name} | {p['s']:.1f} | {_gb(p['peak_rss_bytes'])} ({_gb(p.get('peak_private_bytes'))}) | {notes} |"
        )
    for kind, a in rep["artefacts"].items():
        lines.append(f"| {kind} ({a['count']} built) | {a['s']:.1f} | {_gb(a['peak_rss_bytes'])} | |")
    lines += [
        "",
        "| method | jobs | merge s/step | train s/opt. step (batch) | eval s (images/s) | job s | "
        "peak host GB (private) | peak GPU GB | storage GB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, m in rep["methods"].items():
        train = (
            f"{m['train_s'] / max(1, m['train_optimizer_steps']):.1f} ({m['train_batch_size']})"
            if m.get("train_optimizer_steps")
            else "-"
        )
        ev = f"{m['eval_s']:.0f} ({m['eval_images'] / m['eval_s']:.1f})" if m.get("eval_s") else "-"
        lines.append(
            f"| {label} | {m['jobs']} | {m['merge_step_s']:.2f} | {train} | {ev} | {m['job_s']:.0f} | "
            f"{_gb(m.get('peak_rss_bytes'))} ({_gb(m.get('peak_private_bytes'))}) | {_gb(m.get('peak_gpu_bytes'))} | "
            f"{_gb(m['storage_peak_bytes'])} |"
        )
    lines += [
        "",
        "disk: " + ", ".join(f"{k} {_gb(v)} GB" for k, v in rep["disk_bytes"].items()),
        f"evaluation: {rep['eval_images_per_s'] or 0:.1f} images/s on {rep['host']['threads_per_job']} threads "
        f"({rep['host']['cpus']} CPUs)",
    ]
    c = rep.get("check")
    if c:
        lines += [
            "",
            f"cost model checked on these jobs (sizes as generated, the host's {c['host_gflops']:.0f} "
            f"GFLOP/s from evaluation): evaluation images predicted {c['eval_images_predicted']:,.0f}, "
            f"counted {c['eval_images_counted']:,.0f}; training seconds predicted "
            f"{c['train_s_predicted']:.0f} (backward = 2 × forward), measured {c['train_s_measured']:.0f}",
        ]
    return lines


def model_check(suite: Suite, recs: list[dict]) -> dict | None:
    """``plan.project`` applied to the jobs this rehearsal ran, at the sizes it generated and
    the throughput its evaluation reached, against what they counted and measured."""
    from .plan import backbone_gflops, project
    from .suite import Job

    ev = [(r["timings"]["eval_s"], r["timings"]["eval_images"]) for r in recs if r["timings"].get("eval_s")]
    if not ev:
        return None
    gf = backbone_gflops(suite)
    host = gf * sum(i for _, i in ev) / sum(s for s, _ in ev)  # GFLOP/s
    sizes = {}
    r = suite.rehearsal
    for t in suite.tasks:
        src = t.params.get("source") if t.dataset == "class_split" else t.dataset
        k = t.params.get("n_tasks", 1) if t.dataset == "class_split" else 1
        sizes[t.name] = tuple(split_size(src, sp, r) // k for sp in ("train", "test"))
    jobs = [
        Job(
            suite=suite.name,
            suite_hash="",
            method=x["method"],
            label=x["label"],
            hparams=(),
            lora=None,
            method_hash="",
            seed=x["seed"],
            order_index=x["order_index"],
            order=tuple(x["tasks"]),
        )
        for x in recs
    ]
    c = project(suite, jobs, sizes=sizes, tflops=host / 1e3)
    # θ0's row (once per seed) is counted by the job that built its cached artefact
    counted = sum(x["timings"].get("eval_images", 0) for x in recs)
    return {
        "host_gflops": host,
        "eval_images_predicted": c["eval_images"],
        "eval_images_counted": counted,
        "train_s_predicted": c["train_gpu_s"],
        "train_s_measured": sum(sum(x["timings"].get("train_steps_s") or []) for x in recs),
    }


def train_step_probe(suite: Suite, batches: tuple[int, ...], threads: int) -> dict[str, Any]:
    """One optimiser step of the suite's backbone (+ a linear head) at each of ``batches``,
    full-parameter and with the suite's LoRA (if a method uses one): seconds and the rise of
    private memory (activations, gradients, optimiser state), each fitted as a + b·batch and
    extrapolated to the suite's batch size. For a host that cannot hold the real batch (ViT-B/16
    at 256 needs tens of GB of activations)."""
    import torch

    from .measure import measured, memory
    from .models import create_backbone, feature_dim
    from .lora import add_lora

    torch.set_num_threads(threads)
    target = suite.training.batch_size
    side = suite.backbone.image_size
    loras = {json.dumps(m.lora.model_dump()) for m in suite.methods if m.lora}
    kinds = {"full": None} | {f"lora {json.loads(x)['targets']} r{json.loads(x)['rank']}": json.loads(x) for x in loras}
    out: dict[str, Any] = {"target_batch": target, "batches": list(batches), "threads": threads}
    for kind, lora in kinds.items():
        model = create_backbone(suite.backbone)
        head = torch.nn.Linear(feature_dim(suite.backbone), 20)
        if lora:
            for p in model.parameters():
                p.requires_grad_(False)
            params = [
                p for a in add_lora(model, lora["rank"], lora.get("alpha"), lora["targets"], 0) for p in a.parameters()
            ]
        else:
            params = list(model.parameters())
        opt = torch.optim.AdamW([*params, *head.parameters()], lr=1e-4)
        chans = getattr(suite.backbone, "in_chans", 3)

        def step(b: int) -> None:
            loss = torch.nn.functional.cross_entropy(
                head(model(torch.rand(b, chans, side, side) * 2 - 1)), torch.randint(0, 20, (b,))
            )
            opt.zero_grad()
            loss.backward()
            opt.step()

        step(batches[0])  # allocates the optimiser state, which every batch size shares
        rows = []
        for b in batches:
            cost: dict = {}
            base = memory()[1]  # what the process holds already: a step's own memory is the rise
            with measured(cost, "step"):
                step(b)
            rows.append((b, cost["step"]["s"], cost["step"]["peak_private_bytes"] - base))
        bs = np.array([r[0] for r in rows], dtype=float)
        fit = {
            name: np.polyfit(bs, np.array([r[i] for r in rows], dtype=float), 1) for name, i in (("s", 1), ("mem", 2))
        }
        out[kind] = {
            "measured": [{"batch": b, "s": s, "peak_private_bytes": m} for b, s, m in rows],
            "extrapolated_s": float(np.polyval(fit["s"], target)),
            "extrapolated_peak_private_bytes": float(np.polyval(fit["mem"], target)),
        }
    return out


def probe_lines(p: dict) -> list[str]:
    lines = [
        "",
        f"training step at the suite's batch {p['target_batch']} (this host cannot hold it: measured at "
        f"batches {p['batches']} on {p['threads']} threads, fitted a + b·batch, extrapolated):",
        "",
        "| training | " + " | ".join(f"batch {b}: s (GB)" for b in p["batches"]) + f" | batch {p['target_batch']} "
        "extrapolated: s (GB) |",
        "|---|" + "---|" * (len(p["batches"]) + 1),
    ]
    for kind, v in p.items():
        if isinstance(v, dict):
            cells = " | ".join(f"{m['s']:.2f} ({_gb(m['peak_private_bytes'])})" for m in v["measured"])
            lines.append(
                f"| {kind} | {cells} | {v['extrapolated_s']:.1f} ({_gb(v['extrapolated_peak_private_bytes'])}) |"
            )
    return lines
