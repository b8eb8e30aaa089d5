"""The CUDA paths, where a GPU is visible (skipped elsewhere, e.g. in CI): each data-free
merge gives on the GPU what it gives on the CPU, and the linearised model evaluates there.
Session 5 found two device bugs this way (OPCM's mask and the bench's noise were made on
the CPU); `cmbench bench --device cuda` gives the timings."""

import pytest
import torch

from cmbench import methods as M
from cmbench import registry as R

from .test_baselines_zoo import LAYOUT, models

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

DATA_FREE = ["weight_average", "task_arithmetic", "ties", "magmax", "opcm", "consensus_ta", "sequential"]


def _stream(name, theta0, experts, device):
    to = lambda sd: {k: v.to(device) for k, v in sd.items()}  # noqa: E731
    method = R.create(name, {})
    ctx = M.Context(
        theta0=to(theta0),
        num_tasks=len(experts),
        seed=0,
        device=torch.device(device),
        generator=torch.Generator().manual_seed(0),
        layout=LAYOUT,
    )
    method.start(ctx)
    merged = ctx.theta0
    for t, e in enumerate(experts, start=1):
        ctx.step, ctx.task, ctx.seen_tasks = t, f"t{t}", [f"t{i}" for i in range(1, t + 1)]
        merged = method.merge(ctx, merged, to(e), ctx.task)
    return {k: v.cpu() for k, v in merged.items()}


@pytest.mark.parametrize("name", DATA_FREE)
def test_merge_on_gpu_equals_cpu(name):
    theta0, experts = models(4)
    cpu, gpu = _stream(name, theta0, experts, "cpu"), _stream(name, theta0, experts, "cuda")
    for k in cpu:
        if name == "ties":  # comparisons and one addition per entry: bitwise
            assert torch.equal(cpu[k], gpu[k]), k
        else:  # reductions and SVDs in another order
            torch.testing.assert_close(gpu[k], cpu[k], rtol=1e-5, atol=1e-5)


def test_linearised_tiny_vit_on_gpu_equals_cpu():
    from cmbench.models import create_backbone, features
    from cmbench.suite import TinyViT

    cfg = TinyViT(
        img_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, linearized=True
    )
    torch.manual_seed(0)
    theta0 = create_backbone(cfg.model_copy(update={"linearized": False})).state_dict()
    theta = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in theta0.items()}
    x = torch.randint(0, 255, (300, 1, 16, 16), dtype=torch.uint8)
    out = {}
    for device in ("cpu", "cuda"):
        model = create_backbone(cfg, theta0).to(device)
        model.load_state_dict(theta)
        out[device] = features(model, x, 128)
    torch.testing.assert_close(out["cuda"], out["cpu"], rtol=1e-4, atol=1e-4)


# -- every method of baselines/ through the harness, on the GPU vs the CPU ----------------------
# The CPU and GPU runs share θ0, the heads and (merge stream) the experts, built once on the
# CPU, so the cells differ only by the method's and the evaluation's arithmetic on the GPU.
# Tolerance: a merge agrees to ~1e-5 relative (above) and features to ~1e-4, so a cell moves
# only where a test sample sits on a near-tie: at most 3 of the nano suite's 100 test samples
# per task (0.03). Methods that iterate on data (ODE-M's Euler steps and line searches, DOP's
# and TRM's Adam, P&M's Fisher, training in train-then-merge) can amplify rounding through
# their accept/reject decisions: 0.08 per cell, 0.04 on the final ACC.

STREAM = [
    {"name": n} for n in ("weight_average", "task_arithmetic", "ties", "magmax", "opcm", "consensus_ta", "sequential")
] + [
    {"name": "dop", "hparams": {"num_steps": 20}},
    {"name": "fisher_average", "hparams": {"n_samples": 32}},
    {"name": "ode_m", "hparams": {"num_samples": 64, "post_refine_steps": 4}},
]
TTM = [
    {"name": "sequential"},
    {"name": "multitask"},
    {"name": "pm", "lora": {"rank": 2, "targets": ["q", "v"]}},
    {"name": "trm", "hparams": {"steps": 5, "batch_size": 16}},
    {"name": "magmax"},
    {"name": "fisher_average", "hparams": {"n_samples": 16}},
    {"name": "weight_average"},
]
ITERATIVE = {"dop", "fisher_average", "ode_m", "pm", "trm", "multitask", "sequential", "magmax", "weight_average"}


