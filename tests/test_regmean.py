"""RegMean against a transcription of FusionBench's (fusion_bench/method/regmean at 54c9e8c):
its forward hooks on every nn.Linear of an HF-style model with separate q, k, v and output
projections, its running-mean Gram, ``reduce_non_diagonal_elements`` and
``merging_with_regmean_weights`` in float32, over every expert seen so far; ours runs the
continual form on the same weights packed as open_clip packs them (nn.MultiheadAttention)."""

import pytest
import torch
from torch import nn

from cmbench import CmbenchError
from cmbench import methods as M
from cmbench import registry as R
from cmbench.data import Split, TaskData
from cmbench.protocol import DataAccess

D, TOK, HEADS = 4, 3, 2


class Packed(nn.Module):
    """Tokens → Linear embed → open_clip-style attention (packed in_proj, functional out_proj)
    → LayerNorm → Linear; mean over tokens."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, D)
        self.attn = nn.MultiheadAttention(D, HEADS, batch_first=True)
        self.norm = nn.LayerNorm(D)
        self.fc = nn.Linear(D, D)

    def forward(self, x):
        h = self.embed(x.flatten(1).reshape(len(x), TOK, 8))
        h = self.norm(h + self.attn(h, h, h, need_weights=False)[0])
        return self.fc(h).mean(1)


class Separate(nn.Module):
    """The same function with HF CLIP's separate q/k/v/out Linear layers."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, D)
        self.q, self.k, self.v, self.o = (nn.Linear(D, D) for _ in range(4))
        self.norm = nn.LayerNorm(D)
        self.fc = nn.Linear(D, D)

    def forward(self, x):
        h = self.embed(x.flatten(1).reshape(len(x), TOK, 8))
        B, hd = len(x), D // HEADS

        def heads(t):
            return t.view(B, TOK, HEADS, hd).transpose(1, 2)

        att = torch.softmax(heads(self.q(h)) @ heads(self.k(h)).transpose(-1, -2) / hd**0.5, -1)
        ctx = (att @ heads(self.v(h))).transpose(1, 2).reshape(B, TOK, D)
        h = self.norm(h + self.o(ctx))
        return self.fc(h).mean(1)


def to_separate(sd):
    out = {k: v for k, v in sd.items() if not k.startswith("attn.")}
    for name, w, b in zip("qkv", sd["attn.in_proj_weight"].chunk(3), sd["attn.in_proj_bias"].chunk(3)):
        out[f"{name}.weight"], out[f"{name}.bias"] = w, b
    out["o.weight"], out["o.bias"] = sd["attn.out_proj.weight"], sd["attn.out_proj.bias"]
    return out


def tasks_and_experts(n_tasks=3, n=40):
    g = torch.Generator().manual_seed(0)
    base = {k: torch.randn(v.shape, generator=g) * 0.5 for k, v in Packed().state_dict().items()}
    experts = [{k: v + 0.2 * torch.randn(v.shape, generator=g) for k, v in base.items()} for _ in range(n_tasks)]
    tasks = {}
    for i in range(n_tasks):
        x = torch.randint(0, 256, (n, 1, 4, 6), generator=g, dtype=torch.uint8)
        y = torch.randint(0, 2, (n,), generator=g)
        s = Split(x=x, y=y)
        tasks[f"t{i}"] = TaskData(f"t{i}", ["a", "b"], s, s, s)
    return base, experts, tasks


def ours(hp, base, experts, tasks, name="regmean", model=None):
    """The merged models of ``name``'s stream over ``experts``, each reading its task's data,
    with ``model`` (default :class:`Packed`) as the network."""
    model = model or Packed()
    data = DataAccess(name, "current_task", tasks, 0)
    ctx = M.Context(theta0=base, num_tasks=len(experts), seed=0, data=data)
    data.ctx = ctx

    def network(state, classes="task", task=None):
        model.load_state_dict(state)
        return model, lambda f: f

    ctx.network = network
    m = R.create(name, hp)
    merged, out = base, []
    for i, (e, t) in enumerate(zip(experts, tasks), start=1):
        ctx.step, ctx.task, ctx.seen_tasks = i, t, list(tasks)[:i]
        merged = m.merge(ctx, merged, e, t)
        out.append(merged)
    return out


