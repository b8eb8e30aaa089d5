"""Side by side with the reference implementations (issue #42): FusionBench's continual
merges run from its own package, in its own Python environment, and cmbench's, on the same
θ0 and experts, in one run: the merged models compared parameter by parameter, and the wall
time and peak memory of each.

The inputs are a CLIP ViT-B/32 image tower (87.8M parameters, random weights from a fixed
seed) and T experts (θ0 plus seeded Gaussian noise of scale 1e-3), written once as
FusionBench's ``CLIPVisionModel`` safetensors. Each side runs in a fresh process with the
same thread count: FusionBench's algorithm class with its config's defaults on a minimal
model pool (``load_pretrained_model`` / ``load_model``, nothing saved, no evaluation); cmbench
loads the same files through its checkpoint converter and runs the method's steps as the
harness does. Each side's time is its whole stream, expert loading included; its peak is
the process's resident high-water mark, less its resident size before the stream.

    python tools/compare_reference.py --reference-python ENV/bin/python \\
        [--methods opcm,dop] [--tasks 3] [--threads 2] [--hparam dop.num_steps=20] [--json OUT.json]

``--hparam METHOD.NAME=VALUE`` sets a hyperparameter on both sides (DOP's 200 Adam steps per
matrix take the reference about an hour a step at this size on 2 cores).

ENV is an environment with ``fusion-bench`` (0.2.33 was used; with transformers < 5, which
it needs) and the same torch as cmbench's. Methods compared: ``opcm`` (OPCMForCLIP, alpha
0.5), ``dop`` (ContinualDOPForCLIP, config/method/dop/dop.yaml) and ``fisher``
(FisherMergingForCLIPVisionModel, config/method/fisher_merging/clip_fisher_merging.yaml's
normalisation and floor, 64 samples per task in batches of 32, against cmbench's
``fisher_average`` with ``fisher: model_batch``, FusionBench's form). Fisher merging reads
data: each task gets 64 random images and a random 10-class head over the tower's 512-d
embedding (the reference's zero-shot head and processor replaced by them, its tower's
activation set to the GELU of cmbench's random ViT-B-32); both sides see the same images
in the same order. FusionBench merges all experts at once and cmbench after every step; its
last step is the same merge.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# the reference side runs in another environment: cmbench from this checkout
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cmbench.bench import _reset_peak, _status_mb  # noqa: E402

# FusionBench's class and its config's hyperparameters; cmbench's method and the same values
REFERENCE = {
    "opcm": ("fusion_bench.method.opcm.opcm", "OPCMForCLIP", {"alpha": 0.5}),
    "dop": (
        "fusion_bench.method.dop.dop",
        "ContinualDOPForCLIP",
        {
            "lr": 1e-4,
            "num_steps": 200,
            "mgda": True,
            "alpha": 0.8,
            "ema": True,
            "ema_beta": 0.999,
            "svd_epsilon": 0.99999,
            "svd_proj_space": "uv",
        },
    ),
}
# Fisher merging: FusionBench's is the one-shot merge of all experts with the batch-level
# Fisher; cmbench's continual form is that merge at every step, so the last steps compare
FISHER_SAMPLES, FISHER_BATCH = 64, 32
REFERENCE["fisher"] = (
    "fusion_bench.method.fisher_merging.clip_fisher_merging",
    "FisherMergingForCLIPVisionModel",
    {
        "exclude_param_names_regex": [],
        "normalize_fisher_weight": True,
        "minimal_fisher_weight": 1e-6,
        "num_fisher_examples": FISHER_SAMPLES,
        "dataloader_kwargs": {"batch_size": FISHER_BATCH, "shuffle": False, "num_workers": 0},
    },
)
CMBENCH = {
    "opcm": {"alpha": 0.5},
    "dop": {},
    "fisher": {"n_samples": FISHER_SAMPLES, "batch_size": FISHER_BATCH, "fisher": "model_batch", "eps": 1e-6},
}
CMBENCH_NAME = {"fisher": "fisher_average"}  # where cmbench's method is named otherwise


# -- inputs -------------------------------------------------------------------------------


def make_inputs(folder: Path, tasks: int) -> None:
    """θ0 and the experts in FusionBench's CLIPVisionModel format."""
    from safetensors.torch import save_file

    from cmbench.bench import _perturbed, vit_b32_state
    from cmbench.models.checkpoint import open_clip_to_hf_clip_vision

    theta0 = vit_b32_state(0)
    save_file(open_clip_to_hf_clip_vision(theta0), str(folder / "theta0.safetensors"))
    for i in range(1, tasks + 1):
        save_file(open_clip_to_hf_clip_vision(_perturbed(theta0, i)), str(folder / f"t{i}.safetensors"))
    # for Fisher merging: per task, random 224² images (uint8) and a random 10-class head over
    # the 512-d embedding; and the tower's output projection (not part of CLIPVisionModel)
    import torch

    for i in range(1, tasks + 1):
        g = torch.Generator().manual_seed(100 + i)
        save_file(
            {
                "x": torch.randint(0, 256, (FISHER_SAMPLES, 3, 224, 224), dtype=torch.uint8, generator=g),
                "y": torch.randint(0, 10, (FISHER_SAMPLES,), generator=g),
                "head": torch.randn(10, 512, generator=g) * 10,
            },
            str(folder / f"t{i}-data.safetensors"),
        )
    save_file({"proj": theta0["visual.proj"].contiguous()}, str(folder / "proj.safetensors"))


