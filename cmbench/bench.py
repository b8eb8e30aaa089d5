"""``cmbench bench``: merge-step time and peak memory per method on a ViT-B/32-size model
(random init, no download), the memory-bandwidth floor measured in the same run,
evaluation throughput, and optionally the micro suite's wall time cold and warm.

Each method is measured in a fresh subprocess so its peak memory (max RSS growth over
the process's baseline after building the inputs) is its own. Times are the median of
``repeats`` merge steps at step t = 3 (after two warm-up steps that build the method's
state), with the thread count fixed.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import queue
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .methods import Context

DEFAULT_METHODS = ("weight_average", "task_arithmetic", "ties", "magmax", "opcm", "consensus_ta", "sequential")


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> float:
    """Reset the peak RSS (Linux: clear_refs 5) and return the current RSS, in MB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _status_mb("VmRSS")


def vit_b32(seed: int):
    """An 87.8M-parameter CLIP ViT-B/32 image tower, random weights: its state dict and
    layout (``ctx.layout``)."""
    import logging

    from .models import layout_of
    from .models.clip import CLIPImageEncoder
    from .suite import OpenCLIP

    logging.getLogger().setLevel(logging.ERROR)  # open_clip warns that no weights were loaded
    torch.manual_seed(seed)
    model = CLIPImageEncoder.create(OpenCLIP(kind="open_clip", model="ViT-B-32", pretrained=None))
    return model.state_dict(), layout_of(model)


def vit_b32_state(seed: int) -> dict[str, torch.Tensor]:
    return vit_b32(seed)[0]


def flan_t5_base(seed: int):
    """Flan-T5-base (247.6M parameters, random weights, the architecture of
    ``google/flan-t5-base``): its state dict (the tied token embedding under its three names,
    as FusionBench merges ``state_dict()``) and layout."""
    from .models import layout_of
    from .models.seq2seq import FLAN_T5_BASE, random_model

    model = random_model(FLAN_T5_BASE, seed)
    return {k: v.detach() for k, v in model.state_dict().items()}, layout_of(model)


# the models ``cmbench bench --model`` measures on: name -> (builder, words for the header)
MODELS = {
    "vit-b32": (vit_b32, "CLIP ViT-B/32 image tower, random"),
    "flan-t5-base": (flan_t5_base, "Flan-T5-base, random"),
}


def _perturbed(theta0, seed):
    g = torch.Generator().manual_seed(seed)
    return {
        k: v + 1e-3 * torch.randn(v.shape, generator=g).to(v.device) if v.is_floating_point() else v.clone()
        for k, v in theta0.items()
    }


class _Images:
    """Random 224² images with 10 classes per task, handed as the harness's DataAccess hands
    them (train splits and nested calibration subsets; ``on`` the job's device)."""

    ctx: Context | None  # set once the Context is built

    def __init__(self, n: int, on: torch.device):
        self.n, self.on, self.ctx = n, on, None

    def _split(self, task: str, n: int):
        from .data import Split

        g = torch.Generator().manual_seed(int(task[1:]))
        return Split(
            x=torch.randint(0, 256, (n, 3, 224, 224), dtype=torch.uint8, generator=g).to(self.on),
            y=torch.randint(0, 10, (n,), generator=g).to(self.on),
        )

    def current(self, split: str = "train"):
        assert self.ctx is not None
        return self._split(self.ctx.task, self.n)

    def calibration(self, task: str, n: int):
        return self._split(task, min(n, self.n))


def _network(device: str):
    """``ctx.network`` over the ViT-B/32 tower with a random 10-class head per task."""
    from .models import Head
    from .models.clip import CLIPImageEncoder
    from .suite import OpenCLIP

    model = CLIPImageEncoder.create(OpenCLIP(kind="open_clip", model="ViT-B-32", pretrained=None)).to(device)
    heads: dict[str, Head] = {}

    def head(task: str) -> Head:
        if task not in heads:
            g = torch.Generator().manual_seed(int(task[1:]))
            heads[task] = Head(torch.randn(10, 512, generator=g) * 10).to(device)
        return heads[task]

    def network(state, classes: str = "task", task: str | None = None):
        model.load_state_dict(state)
        return model, head(task or network.ctx.task)  # type: ignore[attr-defined]  # set by the caller

    return network


