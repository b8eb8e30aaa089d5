"""The projected cost of every real-scale suite (``plan.project``), from rehearsal reports.

    python tools/project_suites.py MERGE_STREAM_REPORT.json TRAIN_THEN_MERGE_REPORT.json

Each suite is projected with the report of its setting (scaled to its backbone: data-free
merge steps by parameter count, data-using ones by forward FLOPs); evaluation and training
at ``plan.GPU_TFLOPS``. Disk: the decoded data cache at 224 px (test splits, plus train
splits where a method reads training data) and the experts' checkpoints (fp32).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cmbench.registry import discover
from cmbench.plan import GPU_TFLOPS, backbone_params, project, split_sizes
from cmbench.suite import expand, load_suite


def main(merge_report: str, ttm_report: str) -> None:
    reports = {
        "merge_stream": json.loads(Path(merge_report).read_text()),
        "train_then_merge": json.loads(Path(ttm_report).read_text()),
    }
    cls = discover()
    print(
        "| suite | jobs | evaluation GPU-h | training GPU-h | merge steps h (CPU, measured/scaled) | unmeasured "
        "steps | total h | decoded data GB | experts GB | peak private host GB/job (rehearsed) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for path in sorted(Path("suites").glob("*.yaml")):
        suite = load_suite(path)
        if suite.backbone.kind == "tiny_vit":
            continue
        rep = reports[suite.setting]
        jobs = expand(suite)
        c = project(suite, jobs, rep)
        sizes = split_sizes(suite)
        reads_train = suite.setting == "train_then_merge" or any(
            cls[m.name].data_access != "none" for m in suite.methods
        )
        side = suite.backbone.image_size
        decoded = sum(te + (tr if reads_train else 0) for tr, te in sizes.values()) * 3 * side * side
        if suite.setting == "train_then_merge":  # a class split's tasks are shares of one decoded source
            decoded = sum(tr + te for tr, te in sizes.values()) * 3 * side * side
        experts = len(suite.tasks) * backbone_params(suite) * 4 if suite.setting == "merge_stream" else 0
        peak = max((m.get("peak_private_bytes") or 0 for m in rep["methods"].values()), default=0)
        total = (c["eval_gpu_s"] + c["train_gpu_s"] + c["merge_s"]) / 3600
        print(
            f"| {suite.name} | {len(jobs)} | {c['eval_gpu_s'] / 3600:.1f} | {c['train_gpu_s'] / 3600:.1f} | "
            f"{c['merge_s'] / 3600:.1f} | {c['unmeasured_merge_steps']} | {total:.1f} | {decoded / 2**30:.0f} | "
            f"{experts / 2**30:.1f} | {peak / 2**30:.1f} ({rep['suite']}) |"
        )
    print(f"\nGPU throughput assumed: {GPU_TFLOPS} TFLOP/s effective (fp32, H100/H200 class).")


if __name__ == "__main__":
    main(*sys.argv[1:3])
