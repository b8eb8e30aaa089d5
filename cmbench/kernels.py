"""Single-pass CPU kernels for per-entry merge rules on large models (numba).

A rule such as TIES's trim-and-elect or MagMax's largest magnitude is a dozen elementwise
ops in PyTorch; each op streams the whole model through memory once and most allocate, so
on an 88M-parameter model a TIES step costs ~80× the bandwidth floor (`cmbench bench`).
These kernels make one pass per rule with the same IEEE operations entry by entry
(comparisons, selections, one addition), so their output is bitwise the torch form's;
tests assert it. The method files keep the torch form (the equations), used for small
models, where a kernel call is not worth it, and on GPUs.

Results of methods that import this module are keyed on its source (``runner.job_key``).
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
    return (sum(t.numel() for t in sds[0].values()) >= LARGE
            and all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in ts))


def _np(t: Tensor) -> np.ndarray:
    """Zero-copy 1-D numpy view of a contiguous CPU tensor (writes go to the tensor)."""
    return t.detach().view(-1).numpy()


def _threads() -> None:
    nb.set_num_threads(max(1, min(torch.get_num_threads(), nb.config.NUMBA_NUM_THREADS)))


# -- exact k-th largest |v| by a two-pass radix select -----------------------------------------
# For non-negative floats the IEEE bit pattern orders like the value, so the rank-th largest
# |v| is found from a histogram of the top 16 bits of |v| (sign cleared), then one of the low
# 15 bits among the entries in the chosen bin: two read-only passes, exact, no sort.


@nb.njit(parallel=True, cache=True)
def _hist(bits, shift, mask, prefix, prefix_shift, local):
    """local[thread, bin] += entries whose |v| bits fall in bin (those under ``prefix`` only)."""
    n_threads = local.shape[0]
    chunk = (bits.size + n_threads - 1) // n_threads
    for t in nb.prange(n_threads):
        for i in range(t * chunk, min(bits.size, (t + 1) * chunk)):
            b = bits[i] & 0x7FFFFFFF
            if prefix < 0 or (b >> prefix_shift) == prefix:
                local[t, (b >> shift) & mask] += 1


def _select_bin(hist: np.ndarray, rank: int) -> tuple[int, int]:
    """Bin holding the rank-th largest entry and the rank within that bin."""
    above = np.cumsum(hist[::-1])  # above[j]: entries in the top j + 1 bins
    j = int(np.searchsorted(above, rank))
    return hist.size - 1 - j, rank - (int(above[j - 1]) if j else 0)


def abs_kth_largest(values: list[Tensor], rank: int) -> Tensor:
    """The ``rank``-th largest |v| over all tensors (1-based), exactly (float32)."""
    _threads()
    bits = [_np(v).view(np.uint32) for v in values]
    high = np.zeros((nb.get_num_threads(), 1 << 16), np.int64)
    for b in bits:
        _hist(b, 15, 0xFFFF, -1, 15, high)
    top, r = _select_bin(high.sum(0), rank)
    low = np.zeros((nb.get_num_threads(), 1 << 15), np.int64)
    for b in bits:
        _hist(b, 0, 0x7FFF, top, 15, low)
    bottom, _ = _select_bin(low.sum(0), r)
    return torch.tensor(np.array([(top << 15) | bottom], np.uint32).view(np.float32)[0])


# -- TIES, two vectors (the continual step) ----------------------------------------------------


@nb.njit(inline="always")
def _trimmed(v, t):
    return v if abs(v) >= t else np.float32(0.0)


@nb.njit(parallel=True, cache=True)
def _votes_two(a, b, ta, tb):
    total = 0
    for i in nb.prange(a.size):
        s = _trimmed(a[i], ta) + _trimmed(b[i], tb)
        total += (s > 0) - (s < 0)
    return total


@nb.njit(parallel=True, cache=True)
def _elect_two(a, b, ta, tb, majority, mean, out):
    for i in nb.prange(a.size):
        A, B = _trimmed(a[i], ta), _trimmed(b[i], tb)
        agree = np.sign(A) * np.sign(B)
        if agree < 0:  # opposite signs: the larger magnitude; exact cancellation: the majority sign
            if abs(A) == abs(B):
                pick_a = A > 0 if majority > 0 else A < 0
            else:
                pick_a = abs(A) > abs(B)
            out[i] = A if pick_a else B
        elif agree > 0 and mean:
            out[i] = (A + B) * np.float32(0.5)
        else:
            out[i] = A + B


def ties_two(a: dict[str, Tensor], b: dict[str, Tensor], ta: float, tb: float, mean: bool) -> dict[str, Tensor]:
    """TIES of two task vectors with trim thresholds ta, tb (``baselines/ties.py``'s
    ``_elect_two`` applied to the trimmed vectors), in two passes."""
    _threads()
    ta32, tb32 = np.float32(ta), np.float32(tb)
    votes = sum(_votes_two(_np(a[n]), _np(b[n]), ta32, tb32) for n in a)
    majority = (votes > 0) - (votes < 0)
    out = {}
    for n in a:
        o = torch.empty_like(a[n])
        _elect_two(_np(a[n]), _np(b[n]), ta32, tb32, majority, mean, _np(o))
        out[n] = o
    return out


# -- MagMax ---------------------------------------------------------------------------------


@nb.njit(parallel=True, cache=True)
def _magmax_update(incoming, theta0, tau_max):
    for i in nb.prange(tau_max.size):
        t = incoming[i] - theta0[i]
        if abs(t) >= abs(tau_max[i]):
            tau_max[i] = t


def magmax_update(incoming: dict[str, Tensor], theta0: dict[str, Tensor], tau_max: dict[str, Tensor]) -> None:
    """τ_max ← τ where |τ| ≥ |τ_max| (τ = incoming − θ0), in place, one pass."""
    _threads()
    for n, m in tau_max.items():
        _magmax_update(_np(incoming[n]), _np(theta0[n]), _np(m))