def _measure_method(name: str, threads: int, repeats: int, device: str, hparams: dict, model: str, q) -> None:
    torch.set_num_threads(threads)
    from . import methods as methods_mod
    from . import registry

    theta0, layout = MODELS[model][0](0)
    theta0 = {k: v.to(device) for k, v in theta0.items()}
    experts = [{k: v.to(device) for k, v in _perturbed(theta0, i + 1).items()} for i in range(2 + repeats)]
    hparams = dict(hparams)
    n_images = hparams.pop("bench_samples", 256)
    method = registry.create(name, hparams)
    ctx = methods_mod.Context(
        theta0=theta0,
        num_tasks=2 + repeats,
        seed=0,
        device=torch.device(device),
        generator=torch.Generator().manual_seed(0),
        layout=layout,
    )
    if type(method).data_access != "none":  # data-using methods: random images, a real forward pass
        if model != "vit-b32":
            raise ValueError(f"bench: {name} reads data; data-using methods are measured on --model vit-b32 only")
        ctx.data, ctx.network = _Images(n_images, torch.device(device)), _network(device)
        ctx.data.ctx = ctx.network.ctx = ctx  # type: ignore[union-attr]  # network: _network's function
    method.start(ctx)
    merged = theta0
    for t in (1, 2):  # warm-up steps build the method's state (τ_max, projections, …)
        _at_step(ctx, t)
        merged = method.merge(ctx, merged, experts[t - 1], ctx.task)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = _reset_peak()
    times = []
    for r in range(repeats):
        t = 3 + r
        _at_step(ctx, t)
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = method.merge(ctx, merged, experts[t - 1], ctx.task)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        merged = out
        del out
    # growth of the peak RSS over the RSS before the timed steps: the merge's temporaries
    # and any state it grows (inputs, the previous merged model and its state excluded)
    # (on the GPU: growth of the peak allocated device memory over what was allocated then)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else _status_mb("VmHWM")) - base
    q.put({"method": name, "step_s": statistics.median(times), "peak_mb": peak})


def _at_step(ctx, t: int) -> None:
    """Tasks are named t1, t2, …; step t has seen t1..tt."""
    ctx.step, ctx.task, ctx.seen_tasks = t, f"t{t}", [f"t{i}" for i in range(1, t + 1)]


def _stream_memory(name: str, T: int, threads: int, model: str, q) -> None:
    """Peak RSS growth of a merge stream of T experts on the bench's model, run as the
    protocol runs it: θ0, the merged model and the incoming expert (made on arrival,
    dropped after its step) plus whatever the method keeps."""
    torch.set_num_threads(threads)
    from . import methods as methods_mod
    from . import registry

    theta0, layout = MODELS[model][0](0)
    method = registry.create(name, {})
    ctx = methods_mod.Context(
        theta0=theta0, num_tasks=T, seed=0, generator=torch.Generator().manual_seed(0), layout=layout
    )
    method.start(ctx)
    base = _reset_peak()
    merged = theta0
    for t in range(1, T + 1):
        incoming = _perturbed(theta0, t)
        _at_step(ctx, t)
        merged = method.merge(ctx, merged, incoming, ctx.task)
        del incoming
    q.put({"method": name, "T": T, "peak_mb": _status_mb("VmHWM") - base})


def _floor(threads: int, device: str, model: str = "vit-b32") -> dict:
    """axpy (m += λ·τ) over the model's floats, in place: the bandwidth floor of a TA step."""
    torch.set_num_threads(threads)
    n = sum(v.numel() for v in MODELS[model][0](0)[0].values())
    a = torch.randn(n, device=device)
    b = torch.randn(n, device=device)
    times = []
    for _ in range(5):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a.add_(b, alpha=0.3)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    s = min(times)
    return {"params": n, "axpy_s": s, "gbps": 3 * 4 * n / s / 1e9}  # read a, b; write a


