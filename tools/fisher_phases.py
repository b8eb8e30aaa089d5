"""Where the model Fisher's time goes at ViT-B/32 size (issue #42), and what batching the
per-class backward passes could buy at most.

    python tools/fisher_phases.py [--classes 10] [--threads 2]

Prints, for one random image through cmbench's CLIP ViT-B/32 tower (random weights) and a
random C-class head: the forward, the backward per class and the accumulation of the
squares per class as ``estimates.diagonal_fisher`` does them (``fisher="model"``); then the
forward and backward of the tower at batch 1 and at batch C per image, measured in the same
run, whose ratio bounds what any grouping of the C backward passes can gain.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cmbench.bench import _network, vit_b32_state  # noqa: E402
from cmbench.models import Head  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    network = _network("cpu")
    network.ctx = type("Ctx", (), {"task": "t1"})  # type: ignore[attr-defined]
    module, _ = network(vit_b32_state(0))
    head = Head(torch.randn(a.classes, 512, generator=torch.Generator().manual_seed(1)) * 10)
    module.eval()
    params = dict(module.named_parameters())
    fisher = {k: torch.zeros_like(v) for k, v in params.items()}
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    for rep in range(2):  # the first is a warm-up
        t0 = time.perf_counter()
        logp = torch.log_softmax(head(module(x)), -1)[0]
        t_fwd, t_bwd, t_acc = time.perf_counter() - t0, 0.0, 0.0
        for y, w in enumerate(logp.detach().exp().sqrt()):
            s = time.perf_counter()
            g = torch.autograd.grad(logp[y] * w, list(params.values()), retain_graph=True)
            m = time.perf_counter()
            for k, gk in zip(params, g):
                fisher[k] += gk.detach() ** 2
            t_bwd, t_acc = t_bwd + m - s, t_acc + time.perf_counter() - m
        if rep:
            C = a.classes
            print(
                f"model Fisher, {C} classes: {t_fwd + t_bwd + t_acc:.3f} s per example: forward {t_fwd:.3f} s, "
                f"backward {t_bwd / C:.3f} s a class, accumulation {t_acc / C:.3f} s a class"
            )
    for B in (1, a.classes, 1, a.classes):  # the first pair is a warm-up
        xb = torch.randn(B, 3, 224, 224)
        t0 = time.perf_counter()
        out = head(module(xb)).sum()
        t1 = time.perf_counter()
        out.backward()
        t2 = time.perf_counter()
        if B == a.classes:
            last = (t1 - t0) / B, (t2 - t1) / B
        else:
            first = t1 - t0, t2 - t1
    print(f"tower at batch 1: forward {first[0]:.3f} s, backward {first[1]:.3f} s")
    print(f"tower at batch {a.classes}: forward {last[0]:.3f} s, backward {last[1]:.3f} s per image")
    print(f"batching ceiling for the per-class backward: {first[1] / last[1]:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
