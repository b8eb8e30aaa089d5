"""``cmbench run SUITE --dry-run``: what a suite needs before it can run, without network,
and the cost model shared with rehearsals.

Lists the datasets (image folder present, decoded cache, or a hub copy to fetch), the
backbone's weights (in the local cache or to download), the experts (pinned checkpoints
present, cached, or to fine-tune), and the projected cost of the jobs to run
(:func:`project`): evaluation and training from the backbone's FLOPs at the assumed GPU
throughput, merge steps from a rehearsal's measurement of the same suite at full model
size (``rehearsals/<suite>/rehearsal.json``, or ``--rehearsal-report``) where there is
one, and the real split sizes (``vision.SPLIT_SIZES``) where the data is not present.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from .artefacts import expert_key, theta0_key
from .store import Store
from .suite import Job, Suite

# Effective throughput assumed for a job's GPU work on an H100/H200-class GPU. Jobs compute
# in float32 today (evaluation.precision does not exist yet): 25 TFLOP/s is ~50 % of the
# fp32 peak; bf16 autocast would be ~140 (~35 % of the dense bf16 peak).
GPU_TFLOPS = 25.0


def vit_gflops(width: int, layers: int, image: int, patch: int) -> float:
    """Forward GFLOPs of a ViT on one image: 2·L·(12·N·d² + 2·N²·d), N = tokens."""
    n = (image // patch) ** 2 + 1
    return 2 * layers * (12 * n * width**2 + 2 * n**2 * width) / 1e9


def backbone_gflops(suite: Suite) -> float:
    b = suite.backbone
    if b.kind == "tiny_vit":
        return vit_gflops(b.embed_dim, b.depth, b.img_size, b.patch_size)
    if b.kind == "open_clip":
        v = b.open_clip_config()["vision_cfg"]
        return vit_gflops(v["width"], v["layers"], b.image_size, v["patch_size"])
    import re

    m = re.search(r"vit_(tiny|small|base|large|huge)_patch(\d+)_(\d+)", b.model)
    width, layers = (
        {"tiny": (192, 12), "small": (384, 12), "base": (768, 12), "large": (1024, 24), "huge": (1280, 32)}[m.group(1)]
        if m
        else (768, 12)
    )
    return vit_gflops(
        b.kwargs.get("embed_dim", width),
        b.kwargs.get("depth", layers),
        b.image_size,
        b.kwargs.get("patch_size", int(m.group(2)) if m else 16),
    )


def _weights_line(suite: Suite) -> str:
    b = suite.backbone
    if b.kind == "tiny_vit":
        return "backbone: tiny ViT, θ0 pretrained by the harness (no download)"
    from huggingface_hub import try_to_load_from_cache

    if b.kind == "open_clip":
        if b.pretrained is None:
            return f"backbone: open_clip {b.model}, random init (no download)"
        import open_clip

        hub = (open_clip.get_pretrained_cfg(b.model, b.pretrained) or {}).get("hf_hub", "").strip("/")
        files = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
        name = f"open_clip {b.model} / {b.pretrained} (hf://{hub})"
    else:
        if not b.pretrained:
            return f"backbone: timm {b.model}, random init (no download)"
        import timm

        hub = timm.models.get_pretrained_cfg(b.model).hf_hub_id
        files = ("model.safetensors", "pytorch_model.bin")
        name = f"timm {b.model} (hf://{hub})"
    cached = hub and any(isinstance(try_to_load_from_cache(hub, f), str) for f in files)
    return f"backbone: {name}: " + ("in the local cache" if cached else "TO DOWNLOAD (--allow-download)")


def _data_lines(suite: Suite) -> list[str]:
    from .data.vision import CIL_SOURCES, clip_tasks, data_root

    root, out, seen = data_root(), [], set()
    for t in suite.tasks:
        source = t.params.get("source", t.dataset) if t.dataset == "class_split" else t.dataset
        if source in seen or (source not in clip_tasks() and source not in CIL_SOURCES):
            continue
        seen.add(source)
        if all((root / source / s).is_dir() for s in ("train", "test")):
            state = f"image folder {root / source}"
        elif source in clip_tasks():
            hub = clip_tasks()[source]["hub"]["test"]
            state = f"TO DOWNLOAD: hub copy {hub['path']} (--allow-download; needs `pip install datasets`)"
        else:
            state = f"MISSING: put it at {root / source}/{{train,test}}/<class>/<image>"
        out.append(f"  {source}: {state}")
    return out


def split_sizes(suite: Suite) -> dict[str, tuple[int, int]]:
    """(train, test) images per task at the real sizes (a class split: its share)."""
    from .data.vision import SPLIT_SIZES

    out = {}
    for t in suite.tasks:
        if t.dataset == "class_split":
            tr, te = SPLIT_SIZES.get(t.params.get("source"), (0, 0))
            k = t.params.get("n_tasks", 1)
            out[t.name] = (tr // k, te // k)
        else:
            out[t.name] = SPLIT_SIZES.get(t.dataset, (0, 0))
    return out


def project(
    suite: Suite, jobs: list[Job], measured: dict | None = None, sizes: dict | None = None, tflops: float = GPU_TFLOPS
) -> dict:
    """The cost of ``jobs``: seconds of evaluation and training at ``tflops`` effective
    (default: the assumed GPU), counted in images at ``sizes`` (default: the real split
    sizes); and merge seconds from ``measured``, a rehearsal's report (seconds per merge step,
    at full model size, on the host's CPU, which is where merges run today). A report of
    another backbone is scaled: data-free steps by parameter count (they stream the weights),
    data-using steps by forward FLOPs."""
    from .methods import Method, discover

    gf = backbone_gflops(suite)
    sizes = sizes or split_sizes(suite)
    cap = suite.evaluation.max_test_per_task
    test = {n: min(te, cap) if cap else te for n, (_, te) in sizes.items()}
    T = len(suite.tasks)
    out = {
        "gflops": gf,
        "eval_images": 0.0,
        "train_images": 0.0,
        "merge_steps": 0,
        "merge_s": 0.0,
        "unmeasured_merge_steps": 0,
        "other_hparams_merge_steps": 0,  # of the unmeasured: rehearsed with other hyperparameters
        "jobs": len(jobs),
    }
    methods = (measured or {}).get("methods", {})
    scale = {"none": 1.0, "data": 1.0}
    mb = (measured or {}).get("backbone")
    if mb:
        scale = {"none": backbone_params(suite) / mb["params"], "data": gf / mb["gflops"]}
    cls = discover()
    for job in jobs:
        if suite.setting == "merge_stream":  # rows 1..T (θ0's row is evaluated once per seed, below)
            per_row = sum(test.values())
            out["eval_images"] += T * per_row * ((T + 1) / (2 * T) if suite.evaluation.seen_only else 1)
        else:  # after step t: the t learned tasks, and the trained model on its own task
            out["eval_images"] += sum(test[n] * (T - i + 1) for i, n in enumerate(job.order))
            r = suite.training_of(job)
            all_seen = cls[job.method].train_tasks is not Method.train_tasks  # e.g. multitask: the union
            for t, n in enumerate(job.order):
                imgs = sum(sizes[m][0] * 0.9 for m in job.order[: t + 1]) if all_seen else sizes[n][0] * 0.9
                out["train_images"] += r.steps * r.batch_size if r.steps else r.epochs * imgs  # 10 % is val
        out["merge_steps"] += T
        m = methods.get(job.label)
        # a label rehearsed with other hyperparameters (--hparam fisher_average.n_samples=2 for
        # 256) measured another cost; reports written before the field are taken as they are
        if m and m.get("hparams", dict(job.hparams)) != dict(job.hparams):
            out["other_hparams_merge_steps"] += T
            m = None
        if m:
            out["merge_s"] += m["merge_step_s"] * T * scale["none" if m.get("data_access") == "none" else "data"]
        else:
            out["unmeasured_merge_steps"] += T
    if suite.setting == "merge_stream":
        out["eval_images"] += len({j.seed for j in jobs}) * sum(test.values())
    out["eval_gpu_s"] = gf * out["eval_images"] / (tflops * 1e3)
    out["train_gpu_s"] = 3 * gf * out["train_images"] / (tflops * 1e3)
    return out


def backbone_params(suite: Suite) -> int:
    """Parameters of the merged model (the backbone's state dict)."""
    from .models import create_backbone

    return sum(p.numel() for p in create_backbone(suite.backbone).parameters())


def load_measurement(suite: Suite, path: str | Path | None = None) -> dict | None:
    """A rehearsal's report of this suite (its own, or ``path``), if there is one."""
    p = Path(path) if path else Path("rehearsals") / suite.name / "rehearsal.json"
    try:
        rep = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return rep if rep.get("suite") == suite.name else None


def cost_line(suite: Suite, c: dict) -> str:
    merge = (
        f"merge steps {c['merge_steps']} ({c['merge_s'] / 3600:.2f} h measured by a rehearsal"
        + (f"; {c['unmeasured_merge_steps']} not measured: rehearse the suite" if c["unmeasured_merge_steps"] else "")
        + (
            f", {c['other_hparams_merge_steps']} of them rehearsed with other hyperparameters"
            if c["other_hparams_merge_steps"]
            else ""
        )
        + ")"
    )
    return (
        f"estimate ({c['gflops']:.1f} GFLOPs/image forward, {GPU_TFLOPS:.0f} TFLOP/s effective fp32): "
        f"evaluation {c['eval_gpu_s'] / 3600:.2f} GPU-h ({c['eval_images']:,.0f} images), training "
        f"{c['train_gpu_s'] / 3600:.2f} GPU-h ({c['train_images']:,.0f} images), {merge}"
    )


def describe(suite: Suite, todo: list[Job], store: Store, measured: dict | None = None) -> list[str]:
    lines = ["needs:", "  " + _weights_line(suite)]
    data = _data_lines(suite)
    if data:
        lines += ["  datasets (root $CMBENCH_DATA_ROOT):"] + ["  " + d for d in data]
    seeds = sorted({j.seed for j in todo})
    gf = backbone_gflops(suite)
    ft_images = 0
    if suite.setting == "merge_stream":
        missing = [
            (s, t) for s in seeds for t in suite.task_names() if not store.has("experts", expert_key(suite, s, t))
        ]
        if suite.experts.source == "checkpoints":
            from .models.checkpoint import resolve

            for t, spec in suite.experts.checkpoints.items():
                try:
                    where = "present" if resolve(spec.path, t).exists() else "MISSING"
                except Exception:  # noqa: BLE001 - not in the HF cache
                    where = "TO DOWNLOAD (--allow-download)"
                lines.append(
                    f"  expert {t}: {spec.format} {spec.path}: {where}"
                    + ("" if spec.sha256 else " (not pinned: add sha256)")
                )
        else:
            r = suite.experts.finetune
            lines.append(f"  experts to fine-tune: {len(missing)} (`cmbench finetune {suite.name}`)")
            ft_images = len(missing) * (r.steps or 0) * r.batch_size
    if not store.has("theta0", theta0_key(suite, seeds[0] if seeds else suite.seeds[0])):
        lines.append("  θ0 and heads: to build (first job)")
    c = project(suite, todo, measured or load_measurement(suite))
    by = Counter(j.label for j in todo)
    lines.append(
        cost_line(suite, c)
        + (
            f"; fine-tuning experts {3 * gf * ft_images / (GPU_TFLOPS * 1e3) / 3600:.2f} GPU-h ({ft_images:,} images)"
            if ft_images
            else ""
        )
        + f"; {len(todo)} jobs: {dict(by)}"
    )
    return lines


def projection_lines(suite: Suite, measured: dict) -> list[str]:
    """The real suite's cost (every job at the real sizes) from a rehearsal's measurements."""
    from .suite import expand

    jobs = expand(suite)
    c = project(suite, jobs, measured)
    methods = measured.get("methods", {})
    peak_host = max((m.get("peak_private_bytes") or 0 for m in methods.values()), default=0)
    peak_gpu = max((m.get("peak_gpu_bytes") or 0 for m in methods.values()), default=0)
    sizes = split_sizes(suite)
    side = suite.backbone.image_size
    decoded = (
        sum(
            te + (tr if measured.get("phases", {}).get("data preparation", {}).get("train_images") else 0)
            for tr, te in sizes.values()
        )
        * 3
        * side
        * side
    )
    return [
        "",
        f"## projection: the real {suite.name} ({len(jobs)} jobs = methods × seeds × orders)",
        "",
        cost_line(suite, c),
        f"total: {(c['eval_gpu_s'] + c['train_gpu_s']) / 3600:.1f} GPU-h of model passes + "
        f"{c['merge_s'] / 3600:.1f} h of merge steps on the job's CPU "
        f"(measured with {measured['host']['threads_per_job']} threads on the rehearsal host)",
        f"peak private host memory per job (measured at full model size): {peak_host / 2**30:.1f} GB; "
        f"peak GPU memory: {peak_gpu / 2**30:.1f} GB" + (" (not measured: no GPU)" if not peak_gpu else ""),
        f"decoded data cache at real sizes: {decoded / 2**30:.1f} GB",
    ]
