"""The statistics every table shows: independent runs, 95 % intervals, rank groups.

**The unit of replication.** Seeds are independent runs (each builds its own θ0, experts and
training); a seed's task orders are nested in it and share everything but the order. For a
quantity whose value is the same in every order of a seed (the final model of weight
averaging or Task Arithmetic does not depend on the order), the orders add no information:
such a row has as many independent values as seeds. Every figure says how many independent
runs are behind it, and paired comparisons count their wins per seed.

**Intervals.** A mean over jobs gets a 95 % interval from a two-level (hierarchical)
bootstrap: resample the seeds with replacement, then each drawn seed's orders with
replacement, and take the mean of the seed means; ``B`` replicates with a fixed generator seed
derived from what is resampled, so a report is deterministic. Why not
``scipy.stats.bootstrap``: it resamples one level of independent observations; here the
observations are nested (orders within seeds) and the second level must be resampled within
the first, which it does not do.

The interval is the bootstrap's *standard* interval with a Student quantile: mean ± t(S − 1)
× SE, SE the replicates' standard deviation times √(S / (S − 1)) for S seeds (the plug-in
bootstrap understates a standard error by √((S − 1) / S)). Percentile intervals cannot reach
beyond the values seen: with the micro suites' three seeds they cover the mean about 75 % of
the time, not 95 % (Hesterberg 2015, "What teachers should know about the bootstrap"). With
many seeds the two agree.

When every seed is evaluated on the same test split (a suite's fixed ``data_seed``), the test
split's own sampling error is in no seed-to-seed spread. Its standard error is known (binomial,
finite-population corrected where the result records the population its test split was drawn
from) and is added in quadrature: half-width² = (t × SE)² + (z × SE_test)².

**Rank groups.** The best row and every row whose paired difference to it (same seed and
order, hierarchical bootstrap of the differences, plus the test-set error of both rows,
independent: an upper bound) has a 95 % interval containing 0 share rank 1; the best of the
rest starts rank 2, and so on. Rows with fewer jobs than the suite's grid are not ranked.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import stats as sps

B = 10_000  # bootstrap replicates
LEVEL = 0.95


def _seed_of(*parts: object) -> int:
    """The bootstrap generator's seed: a hash of what is resampled (stable across runs)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


def nested(values: dict[tuple[int, int], float]) -> list[np.ndarray]:
    """{(seed, order): value} -> one array of order values per seed (sorted by seed, order);
    undefined values (None, NaN) are left out."""
    by: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for (s, o), v in values.items():
        if v is not None and v == v:
            by[s].append((o, float(v)))
    return [np.array([v for _, v in sorted(by[s])]) for s in sorted(by)]


def order_invariant(groups: list[np.ndarray]) -> bool:
    """Whether every seed's orders give the same value (and some seed has several orders)."""
    multi = [g for g in groups if len(g) > 1]
    return bool(multi) and all(np.ptp(g) <= 1e-12 * max(1.0, float(np.abs(g).max())) for g in multi)


def hierarchical_replicates(groups: list[np.ndarray], seed: int) -> np.ndarray:
    """``B`` bootstrap replicates of the mean of seed means: seeds drawn with replacement, then
    each drawn seed's orders with replacement."""
    rng = np.random.default_rng(seed)
    S = len(groups)
    sizes = np.array([len(g) for g in groups])
    K = int(sizes.max())
    table = np.zeros((S, K))
    for i, g in enumerate(groups):
        table[i, : len(g)] = g
    drawn = rng.integers(0, S, size=(B, S))
    n = sizes[drawn]  # (B, S): orders of each drawn seed
    picks = (rng.random((B, S, K)) * n[..., None]).astype(int)
    vals = table[drawn[..., None], picks]
    used = np.arange(K)[None, None, :] < n[..., None]
    return (np.where(used, vals, 0.0).sum(-1) / n).mean(-1)


@dataclass(frozen=True)
class Estimate:
    """A mean over jobs with its interval and what it rests on."""

    mean: float
    lo: float
    hi: float
    seeds: int  # independent runs
    jobs: int
    invariant: bool  # the same value in every order of a seed
    test_sd: float = 0.0  # the test split's sampling error included in the interval

    @property
    def runs(self) -> int:
        """Independent values: seeds (a seed's orders are nested in it)."""
        return self.seeds

    @property
    def half(self) -> float:
        return max(self.mean - self.lo, self.hi - self.mean)

    def runs_text(self) -> str:
        if self.invariant:
            return f"{self.seeds} (order-invariant)"
        per = self.jobs / self.seeds if self.seeds else 0
        return f"{self.seeds} × {per:g}" if per == int(per) else f"{self.seeds} ({self.jobs} jobs)"


