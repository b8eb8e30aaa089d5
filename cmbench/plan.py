"""``cmbench run SUITE --dry-run``: what a suite needs before it can run, without network.

Lists the datasets (image folder present, decoded cache, or a hub copy to fetch), the
backbone's weights (in the local cache or to download), the experts (pinned checkpoints
present, cached, or to fine-tune), and an estimate of GPU time for fine-tuning and
evaluation from the backbone's FLOPs. The estimate is a rough guide: it assumes
``GPU_TFLOPS`` effective (bf16 on an H100-class GPU at ~35 % utilisation) and the
published test-split sizes where the data is not present; merge steps themselves are
not counted (they are memory-bound and small, except data-driven methods such as ODE-M).
"""

from __future__ import annotations

from collections import Counter

from .artefacts import Store, expert_key, theta0_key
from .suite import Job, Suite

GPU_TFLOPS = 140.0

# test-split sizes of the hub copies FusionBench uses (for the estimate only)
TEST_SIZES = {"sun397": 19850, "stanford_cars": 8041, "resisc45": 6300, "eurosat": 2700, "svhn": 26032,
              "gtsrb": 12630, "mnist": 10000, "dtd": 1880, "flowers102": 6149, "pcam": 32768, "fer2013": 7178,
              "oxford_pet": 3669, "stl10": 8000, "cifar100": 10000, "cifar10": 10000, "food101": 25250,
              "fashion_mnist": 10000, "emnist_letters": 20800, "kmnist": 10000, "rendered_sst2": 1821}
# class-incremental sources (approximate; InfLoRA-style splits): (train, test) images over all classes
CIL_SIZES = {"cifar100": (50000, 10000), "imagenet_r": (24000, 6000), "imagenet_a": (6000, 1500),
             "domainnet": (410000, 177000), "cub200": (6000, 5800)}


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
    width, layers = {"tiny": (192, 12), "small": (384, 12), "base": (768, 12), "large": (1024, 24),
                     "huge": (1280, 32)}[m.group(1)] if m else (768, 12)
    return vit_gflops(b.kwargs.get("embed_dim", width), b.kwargs.get("depth", layers), b.image_size,
                      b.kwargs.get("patch_size", int(m.group(2)) if m else 16))


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


def describe(suite: Suite, todo: list[Job], store: Store) -> list[str]:
    lines = ["needs:", "  " + _weights_line(suite)]
    data = _data_lines(suite)
    if data:
        lines += ["  datasets (root $CMBENCH_DATA_ROOT):"] + ["  " + d for d in data]
    seeds = sorted({j.seed for j in todo})
    gf = backbone_gflops(suite)
    ft_images = 0
    if suite.setting == "merge_stream":
        missing = [(s, t) for s in seeds for t in suite.task_names() if not store.has("experts", expert_key(suite, s, t))]
        if suite.experts.source == "checkpoints":
            from .models.checkpoint import resolve

            for t, spec in suite.experts.checkpoints.items():
                try:
                    where = "present" if resolve(spec.path, t).exists() else "MISSING"
                except Exception:  # noqa: BLE001 - not in the HF cache
                    where = "TO DOWNLOAD (--allow-download)"
                lines.append(f"  expert {t}: {spec.format} {spec.path}: {where}"
                             + ("" if spec.sha256 else " (not pinned: add sha256)"))
        else:
            r = suite.experts.finetune
            lines.append(f"  experts to fine-tune: {len(missing)} (`cmbench finetune {suite.name}`)")
            steps = r.steps or 0
            ft_images = len(missing) * steps * r.batch_size
    else:  # each job trains every task once
        r = suite.training
        sources = {t.params.get("source") for t in suite.tasks if t.dataset == "class_split"}
        train_images = sum(CIL_SIZES.get(src, (0, 0))[0] for src in sources)
        ft_images = len(todo) * (r.steps * r.batch_size if r.steps else r.epochs * train_images)
    if not store.has("theta0", theta0_key(suite, seeds[0] if seeds else suite.seeds[0])):
        lines.append("  θ0 and heads: to build (first job)")
    sizes = {t.name: TEST_SIZES.get(t.dataset, 0) for t in suite.tasks}
    for t in suite.tasks:
        if t.dataset == "class_split":
            sizes[t.name] = CIL_SIZES.get(t.params.get("source"), (0, 0))[1] // t.params.get("n_tasks", 1)
    cap = suite.evaluation.max_test_per_task
    per_eval = sum(min(n, cap) if cap else n for n in sizes.values())
    T = len(suite.tasks)
    rows = T if not suite.evaluation.seen_only else (T + 1) / 2  # a seen-only row covers t of T tasks
    eval_images = len(todo) * rows * per_eval
    ft_h = 3 * gf * ft_images / (GPU_TFLOPS * 1e3) / 3600
    ev_h = gf * eval_images / (GPU_TFLOPS * 1e3) / 3600
    by = Counter(j.label for j in todo)
    lines.append(f"estimate ({gf:.1f} GFLOPs/image forward, {GPU_TFLOPS:.0f} TFLOP/s effective): fine-tuning "
                 f"{ft_h:.2f} GPU-h ({ft_images:,} images), evaluation {ev_h:.2f} GPU-h "
                 f"({eval_images:,.0f} images over {len(todo)} jobs: {dict(by)}); merge steps not counted")
    return lines
