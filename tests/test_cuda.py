"""The CUDA paths, where a GPU is visible (skipped elsewhere, e.g. in CI): each data-free
merge gives on the GPU what it gives on the CPU, and the linearised model evaluates there.
Session 5 found two device bugs this way (OPCM's mask and the bench's noise were made on
the CPU); `cmbench bench --device cuda` gives the timings."""

import pytest
import torch

from cmbench import methods as M

from .test_baselines_zoo import LAYOUT, models

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

DATA_FREE = ["weight_average", "task_arithmetic", "ties", "magmax", "opcm", "consensus_ta", "sequential"]


def _stream(name, theta0, experts, device):
    to = lambda sd: {k: v.to(device) for k, v in sd.items()}  # noqa: E731
    method = M.create(name, {})
    ctx = M.Context(theta0=to(theta0), num_tasks=len(experts), seed=0, device=torch.device(device),
                    generator=torch.Generator().manual_seed(0), layout=LAYOUT)
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

    cfg = TinyViT(img_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
                  linearized=True)
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
