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

from . import CmbenchError
from .catalog import TEXT_DATASETS
from .artefacts import ToBuild
from .suite import Job, Suite, TrainRecipe

# Effective throughput assumed for a job's GPU work on an H100/H200-class GPU. Jobs compute
# in float32 today (evaluation.precision does not exist yet): 25 TFLOP/s is ~50 % of the
# fp32 peak; bf16 autocast would be ~140 (~35 % of the dense bf16 peak).
GPU_TFLOPS = 25.0
# Effective throughput per thread assumed for a CPU suite's model passes: the micro suites'
# tiny ViTs evaluate at 16 (linearised, forward plus a JVP) to 48 (plain) GFLOP/s per thread
# on a 2-core x86 host (their result files' eval timings); a linearised model counts 3 passes.
CPU_GFLOPS = 20.0
# A run whose estimate exceeds this many device-hours (GPU-h; thread-hours for a CPU suite)
# asks for --accept-cost first: 15-20 times the largest shipped suite of each kind
# (`cmbench run SUITE --dry-run`: clip-vit-l14-tall20 1,006 GPU-h, micro-digits-merge 6.8
# thread-h before its merges).
COST_LIMIT_H = {"gpu": 20_000.0, "cpu": 100.0}


def vit_gflops(width: int, layers: int, image: int, patch: int) -> float:
    """Forward GFLOPs of a ViT on one image: 2·L·(12·N·d² + 2·N²·d), N = tokens."""
    n = (image // patch) ** 2 + 1
    return 2 * layers * (12 * n * width**2 + 2 * n**2 * width) / 1e9


def t5_gflops(cfg: dict, prompt_tokens: int = 128, answer_tokens: int = 10) -> float:
    """Forward GFLOPs of answering one prompt with a T5: 2 FLOPs per weight per token, the
    encoder over the prompt, the decoder and the LM head over each generated token (GLUE's
    prompts are about 60 to 200 tokens: 128 assumed)."""
    d, inner, ff = cfg["d_model"], cfg["d_kv"] * cfg["num_heads"], cfg["d_ff"]
    mlp = (3 if str(cfg.get("feed_forward_proj", "")).startswith("gated") else 2) * d * ff
    enc = cfg["num_layers"] * (4 * d * inner + mlp)
    dec = cfg.get("num_decoder_layers") or cfg["num_layers"]
    dec_w = dec * (8 * d * inner + mlp) + cfg["vocab_size"] * d
    return 2 * (enc * prompt_tokens + dec_w * answer_tokens) / 1e9


def backbone_gflops(suite: Suite) -> float:
    b = suite.backbone
    if b.kind == "hf_seq2seq":
        from .models.seq2seq import cached_config

        return t5_gflops(cached_config(b))
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

    if b.kind == "hf_seq2seq" and b.config is not None:
        return f"backbone: micro text model {b.model}, θ0 pretrained by the harness (no download)"
    if b.kind == "hf_seq2seq":
        from .models.seq2seq import WEIGHT_FILE

        cached = Path(b.model).is_dir() or isinstance(try_to_load_from_cache(b.model, WEIGHT_FILE), str)
        return f"backbone: {b.model}: " + ("in the local cache" if cached else "TO DOWNLOAD (--allow-download)")
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

        try:
            cfg = timm.models.get_pretrained_cfg(b.model)
        except RuntimeError:  # timm's "Invalid pretrained tag"
            cfg = None
        if cfg is None:  # a name timm does not know: said here, not as a traceback
            return f"backbone: timm {b.model}: not a timm model with pretrained weights (check backbone.model)"
        hub = cfg.hf_hub_id
        files = ("model.safetensors", "pytorch_model.bin")
        name = f"timm {b.model} (hf://{hub})"
    cached = hub and any(isinstance(try_to_load_from_cache(hub, f), str) for f in files)
    return f"backbone: {name}: " + ("in the local cache" if cached else "TO DOWNLOAD (--allow-download)")


def _data_lines(suite: Suite) -> list[str]:
    from .config import current
    from .data import DATASET_SIZES
    from .data.vision import CIL_SOURCES, clip_tasks

    root, out, seen = current().data_root, [], set()
    for t in suite.tasks:
        if t.dataset in DATASET_SIZES:
            continue  # generated by its builder (the micro tasks, text_micro): nothing to fetch
        if t.dataset in TEXT_DATASETS:
            from .data.text import GLUE_REPO

            out.append(
                f"  {t.dataset}: hub copy {GLUE_REPO} ({t.dataset.removeprefix('glue_')}), read from the "
                "`datasets` cache or fetched with --allow-download"
            )
            continue
        source = t.params.get("source", t.dataset) if t.dataset == "class_split" else t.dataset
        if source in seen or (source not in clip_tasks() and source not in CIL_SOURCES):
            continue
        seen.add(source)
        if all((root / source / s).is_dir() for s in ("train", "test")):
            state = f"image folder {root / source}"
        elif source in clip_tasks():
            import importlib.util

            hub = clip_tasks()[source]["hub"]["test"]
            have = importlib.util.find_spec("datasets") is not None
            state = f"TO DOWNLOAD: hub copy {hub['path']} (--allow-download" + (
                ")" if have else "; needs `pip install datasets`)"
            )
        else:
            state = f"MISSING: put it at {root / source}/{{train,test}}/<class>/<image>"
        out.append(f"  {source}: {state}")
    return out


def split_sizes(suite: Suite, tasks: list | None = None) -> dict[str, tuple[int, int]]:
    """(train, test) images per task (of ``tasks``, default the suite's): what a generated
    dataset's builder makes from the task's params, else the real sizes (a class split: its
    share)."""
    from .data import DATASET_SIZES
    from .data.vision import SPLIT_SIZES

    out = {}
    for t in suite.tasks if tasks is None else tasks:
        if t.dataset in DATASET_SIZES:
            tr, _, te = DATASET_SIZES[t.dataset](t.params)
            out[t.name] = (tr, te)
        elif t.dataset in TEXT_DATASETS:
            from .data.text import GLUE_SIZES

            out[t.name] = GLUE_SIZES[t.dataset.removeprefix("glue_")]
        elif t.dataset == "class_split":
            tr, te = SPLIT_SIZES.get(t.params.get("source"), (0, 0))  # type: ignore[arg-type]  # None: (0, 0)
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
    from .methods import Method
    from .registry import discover

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
    """Parameters of the merged model (the backbone's state dict); a text model's counted from
    its config (``seq2seq.cached_config``), so a dry run needs no download."""
    import torch

    from .models import create_backbone

    if suite.backbone.kind == "hf_seq2seq":
        from .models.seq2seq import cached_config, random_model

        with torch.device("meta"):  # counts the parameters without allocating them
            model = random_model(cached_config(suite.backbone))
    else:
        model = create_backbone(suite.backbone)
    return sum(p.numel() for p in model.parameters())


def load_measurement(suite: Suite, path: str | Path | None = None) -> dict | None:
    """A rehearsal's report of this suite (its own, or ``path``), if there is one."""
    p = Path(path) if path else Path("rehearsals") / suite.name / "rehearsal.json"
    try:
        rep = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return rep if rep.get("suite") == suite.name else None


def on_gpu(suite: Suite) -> bool:
    return suite.resources.gpus_per_job > 0


def throughput_tflops(suite: Suite) -> float:
    """The effective TFLOP/s one job's model passes run at, as assumed (see the constants)."""
    if on_gpu(suite):
        return GPU_TFLOPS
    passes = 3 if getattr(suite.backbone, "linearized", False) else 1
    return CPU_GFLOPS * suite.resources.cpus_per_job / passes / 1e3


def artefact_images(suite: Suite, build: ToBuild) -> dict[str, float]:
    """Images the artefacts still to build pass through training: θ0's pretraining (a micro
    backbone, per seed not cached) and each expert's fine-tuning (per seed and task not
    cached)."""
    out = {"pretrain_images": 0.0, "finetune_images": 0.0}
    r: TrainRecipe  # θ0's pretraining, then the experts' fine-tuning
    if suite.backbone.kind == "tiny_vit":
        pre = split_sizes(suite, suite.pretrain.tasks or suite.tasks)
        r = suite.pretrain
        per_seed = r.steps * r.batch_size if r.steps else r.epochs * sum(tr for tr, _ in pre.values())
        out["pretrain_images"] = per_seed * len(build.theta0)
    if build.experts:
        sizes = split_sizes(suite)
        for _, t, _ in build.experts:
            r = suite.experts.recipe_for(t)
            out["finetune_images"] += r.steps * r.batch_size if r.steps else r.epochs * sizes[t][0]
    return out


def total_cost(suite: Suite, todo: list[Job], build: ToBuild, measured: dict | None = None) -> dict:
    """What running ``todo`` costs on the suite's device: ``project``'s model passes and merge
    steps, plus the artefacts still to build; ``hours`` of device time (GPU-h, or thread-hours
    on the CPU: jobs' model passes and merges, which run with cpus_per_job threads)."""
    tf = throughput_tflops(suite)
    c = project(suite, todo, measured, tflops=tf)
    c.update(artefact_images(suite, build))
    c["artefact_s"] = 3 * c["gflops"] * (c["pretrain_images"] + c["finetune_images"]) / (tf * 1e3)
    per = 1 if on_gpu(suite) else suite.resources.cpus_per_job
    c["hours"] = (c["eval_gpu_s"] + c["train_gpu_s"] + c["artefact_s"]) * per / 3600 + c["merge_s"] / 3600
    c["unit"] = "GPU-h" if on_gpu(suite) else "CPU thread-h"
    return c


def example_word(suite: Suite) -> str:
    """What one evaluated example is: an image, or a text prompt (seq2seq suites)."""
    return "prompt" if suite.backbone.kind == "hf_seq2seq" else "image"


def check_cost(suite: Suite, c: dict, accept: bool) -> None:
    """Refuse, in one line, a run estimated above ``COST_LIMIT_H`` unless ``accept``."""
    limit = COST_LIMIT_H["gpu" if on_gpu(suite) else "cpu"]
    if c["hours"] > limit and not accept:
        raise CmbenchError(
            f"suite {suite.name}: estimated {c['hours']:,.0f} {c['unit']} ({c['jobs']} jobs, "
            f"{c['gflops']:.3g} GFLOPs per {example_word(suite)}; `cmbench run {suite.name} --dry-run` itemises "
            "it), above "
            f"{limit:,.0f}: check the suite's sizes, or pass --accept-cost to run it"
        )


def memory_estimate(suite: Suite) -> dict[str, float] | None:
    """Bytes a job of a micro suite holds at its peak, before anything is built: every task's
    images (uint8, in memory, and float64 while one split is generated), the model trained
    with Adam (weights, gradients, two moments) and its activations at the largest batch,
    or merged (θ0, the merged model, an expert and a few methods' vectors); plus the
    libraries. None for real-scale backbones, whose data stream from disk (a rehearsal
    measures those)."""
    b = suite.backbone
    if b.kind != "tiny_vit":
        return None
    import torch

    from .models import create_backbone

    with torch.device("meta"):  # counts the parameters without allocating them
        params = sum(p.numel() for p in create_backbone(b).parameters())
    pixels = b.in_chans * b.img_size**2
    tasks = [*suite.tasks, *(suite.pretrain.tasks or [])]
    from .data import DATASET_SIZES

    splits = [DATASET_SIZES[t.dataset](t.params) for t in tasks if t.dataset in DATASET_SIZES]
    data = sum(sum(n) for n in splits) * pixels + 3 * 8 * max((max(n) for n in splits), default=0) * pixels
    tokens = (b.img_size // b.patch_size) ** 2 + 1
    per_image = b.depth * tokens * (b.embed_dim * (10 + 2 * b.mlp_ratio) + 2 * b.num_heads * tokens) * 4
    batch = max(suite.pretrain.batch_size, suite.training.batch_size, suite.experts.finetune.batch_size)
    train = 16 * params + batch * per_image * (2 if b.linearized else 1)
    merge = 8 * 4 * params
    evaluation = suite.evaluation.batch_size * per_image / 4
    return {
        "data": float(data),
        "model": float(max(train, merge, evaluation)),
        "params": float(params),
        "total": float(data + max(train, merge, evaluation) + 1.5 * 2**30),
    }


def machine_memory() -> int | None:
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(suite: Suite, m: dict | None) -> None:
    """Refuse, in one line, a micro suite whose job cannot fit this machine's memory."""
    have = machine_memory()
    if m and have and m["total"] > have:
        raise CmbenchError(
            f"suite {suite.name}: a job would hold about {m['total'] / 2**30:,.1f} GiB (data "
            f"{m['data'] / 2**30:,.1f} GiB, model {m['params'] / 1e6:,.1f} M parameters: "
            f"{m['model'] / 2**30:,.1f} GiB training), more than this machine's {have / 2**30:.0f} GiB; shrink the "
            "suite (backbone dims, split sizes, batch sizes)"
        )


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
    unit = c.get("unit", "GPU-h")
    speed = (
        f"{GPU_TFLOPS:.0f} TFLOP/s effective fp32"
        if unit == "GPU-h"
        else f"{CPU_GFLOPS:.0f} GFLOP/s per thread effective" + (", ×3 linearised" if suite.backbone.linearized else "")
    )
    per = 1 if unit == "GPU-h" else suite.resources.cpus_per_job
    ex = example_word(suite)
    return (
        f"estimate ({c['gflops']:.3g} GFLOPs/{ex} forward, {speed}): "
        f"evaluation {per * c['eval_gpu_s'] / 3600:.2f} {unit} ({c['eval_images']:,.0f} {ex}s), "
        f"training {per * c['train_gpu_s'] / 3600:.2f} {unit} ({c['train_images']:,.0f} {ex}s), {merge}"
    )


def _expert_lines(suite: Suite) -> list[str]:
    """Each pinned expert checkpoint: present, missing, or to download (local caches only)."""
    from .models.checkpoint import resolve

    out = []
    for t, spec in suite.experts.checkpoints.items():
        try:
            where = "present" if resolve(spec.path, t, offline=True).exists() else "MISSING"
        except Exception:  # noqa: BLE001 - not in the HF cache
            where = "TO DOWNLOAD (--allow-download)"
        out.append(
            f"expert {t}: {spec.format} {spec.path}: {where}" + ("" if spec.sha256 else " (not pinned: add sha256)")
        )
    return out


def needs(suite: Suite) -> list[str]:
    """What the suite reads from outside the output folder: backbone weights, datasets, expert
    checkpoints, each with where it stands (local caches only: nothing is fetched)."""
    lines = [_weights_line(suite)]
    data = _data_lines(suite)
    if data:
        lines += ["datasets (root $CMBENCH_DATA_ROOT):"] + data
    if suite.setting == "merge_stream" and suite.experts.source == "checkpoints":
        lines += _expert_lines(suite)
    return lines


def missing_downloads(suite: Suite) -> list[str]:
    """The lines of ``needs`` that are not on this machine (to download, or missing)."""
    if suite.rehearsal:  # a rehearsal writes its own stand-ins
        return []
    return [line.strip() for line in needs(suite) if "TO DOWNLOAD" in line or "MISSING" in line]


def preflight(
    suite: Suite, todo: list[Job], build: ToBuild, *, allow_download: bool, accept_cost: bool, local: bool
) -> None:
    """What a run is refused for before anything is built: downloads first (offline unless
    allowed; all that is missing said at once instead of failing on the first file a worker
    cannot find), then its cost and, for a run on this machine, its memory (a cluster's nodes
    are not this machine)."""
    missing = [] if allow_download else missing_downloads(suite)
    if missing:
        raise CmbenchError(
            f"suite {suite.name} reads what is not on this machine, and downloads are off: "
            + "; ".join(m.replace(" (--allow-download)", "") for m in missing)
            + f". Rerun with --allow-download to fetch them, or put them in the local caches "
            f"(`cmbench run {suite.name} --dry-run` lists each)"
        )
    if suite.rehearsal is None:  # a rehearsal measures at capped sizes: its cost is its point
        check_cost(suite, total_cost(suite, todo, build), accept_cost)
    if local:
        check_memory(suite, memory_estimate(suite))


def describe(suite: Suite, todo: list[Job], build: ToBuild, measured: dict | None = None) -> list[str]:
    lines = ["needs:", *("  " + line for line in needs(suite))]
    gf = backbone_gflops(suite)
    if build.experts or (suite.setting == "merge_stream" and suite.experts.source != "checkpoints"):
        seq = sum(e[2] is not None for e in build.experts)
        lines.append(
            f"  experts to fine-tune: {len(build.experts)}"
            + (f" ({seq} of them sequential)" if seq else "")
            + f" (`cmbench finetune {suite.name}`)"
        )
    if build.theta0:
        lines.append("  θ0 and heads: to build (first job)")
    c = total_cost(suite, todo, build, measured or load_measurement(suite))
    by = Counter(j.label for j in todo)
    per = 1 if on_gpu(suite) else suite.resources.cpus_per_job
    arts = [
        f"{what} {per * 3 * gf * c[k] / (throughput_tflops(suite) * 1e3) / 3600:.2f} {c['unit']} "
        f"({c[k]:,.0f} {example_word(suite)}s)"
        for what, k in (("pretraining θ0", "pretrain_images"), ("fine-tuning experts", "finetune_images"))
        if c[k]
    ]
    lines.append(cost_line(suite, c) + "".join(f"; {a}" for a in arts) + f"; {len(todo)} jobs: {dict(by)}")
    lines.append(f"total: about {c['hours']:,.2f} {c['unit']}")
    m = memory_estimate(suite)
    if m:
        have = machine_memory()
        lines.append(
            f"memory: a job holds about {m['total'] / 2**30:.1f} GiB at its peak (data {m['data'] / 2**30:.2f} GiB, "
            f"{m['params'] / 1e6:.2f} M parameters)" + (f"; this machine has {have / 2**30:.0f} GiB" if have else "")
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