def _images(folder: Path, task: str):
    """A task's images in the harness's order: the seeded permutation ``diagonal_fisher``
    draws (seed 0), and its head."""
    import torch
    from safetensors.torch import load_file

    d = load_file(str(folder / f"{task}-data.safetensors"))
    perm = torch.randperm(len(d["y"]), generator=torch.Generator().manual_seed(0))
    return d["x"][perm], d["y"][perm], d["head"]


# -- the reference side (run with the reference environment's Python) ------------------------


def _timed_run(algo, pool, out: Path) -> dict:
    """Run a FusionBench algorithm on ``pool``: its wall time and peak memory growth; the
    merged model saved to ``out``."""
    import torch
    from safetensors.torch import save_file

    base = _reset_peak()
    t0 = time.perf_counter()
    merged = algo.run(pool)
    seconds = time.perf_counter() - t0
    peak = _status_mb("VmHWM") - base
    save_file({k: v.detach().contiguous() for k, v in merged.state_dict().items()}, str(out))
    return {"seconds": seconds, "peak_mib": peak, "torch": torch.__version__}


def run_reference(method: str, folder: Path, tasks: int, out: Path, extra: dict) -> dict:
    import importlib
    from types import SimpleNamespace

    import lightning as L
    from safetensors.torch import load_file
    from transformers import CLIPVisionConfig, CLIPVisionModel

    module, cls_name, hparams = REFERENCE[method]
    cls = getattr(importlib.import_module(module), cls_name)
    # the tower's activation: open_clip's ViT-B-32 without an OpenAI tag is GELU, and so are
    # cmbench's random towers (the data-free methods never run the model)
    act = {"hidden_act": "gelu"} if method == "fisher" else {}

    def model(path: Path) -> CLIPVisionModel:
        m = CLIPVisionModel(CLIPVisionConfig(**act))  # the ViT-B/32 image tower's configuration
        m.load_state_dict(load_file(str(path)), strict=True)
        return m

    if method == "fisher":
        return _run_reference_fisher(cls, model, folder, tasks, out, {**hparams, **extra})

    class Pool:  # the part of FusionBench's model pool its continual methods call
        model_names = [f"t{i}" for i in range(1, tasks + 1)]

        def load_pretrained_model(self):
            return model(folder / "theta0.safetensors")

        def load_model(self, name):
            return model(folder / f"{name}.safetensors")

    hparams = {**hparams, **extra}
    algo = cls(seed=0, shuffle_order=False, save_on_every_step=False, evaluate_on_every_step=False, **hparams)
    algo.fabric = L.Fabric(accelerator="cpu", devices=1)
    algo._program = SimpleNamespace(taskpool=SimpleNamespace(_test_datasets={}))  # read, unused, by OPCM
    return _timed_run(algo, Pool(), out)