def _eval_throughput(threads: int, device: str) -> list[dict]:
    """img/s of ``models.features`` (the harness's evaluation path: uint8 batches from the
    CPU, converted on the device); on a GPU per precision, beside the bare model's forward
    at the same precision and batch size with float inputs already on the device."""
    from .models import create_backbone
    from .models.clip import CLIPImageEncoder
    from .suite import OpenCLIP, TinyViT

    torch.set_num_threads(threads)
    out = []
    tiny = TinyViT(img_size=16, patch_size=4, in_chans=1, embed_dim=128, depth=4, num_heads=4, mlp_ratio=2.0)
    plain = create_backbone(tiny).to(device)
    lin = create_backbone(tiny.model_copy(update={"linearized": True}), plain.state_dict()).to(device)
    vit = CLIPImageEncoder.create(OpenCLIP(kind="open_clip", model="ViT-B-32", pretrained=None)).to(device)
    for label, model, shape, n, bs in (
        ("tiny ViT (micro)", plain, (1, 16, 16), 8192, 1024),
        ("tiny ViT, linearised", lin, (1, 16, 16), 4096, 1024),
        ("ViT-B/32 224²", vit, (3, 224, 224), 256 if device == "cpu" else 8192, 128 if device == "cpu" else 512),
    ):
        x = torch.randint(0, 255, (n, *shape), dtype=torch.uint8)
        out.append({"model": label, "img_s": _img_s(model, x, bs)})
    if device == "cuda":
        out += _cuda_eval_variants(vit, x, bs)  # x, bs: the ViT-B/32 row's
    return out


@torch.no_grad()
def _bare_img_s(model, x: torch.Tensor, bs: int, precision: str) -> float:
    from .models import arithmetic

    xd = x.to("cuda").float().div_(127.5).sub_(1.0)
    model.eval()
    with arithmetic(torch.device("cuda"), precision):
        model(xd[:bs])
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(0, len(xd), bs):
            model(xd[i : i + bs])
        torch.cuda.synchronize()
    return len(xd) / (time.perf_counter() - t0)


def _img_s(model, x: torch.Tensor, bs: int, precision: str = "fp32") -> float:
    """Throughput of ``models.features`` on ``x`` after a one-batch warm-up."""
    from .models import features

    features(model, x[:bs], bs, precision)  # it returns CPU tensors: on a GPU, the work is done by then
    t0 = time.perf_counter()
    features(model, x, bs, precision)
    return len(x) / (time.perf_counter() - t0)


def _cuda_eval_variants(vit, x: torch.Tensor, bs: int) -> list[dict]:
    """ViT-B/32 on the GPU in each ``evaluation.precision``: the harness path's img/s, the
    bare forward's at the same precision and batch size (inputs already on the device), and
    the worst cosine similarity of the features to fp32's on the same images."""
    from .models import features

    ref = features(vit, x[:bs], bs, "fp32")
    rows = []
    for precision in ("fp32", "tf32", "bf16"):
        cos = torch.nn.functional.cosine_similarity(features(vit, x[:bs], bs, precision), ref, dim=-1).min()
        harness, bare = _img_s(vit, x, bs, precision), _bare_img_s(vit, x, bs, precision)
        rows.append(
            {
                "model": f"ViT-B/32 224², {precision}",
                "img_s": harness,
                "bare_img_s": bare,
                "harness_vs_bare": harness / bare,
                "min_cos_vs_fp32": float(cos),
            }
        )
    return rows


