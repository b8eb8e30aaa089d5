"""RegMean++ against a transcription of FusionBench's loop (fusion_bench/method/
regmean_plusplus at 54c9e8c: merge the embedding by the mean, then layer by layer compute
each task's Grams by the candidate layer on the merged model's inputs, merge the layer with
``merging_with_regmean_weights``, forward the inputs through the merged layer; what follows
the layers stays the pretrained model's), on an HF-style model with separate q, k, v and
output projections; ours runs on the same weights packed as open_clip packs them."""

import pytest
import torch
from torch import nn

from cmbench import registry as R
from cmbench.data import Split, TaskData

from .test_regmean import ours as regmean_stream

D, TOK, HEADS, LAYERS = 4, 3, 2, 2


class PackedLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(D, HEADS, batch_first=True)
        self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.fc1, self.fc2 = nn.Linear(D, 2 * D), nn.Linear(2 * D, D)

    def forward(self, h):
        a = self.ln1(h)
        h = h + self.attn(a, a, a, need_weights=False)[0]
        return h + self.fc2(nn.functional.gelu(self.fc1(self.ln2(h))))


class Packed(nn.Module):
    """Patch embedding (Linear) + position table + pre-norm → layers → post-norm, token mean."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, D)
        self.pos = nn.Parameter(torch.zeros(TOK, D))
        self.ln_pre, self.ln_post = nn.LayerNorm(D), nn.LayerNorm(D)
        self.layers = nn.ModuleList(PackedLayer() for _ in range(LAYERS))

    def forward(self, x):
        h = self.ln_pre(self.embed(x.flatten(1).reshape(len(x), TOK, 8)) + self.pos)
        for layer in self.layers:
            h = layer(h)
        return self.ln_post(h).mean(1)


class SeparateLayer(nn.Module):
    """HF CLIP's encoder layer: separate q/k/v/out projections."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(D, D) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.fc1, self.fc2 = nn.Linear(D, 2 * D), nn.Linear(2 * D, D)

    def forward(self, h):
        B, hd = len(h), D // HEADS
        a = self.ln1(h)

        def heads(t):
            return t.view(B, TOK, HEADS, hd).transpose(1, 2)

        att = torch.softmax(heads(self.q(a)) @ heads(self.k(a)).transpose(-1, -2) / hd**0.5, -1)
        h = h + self.o((att @ heads(self.v(a))).transpose(1, 2).reshape(B, TOK, D))
        return h + self.fc2(nn.functional.gelu(self.fc1(self.ln2(h))))


def to_separate_layer(sd, prefix):
    out = {}
    w, b = sd[f"{prefix}attn.in_proj_weight"].chunk(3), sd[f"{prefix}attn.in_proj_bias"].chunk(3)
    for name, wi, bi in zip("qkv", w, b):
        out[f"{name}.weight"], out[f"{name}.bias"] = wi, bi
    out["o.weight"], out["o.bias"] = sd[f"{prefix}attn.out_proj.weight"], sd[f"{prefix}attn.out_proj.bias"]
    for k, v in sd.items():
        if k.startswith(prefix) and not k.startswith(f"{prefix}attn."):
            out[k[len(prefix) :]] = v
    return out


def setup(n_tasks=3, n=40):
    g = torch.Generator().manual_seed(0)
    base = {k: torch.randn(v.shape, generator=g) * 0.5 for k, v in Packed().state_dict().items()}
    experts = [{k: v + 0.2 * torch.randn(v.shape, generator=g) for k, v in base.items()} for _ in range(n_tasks)]
    tasks = {}
    for i in range(n_tasks):
        s = Split(x=torch.randint(0, 256, (n, 1, 4, 6), generator=g, dtype=torch.uint8), y=torch.zeros(n).long())
        tasks[f"t{i}"] = TaskData(f"t{i}", ["a", "b"], s, s, s)
    return base, experts, tasks


def ours(hp, base, experts, tasks):
    return regmean_stream(hp, base, experts, tasks, name="regmean_plusplus", model=Packed())


