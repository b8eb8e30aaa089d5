"""Single-pass CPU kernels for per-entry merge rules on large models (numba).

A rule such as TIES's trim-and-elect or MagMax's largest magnitude is a dozen elementwise
ops in PyTorch; each op streams the whole model through memory once and most allocate, so
on an 88M-parameter model a TIES step costs ~80× the bandwidth floor (`cmbench bench`).
These kernels make one pass per rule with the same IEEE operations entry by entry
(comparisons, selections, one addition), so their output is bitwise the torch form's;
tests assert it. The method files keep the torch form (the equations), used for small
models, where a kernel call is not worth it, and on GPUs.

Results of methods that import this module are keyed on its normalised source
(``fingerprint.method_fingerprint``).
"""

from __future__ import annotations

import numba as nb
import numpy as np
import torch
from torch import Tensor

LARGE = 1 << 22  # entries from which a CPU model is merged by these kernels (ViT-B/32: 88M)


def use_kernels(*sds: dict[str, Tensor]) -> bool:
    """Large contiguous float32 CPU models take the kernels; everything else the torch form.
    The entries checked are the first dict's (e.g. the task vector's) in every dict."""
    ts = [sd[k] for sd in sds for k in sds[0]]
    return sum(t.numel() for t in sds[0].values()) >= LARGE and all(
        t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in ts
    )


def _np(t: Tensor) -> np.ndarray:
    """Zero-copy 1-D numpy view of a contiguous CPU tensor (writes go to the tensor)."""
    return t.detach().view(-1).numpy()


def _threads() -> None:
    nb.set_num_threads(max(1, min(torch.get_num_threads(), nb.config.NUMBA_NUM_THREADS)))


# Each kernel splits its arrays into one contiguous span per thread and loops over a slice
# from index 0: numba's loop over ``prange(n)`` or ``range(start, stop)`` keeps a
# negative-index check that makes LLVM load entries by gathers instead of vectors (~4×
# slower on these loops).


@nb.njit(inline="always")
def _span(n, n_threads, t):
    chunk = (n + n_threads - 1) // n_threads
    return t * chunk, min(n, (t + 1) * chunk)


# -- exact k-th largest |v|: a sampled bracket, one counting pass, a small selection ------------
# For non-negative floats the IEEE bit pattern orders like the value, so everything below
# works on the bits of |v| (int32, sign cleared). As in ``tensors.topk_threshold`` (the torch
# form): a uniform sample brackets the answer, one read-only pass counts the entries above the
# bracket and copies those inside it, and a selection among those (~1 % of the model) gives
# the exact value. If the sample was unlucky (the rank falls outside the bracket, or the
# bracket holds too many entries for its buffer) an exact two-pass radix select is used.

_ABS = np.int32(0x7FFFFFFF)
_BLOCK = 32  # entries counted by vector compares before a rare second look for bracket entries


@nb.njit(parallel=True, cache=True)
def _bracket(bits, lo, hi, above, inside, fill):
    """Per thread: above[t] += #(|v| bits > hi); bits in [lo, hi] appended to inside[t]
    (fill[t] counts them, also past the buffer's capacity, which the caller checks)."""
    n_threads, cap = inside.shape
    for t in nb.prange(n_threads):
        start, stop = _span(bits.size, n_threads, t)
        sub = bits[start:stop]
        n_above, f = 0, fill[t]
        for s in range(0, sub.size, _BLOCK):
            block = sub[s : s + _BLOCK]
            n_gt, n_ge = 0, 0
            for i in range(block.size):
                b = block[i] & _ABS
                n_gt += b > hi
                n_ge += b >= lo
            n_above += n_gt
            if n_ge > n_gt:  # the block holds bracket entries: collect them
                for i in range(block.size):
                    b = block[i] & _ABS
                    if lo <= b <= hi:
                        if f < cap:
                            inside[t, f] = b
                        f += 1
        above[t] += n_above
        fill[t] = f