def estimate(
    values: dict[tuple[int, int], float],
    *key: object,
    test_sd: float = 0.0,
    bounds: tuple[float, float] | None = None,
) -> Estimate | None:
    """The mean of ``values`` over seeds (each seed's orders averaged first) and its 95 %
    interval; ``key`` names what is resampled (seeds the generator), ``test_sd`` the test
    split's standard error of the figure (0: none to add), ``bounds`` the figure's range (an
    accuracy: [0, 1]) the interval is clipped to."""
    groups = nested(values)
    if not groups:
        return None
    mean = float(np.mean([g.mean() for g in groups]))
    jobs = sum(len(g) for g in groups)
    if jobs == 1 and not test_sd:
        return Estimate(mean, mean, mean, 1, 1, False)
    if jobs == 1:
        se_runs, q = 0.0, 0.0
    else:
        reps = hierarchical_replicates(groups, _seed_of("estimate", *key))
        n = len(groups) if len(groups) > 1 else jobs  # independent units: seeds (one seed: its orders)
        se_runs = float(np.std(reps, ddof=1)) * math.sqrt(n / (n - 1))
        q = float(sps.t.ppf((1 + LEVEL) / 2, n - 1))
    half = math.hypot(q * se_runs, float(sps.norm.ppf((1 + LEVEL) / 2)) * test_sd)
    lo, hi = mean - half, mean + half
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return Estimate(mean, float(lo), float(hi), len(groups), jobs, order_invariant(groups), test_sd)


def paired(
    a: dict[tuple[int, int], float], b: dict[tuple[int, int], float], *key: object, test_sd: float = 0.0
) -> tuple[Estimate, int, int] | None:
    """The difference a − b on the jobs both have (same seed and order), its interval, and the
    wins of a counted per seed (the independent unit): (estimate, wins, seeds)."""
    shared = {j: a[j] - b[j] for j in a if j in b and a[j] is not None and b[j] is not None}
    est = estimate(shared, "paired", *key, test_sd=test_sd)
    if est is None:
        return None
    per_seed = [g.mean() for g in nested(shared)]
    return est, sum(d > 0 for d in per_seed), len(per_seed)


def distinguishable(diff: Estimate) -> bool:
    """Whether a paired difference's interval excludes 0."""
    return diff.lo > 0 or diff.hi < 0


def binomial_sd(p: float, n: int, population: int | None = None) -> float:
    """Standard error of an accuracy ``p`` measured on ``n`` test images drawn from
    ``population`` (None: unbounded), with the finite-population correction."""
    if n <= 0 or p != p:
        return 0.0
    fpc = (population - n) / (population - 1) if population and population > 1 and population >= n else 1.0
    return math.sqrt(max(p * (1 - p), 0.0) / n * fpc)


def spearman_sd(rho: float, n: int) -> float:
    """Standard error of a Spearman ρ measured on ``n`` pairs: Fisher's z with Bonett and
    Wright's (2000) variance for Spearman, var z = (1 + ρ²/2) / (n - 3), carried back to ρ
    by the delta method (dρ/dz = 1 - ρ²). A score's test error is not binomial when the
    task is scored by a correlation (STS-B)."""
    if n <= 3 or rho != rho:
        return 0.0
    return (1 - rho**2) * math.sqrt((1 + rho**2 / 2) / (n - 3))


def rank_groups(order: list[str], means: dict[str, float], differs: Callable[[str, str], bool]) -> dict[str, int]:
    """Rank groups over ``order`` (the rows to rank): the best row by mean and every row not
    ``differs(row, best)`` share a rank; the best of the rest starts the next one."""
    left = sorted(order, key=lambda r: -means[r])
    out: dict[str, int] = {}
    rank = 0
    while left:
        rank += 1
        best = left[0]
        group = [r for r in left if r == best or not differs(r, best)]
        for r in group:
            out[r] = rank
        left = [r for r in left if r not in out]
    return out