def reference(hp, experts, tasks, dtype=torch.float32):
    """FusionBench's RegMean on the separate-layer model, one-shot over the first t experts
    (in the reference's float32, or in float64 to compare the arithmetic alone)."""
    model = Separate().to(dtype)
    experts = [{k: v.to(dtype) for k, v in e.items()} for e in experts]
    ratio = hp.get("reduce_non_diagonal_ratio", 0.95)
    grams, params = [], []
    for e, (name, td) in zip(experts, tasks.items()):
        sd = to_separate(e)
        model.load_state_dict(sd)
        regmean_weights, num_computed = {}, {}

        def compute_regmean_weights(module_name):
            def hook(module, input, output):  # clip_regmean.py get_regmean_weights
                x = input[0].detach()
                x = x.reshape(-1, x.shape[-1])
                xtx = torch.matmul(x.transpose(0, 1), x)
                if module_name not in regmean_weights:
                    regmean_weights[module_name] = xtx / x.shape[0]
                    num_computed[module_name] = x.shape[0]
                else:
                    regmean_weights[module_name] = (regmean_weights[module_name] * num_computed[module_name] + xtx) / (
                        num_computed[module_name] + x.shape[0]
                    )
                    num_computed[module_name] += x.shape[0]

            return hook

        handles = [
            m.register_forward_hook(compute_regmean_weights(n))
            for n, m in model.named_modules()
            if isinstance(m, nn.Linear)
        ]
        perm = torch.randperm(len(td.train), generator=torch.Generator().manual_seed(0))[: hp.get("n_samples", 256)]
        with torch.no_grad():
            for i in range(0, len(perm), hp.get("batch_size", 32)):
                model(td.train.x[perm[i : i + hp.get("batch_size", 32)]].to(dtype).div(127.5).sub(1.0))
        for h in handles:
            h.remove()
        grams.append(regmean_weights)
        params.append(sd)
    out = []
    for t in range(1, len(experts) + 1):
        merged = {}
        for pname in params[0]:
            module = pname[: -len(".weight")] if pname.endswith(".weight") else None
            if module in grams[0]:  # merging_with_regmean_weights
                ws, prods = [], []
                for gs, p in zip(grams[:t], params[:t]):
                    g = gs[module]
                    w = g * (torch.diag(torch.ones(g.shape[0], dtype=dtype) - ratio) + torch.zeros_like(g).fill_(ratio))
                    ws.append(w)
                    prods.append(torch.matmul(w, p[pname].transpose(0, 1)))
                merged[pname] = torch.matmul(torch.inverse(sum(ws)), sum(prods)).transpose(0, 1)
            else:
                merged[pname] = torch.stack([p[pname] for p in params[:t]], dim=0).mean(dim=0)
        out.append(merged)
    return out


@pytest.mark.parametrize("hp", [{}, {"reduce_non_diagonal_ratio": 1.0, "n_samples": 24, "batch_size": 8}])
def test_regmean_matches_fusionbench_step_by_step(hp):
    base, experts, tasks = tasks_and_experts()
    got = [to_separate(o) for o in ours(hp, base, experts, tasks)]
    # the float32 reference loses digits in torch.inverse when the Gram is ill-conditioned
    # (α = 1: no diagonal boost); its arithmetic in float64 is the equivalence
    for dtype, tol in ((torch.float64, 1e-6), (torch.float32, 1e-5 if not hp else 1e-3)):
        worst = 0.0  # relative to the largest entry of each weight
        for o, r in zip(got, reference(hp, experts, tasks, dtype)):
            assert o.keys() == r.keys()
            for k in r:
                worst = max(worst, float((o[k].double() - r[k].double()).abs().max() / r[k].abs().max()))
        print(f"regmean {hp}: max relative |Δ| against FusionBench's transcription in {dtype}: {worst:.1e}")
        assert worst < tol, dtype


def test_regmean_of_one_expert_is_that_expert_and_a_linearised_backbone_is_refused():
    base, experts, tasks = tasks_and_experts(1)
    (one,) = ours({}, base, experts, tasks)
    assert all(torch.allclose(one[k], experts[0][k], atol=1e-5) for k in one)
    from cmbench.models import Linearized

    data = DataAccess("regmean", "current_task", tasks, 0)
    ctx = M.Context(theta0=base, num_tasks=1, seed=0, step=1, task="t0", seen_tasks=["t0"], data=data)
    data.ctx = ctx
    lin = Linearized(Packed(), base)
    ctx.network = lambda state, classes="task", task=None: (lin, lambda f: f)
    with pytest.raises(CmbenchError, match="linearised backbone"):
        R.create("regmean", {}).merge(ctx, base, experts[0], "t0")


class Dead(nn.Module):
    """Linear → relu → Linear, one hidden unit that no input activates (bias −100)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(24, D), nn.Linear(D, D)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def test_an_input_no_example_reaches_takes_the_experts_mean():
    """A dead relu unit leaves Σ G̃ singular (the reference's torch.inverse fails): its column
    of fc2 is the experts' mean; the other columns solve the regression without it (RegMean++
    solves with the same ``solve``)."""
    _, _, tasks = tasks_and_experts(2)
    g = torch.Generator().manual_seed(1)
    base = {k: torch.randn(v.shape, generator=g) * 0.3 for k, v in Dead().state_dict().items()}
    base["fc1.bias"][0] = -100.0
    experts = [{k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in base.items()} for _ in range(2)]
    merged = ours({}, base, experts, tasks, model=Dead())[-1]
    mean = (experts[0]["fc2.weight"] + experts[1]["fc2.weight"]) / 2
    assert torch.isfinite(merged["fc2.weight"]).all()
    assert torch.allclose(merged["fc2.weight"][:, 0], mean[:, 0], atol=1e-6)
    assert not torch.allclose(merged["fc2.weight"][:, 1:], mean[:, 1:], atol=1e-3)