def _run_reference_fisher(cls, model, folder: Path, tasks: int, out: Path, hparams: dict) -> dict:
    """FusionBench's ``FisherMergingForCLIPVisionModel`` on the tasks' images, its zero-shot
    head replaced by each task's random head (logits = W · normalised embedding, as
    cmbench's ``Head``), its processor by the harness's pixel normalisation."""
    import lightning as L
    import torch
    from omegaconf import DictConfig
    from safetensors.torch import load_file

    from cmbench.models.clip import OPENAI_MEAN, OPENAI_STD

    mean, std = torch.tensor(OPENAI_MEAN).view(1, -1, 1, 1), torch.tensor(OPENAI_STD).view(1, -1, 1, 1)
    names = [f"t{i}" for i in range(1, tasks + 1)]
    data = {n: _images(folder, n) for n in names}
    proj = load_file(str(folder / "proj.safetensors"))["proj"]  # (768, 512): embedding = pooled @ proj

    class Pool:  # the part of FusionBench's BaseModelPool its Fisher merging calls
        has_pretrained = True

        def __len__(self):
            return tasks

        def named_models(self):
            for n in names:
                yield n, model(folder / f"{n}.safetensors")

        def load_model(self, name):
            return model(folder / ("theta0.safetensors" if name == "_pretrained_" else f"{name}.safetensors"))

        def load_train_dataset(self, name):
            x, y, _ = data[name]
            pixels = ((x.float().div(127.5).sub(1.0) + 1) * 0.5 - mean) / std  # what cmbench's tower feeds
            return list(zip(pixels, y.tolist()))

    class Fisher(cls):
        clip_processor = None  # images arrive as pixel tensors

        def on_fisher_merging_start(self):  # instead of the zero-shot heads of CLIP's text tower
            self.zeroshot_weights = {n: data[n][2] for n in names}
            self.visual_projection = torch.nn.Linear(768, 512, bias=False)
            self.visual_projection.weight.data = proj.T.contiguous()
            self.logit_scale_exp = 1.0

    algo = Fisher(**{**hparams, "dataloader_kwargs": DictConfig(hparams["dataloader_kwargs"])})
    algo.fabric = L.Fabric(accelerator="cpu", devices=1)
    return _timed_run(algo, Pool(), out)


# -- cmbench's side ----------------------------------------------------------------------------


def run_cmbench(method: str, folder: Path, tasks: int, out: Path, extra: dict) -> dict:
    import torch
    from safetensors.torch import load_file, save_file

    from cmbench import methods as methods_mod
    from cmbench import registry
    from cmbench.bench import vit_b32
    from cmbench.models.checkpoint import hf_clip_vision_to_open_clip

    theta0_oc, layout = vit_b32(0)  # the names, shapes and layout of the tower (values replaced)
    theta0 = hf_clip_vision_to_open_clip(load_file(str(folder / "theta0.safetensors")), theta0_oc)
    names = [f"t{i}" for i in range(1, tasks + 1)]
    m = registry.create(CMBENCH_NAME.get(method, method), {**CMBENCH[method], **extra})
    ctx = methods_mod.Context(
        theta0=theta0, num_tasks=tasks, seed=0, generator=torch.Generator().manual_seed(0), layout=layout
    )
    if type(m).data_access != "none":
        _data_for(ctx, folder, names, theta0_oc)
    del theta0_oc
    base = _reset_peak()
    t0 = time.perf_counter()
    m.start(ctx)
    merged = theta0
    for t, name in enumerate(names, start=1):
        incoming = hf_clip_vision_to_open_clip(load_file(str(folder / f"{name}.safetensors")), theta0)
        ctx.step, ctx.task, ctx.seen_tasks = t, name, names[:t]
        merged = m.merge(ctx, merged, incoming, name)
        del incoming
    merged = m.finish(ctx, merged)
    seconds = time.perf_counter() - t0
    peak = _status_mb("VmHWM") - base
    save_file({k: v.contiguous() for k, v in merged.items()}, str(out))
    return {"seconds": seconds, "peak_mib": peak, "torch": torch.__version__}


def _data_for(ctx, folder: Path, names: list[str], tower_state: dict) -> None:
    """The current task's train split (the stored images, unpermuted: ``diagonal_fisher``
    draws the permutation itself) and ``ctx.network`` over the tower with the task's head."""
    from safetensors.torch import load_file

    from cmbench.data import Split
    from cmbench.models import Head
    from cmbench.models.clip import CLIPImageEncoder
    from cmbench.suite import OpenCLIP

    tower = CLIPImageEncoder.create(OpenCLIP(kind="open_clip", model="ViT-B-32", pretrained=None))
    tower.load_state_dict(tower_state)  # the output projection (a frozen buffer) is θ0's
    stored = {n: load_file(str(folder / f"{n}-data.safetensors")) for n in names}

    class Data:
        def current(self, split="train"):
            d = stored[ctx.task]
            return Split(x=d["x"], y=d["y"])

    def network(state, classes="task", task=None):
        tower.load_state_dict(state)
        return tower, Head(stored[task or ctx.task]["head"])

    ctx.data, ctx.network = Data(), network


