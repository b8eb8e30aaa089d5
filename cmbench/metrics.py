"""Continual metrics, every one a function of the accuracy matrix R (and E).

R has T+1 rows (row 0 = θ0, row t = M_t) and T columns in arrival order; cells may be
NaN (undefined, e.g. classes not learned yet) and are then skipped. Indices below are
1-based as in the definitions; T = number of tasks.

    ACC  = mean_j R[T, j]
    AIA  = mean_{t=1..T} mean_{j<=t} R[t, j]
    BWT  = 1/(T−1) Σ_{j<T} (R[T, j] − R[j, j])                      (negative = forgetting)
    FGT  = 1/(T−1) Σ_{j<T} (max_{t=j..T−1} R[t, j] − R[T, j])
    FWT  = 1/(T−1) Σ_{j=2..T} (R[j−1, j] − R[0, j])
    NACC = mean_j R[T, j] / E[j]

Class-incremental results also carry ACC_all after every step (the accuracy over the
union of the seen tasks' test samples): ACC_all is its final value, AAA its mean over
steps 1..T. Metrics are never part of a result's key: a fix here changes them everywhere
they are read (``results.load_results`` derives them afresh), never recomputes a job.
"""

from __future__ import annotations

import warnings

import numpy as np


def mean_defined(values) -> float:
    """Mean over defined (non-NaN, non-None) values; NaN if there are none."""
    return _nanmean([np.nan if v is None else v for v in values])


def _nanmean(values) -> float:
    values = np.asarray(values, dtype=float)
    if values.size == 0 or np.all(np.isnan(values)):
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(values))


def _matrix(R) -> np.ndarray:
    R = np.array([[np.nan if v is None else v for v in row] for row in R], dtype=float)
    if R.ndim != 2 or R.shape[0] != R.shape[1] + 1:
        raise ValueError(f"R must be (T+1) x T, got {R.shape}")
    return R


def acc(R) -> float:
    R = _matrix(R)
    return _nanmean(R[-1])


def aia(R) -> float:
    R = _matrix(R)
    T = R.shape[1]
    return _nanmean([_nanmean(R[t, :t]) for t in range(1, T + 1)])


def bwt(R) -> float:
    R = _matrix(R)
    T = R.shape[1]
    return _nanmean([R[T, j - 1] - R[j, j - 1] for j in range(1, T)])


def fgt(R) -> float:
    R = _matrix(R)
    T = R.shape[1]
    out = []
    for j in range(1, T):
        past = R[j:T, j - 1]  # rows t = j..T−1
        if np.all(np.isnan(past)):
            continue
        out.append(np.nanmax(past) - R[T, j - 1])
    return _nanmean(out)


def fwt(R) -> float:
    R = _matrix(R)
    T = R.shape[1]
    return _nanmean([R[j - 1, j - 1] - R[0, j - 1] for j in range(2, T + 1)])


def nacc(R, E) -> float:
    R = _matrix(R)
    E = np.array([np.nan if v is None else v for v in E], dtype=float)
    return _nanmean(R[-1] / np.where(E > 0, E, np.nan))


def step_average(R) -> list[float]:
    """Mean accuracy over seen tasks after each step t = 1..T (the accuracy-over-steps curve)."""
    R = _matrix(R)
    return [_nanmean(R[t, :t]) for t in range(1, R.shape[1] + 1)]


def all_metrics(R, E=None, acc_all=None) -> dict[str, float]:
    """Every metric of a job: from R, E (merge stream) and ACC_all per step (class-incremental,
    index 0 = before any step)."""
    out = {"ACC": acc(R), "AIA": aia(R), "BWT": bwt(R), "FGT": fgt(R), "FWT": fwt(R)}
    if E is not None:
        out["NACC"] = nacc(R, E)
    if acc_all is not None:
        out["ACC_all"] = acc_all[-1]
        out["AAA"] = float(sum(acc_all[1:]) / (len(acc_all) - 1))
    return out