@nb.njit(parallel=True, cache=True)
def _hist(bits, shift, mask, prefix, prefix_shift, local):
    """local[thread, bin] += entries whose |v| bits fall in bin (those under ``prefix`` only)."""
    n_threads = local.shape[0]
    for t in nb.prange(n_threads):
        start, stop = _span(bits.size, n_threads, t)
        sub = bits[start:stop]
        for i in range(sub.size):
            b = sub[i] & _ABS
            if prefix < 0 or (b >> prefix_shift) == prefix:
                local[t, (b >> shift) & mask] += 1


def _select_bin(hist: np.ndarray, rank: int) -> tuple[int, int]:
    """Bin holding the rank-th largest entry and the rank within that bin."""
    above = np.cumsum(hist[::-1])  # above[j]: entries in the top j + 1 bins
    j = int(np.searchsorted(above, rank))
    return hist.size - 1 - j, rank - (int(above[j - 1]) if j else 0)


def _radix_kth(bits: list[np.ndarray], rank: int) -> int:
    """Bits of the rank-th largest |v|: histograms of the top 16, then the low 15 bits."""
    high = np.zeros((nb.get_num_threads(), 1 << 16), np.int64)
    for b in bits:
        _hist(b, 15, 0xFFFF, -1, 15, high)
    top, r = _select_bin(high.sum(0), rank)
    low = np.zeros((nb.get_num_threads(), 1 << 15), np.int64)
    for b in bits:
        _hist(b, 0, 0x7FFF, top, 15, low)
    bottom, _ = _select_bin(low.sum(0), r)
    return (top << 15) | bottom


def abs_kth_largest(values: list[Tensor], rank: int, sample: int = 1 << 18, z: float = 6.0) -> Tensor:
    """The ``rank``-th largest |v| over all tensors (1-based), exactly (float32)."""
    _threads()
    bits = [_np(v).view(np.int32) for v in values]
    sizes = np.array([b.size for b in bits])
    d = int(sizes.sum())
    if not 1 <= rank <= d:
        raise ValueError(f"rank {rank} not in 1..{d}")
    idx = np.sort(np.random.default_rng(rank).integers(0, d, sample))  # exactness does not depend on it
    starts = np.concatenate([[0], np.cumsum(sizes)])
    cut = np.searchsorted(idx, starts)
    picked = np.concatenate([b[idx[cut[i] : cut[i + 1]] - starts[i]] for i, b in enumerate(bits)])
    picked = np.sort(picked & _ABS)[::-1]  # descending
    q = rank / d
    err = z * np.sqrt(q * (1 - q) / sample) + 1 / sample
    hi = _ABS if q - err < 0 else picked[int((q - err) * sample)]
    lo = np.int32(0) if q + err >= 1 else picked[min(sample - 1, int((q + err) * sample))]
    n_threads = nb.get_num_threads()
    above, fill = np.zeros(n_threads, np.int64), np.zeros(n_threads, np.int64)
    # one row per thread, each as large as the whole bracket's expected count (~2·err·d)
    inside = np.empty((n_threads, int(2 * err * d) + 4096), np.int32)
    for b in bits:
        _bracket(b, lo, hi, above, inside, fill)
    n_above = int(above.sum())
    if (fill <= inside.shape[1]).all() and n_above < rank <= n_above + int(fill.sum()):
        cand = np.concatenate([inside[t, :f] for t, f in enumerate(fill)])
        j = cand.size - (rank - n_above)
        kth = int(np.partition(cand, j)[j])
    else:
        kth = _radix_kth(bits, rank)
    return torch.tensor(np.array([kth], np.int32).view(np.float32)[0])


# -- TIES, two vectors (the continual step) ----------------------------------------------------


@nb.njit(inline="always")
def _trimmed(v, t):
    return v if abs(v) >= t else np.float32(0.0)