# -- the driver -----------------------------------------------------------------------------


def _side(python: str, role: str, method: str, folder: Path, tasks: int, threads: int, extra: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    out = folder / f"{role}-{method}.safetensors"
    cmd = [python, __file__, "--role", role, "--method", method, "--folder", str(folder), "--tasks", str(tasks)]
    cmd += ["--threads", str(threads), "--out", str(out), "--extra", json.dumps(extra)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"compare_reference: the {role} side of {method} failed:\n{p.stderr[-3000:]}")
    return {**json.loads(p.stdout.strip().splitlines()[-1]), "out": str(out)}


def compare(ref_out: str, ours_out: str, folder: Path) -> dict:
    """max |Δ| over the parameters (the reference's converted to cmbench's names), absolute and
    relative to the largest entry of that parameter in the reference."""
    from safetensors.torch import load_file

    from cmbench.bench import vit_b32_state
    from cmbench.models.checkpoint import hf_clip_vision_to_open_clip

    theta0 = hf_clip_vision_to_open_clip(load_file(str(folder / "theta0.safetensors")), vit_b32_state(0))
    ref = hf_clip_vision_to_open_clip(load_file(ref_out), theta0)
    ours = load_file(ours_out)
    worst_abs, worst_rel, where = 0.0, 0.0, ""
    for k, r in ref.items():
        d = float((ours[k].double() - r.double()).abs().max())
        rel = d / max(float(r.double().abs().max()), 1e-30)
        if d > worst_abs:
            worst_abs, where = d, k
        worst_rel = max(worst_rel, rel)
    missing = sorted(set(ours) ^ set(ref))
    return {"max_abs": worst_abs, "max_rel": worst_rel, "worst_param": where, "key_mismatch": missing[:5]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference-python", help="Python of an environment with fusion-bench")
    ap.add_argument("--methods", default="opcm,dop")
    ap.add_argument("--tasks", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--hparam", action="append", default=[], metavar="METHOD.NAME=VALUE", help="on both sides")
    ap.add_argument("--extra", default="{}", help=argparse.SUPPRESS)
    ap.add_argument("--role", choices=["reference", "cmbench"], help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.role:  # one side, in its own process
        import torch

        torch.set_num_threads(args.threads)
        run = run_reference if args.role == "reference" else run_cmbench
        print(json.dumps(run(args.method, args.folder, args.tasks, args.out, json.loads(args.extra))))
        return 0
    if not args.reference_python:
        ap.error("--reference-python is required")
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in REFERENCE]
    if unknown:
        ap.error(f"no reference wired for {unknown}; known: {sorted(REFERENCE)}")
    extra: dict[str, dict] = {m: {} for m in methods}
    for item in args.hparam:
        target, _, value = item.partition("=")
        m, _, name = target.partition(".")
        if m not in extra or not name or not value:
            ap.error(f"--hparam {item!r}: give METHOD.NAME=VALUE for one of {methods}")
        extra[m][name] = json.loads(value)
    rows = []
    with tempfile.TemporaryDirectory(prefix="cmbench-compare-") as tmp:
        folder = Path(tmp)
        make_inputs(folder, args.tasks)
        print(f"{'method':8} {'cmbench s':>10} {'reference s':>12} {'speed-up':>9} "
              f"{'cmbench MiB':>12} {'reference MiB':>14} {'max |Δ|':>10} {'max rel':>10}")  # fmt: skip
        for method in methods:
            ref = _side(args.reference_python, "reference", method, folder, args.tasks, args.threads, extra[method])
            ours = _side(sys.executable, "cmbench", method, folder, args.tasks, args.threads, extra[method])
            diff = compare(ref["out"], ours["out"], folder)
            row = {"method": method, "tasks": args.tasks, "threads": args.threads, "hparams": extra[method]}
            row.update(cmbench=ours, reference=ref)
            rows.append({**row, **diff})
            print(
                f"{method:8} {ours['seconds']:10.1f} {ref['seconds']:12.1f} {ref['seconds'] / ours['seconds']:8.2f}x "
                f"{ours['peak_mib']:12.0f} {ref['peak_mib']:14.0f} {diff['max_abs']:10.2e} {diff['max_rel']:10.2e}",
                flush=True,
            )
            if diff["key_mismatch"]:
                print(f"  parameters in one model only: {diff['key_mismatch']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