def _on_gpu_watch(monkeypatch):
    """Wrap every method the harness creates: its inputs, its output, the network it asks
    for and the data it is handed must be on the GPU."""
    from cmbench import protocol

    seen: dict[str, set] = {}
    create = R.create

    def watched(name, hparams):
        method = create(name, hparams)
        inner = method.merge

        def merge(ctx, merged, incoming, task):
            for what, sd in (("merged", merged), ("incoming", incoming), ("theta0", ctx.theta0)):
                assert {v.device.type for v in sd.values()} == {"cuda"}, (name, what)
            if ctx.network is not None and not getattr(ctx.network, "watched", False):
                net = ctx.network

                def network(*a, **k):
                    module, head = net(*a, **k)
                    seen.setdefault(name, set()).add(next(module.parameters()).device.type)
                    return module, head

                network.watched = True
                ctx.network = network
            out = inner(ctx, merged, incoming, task)
            assert {v.device.type for v in out.values()} == {"cuda"}, (name, "output")
            return out

        method.merge = merge
        return method

    split = protocol.DataAccess._split

    def on_device(self, task, which):
        s = split(self, task, which)
        assert s.y.device.type == "cuda" and s.x[:1].device.type == "cuda"
        return s

    monkeypatch.setattr(M, "create", watched)
    monkeypatch.setattr(protocol.DataAccess, "_split", on_device)
    return seen


def _shared_cpu_artefacts(monkeypatch):
    from cmbench import artefacts

    monkeypatch.setattr(artefacts, "device_type", lambda suite: "cpu")  # build_numerics: the CPU's keys


def _compare(cpu, gpu, name):
    tol = 0.08 if name in ITERATIVE else 0.03
    for r_cpu, r_gpu in zip(cpu["R"], gpu["R"]):
        for a, b in zip(r_cpu, r_gpu):
            if a == a:  # NaN: unseen task
                assert abs(a - b) <= tol, (name, cpu["R"], gpu["R"])
    assert abs(cpu["metrics"]["ACC"] - gpu["metrics"]["ACC"]) <= (0.04 if name in ITERATIVE else 0.03)


@pytest.mark.parametrize("setting", ["merge_stream", "train_then_merge"])
def test_every_method_on_the_gpu_as_on_the_cpu(setting, tmp_path, monkeypatch):
    import copy

    import yaml

    from cmbench.store import Store
    from cmbench.protocol import run
    from cmbench.suite import Suite, expand

    from .conftest import NANO
    from .test_protocol_ttm import NANO_SPLIT

    R.discover()
    spec = yaml.safe_load(NANO.read_text()) if setting == "merge_stream" else copy.deepcopy(NANO_SPLIT)
    spec.update(seeds=[0], methods=STREAM if setting == "merge_stream" else TTM)
    spec["orders"] = {"explicit": [[t["name"] for t in spec["tasks"]]], "random": 0}
    cpu_suite = Suite.model_validate(spec)
    gpu_suite = Suite.model_validate({**spec, "resources": {"gpus_per_job": 1}})
    store = Store(tmp_path / "cache")
    cpu = {j.label: run(cpu_suite, j, store, threads=2) for j in expand(cpu_suite)}
    _shared_cpu_artefacts(monkeypatch)
    seen = _on_gpu_watch(monkeypatch)
    gpu = {j.label: run(gpu_suite, j, store, threads=2) for j in expand(gpu_suite)}
    for label in cpu:
        assert gpu[label]["inputs"]["device"] == "cuda" and gpu[label]["device"]["type"] == "cuda"
        _compare(cpu[label], gpu[label], label)
    assert all(devices == {"cuda"} for devices in seen.values()), seen
    assert {"ode_m", "dop", "fisher_average"} & set(seen) or setting == "train_then_merge"


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_evaluation_in_each_precision(precision):
    """Features in each precision against fp32 on the GPU; fp32 on the GPU against the CPU
    (TF32 really off: cuDNN's default would leave the patch convolution in TF32)."""
    from cmbench.models import create_backbone, features
    from cmbench.suite import TinyViT

    cfg = TinyViT(img_size=16, patch_size=4, in_chans=1, embed_dim=64, depth=2, num_heads=2, mlp_ratio=2.0)
    torch.manual_seed(0)
    model = create_backbone(cfg)
    x = torch.randint(0, 255, (512, 1, 16, 16), dtype=torch.uint8)
    cpu = features(model, x, 128)
    gpu = features(model.to("cuda"), x, 128, precision)
    cos = torch.nn.functional.cosine_similarity(cpu, gpu, dim=-1).min()
    if precision == "fp32":
        torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-4)
    else:
        assert cos > (0.999 if precision == "tf32" else 0.99)
        assert not torch.equal(gpu, features(model, x, 128, "fp32"))
    assert not torch.backends.cuda.matmul.allow_tf32  # the flags are restored
