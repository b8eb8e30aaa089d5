"""Paper tables from result files: markdown, LaTeX or CSV. Each figure is a mean with its 95 %
interval (``report/stats.py``); in each column the rows not distinguishable from the best are
bold (rank 1) and the next group underlined (rank 2), as in the leaderboard. Rows, their
order and which are partial or references come from each suite's
:class:`~cmbench.report.summary.SuiteSummary`: partial and reference rows are shown, marked,
and never ranked; a one-job suite (a demonstration) gets no marks and no intervals.

Layouts:
* ``stream``: methods × tasks (final per-task accuracy) + Avg + BWT, one block per
  merge-stream suite (the layout of the continual-merging papers: OPCM, ODE-M);
* ``benchmarks``: methods × suites with final accuracy (ACC_all for class-incremental
  suites, else ACC) and AAA (else AIA): the layout of the P&M / InfLoRA tables;
* ``ablation``: the variants of one method × suites;
* ``jobs``: no statistics, one CSV row per job (finished and failed) with its metrics and
  provenance: :func:`cmbench.results.frame`'s columns, for pandas, R or a spreadsheet.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from .. import CmbenchError
from ..results import job_of
from . import escape, stats
from . import summary
from .summary import LEVELS, SuiteSummary, scored_by, summarise, task_sd, task_title


@dataclass
class Cell:
    est: stats.Estimate
    values: dict  # (seed, order) -> value, for paired comparisons
    test_sd: float = 0.0
    ranked: bool = True  # a full, non-reference row
    interval: bool = True  # not a demonstration
    rank: int | None = None  # the summary's rank, for the suite's rank figure (the same in every output)


Column = list  # one Cell, a published text (str) or None per row


def _published(rs: list[dict]) -> str | None:
    """The published ACC recorded with these results (one source row), as text; never ranked."""
    p = next(((r.get("published") or {}).get("ACC") for r in rs if (r.get("published") or {}).get("ACC")), None)
    return None if p is None else f"{p['acc']:.1f}" + (f" ± {p['std']:.1f}" if p.get("std") is not None else "")


def _cell(s: SuiteSummary, label: str, fn, what: str, test_sd: float = 0.0, accuracy: bool = True) -> Cell | None:
    row = s.row(label)
    values = {job_of(r): fn(r) for r in row.records}
    est = stats.estimate(values, s.suite, label, what, test_sd=test_sd, bounds=(0.0, 1.0) if accuracy else None)
    if est is None:
        return None
    return Cell(
        est,
        values,
        test_sd,
        ranked=not (row.partial or row.reference or row.test_time),  # test-time rows: never marked among the others
        interval=not s.demonstration,
        rank=row.rank if what == s.headline and not row.test_time else None,
    )


def _level_cell(s: SuiteSummary, key: str, task: str | None = None) -> Cell | None:
    """θ0's or the experts' figure (``summary.level``): a reference, never ranked."""
    est = summary.level(s, key, task)
    return None if est is None else Cell(est, {}, ranked=False, interval=not s.demonstration)


def _marks(column: Column, key: tuple) -> list[str]:
    """Rank 1 ("best") and rank 2 ("second") among the column's ranked cells, by paired
    differences on shared jobs (``stats.rank_groups``)."""
    cells = {i: c for i, c in enumerate(column) if isinstance(c, Cell) and c.ranked and c.interval}
    if len(cells) < 2:
        return [""] * len(column)
    if any(c.rank for c in cells.values()):  # the suite's rank figure: ranked once, by the summary
        return [{1: "best", 2: "second"}.get(c.rank, "") if isinstance(c, Cell) else "" for c in column]  # type: ignore[arg-type]  # rank None: ""
    means = {str(i): c.est.mean for i, c in cells.items()}

    def differs(a: str, b: str) -> bool:
        ca, cb = cells[int(a)], cells[int(b)]
        d = stats.paired(ca.values, cb.values, *key, a, b, test_sd=math.hypot(ca.test_sd, cb.test_sd))
        return d is not None and stats.distinguishable(d[0])

    ranks = stats.rank_groups(list(means), means, differs)
    return [{1: "best", 2: "second"}.get(ranks.get(str(i), 0), "") for i in range(len(column))]


def _text(c: Cell, fmt: str) -> str:
    e = c.est
    if not c.interval or (e.jobs == 1 and not e.test_sd):
        return f"{100 * e.mean:.1f}"
    sep = (", ", " [", "]") if fmt != "latex" else (", ", " {\\scriptsize [", "]}")
    return f"{100 * e.mean:.1f}{sep[1]}{100 * e.lo:.1f}{sep[0]}{100 * e.hi:.1f}{sep[2]}"


def _render(title: str, header: list[str], rows: list[str], cols: list[Column], fmt: str) -> str:
    marks = [_marks(col, (title, j)) for j, col in enumerate(cols)]
    if fmt == "csv":  # numbers in their own columns: mean, interval, independent runs
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        parts = ("mean", "lo95", "hi95", "runs", "rank")
        w.writerow(["table", header[0], *(escape.csv_text(f"{h} {p}") for h in header[1:] for p in parts)])
        for i, r in enumerate(rows):
            out: list[Any] = []  # texts and numbers (the other formats reuse the name for lines)
            for j, col in enumerate(cols):
                c = col[i]
                if isinstance(c, Cell):
                    e = c.est
                    rank = {"best": 1, "second": 2}.get(marks[j][i], "")
                    out += [f"{100 * e.mean:.4f}", f"{100 * e.lo:.4f}", f"{100 * e.hi:.4f}", e.runs, rank]
                else:
                    out += [c.split(" ± ")[0] if isinstance(c, str) else "", "", "", "", ""]
            w.writerow([escape.csv_text(title), escape.csv_text(r), *out])
        return buf.getvalue()

    def cell(c, mark: str) -> str:
        if c is None:
            return "–"
        if isinstance(c, str):  # a published number: as the source gives it
            return c.replace("±", "$\\pm$") if fmt == "latex" else c
        text = _text(c, fmt)
        if fmt == "latex":
            return {"best": f"\\textbf{{{text}}}", "second": f"\\underline{{{text}}}"}.get(mark, text)
        return {"best": f"**{text}**", "second": f"<u>{text}</u>"}.get(mark, text)

    body = [[r] + [cell(cols[j][i], marks[j][i]) for j in range(len(cols))] for i, r in enumerate(rows)]
    if fmt == "latex":
        out = [
            f"% {escape.latex(title)}",
            "\\begin{tabular}{l" + "c" * (len(header) - 1) + "}",
            "\\toprule",
            " & ".join(escape.latex(h) for h in header) + " \\\\",
            "\\midrule",
        ]
        out += [" & ".join([escape.latex(line[0])] + line[1:]) + " \\\\" for line in body]
        out += ["\\bottomrule", "\\end{tabular}", ""]
        return "\n".join(out)
    out = [f"**{escape.md(title)}**", "", "| " + " | ".join(escape.md(h) for h in header) + " |"]
    out += ["|" + "---|" * len(header)]
    out += ["| " + " | ".join([escape.md(line[0]), *line[1:]]) + " |" for line in body] + [""]
    return "\n".join(out)


def _title(s: SuiteSummary, label: str) -> str:
    return s.title(label) + s.kind_note(label)


def stream_table(recs: list[dict], fmt: str, methods: list[str] | None = None) -> str:
    by_suite = defaultdict(list)
    for r in recs:
        by_suite[r["suite"]].append(r)
    out = []
    for suite in sorted(by_suite):
        s = summarise(suite, by_suite[suite])
        if not s.stream or not s.ok:
            continue
        labels = [row.label for row in s.rows if _wanted(row.first, methods)]
        tasks = sorted({t for r in s.ok for t in r["tasks"]})
        first = s.ok[0]
        cols: list[Column] = []
        for t in tasks:

            def final(r, t=t):
                return r["R"][-1][r["tasks"].index(t)]

            col = []
            for lb in labels:
                rs = s.row(lb).records
                p = sum(final(r) for r in rs) / len(rs)
                sd = task_sd(first, t, p) if s.fixed_test_split else 0.0
                col.append(_cell(s, lb, final, f"final-{t}", sd))
            cols.append(col)
        cols.append([_cell(s, lb, lambda r: r["metrics"]["ACC"], "ACC", s.test_sd(lb, "ACC") or 0.0) for lb in labels])
        pub = [_published(s.row(lb).records) for lb in labels]
        if any(pub):  # the published final ACC of the same row (cmbench.published), unranked
            cols.append(pub)
        cols.append([_cell(s, lb, lambda r: r["metrics"]["BWT"], "BWT", accuracy=False) for lb in labels])
        names = [_title(s, lb) for lb in labels]
        for key, name in LEVELS:  # θ0 and the experts per task, below the methods, as in the leaderboard
            names.append(f"{name} (reference)")
            for t, col in zip(tasks, cols):
                col.append(_level_cell(s, key, t))
            cols[len(tasks)].append(_level_cell(s, key))
            for col in cols[len(tasks) + 1 :]:
                col.append(None)
        header = [
            "Method",
            *(task_title(first, t) for t in tasks),
            "Avg",
            *(["Avg (published)"] if any(pub) else []),
            "BWT",
        ]
        what = "score per task (%; ρ: Spearman × 100)" if scored_by(first) else "accuracy per task (%)"
        title = f"{suite}: final {what}" + (" (demonstration: one job)" if s.demonstration else "")
        out.append(_render(title, header, names, cols, fmt))
    return "\n".join(out)


def _wanted(rec: dict, methods: list[str] | None) -> bool:
    return (
        not methods
        or rec["label"] in methods
        or rec["method"] in methods
        or any(rec["label"].startswith(m) for m in methods)
    )


def benchmarks_table(
    recs: list[dict], fmt: str, methods: list[str] | None = None, title: str = "final accuracy / AAA per benchmark (%)"
) -> str:
    by_suite = defaultdict(list)
    for r in recs:
        by_suite[r["suite"]].append(r)
    summaries = {suite: summarise(suite, rs) for suite, rs in sorted(by_suite.items())}
    summaries = {k: s for k, s in summaries.items() if s.ok}
    labels: list[str] = []
    for s in summaries.values():  # in the first suite's order, then new labels as they come
        labels += [row.label for row in s.rows if _wanted(row.first, methods) and row.label not in labels]
    cols: list[Column] = []
    final_of: list[SuiteSummary | None] = []  # per column: its suite if it is the suite's Final column
    header = ["Method"]
    for suite, s in summaries.items():
        have = {row.label for row in s.rows}
        final, aaa = s.headline, "AAA" if s.headline == "ACC_all" else "AIA"
        for metric, name in ((final, "Final"), (aaa, "AAA")):
            header.append(f"{suite} {name}" + (" (demonstration)" if s.demonstration and name == "Final" else ""))
            cols.append(
                [
                    _cell(s, lb, lambda r, m=metric: r["metrics"][m], metric, s.test_sd(lb, metric) or 0.0)
                    if lb in have
                    else None
                    for lb in labels
                ]
            )
            final_of.append(s if name == "Final" else None)
            pub = [_published(s.row(lb).records) if lb in have else None for lb in labels]
            if name == "Final" and any(pub):  # the published final accuracy beside ours, unranked
                header.append(f"{suite} Final (published)")
                cols.append(pub)
                final_of.append(None)
    names = []
    for lb in labels:  # markers from the suite that has the row (partial counts per suite differ)
        s = next(s for s in summaries.values() if lb in {row.label for row in s.rows})
        names.append(_title(s, lb))
    if any(s.stream for s in summaries.values()):  # θ0 and the experts of merge streams, as in the leaderboard
        for key, name in LEVELS:
            names.append(f"{name} (reference)")
            for col, of in zip(cols, final_of):
                col.append(_level_cell(of, key) if of is not None and of.stream else None)
    return _render(title, header, names, cols, fmt)


def ablation_table(recs: list[dict], fmt: str, method: str) -> str:
    variants = [r for r in recs if r["method"] == method]
    return benchmarks_table(variants, fmt, None, title=f"ablation of {method}: final accuracy / AAA (%)")


def render_table(
    recs: list[dict], kind: str, fmt: str, methods: list[str] | None = None, suite: str | None = None
) -> str:
    if suite:
        recs = [r for r in recs if r["suite"] == suite]
    if kind == "jobs":  # every job, failed ones too; a rehearsal's rows say so in their `rehearsal` column
        if fmt != "csv":
            raise CmbenchError(f"--table jobs is CSV only (one row per job); drop --format {fmt} or use --format csv")
        return jobs_table(recs, methods)
    ok = [r for r in recs if r["status"] == "ok"]
    if kind == "stream" and not any(r.get("setting") == "merge_stream" for r in ok):
        settings = ", ".join(sorted({f"{r['suite']} ({r['setting']})" for r in ok})) or "no finished jobs"
        raise CmbenchError(
            f"--table stream lays out merge-stream suites (methods × tasks); the selection has {settings}: "
            "use --table benchmarks"
        )
    if not ok:
        raise CmbenchError("no finished jobs in the selection: nothing to tabulate")
    body = _render_table(recs, kind, fmt, methods)
    if any(r.get("rehearsal") for r in recs):
        label = "rehearsal: random weights"
        mark = {"markdown": f"_{label}_\n\n", "latex": f"% {label}\n", "csv": f"# {label}\n"}[fmt]
        return mark + body
    return body


def _render_table(recs: list[dict], kind: str, fmt: str, methods: list[str] | None) -> str:
    if kind == "stream":
        return stream_table(recs, fmt, methods)
    if kind == "benchmarks":
        return benchmarks_table(recs, fmt, methods)
    if kind == "ablation":
        if not methods or len(methods) != 1:
            raise CmbenchError("--table ablation needs exactly one method: --methods NAME")
        return ablation_table(recs, fmt, methods[0])
    raise CmbenchError(f"unknown --table {kind!r}; use stream, benchmarks, ablation or jobs")


def jobs_table(recs: list[dict], methods: list[str] | None = None) -> str:
    """One CSV row per job (:func:`cmbench.results.frame_of`'s columns); text cells are
    escaped against formula injection, numbers written in full (NaN: an empty cell)."""
    from ..results import frame_of

    df = frame_of([r for r in recs if _wanted(r, methods)])
    for c in df.columns:
        if df[c].dtype.kind not in "biuf":  # text: names, hashes, errors, paths
            df[c] = [None if v is None or v != v else escape.csv_text(v) for v in df[c]]
    return df.to_csv(index=False, lineterminator="\n")