def reference(hp, base, experts, tasks):
    """FusionBench's loop in float64, continual: at step t the embedding is the mean of the t
    experts, task t's inputs go through the layers merged so far, and each layer's regression
    uses the Grams of tasks < t as their own steps computed them."""
    ratio, n, bs = hp.get("reduce_non_diagonal_ratio", 0.95), hp.get("n_samples", 256), hp.get("batch_size", 32)
    experts = [{k: v.double() for k, v in e.items()} for e in experts]
    stored = []  # per task: per layer, {linear module name: Gram}
    out = []
    for t, (name, td) in enumerate(tasks.items(), start=1):
        seen = experts[:t]
        merged = {k: v.double() for k, v in pack(base).items()}  # merged_model = the pretrained model
        for k in ("embed.weight", "embed.bias", "pos", "ln_pre.weight", "ln_pre.bias"):  # merge_embedding_layer
            merged[k] = torch.stack([e[k] for e in seen]).mean(0)
        emb = Packed().double()
        emb.load_state_dict({**{k: v.double() for k, v in base.items()}, **merged}, strict=False)
        perm = torch.randperm(len(td.train), generator=torch.Generator().manual_seed(0))[:n]
        with torch.no_grad():  # get_input_for_first_layer
            batches = [
                emb.ln_pre(emb.embed(x.flatten(1).reshape(len(x), TOK, 8)) + emb.pos)
                for x in (td.train.x[perm[i : i + bs]].double().div(127.5).sub(1.0) for i in range(0, len(perm), bs))
            ]
        grams_t = []
        for li in range(LAYERS):
            prefix = f"layers.{li}."
            cand = SeparateLayer().double()
            cand.load_state_dict(to_separate_layer(experts[t - 1], prefix))
            regmean_weights, num = {}, {}

            def hook_for(mname):
                def hook(module, input, output):  # get_regmean_weights
                    x = input[0].detach().reshape(-1, input[0].shape[-1])
                    xtx = x.T @ x
                    if mname not in regmean_weights:
                        regmean_weights[mname], num[mname] = xtx / x.shape[0], x.shape[0]
                    else:
                        regmean_weights[mname] = (regmean_weights[mname] * num[mname] + xtx) / (num[mname] + x.shape[0])
                        num[mname] += x.shape[0]

                return hook

            hs = [m.register_forward_hook(hook_for(mn)) for mn, m in cand.named_modules() if isinstance(m, nn.Linear)]
            with torch.no_grad():
                for b in batches:
                    cand(b)
            for h in hs:
                h.remove()
            grams_t.append(regmean_weights)
            params = [to_separate_layer(e, prefix) for e in seen]
            layer_grams = [s[li] for s in stored] + [regmean_weights]
            merged_layer = {}
            for pname in params[0]:  # merging_with_regmean_weights
                mname = pname[: -len(".weight")] if pname.endswith(".weight") else None
                if mname in regmean_weights:
                    ws, prods = [], []
                    for gs, p in zip(layer_grams, params):
                        g = gs[mname]
                        w = g * (torch.diag(torch.ones(g.shape[0], dtype=g.dtype) - ratio) + torch.full_like(g, ratio))
                        ws.append(w)
                        prods.append(w @ p[pname].T)
                    merged_layer[pname] = (torch.inverse(sum(ws)) @ sum(prods)).T
                else:
                    merged_layer[pname] = torch.stack([p[pname] for p in params]).mean(0)
            layer = SeparateLayer().double()
            layer.load_state_dict(merged_layer)
            with torch.no_grad():  # layer_batches_forward
                batches = [layer(b) for b in batches]
            merged.update({f"{prefix}{k}": v for k, v in merged_layer.items()})
        stored.append(grams_t)
        out.append(merged)
    return out


def pack(sd):
    """Our packed state dict in the separate layout (for comparison)."""
    out = {k: v for k, v in sd.items() if not k.startswith("layers.")}
    for li in range(LAYERS):
        out.update({f"layers.{li}.{k}": v for k, v in to_separate_layer(sd, f"layers.{li}.").items()})
    return out


@pytest.mark.parametrize("hp", [{}, {"reduce_non_diagonal_ratio": 0.5, "n_samples": 24, "batch_size": 8}])
def test_regmean_plusplus_matches_the_reference_loop_step_by_step(hp):
    base, experts, tasks = setup()
    got = [pack(o) for o in ours(hp, base, experts, tasks)]
    worst = 0.0
    for o, r in zip(got, reference(hp, base, experts, tasks)):
        assert o.keys() == r.keys()
        for k in r:
            worst = max(worst, float((o[k].double() - r[k]).abs().max() / r[k].abs().max()))
    print(f"regmean_plusplus {hp}: max relative |Δ| against the transcription: {worst:.1e}")
    assert worst < 1e-6


def test_regmean_plusplus_finds_layers_and_embedding_from_the_model():
    base, experts, tasks = setup(1)
    (one,) = ours({}, base, experts, tasks)
    # one expert: its layers and embedding back, what follows the layers θ0's (the reference's)
    for k, v in one.items():
        want = base[k] if k.startswith("ln_post.") else experts[0][k]
        assert torch.allclose(v, want, atol=1e-5), k


def test_layers_and_embedding_of_a_timm_vit_are_read_from_the_model():
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(img_size=8, patch_size=4, in_chans=1, num_classes=0, embed_dim=8, depth=2, num_heads=2)
    R.create("regmean", {})  # loads the method files
    import sys

    mod = sys.modules["cmbench_baselines.regmean_plusplus"]
    layers = mod.transformer_layers(vit)
    assert [n for n, _ in layers] == ["blocks.0", "blocks.1"]
    state = {k: v.clone() for k, v in vit.state_dict().items()}

    class Ctx:
        def network(self, s, classes="task", task=None):
            vit.load_state_dict(s)
            return vit, lambda f: f

    outside = [k for k in state if not k.startswith("blocks.")]
    emb = mod.RegMeanPlusPlus._embedding(Ctx(), state, "blocks.0", outside, torch.randn(2, 1, 8, 8))
    assert sorted(emb) == ["cls_token", "patch_embed.proj.bias", "patch_embed.proj.weight", "pos_embed"]