@nb.njit(parallel=True, cache=True)
def _elect_two(a, b, ta, tb, mean, out, votes, cancels):
    """out = the elected merge of trim(a), trim(b), taking the positive entry where they
    cancel exactly (as for a positive majority sign); per thread, votes[t] += Σ sign(trim(a) +
    trim(b)) and cancels[t] += the number of exact cancellations."""
    n_threads = votes.size
    for t in nb.prange(n_threads):
        start, stop = _span(a.size, n_threads, t)
        sa, sb, so = a[start:stop], b[start:stop], out[start:stop]
        n_votes, n_cancel = 0, 0
        for i in range(sa.size):
            A, B = _trimmed(sa[i], ta), _trimmed(sb[i], tb)
            s = A + B
            n_votes += (s > 0) - (s < 0)
            agree = np.sign(A) * np.sign(B)
            if agree < 0:  # opposite signs: the larger magnitude
                if abs(A) == abs(B):
                    n_cancel += 1
                    so[i] = max(A, B)
                else:
                    so[i] = A if abs(A) > abs(B) else B
            elif agree > 0 and mean:
                so[i] = s * np.float32(0.5)
            else:
                so[i] = s
        votes[t] += n_votes
        cancels[t] += n_cancel


@nb.njit(parallel=True, cache=True)
def _negative_where_cancelled(a, b, ta, tb, out, n_threads):
    """Where trim(a) = −trim(b) ≠ 0, out takes the negative entry (majority sign ≤ 0)."""
    for t in nb.prange(n_threads):
        start, stop = _span(a.size, n_threads, t)
        sa, sb, so = a[start:stop], b[start:stop], out[start:stop]
        for i in range(sa.size):
            A, B = _trimmed(sa[i], ta), _trimmed(sb[i], tb)
            if A != 0 and A == -B:
                so[i] = min(A, B)


def ties_two(a: dict[str, Tensor], b: dict[str, Tensor], ta: float, tb: float, mean: bool) -> dict[str, Tensor]:
    """TIES of two task vectors with trim thresholds ta, tb (``baselines/ties.py``'s
    ``_elect_two`` applied to the trimmed vectors) in one pass. The majority sign γ decides
    only exact cancellations (a = −b), which are rare: the pass assumes γ > 0 while it counts
    the votes, and a second pass corrects those entries if γ ≤ 0."""
    _threads()
    ta32, tb32 = np.float32(ta), np.float32(tb)
    n_threads = nb.get_num_threads()
    votes, cancels = np.zeros(n_threads, np.int64), np.zeros(n_threads, np.int64)
    out = {n: torch.empty_like(v) for n, v in a.items()}
    for n in a:
        _elect_two(_np(a[n]), _np(b[n]), ta32, tb32, mean, _np(out[n]), votes, cancels)
    if cancels.sum() and votes.sum() <= 0:
        for n in a:
            _negative_where_cancelled(_np(a[n]), _np(b[n]), ta32, tb32, _np(out[n]), n_threads)
    return out


# -- MagMax ---------------------------------------------------------------------------------


@nb.njit(parallel=True, cache=True)
def _magmax_update(incoming, theta0, tau_max, n_threads):
    for t in nb.prange(n_threads):
        start, stop = _span(tau_max.size, n_threads, t)
        x, x0, m = incoming[start:stop], theta0[start:stop], tau_max[start:stop]
        for i in range(m.size):
            v = x[i] - x0[i]
            if abs(v) >= abs(m[i]):
                m[i] = v


def magmax_update(incoming: dict[str, Tensor], theta0: dict[str, Tensor], tau_max: dict[str, Tensor]) -> None:
    """τ_max ← τ where |τ| ≥ |τ_max| (τ = incoming − θ0), in place, one pass."""
    _threads()
    for n, m in tau_max.items():
        _magmax_update(_np(incoming[n]), _np(theta0[n]), _np(m), nb.get_num_threads())
