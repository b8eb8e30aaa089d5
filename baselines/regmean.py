"""RegMean (Jin et al. 2023, "Dataless Knowledge Fusion by Merging Weights of Language
Models", arXiv:2212.09849), continual form with running sums.

For every linear map W (out × in) the merge solves the regression that matches each model's
outputs on its own task's inputs: with X_i the inputs that reach the layer in model θ_i on
task i's training data and G_i = X_iᵀX_i / n_i their Gram matrix (n_i rows: tokens × examples),

    W_t = (Σ_{i≤t} G̃_i)⁻¹ Σ_{i≤t} G̃_i W_iᵀ   (transposed back),   G̃_i = α G_i + (1 − α) diag(G_i),

α the off-diagonal ratio (``reduce_non_diagonal_ratio``); every other parameter (biases,
norms, embeddings, non-linear weights) is the plain mean of the experts. The reference is
FusionBench's ``RegMeanAlgorithmForCLIP`` (fusion_bench/method/regmean/regmean.py
``merging_with_regmean_weights``, clip_regmean.py ``get_regmean_weights``, at 54c9e8c; config
``config/method/regmean/clip_regmean.yaml``): 256 training examples in batches of 32, α = 0.95,
each Gram computed by the expert it weighs, with forward hooks on every ``nn.Linear``.

Continual form (no published continual RegMean; this is our choice, and it is exact): G̃_i is
a linear function of G_i, so the two sums Σ G̃_i and Σ G̃_i W_iᵀ, and the sum of the other
parameters, are kept between steps; M_t is then the one-shot RegMean of every expert seen so
far, and no old model is stored (storage: one in × in and two in × out matrices per layer).

Departures, and why:

* A fused attention input projection (timm's ``qkv`` Linear, open_clip's
  ``nn.MultiheadAttention.in_proj_weight``) is one map of the attention block's input: the
  Gram of its input is what the reference computes for each of HF CLIP's separate q, k and v
  projections, so the merge is the same; ``in_proj_weight`` is found on the module type.
* Grams and the solve in float64 (the reference: float32 and ``torch.inverse``); the
  examples are the first ``n_samples`` of a seeded permutation (the reference: a shuffled
  loader), in batches of ``batch_size``.
* An input that no seen example reaches (a dead relu unit) makes Σ G̃ singular, where the
  reference's ``torch.inverse`` fails: its column of W is the experts' mean (``solve``).
* A linearised backbone is refused: its layers do not compute W x of the merged weights.
"""

import torch

from cmbench import CmbenchError
from cmbench.methods import Fraction, Method, PositiveInt, register


def _attention_context(m: torch.nn.MultiheadAttention, args: tuple, kwargs: dict) -> torch.Tensor:
    """What ``m.out_proj`` multiplies: the attention's output before its output projection.
    ``nn.MultiheadAttention`` applies ``out_proj.weight`` functionally (its module is never
    called, so no hook sees its input): recomputed here with an identity output projection."""
    q, k, v = (*args, *(kwargs.get(n) for n in ("query", "key", "value")[len(args) :]))[:3]
    if m.batch_first:
        q, k, v = (t.transpose(0, 1) for t in (q, k, v))
    d = m.embed_dim
    ctx, _ = torch.nn.functional.multi_head_attention_forward(
        q, k, v, d, m.num_heads, m.in_proj_weight, m.in_proj_bias, m.bias_k, m.bias_v, m.add_zero_attn, 0.0,
        torch.eye(d, dtype=q.dtype, device=q.device), None, training=False,
        key_padding_mask=kwargs.get("key_padding_mask"), need_weights=False, attn_mask=kwargs.get("attn_mask"),
        is_causal=kwargs.get("is_causal", False),
    )  # fmt: skip
    return ctx


def _linear_inputs(module: torch.nn.Module, names: set[str]) -> list[tuple[torch.nn.Module, dict]]:
    """The linear maps of ``module`` whose weights are in ``names``, read from the module types:
    (module to hook, {weight name: its input from the hooked call's (args, kwargs)}). Every
    ``nn.Linear`` its input; an ``nn.MultiheadAttention`` with a packed input projection its
    ``in_proj_weight`` (q, k and v of the query) and its ``out_proj.weight`` (the attention's
    output before that projection)."""
    out: list[tuple[torch.nn.Module, dict]] = []
    inside_attention = set()
    for mname, m in module.named_modules():
        prefix = f"{mname}." if mname else ""
        if isinstance(m, torch.nn.MultiheadAttention) and f"{prefix}in_proj_weight" in names:
            inside_attention.add(f"{prefix}out_proj")
            out.append(
                (
                    m,
                    {
                        f"{prefix}in_proj_weight": lambda m, a, kw: a[0] if a else kw["query"],
                        f"{prefix}out_proj.weight": _attention_context,
                    },
                )
            )
    for mname, m in module.named_modules():
        if isinstance(m, torch.nn.Linear) and f"{mname}.weight" in names and mname not in inside_attention:
            out.append((m, {f"{mname}.weight": lambda m, a, kw: a[0] if a else kw["input"]}))
    return out


