"""Which entries are linear-layer matrices, embeddings, norms, ...: read from the modules
(cmbench.layout), on several architectures, and what per-matrix methods do with it."""

import torch
from torch import nn

from cmbench import methods as M
from cmbench import registry as R
from cmbench.layout import describe
from cmbench.models import Head, create_backbone, layout_of
from cmbench.suite import Backbone, OpenCLIP

from .test_clip_path import TINY_CLIP
from .test_methods import run_stream


def kinds(layout):
    return {k: (r.kind, r.leaf, r.split) for k, r in layout.items()}


def test_timm_vit_layout():
    lay = kinds(
        layout_of(
            create_backbone(
                Backbone(img_size=8, patch_size=4, in_chans=1, embed_dim=16, depth=1, num_heads=2, mlp_ratio=2)
            )
        )
    )
    assert lay["blocks.0.attn.qkv.weight"] == ("linear", True, 3)  # fused q/k/v
    assert lay["blocks.0.attn.qkv.bias"] == ("bias", True, 1)
    assert lay["blocks.0.attn.proj.weight"] == ("linear", True, 1)
    assert lay["blocks.0.mlp.fc1.weight"] == ("linear", True, 1)
    assert lay["patch_embed.proj.weight"] == ("conv", True, 1)
    assert lay["blocks.0.norm1.weight"] == ("norm", True, 1)
    assert lay["cls_token"] == ("other", False, 1) and lay["pos_embed"] == ("other", False, 1)


def tiny_clip():
    from cmbench.models.clip import CLIPImageEncoder

    return CLIPImageEncoder.create(OpenCLIP(kind="open_clip", model="tiny", pretrained=None, config=TINY_CLIP))


def test_open_clip_layout_is_the_reference_clip_vision_model():
    """As transformers' CLIPVisionModel (what FusionBench merges) has it: q, k, v are three
    leaf linears, the position table a leaf embedding, the class token a bare parameter of
    a module with children; the output projection is no parameter at all."""
    enc = tiny_clip()
    lay = kinds(layout_of(enc))
    blk = "visual.transformer.resblocks.0."
    assert lay[blk + "attn.in_proj_weight"] == ("linear", True, 3)
    assert lay[blk + "attn.in_proj_bias"] == ("bias", True, 1)
    assert lay[blk + "attn.out_proj.weight"] == ("linear", True, 1)
    assert lay[blk + "mlp.c_fc.weight"] == ("linear", True, 1)
    assert lay["visual.positional_embedding"] == ("embedding", True, 1)
    assert lay["visual.class_embedding"] == ("other", False, 1)
    assert lay["visual.conv1.weight"] == ("conv", True, 1)
    assert lay["visual.ln_pre.weight"] == ("norm", True, 1)
    assert lay["visual.proj"][0] == "buffer"
    assert "visual.proj" in enc.state_dict() and "visual.proj" not in dict(enc.named_parameters())
    assert set(lay) == {k for k, v in enc.state_dict().items() if v.is_floating_point()}


class TinyLM(nn.Module):
    """A language-model-style network: token and position tables (not named *embed*), a
    transformer layer with a fused in-projection, and a head tied to the token table."""

    def __init__(self, vocab=11, d=8):
        super().__init__()
        self.lookup = nn.Embedding(vocab, d)
        self.positions = nn.Embedding(5, d)
        self.layer = nn.TransformerEncoderLayer(d, nhead=2, dim_feedforward=16, batch_first=True)
        self.final = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.lookup.weight


def test_language_model_layout():
    lm = TinyLM()
    lay = kinds(describe(lm))
    assert lay["lookup.weight"] == ("embedding", True, 1)
    assert lay["positions.weight"] == ("embedding", True, 1)
    assert lay["lm_head.weight"] == ("embedding", True, 1)  # tied: one tensor, one role
    assert lay["layer.self_attn.in_proj_weight"] == ("linear", True, 3)
    assert lay["layer.self_attn.out_proj.weight"] == ("linear", True, 1)
    assert lay["layer.linear1.weight"] == ("linear", True, 1)
    assert lay["layer.norm1.weight"] == ("norm", True, 1)
    assert set(lay) == set(lm.state_dict())


