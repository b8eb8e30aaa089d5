"""What every output says about a suite, decided once: rows, their order, which are partial
or references, each figure's estimate and interval, the rank groups, the test-set error.
The leaderboard, the paper tables and the site render from a :class:`SuiteSummary`.

Rules (the same in every output):

* a row with fewer jobs than the suite's fullest row is *partial*: shown with its count
  ("n = 3 of 9"), never ranked, compared with the full rows on its own jobs;
* rows that see every seen task's data (``data_access: all_seen``, the multitask reference)
  are *references*: shown after the methods, never ranked; θ0 and the experts are reference
  rows of the merge stream (last);
* rows that adapt on unlabeled test inputs (``data_access: test_inputs``, test-time
  adaptation) are a class apart: ranked among themselves only, shown after the other methods;
* a suite whose fullest row has one job is a *demonstration*: no rank, no interval claimed;
* ranked rows come first, by rank group, then by mean; then partial rows by mean, then
  test-time rows, then references.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import cast

import numpy as np

from .. import metrics
from ..results import job_of
from . import stats

STREAM_COLS = ("ACC", "AIA", "BWT", "FGT", "FWT", "NACC")
TTM_COLS = ("ACC", "AIA", "BWT", "FGT")  # FWT undefined: unlearned classes have no cells
SIGNED = ("BWT", "FWT")
ACCURACIES = ("ACC", "AIA", "ACC_all", "AAA")  # in [0, 1]: their intervals are clipped there
# figures whose test-set error is modelled (final-row accuracies); the others' intervals
# cover seeds and orders only
TEST_ERROR_METRICS = ("ACC", "NACC", "ACC_all")


@dataclass
class Row:
    label: str
    records: list[dict]
    reference: bool = False
    test_time: bool = False
    partial: bool = False
    rank: int | None = None

    @property
    def first(self) -> dict:
        return self.records[0]

    def values(self, metric: str) -> dict[tuple[int, int], float]:
        return {job_of(r): r["metrics"].get(metric) for r in self.records}


@dataclass
class SuiteSummary:
    suite: str
    setting: str
    records: list[dict]  # every record of the suite, failed ones included
    rows: list[Row]  # in display order
    cols: tuple[str, ...]
    headline: str  # the figure rows are ranked by
    full: int  # jobs of the fullest row (the suite's grid as run)
    demonstration: bool
    fixed_test_split: bool  # every seed evaluated on the same test images
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> list[dict]:
        return [r for r in self.records if r["status"] == "ok"]

    @property
    def stream(self) -> bool:
        return self.setting == "merge_stream"

    def row(self, label: str) -> Row:
        return next(r for r in self.rows if r.label == label)

    def est(self, label: str, metric: str) -> stats.Estimate | None:
        key = ("est", label, metric)
        if key not in self._cache:
            row = self.row(label)
            sd = self.test_sd(label, metric) or 0.0
            bounds = (0.0, 1.0) if metric in ACCURACIES else None
            self._cache[key] = stats.estimate(row.values(metric), self.suite, label, metric, test_sd=sd, bounds=bounds)
        return self._cache[key]

    def paired(self, label: str, ref: str, metric: str):
        key = ("paired", label, ref, metric)
        if key not in self._cache:
            sd = math.hypot(self.test_sd(label, metric) or 0.0, self.test_sd(ref, metric) or 0.0)
            self._cache[key] = stats.paired(
                self.row(label).values(metric), self.row(ref).values(metric), self.suite, label, ref, metric, test_sd=sd
            )
        return self._cache[key]

    def test_sd(self, label: str, metric: str) -> float | None:
        """The test split's standard error of a row's figure, to add to its interval: 0 when
        the data seed varies with the seed (it is in the seeds' spread then) or the figure's
        is not modelled; None when the results do not record their test sizes."""
        key = ("sd", label, metric)
        if key not in self._cache:
            self._cache[key] = (
                test_error(self.row(label).records, metric)
                if self.fixed_test_split and metric in TEST_ERROR_METRICS
                else 0.0
            )
        return self._cache[key]

    def title(self, label: str) -> str:
        """A row's name as every output shows it: † a reconstruction, ‡ an end-of-stream
        step, (n = k of N) a partial row."""
        row = self.row(label)
        return (
            label
            + (" †" if row.first.get("reconstruction") else "")
            + (" ‡" if row.first.get("R_final_before_finish") else "")
            + (f" (n = {len(row.records)} of {self.full})" if row.partial else "")
        )

    def kind(self, label: str) -> str:
        """The class a row belongs to beside the ranked methods, as every output names it."""
        row = self.row(label)
        return "reference" if row.reference else "test-time" if row.test_time else ""

    def kind_note(self, label: str) -> str:
        """ " (reference)", " (test-time)" or "": what every output appends to the row's name."""
        kind = self.kind(label)
        return f" ({kind})" if kind else ""

    def runs(self, label: str) -> str:
        e = self.est(label, self.headline)
        return e.runs_text() if e else "–"


def scored_by(rec: dict) -> dict[str, str]:
    """Task -> how the result scores it, where not by accuracy (text tasks: ``exact_match``
    or ``spearman``)."""
    return (rec.get("evaluation") or {}).get("metric") or {}


def task_title(rec: dict, task: str) -> str:
    """A task's column name: STS-B's column is Spearman's ρ (× 100), not an accuracy."""
    return f"{task} (ρ)" if scored_by(rec).get(task) == "spearman" else task


def task_sd(rec: dict, task: str, score: float) -> float:
    """Test error of ``score`` on ``task`` from ``rec``'s recorded test size: Spearman's for
    a correlation, else binomial (finite-population corrected where recorded); 0 unknown."""
    ev = rec.get("evaluation") or {}
    n = (ev.get("test_samples") or {}).get(task)
    if not n:
        return 0.0
    if scored_by(rec).get(task) == "spearman":
        return stats.spearman_sd(score, n)
    return stats.binomial_sd(score, n, (ev.get("test_population") or {}).get(task))


def test_error(recs: list[dict], metric: str) -> float | None:
    """Standard error of a row's mean figure from its test sizes: binomial for an accuracy
    (finite-population corrected where recorded), Spearman's for a task the result scores by
    ρ (``evaluation.metric``); None without recorded sizes."""
    sizes = [(r.get("evaluation") or {}).get("test_samples") or {} for r in recs]
    if not recs or any(set(s) != set(r["tasks"]) for s, r in zip(sizes, recs)):
        return None
    n, pop = sizes[0], (recs[0].get("evaluation") or {}).get("test_population") or {}
    tasks = recs[0]["tasks"]
    if metric == "ACC_all":
        p = float(np.nanmean([r["metrics"]["ACC_all"] for r in recs]))
        total = sum(n[t] for t in tasks)
        population = sum(pop[t] for t in tasks) if all(t in pop for t in tasks) else None
        return stats.binomial_sd(p, total, population)
    final = defaultdict(list)  # task -> its final accuracy in every job
    expert = defaultdict(list)
    for r in recs:
        for j, t in enumerate(r["tasks"]):
            if r["R"][-1][j] is not None:
                final[t].append(r["R"][-1][j])
            if r.get("E"):
                expert[t].append(r["E"][j])
    var = 0.0
    for t, ps in final.items():
        sd = task_sd(recs[0], t, float(np.mean(ps)))
        if metric == "NACC":
            sd /= max(float(np.mean(expert[t])), 1e-12) if expert[t] else 1.0
        var += sd**2
    return math.sqrt(var) / max(1, len(final))


def columns(setting: str, ok: list[dict]) -> tuple[str, ...]:
    if setting == "merge_stream":
        return STREAM_COLS
    return (*TTM_COLS, "ACC_all", "AAA") if any("ACC_all" in r["metrics"] for r in ok) else TTM_COLS


def summarise(suite: str, recs: list[dict]) -> SuiteSummary:
    """The suite's rows, their order, ranks and intervals (see the module doc)."""
    ok = [r for r in recs if r["status"] == "ok"]
    setting = recs[0].get("setting", "merge_stream")
    cols = columns(setting, ok)
    headline = "ACC_all" if "ACC_all" in cols else "ACC"
    by_label: dict[str, list[dict]] = defaultdict(list)
    for r in ok:
        by_label[r["label"]].append(r)
    full = max((len(rs) for rs in by_label.values()), default=0)
    rows = [
        Row(
            lb,
            sorted(rs, key=job_of),
            reference=rs[0].get("data_access") == "all_seen",
            test_time=rs[0].get("data_access") == "test_inputs",
            partial=len(rs) < full,
        )
        for lb, rs in by_label.items()
    ]
    # the same test images in every seed unless the data seed varied with the seed
    data_seeds = {r.get("data_seed") for r in ok} - {None}  # not recorded before it could vary: fixed
    s = SuiteSummary(
        suite,
        setting,
        recs,
        rows,
        cols,
        headline,
        full,
        demonstration=full == 1,
        fixed_test_split=len(data_seeds) <= 1,
    )
    means = {
        row.label: (cast(stats.Estimate, s.est(row.label, headline)).mean if s.est(row.label, headline) else -math.inf)
        for row in rows
    }

    def differs(a: str, b: str) -> bool:
        d = s.paired(a, b, headline)
        return d is not None and stats.distinguishable(d[0])

    # test-time rows saw test inputs: ranked among themselves, never with the others
    for test_time in (False, True):
        ranked = [row.label for row in rows if not (row.reference or row.partial) and row.test_time == test_time]
        if not s.demonstration and ranked:
            for label, rank in stats.rank_groups(ranked, means, differs).items():
                s.row(label).rank = rank

    def place(row: Row) -> tuple:
        kind = 3 if row.reference else 2 if row.test_time else 1 if row.partial or row.rank is None else 0
        return (kind, row.partial, row.rank or 0, -means[row.label], row.label)

    s.rows.sort(key=place)
    return s


def per_seed(recs: list[dict], fn) -> dict[int, float]:
    """One value per seed (θ0's row and the experts do not depend on the order)."""
    out: dict[int, float] = {}
    for r in recs:
        out.setdefault(r["seed"], fn(r))
    return out


# the merge stream's reference levels, named alike in every output: never ranked
LEVELS = (("theta0", "pretrained θ0"), ("experts", "individual experts"))


def level(s: SuiteSummary, key: str, task: str | None = None) -> stats.Estimate | None:
    """θ0's accuracy (row 0 of R) or the experts' (E), on one task or the mean over tasks;
    one value per seed (neither depends on the order)."""

    def fn(r: dict) -> float:
        v = r["R"][0] if key == "theta0" else r["E"]
        return float(v[r["tasks"].index(task)]) if task else float(np.mean(v))

    values = per_seed(s.ok, fn)
    return stats.estimate({(k, 0): v for k, v in values.items()}, s.suite, key + (f"-{task}" if task else ""))


def reference_levels(s: SuiteSummary) -> dict[str, stats.Estimate | None]:
    """θ0 and the experts, mean over tasks (merge-stream suites; else empty)."""
    if not s.stream or not s.ok:
        return {}
    return {key: level(s, key) for key, _ in LEVELS}


def level_runs(e: stats.Estimate | None) -> str:
    return (f"{e.seeds} seed" + ("s" if e.seeds != 1 else "")) if e else "–"


def curve(recs: list[dict]) -> list[float]:
    """Mean accuracy over seen tasks after each step (%), mean over jobs."""
    return [
        round(float(v), 2)
        for v in np.nanmean([np.array(metrics.step_average(r["R"]), dtype=float) * 100 for r in recs], axis=0)
    ]


def pct(e: stats.Estimate | None, signed: bool = False, interval: bool = True) -> str:
    """A figure as every output prints it: mean and its 95 % interval in %, or the mean alone
    for one job (nothing to claim about its spread)."""
    if e is None or not np.isfinite(e.mean):
        return "–"
    fmt = "{:+.1f}" if signed else "{:.1f}"
    text = fmt.format(100 * e.mean)
    if not interval or e.jobs == 1 and not e.test_sd:
        return text
    return f"{text} [{fmt.format(100 * e.lo)}, {fmt.format(100 * e.hi)}]"