def _suite_times(suite: str, skip: tuple[str, ...] = ()) -> dict:
    """Wall time of `cmbench run SUITE --seeds 1` cold (empty output dir and artefact store:
    θ0 and the experts are trained too) and warm (rerun); ``skip``: methods left out."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "cmbench.cli", "run", suite, "--seeds", "1", "--out", out]
        cmd += ["--skip", ",".join(skip)] if skip else []
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        return {"suite": suite, "skipped": list(skip), "cold_s": cold, "warm_s": time.perf_counter() - t0}


def run_bench(
    methods=DEFAULT_METHODS,
    threads: int = 2,
    repeats: int = 3,
    device: str = "cpu",
    suite: str | None = None,
    stream_memory=("task_arithmetic", "ties", "magmax", "opcm"),
    suite_skip: tuple[str, ...] = ("ode_m",),
    log=print,
    hparams: dict | None = None,
    evaluation: bool = True,
    model: str = "vit-b32",
) -> dict:
    """``hparams``: per method, values that override its defaults (``bench_samples``: the
    images a data-using method is handed, default 256). ``model``: a key of ``MODELS``."""
    ctx = mp.get_context("spawn")
    results: dict[str, Any] = {"threads": threads, "device": device, "torch": torch.__version__, "model": model}
    q = ctx.Queue()

    def fresh_process(target, *args):  # one measurement, alone in a new process
        p = ctx.Process(target=target, args=(*args, q))
        p.start()
        while True:  # a child that dies (an error, out of memory) must not hang the bench
            try:
                out = q.get(timeout=5)
                break
            except queue.Empty:
                if p.is_alive():
                    continue
                try:  # it may have put its result just before exiting
                    out = q.get(timeout=1)
                    break
                except queue.Empty:
                    raise RuntimeError(
                        f"bench: {target.__name__}{args} died (exit code {p.exitcode}); its traceback is above"
                    ) from None
        p.join()
        return out

    results["floor"] = fresh_process(_floor_proc, threads, device, model)
    results["methods"] = []
    for name in methods:  # one method failing (e.g. a device bug) still reports the others
        try:
            hp = dict((hparams or {}).get(name, {}))
            results["methods"].append(
                {
                    **fresh_process(_measure_method, name, threads, repeats, device, hp, model),
                    **({"hparams": hp} if hp else {}),
                }
            )
        except RuntimeError as e:
            results["methods"].append({"method": name, "error": str(e)})
    if stream_memory and device == "cpu":
        results["stream_memory"] = [
            fresh_process(_stream_memory, name, T, threads, model) for name in stream_memory for T in (8, 20)
        ]
    results["eval"] = _eval_throughput(threads, device) if evaluation else []
    if suite:
        results["suite"] = _suite_times(suite, suite_skip)
    log(format_bench(results))
    return results


def _floor_proc(threads, device, model, q):
    q.put(_floor(threads, device, model))


def format_bench(r: dict) -> str:
    f = r["floor"]
    lines = [
        f"cmbench bench: {f['params'] / 1e6:.1f}M parameters ({MODELS[r.get('model', 'vit-b32')][1]}), "
        f"{r['threads']} threads, {r['device']}, torch {r['torch']}",
        f"memory-bandwidth floor (in-place axpy over all floats): {f['axpy_s'] * 1e3:.2f} ms ({f['gbps']:.1f} GB/s)",
        "",
        "| method | merge step (s) | × floor | peak memory (MB) |",
        "|---|---|---|---|",
    ]
    for m in r["methods"]:
        if "error" in m:
            lines.append(f"| {m['method']} | failed: {m['error']} | | |")
            continue
        lines.append(f"| {m['method']} | {m['step_s']:.4f} | {m['step_s'] / f['axpy_s']:.1f} | {m['peak_mb']:.0f} |")
    if r.get("stream_memory"):
        by: dict[str, dict[int, float]] = {}  # method -> T -> peak MB
        for m in r["stream_memory"]:
            by.setdefault(m["method"], {})[m["T"]] = m["peak_mb"]
        head = f"| merge stream ({f['params'] / 1e6:.0f}M floats) | peak MB, T = 8 | T = 20 | ratio |"
        lines += ["", head, "|---|---|---|---|"]
        lines += [f"| {k} | {v[8]:.0f} | {v[20]:.0f} | {v[20] / max(v[8], 1e-9):.2f} |" for k, v in by.items()]
    lines += ["", "| evaluation | img/s |", "|---|---|"]
    lines += [
        f"| {e['model']} | {e['img_s']:.0f} |"
        + (
            f" bare forward {e['bare_img_s']:.0f} img/s (harness {100 * e['harness_vs_bare']:.0f} %)"
            if "bare_img_s" in e
            else ""
        )
        + (f" (features' min cosine to fp32: {e['min_cos_vs_fp32']:.5f})" if "min_cos_vs_fp32" in e else "")
        for e in r["eval"]
    ]
    if "suite" in r:
        s = r["suite"]
        left_out = f", without {', '.join(s['skipped'])}" if s.get("skipped") else ""
        lines += ["", f"{s['suite']} (one seed{left_out}): cold {s['cold_s']:.0f} s, warm {s['warm_s']:.1f} s"]
    return "\n".join(lines)


def main_json(path: str | None, r: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(r, indent=1))