def test_opcm_adds_embedding_tables_and_projects_linears():
    """Deviation 3: an embedding table is summed like any other leaf parameter, never
    projected by SVD as if it were a linear layer, whatever its name (the old name rule,
    a 2-D ``*.weight`` whose module is not named *embed*, projected ``lookup.weight``)."""
    lm = TinyLM()
    layout = describe(lm)
    g = torch.Generator().manual_seed(0)
    theta0 = {k: torch.randn(v.shape, generator=g) for k, v in lm.state_dict().items()}
    theta0["lm_head.weight"] = theta0["lookup.weight"]
    experts = []
    for _ in range(2):
        e = {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in theta0.items()}
        e["lm_head.weight"] = e["lookup.weight"]
        experts.append(e)
    out = run_stream("opcm", {"alpha": 0.5}, theta0, experts, layout)[1]
    taus = [{k: e[k] - theta0[k] for k in e} for e in experts]
    S = {k: taus[0][k] + taus[1][k] for k in ("lookup.weight", "positions.weight", "final.weight")}
    scale = (out["final.weight"] - theta0["final.weight"]) / S["final.weight"]
    c = float(scale.mean())
    assert torch.allclose(scale, torch.full_like(scale, c), rtol=1e-4)
    for k in ("lookup.weight", "positions.weight", "lm_head.weight"):
        src = "lookup.weight" if k == "lm_head.weight" else k
        assert torch.allclose(out[k], theta0[k] + c * S[src], atol=1e-5), k
    # the linears were projected: not a plain sum
    k = "layer.linear1.weight"
    assert not torch.allclose(out[k], theta0[k] + c * (taus[0][k] + taus[1][k]), atol=1e-4)


def test_ode_m_leaves_clip_output_projection_at_theta0():
    """Deviation 1: the reference merges a CLIPVisionModel, which has no projection; ODE-M's
    gradients, step size, QP and refinement never move ``visual.proj``."""
    R.discover()
    enc = tiny_clip()
    g = torch.Generator().manual_seed(0)
    theta0 = {k: v.clone() for k, v in enc.state_dict().items()}
    experts = [
        {k: v + (0 if k == "visual.proj" else 0.05) * torch.randn(v.shape, generator=g) for k, v in theta0.items()}
        for _ in range(2)
    ]  # hub experts carry θ0's projection
    from cmbench.data import Split, TaskData
    from cmbench.protocol import DataAccess

    def task(name):
        def split(m):
            return Split(
                x=torch.randint(0, 256, (m, 3, 32, 32), generator=g, dtype=torch.uint8),
                y=torch.randint(0, 3, (m,), generator=g),
            )

        return TaskData(name, ["a", "b", "c"], split(32), split(16), split(16))

    names = ["t0", "t1"]
    tasks = {n: task(n) for n in names}
    heads = {n: Head(nn.functional.normalize(torch.randn(3, 16, generator=g), dim=-1) * 10) for n in names}
    method = R.create("ode_m", {"num_samples": 32, "batch_size": 16, "step_size": 0.1, "post_refine_steps": 3})
    data = DataAccess("ode_m", "calibration", tasks, 0)
    ctx = M.Context(theta0=theta0, num_tasks=2, seed=0, data=data, layout=layout_of(enc))
    data.ctx = ctx

    def network(state, classes="task", task=None):
        enc.load_state_dict(state)
        return enc, heads[task or ctx.task]

    ctx.network = network
    merged = theta0
    for t, (n, e) in enumerate(zip(names, experts), start=1):
        ctx.step, ctx.task, ctx.seen_tasks = t, n, names[:t]
        merged = method.merge(ctx, merged, e, n)
    final = method.finish(ctx, merged)
    moved = float((merged["visual.conv1.weight"] - experts[0]["visual.conv1.weight"]).abs().max())
    assert moved > 0  # the merge did move the image tower
    assert torch.equal(merged["visual.proj"], theta0["visual.proj"])
    assert torch.equal(final["visual.proj"], theta0["visual.proj"])
