"""What a rehearsal measured: decode and step timings, memory, the model check and the
training-step probe, and the lines its report prints."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..suite import Suite
from .standins import rehearsal_of, split_size


def decode_all(suite: Suite, methods: set[str]) -> dict[str, Any]:
    """Decode (or map) what the jobs will read, once, before they fan out: every test split,
    and the train splits when one of ``methods`` reads training data."""
    from ..artefacts import load_tasks
    from ..registry import discover

    cls = discover()
    reads_train = suite.setting == "train_then_merge" or any(cls[m].data_access != "none" for m in methods)
    tasks = load_tasks(suite, suite.seeds[0])
    n = {"test_images": sum(len(td.test) for td in tasks.values())}
    if reads_train:
        n["train_images"] = sum(len(td.train) + len(td.val) for td in tasks.values())
    from ..config import current
    from ..measure import disk_bytes

    n["decoded_bytes"] = disk_bytes(current().data_root / ".decoded")
    return n


def measurements(suite: Suite, out: Path, phases: dict, root: Path, labels: set[str]) -> dict[str, Any]:
    """Per phase and per method, from the rehearsal's result files (of ``labels``) and
    artefact sidecars, and the cost model checked against them."""
    from ..measure import disk_bytes
    from ..plan import backbone_gflops, backbone_params
    from ..results import load_results
    from ..runner import Paths

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
        "protocol": protocol_facts(suite),
        "suite": suite.name,
        "rehearsal": rehearsal_of(suite).model_dump(mode="json"),
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


def protocol_facts(suite: Suite) -> dict[str, str]:
    """What a class-incremental suite's runs share with the published protocol it is shown
    beside (docs/fidelity.md), read from the objects the run uses: the backbone tag, the class
    order, how inputs are scaled, and the images each task trains on (generated at the
    rehearsal's sizes; the held-out share is the real run's)."""
    splits = [t for t in suite.tasks if t.dataset == "class_split"]
    if not splits:
        return {}
    from ..artefacts import load_tasks
    from ..models import create_backbone

    norm = getattr(create_backbone(suite.backbone), "normalize", None)

    def values(name: str) -> list[float]:
        return [round(float(v), 4) for v in torch.as_tensor(getattr(norm, name)).flatten()]

    scaling = (
        f"(x - mean) / std with mean {values('mean')}, std {values('std')} (pixels in [0, 1] before)"
        if norm is not None
        else "pixels in [-1, 1]"
    )
    tasks = load_tasks(suite, suite.seeds[0])
    first = tasks[splits[0].name]
    ids = [c for t in splits for c in tasks[t.name].class_ids or []]
    n_classes = len(ids)
    kind = "index order" if ids == sorted(ids) else "a permutation"
    train = [len(tasks[t.name].train) for t in splits]
    return {
        "backbone": f"{suite.backbone.kind} {getattr(suite.backbone, 'model', '')}",
        "class order": f"{kind} of {n_classes} classes, first ten {ids[:10]}",
        "input scaling": scaling,
        "images of the first task": f"train {len(first.train)}, validation {len(first.val)} (held out of the "
        f"train split), test {len(first.test)}",
        "training images per task": f"{train} ({sum(train)} in all)",
    }


def report_lines(suite: Suite, rep: dict) -> list[str]:
    from ..plan import example_word

    r, ex = rehearsal_of(suite), example_word(suite)  # an image, or a text suite's prompt
    lines = [
        f"# rehearsal of {suite.name} (random weights, generated data)",
        "",
        f"sizes: scale {r.scale}, at most {r.max_per_split or '-'} {ex}s per split; caps: "
        f"{json.dumps(r.caps) if r.caps else 'none'}",
        "",
        *(f"protocol: {k}: {v}" for k, v in (rep.get("protocol") or {}).items()),
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
        f"| method | jobs | merge s/step | train s/opt. step (batch) | eval s ({ex}s/s) | job s | "
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
        f"evaluation: {rep['eval_images_per_s'] or 0:.1f} {ex}s/s on {rep['host']['threads_per_job']} threads "
        f"({rep['host']['cpus']} CPUs)",
    ]
    c = rep.get("check")
    if c:
        lines += [
            "",
            f"cost model checked on these jobs (sizes as generated, the host's {c['host_gflops']:.0f} "
            f"GFLOP/s from evaluation): evaluation {ex}s predicted {c['eval_images_predicted']:,.0f}, "
            f"counted {c['eval_images_counted']:,.0f}; training seconds predicted "
            f"{c['train_s_predicted']:.0f} (backward = 2 × forward), measured {c['train_s_measured']:.0f}",
        ]
    return lines


def model_check(suite: Suite, recs: list[dict]) -> dict | None:
    """``plan.project`` applied to the jobs this rehearsal ran, at the sizes it generated and
    the throughput its evaluation reached, against what they counted and measured."""
    from ..plan import backbone_gflops, project
    from ..suite import Job

    ev = [(r["timings"]["eval_s"], r["timings"]["eval_images"]) for r in recs if r["timings"].get("eval_s")]
    if not ev:
        return None
    gf = backbone_gflops(suite)
    host = gf * sum(i for _, i in ev) / sum(s for s, _ in ev)  # GFLOP/s
    sizes = {}
    r = rehearsal_of(suite)
    for t in suite.tasks:
        src = str(t.params.get("source") if t.dataset == "class_split" else t.dataset)
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

    from ..measure import measured, memory
    from ..models import create_backbone, feature_dim
    from ..lora import add_lora

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
