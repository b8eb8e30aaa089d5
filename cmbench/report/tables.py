"""Paper tables from result files: markdown, LaTeX or CSV; mean ± std; best in bold, second
underlined (per column, higher is better except where noted).

Layouts:
* ``stream``: methods × tasks (final per-task accuracy) + Avg + BWT, one block per suite
  (the layout of the continual-merging papers: OPCM, ODE-M);
* ``benchmarks``: methods × suites with final accuracy (ACC_all for class-incremental
  suites, else ACC) and AAA (else AIA) — the layout of the P&M / InfLoRA tables;
* ``ablation``: the variants of one method (labels starting with its name) × suites.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict

import numpy as np

from ..results import job_of
from . import escape


def _ms(pairs):
    """(mean, sample std or None for one value, n, {job: value}) in %, or None without values;
    ``pairs`` are (job, value) with job = (seed, order index)."""
    by_job = {job: float(x) * 100 for job, x in pairs if x is not None and x == x}
    if not by_job:
        return None
    v = np.array(list(by_job.values()))
    return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else None), int(v.size), by_job


def _published(rs: list[dict]) -> str | None:
    """The published ACC recorded with these results (one source row), as text; never ranked."""
    p = next(((r.get("published") or {}).get("ACC") for r in rs if (r.get("published") or {}).get("ACC")), None)
    return None if p is None else f"{p['acc']:.1f}" + (f" ± {p['std']:.1f}" if p.get("std") is not None else "")


def _rank_marks(column: list[tuple | str | None]) -> list[str]:
    """Best and second per column, compared on the jobs every ranked row has: a row with fewer
    jobs is compared with the others on its own jobs only (means over other jobs differ by
    the jobs, not by the methods)."""
    cells = [c for c in column if isinstance(c, tuple)]
    shared = set.intersection(*(set(c[3]) for c in cells)) if cells else set()

    def score(c):
        return float(np.mean([c[3][j] for j in sorted(shared)])) if shared else c[0]

    means = sorted({score(c) for c in cells}, reverse=True)
    out = []
    for c in column:
        if not isinstance(c, tuple):
            out.append("")
        elif means and score(c) == means[0]:
            out.append("best")
        elif len(means) > 1 and score(c) == means[1]:
            out.append("second")
        else:
            out.append("")
    return out


def _cell(c, mark, fmt):
    if c is None:
        return "–"
    if isinstance(c, str):  # a published number: as the source gives it
        return c.replace("±", "$\\pm$") if fmt == "latex" else c
    text = f"{c[0]:.1f}" if c[1] is None else f"{c[0]:.1f} ± {c[1]:.1f}"  # one job: no spread to show
    if fmt == "latex":
        text = f"{c[0]:.1f}" if c[1] is None else f"{c[0]:.1f} $\\pm$ {c[1]:.1f}"
        return {"best": f"\\textbf{{{text}}}", "second": f"\\underline{{{text}}}"}.get(mark, text)
    if fmt == "markdown":
        return {"best": f"**{text}**", "second": f"<u>{text}</u>"}.get(mark, text)
    return text


def _render(title: str, header: list[str], rows: list[str], cols: list[list], fmt: str) -> str:
    marks = [_rank_marks(col) for col in cols]
    if fmt == "csv":  # numbers in their own columns: mean, std, n (a published value: mean only)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(
            ["table", header[0], *(escape.csv_text(f"{h} {part}") for h in header[1:] for part in ("mean", "std", "n"))]
        )
        for i, r in enumerate(rows):
            cells = []
            for col in cols:
                c = col[i]
                if isinstance(c, tuple):
                    cells += [f"{c[0]:.4f}", "" if c[1] is None else f"{c[1]:.4f}", c[2]]
                else:
                    cells += [c.split(" ± ")[0] if isinstance(c, str) else "", "", ""]
            w.writerow([escape.csv_text(title), escape.csv_text(r), *cells])
        return buf.getvalue()
    # a row with fewer jobs than the suite's fullest row is marked with its n (and ranked on the
    # jobs it shares with the others: _rank_marks)
    n_of = [max((c[2] for c in (col[i] for col in cols) if isinstance(c, tuple)), default=0) for i in range(len(rows))]
    full = max(n_of, default=0)
    rows = [f"{r} (n = {n} of {full})" if 0 < n < full else r for r, n in zip(rows, n_of)]
    body = [[r] + [_cell(cols[j][i], marks[j][i], fmt) for j in range(len(cols))] for i, r in enumerate(rows)]
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


def stream_table(recs: list[dict], fmt: str, methods: list[str] | None = None) -> str:
    out = []
    by_suite = defaultdict(list)
    for r in recs:
        if r["status"] == "ok" and r.get("setting") == "merge_stream":
            by_suite[r["suite"]].append(r)
    for suite in sorted(by_suite):
        rs = by_suite[suite]
        tasks = sorted({t for r in rs for t in r["tasks"]})
        labels = sorted({r["label"] for r in rs if not methods or r["label"] in methods or r["method"] in methods})
        cols = []
        for t in tasks:
            cols.append(
                [_ms([(job_of(r), r["R"][-1][r["tasks"].index(t)]) for r in rs if r["label"] == lb]) for lb in labels]
            )
        cols.append([_ms([(job_of(r), r["metrics"]["ACC"]) for r in rs if r["label"] == lb]) for lb in labels])
        pub = [_published([r for r in rs if r["label"] == lb]) for lb in labels]
        if any(pub):  # the published final ACC of the same row (cmbench.published), unranked
            cols.append(pub)
        cols.append([_ms([(job_of(r), r["metrics"]["BWT"]) for r in rs if r["label"] == lb]) for lb in labels])
        header = ["Method", *tasks, "Avg", *(["Avg (published)"] if any(pub) else []), "BWT"]
        out.append(_render(f"{suite}: final accuracy per task (%)", header, labels, cols, fmt))
    return "\n".join(out)


def _headline(r):
    m = r["metrics"]
    return (m.get("ACC_all", m["ACC"]), m.get("AAA", m["AIA"]))


def benchmarks_table(
    recs: list[dict], fmt: str, methods: list[str] | None = None, title: str = "final accuracy / AAA per benchmark (%)"
) -> str:
    ok = [
        r
        for r in recs
        if r["status"] == "ok"
        and (
            not methods
            or r["label"] in methods
            or r["method"] in methods
            or any(r["label"].startswith(m) for m in methods)
        )
    ]
    suites = sorted({r["suite"] for r in ok})
    labels = sorted({r["label"] for r in ok})
    cols, header = [], ["Method"]
    for s in suites:
        for k, name in ((0, "Final"), (1, "AAA")):
            header.append(f"{s} {name}")
            cols.append(
                [
                    _ms([(job_of(r), _headline(r)[k]) for r in ok if r["suite"] == s and r["label"] == lb])
                    for lb in labels
                ]
            )
            pub = [_published([r for r in ok if r["suite"] == s and r["label"] == lb]) for lb in labels]
            if k == 0 and any(pub):  # the published final accuracy beside ours, unranked
                header.append(f"{s} Final (published)")
                cols.append(pub)
    return _render(title, header, labels, cols, fmt)


def ablation_table(recs: list[dict], fmt: str, method: str) -> str:
    variants = [r for r in recs if r["method"] == method]
    return benchmarks_table(variants, fmt, None, title=f"ablation of {method}: final accuracy / AAA (%)")


def render_table(
    recs: list[dict], kind: str, fmt: str, methods: list[str] | None = None, suite: str | None = None
) -> str:
    if suite:
        recs = [r for r in recs if r["suite"] == suite]
    if any(r.get("rehearsal") for r in recs):
        label = "rehearsal: random weights"
        mark = {"markdown": f"_{label}_\n\n", "latex": f"% {label}\n", "csv": f"# {label}\n"}[fmt]
        return mark + _render_table(recs, kind, fmt, methods)
    return _render_table(recs, kind, fmt, methods)


def _render_table(recs: list[dict], kind: str, fmt: str, methods: list[str] | None) -> str:
    if kind == "stream":
        return stream_table(recs, fmt, methods)
    if kind == "benchmarks":
        return benchmarks_table(recs, fmt, methods)
    if kind == "ablation":
        if not methods or len(methods) != 1:
            from .. import CmbenchError

            raise CmbenchError("--table ablation needs exactly one method: --methods NAME")
        return ablation_table(recs, fmt, methods[0])
    from .. import CmbenchError

    raise CmbenchError(f"unknown --table {kind!r}; use stream, benchmarks or ablation")