def gram_matrices(ctx, state, n_samples: int, batch_size: int) -> dict[str, torch.Tensor]:
    """G = XᵀX / n of each linear map's input rows in ``state`` on the current task's training
    examples (float64; rows are tokens × examples, as the reference's hook reshapes them)."""
    from cmbench.models import Linearized

    split = ctx.data.current("train")
    perm = torch.randperm(len(split), generator=torch.Generator().manual_seed(ctx.seed))[:n_samples]
    module, head = ctx.network(state)
    if isinstance(module, Linearized):
        raise CmbenchError("regmean: a linearised backbone does not compute W·x of its weights; use a plain backbone")
    module.eval()
    grams: dict[str, torch.Tensor] = {}
    rows: dict[str, int] = {}

    def hook(inputs: dict):
        def record(mod, args, kwargs):
            for name, input_of in inputs.items():
                x = input_of(mod, args, kwargs).detach()
                x = x.reshape(-1, x.shape[-1]).double()
                grams[name] = grams.get(name, 0) + x.T @ x
                rows[name] = rows.get(name, 0) + x.shape[0]

        return record

    handles = [
        m.register_forward_pre_hook(hook(ins), with_kwargs=True) for m, ins in _linear_inputs(module, set(state))
    ]
    try:
        with torch.no_grad():
            for i in range(0, len(perm), batch_size):
                idx = perm[i : i + batch_size]
                head(module(split.x[idx].float().div(127.5).sub(1.0)))
    finally:
        for h in handles:
            h.remove()
    return {k: g / rows[k] for k, g in grams.items()}


@register
class RegMean(Method):
    name = "regmean"
    paper = "Jin et al. 2023, arXiv:2212.09849"
    settings = ("merge_stream", "train_then_merge")
    data_access = "current_task"

    def __init__(
        self,
        *,
        n_samples: PositiveInt = 256,
        batch_size: PositiveInt = 32,
        reduce_non_diagonal_ratio: Fraction = 0.95,
    ):
        self.n_samples, self.batch_size, self.alpha = n_samples, batch_size, reduce_non_diagonal_ratio
        self.gram_sum = None  # Σ G̃_i per linear weight
        self.weighted_sum = None  # Σ G̃_i W_iᵀ per linear weight
        self.weight_sum = None  # Σ W_i per linear weight (inputs no seen example reaches)
        self.param_sum = None  # Σ θ_i of every other floating-point entry
        self.count = 0

    def merge(self, ctx, merged, incoming, task):
        G = gram_matrices(ctx, incoming, self.n_samples, self.batch_size)
        G = {k: self.alpha * g + (1 - self.alpha) * torch.diag_embed(g.diagonal()) for k, g in G.items()}
        GW = {k: g @ incoming[k].double().T for k, g in G.items()}
        rest = {k: v for k, v in incoming.items() if v.is_floating_point() and k not in G}
        W = {k: incoming[k].double() for k in G}
        if self.count == 0:
            self.gram_sum, self.weighted_sum, self.param_sum = G, GW, {k: v.clone() for k, v in rest.items()}
            self.weight_sum = W
        else:
            self.gram_sum = {k: s + G[k] for k, s in self.gram_sum.items()}
            self.weighted_sum = {k: s + GW[k] for k, s in self.weighted_sum.items()}
            self.weight_sum = {k: s + W[k] for k, s in self.weight_sum.items()}
            self.param_sum = {k: s + rest[k] for k, s in self.param_sum.items()}
        self.count += 1
        out = {}
        for k, v in incoming.items():
            if k in self.gram_sum:
                out[k] = self.solve(k).to(v.dtype)
            elif k in self.param_sum:
                out[k] = self.param_sum[k] / self.count
            else:
                out[k] = v.clone()
        return out

    def solve(self, k: str) -> torch.Tensor:
        """W of linear weight ``k``: the regression over every expert seen. An input that is
        zero on every example seen (a relu unit none of the tasks' examples activates) leaves
        its column free and Σ G̃ singular (the reference's ``torch.inverse`` fails there): that
        column is the experts' mean, as every entry outside the regression is."""
        A, B = self.gram_sum[k], self.weighted_sum[k]
        dead = A.diagonal() == 0
        if not dead.any():
            return torch.linalg.solve(A, B).T
        alive = ~dead
        Wt = (self.weight_sum[k] / self.count).T.clone()
        Wt[alive] = torch.linalg.solve(A[alive][:, alive], B[alive])
        return Wt.T
