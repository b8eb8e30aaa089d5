"""Continual TIES-merging (Yadav et al. 2023, arXiv:2306.01708; continual form as in FusionBench).

TIES on task vectors τ_1..τ_n (flattened over the whole model):
  1. trim:  keep each τ_i's top-k% entries by magnitude (|τ| ≥ its k-th largest |τ|),
  2. elect: γ = sign(Σ_i trim(τ_i)); zeros take the majority sign sign(Σ γ),
  3. merge: τ_m = Σ (or mean) of the trimmed entries whose sign agrees with γ.

Continual form (FusionBench's ContinualTiesMerging):
  M_1 = θ_0 + λ·τ_1,   M_t = M_{t−1} + λ·TIES(M_{t−1} − θ_0, θ_t − θ_0)

``anchor="merged"`` is that published form; ``anchor="theta0"`` instead sets
M_t = θ_0 + λ·TIES(...), a variant kept visible as a hyperparameter.
"""

from typing import Literal

import torch

from cmbench import kernels
from cmbench.methods import Fraction, NonNegative, merge_function
from cmbench.tensors import apply, task_vector, topk_threshold


def trim(v: torch.Tensor, k: float) -> torch.Tensor:
    """Keep the top-k fraction of |v| (ties at the threshold kept), zero the rest."""
    d = v.numel()
    kth = d - int(d * k)  # the reference keeps entries >= the (d − ⌊d·k⌋)-th smallest |v|
    if kth < 1:
        return v.clone()
    thresh = v.abs().kthvalue(kth).values
    return v * (v.abs() >= thresh)


def ties(vectors: torch.Tensor, k: float, merge_func: str) -> torch.Tensor:
    """TIES over the rows of ``vectors`` (n × d): the plain form of the equations above."""
    trimmed = torch.stack([trim(v, k) for v in vectors])
    sign = torch.sign(trimmed.sum(0))
    sign[sign == 0] = torch.sign(sign.sum())
    agree = torch.where(sign > 0, trimmed > 0, trimmed < 0)
    selected = trimmed * agree
    if merge_func == "sum":
        return selected.sum(0)
    return selected.sum(0) / agree.sum(0).clamp(min=1)


def ties_state(vectors: list[dict], k: float, merge_func: str) -> dict:
    """:func:`ties` on state dicts, tensor by tensor (no flattened copy of the model); each
    vector's global top-k threshold is exact without a full sort (``topk_threshold``; on
    large CPU models the continual two-vector step runs ``cmbench.kernels`` instead)."""
    d = sum(v.numel() for v in vectors[0].values())
    keep = int(d * k)  # entries ≥ the (⌊d·k⌋ + 1)-th largest |v| are kept, as in :func:`trim`
    fast = len(vectors) == 2 and kernels.use_kernels(*vectors)  # large models: one-pass kernels
    on_gpu = next(iter(vectors[0].values())).is_cuda
    kth = kernels.abs_kth_largest if fast else (_abs_kth_largest_gpu if on_gpu else topk_threshold)
    thresholds = [None if keep >= d else kth(list(vec.values()), keep + 1) for vec in vectors]
    if fast:
        ta, tb = (0.0 if t is None else float(t) for t in thresholds)
        return kernels.ties_two(*vectors, ta, tb, merge_func == "mean")
    trimmed = [
        vec if t is None else {n: v.where(v.abs() >= t, 0.0) for n, v in vec.items()}
        for vec, t in zip(vectors, thresholds)
    ]
    total = {n: sum(tr[n] for tr in trimmed) for n in vectors[0]}
    majority = torch.sign(sum(torch.sign(v).sum() for v in total.values()))  # γ where Σ is 0
    if len(vectors) == 2:
        return {n: _elect_two(trimmed[0][n], trimmed[1][n], total[n], majority, merge_func) for n in total}
    out = {}
    for n, s in total.items():
        sign = torch.sign(s)
        sign = torch.where(sign == 0, majority, sign)
        agree = [torch.where(sign > 0, tr[n] > 0, tr[n] < 0) for tr in trimmed]
        selected = sum(torch.where(a, tr[n], 0.0) for a, tr in zip(agree, trimmed))
        out[n] = selected if merge_func == "sum" else selected / sum(a.to(s.dtype) for a in agree).clamp(min=1)
    return out


def _abs_kth_largest_gpu(values: list[torch.Tensor], rank: int) -> torch.Tensor:
    """The ``rank``-th largest |v| (exact: the least of the top ``rank``). On a GPU one radix
    top-k over the concatenated model (H100, 88M entries: ~3 ms) beats ``topk_threshold``'s
    per-tensor passes, which wait on the device for each tensor (~0.12 s)."""
    return torch.topk(torch.cat([v.reshape(-1) for v in values]).abs(), rank, sorted=False).values.min()


def _elect_two(a: torch.Tensor, b: torch.Tensor, s: torch.Tensor, majority, merge_func: str) -> torch.Tensor:
    """Elect + disjoint merge for two trimmed vectors in few passes (the continual case).

    Same sign or one zero: both agree with γ = sign(a + b), the sum is a + b. Opposite
    signs: γ is the sign of the larger magnitude, which alone is kept; if they cancel
    exactly (a = −b), γ is the majority sign and the entry with that sign is kept (a zero
    majority selects negative entries, as the reference's ``where(γ > 0, τ > 0, τ < 0)``).
    """
    agree = torch.sign(a) * torch.sign(b)  # signs, not a·b, which underflows to 0 for tiny entries
    opposite = agree < 0
    on_tie = (a > 0) if float(majority) > 0 else (a < 0)
    pick_a = torch.where(a.abs() == b.abs(), on_tie, a.abs() > b.abs())
    out = torch.where(opposite, torch.where(pick_a, a, b), s)
    if merge_func == "mean":  # both nonzero and agreeing: two entries were summed
        out = torch.where(agree > 0, out * 0.5, out)
    return out


@merge_function("ties", paper="Yadav et al. 2023, arXiv:2306.01708")
def ties_merging(
    ctx,
    merged,
    incoming,
    *,
    k: Fraction = 0.2,
    lam: NonNegative = 0.5,
    merge_func: Literal["sum", "mean"] = "sum",
    anchor: Literal["merged", "theta0"] = "merged",
):
    tau = task_vector(incoming, ctx.theta0)
    if ctx.step == 1:
        return apply(ctx.theta0, tau, lam)
    merged_tv = ties_state([task_vector(merged, ctx.theta0), tau], k, merge_func)
    return apply(merged if anchor == "merged" else ctx.theta0, merged_tv, lam)
