"""What a method did at each step, from the ``diagnostics`` its results recorded
(``cmbench.methods.Context.record``): ``cmbench report --diagnostics METHOD`` and the site.

A table per row (label): one line per step ("finish": the end-of-stream step), one column
per recorded name; a value is the mean over the row's jobs (one job: its own value; a short
vector: the element-wise mean), so P&M's α_t can be read beside 1/t and TRM's coefficients
step by step.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from .escape import md


def _step_key(step: str) -> tuple:
    return (1, 0) if step == "finish" else (0, int(step))


def table(recs: list[dict]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """(names, [(step, [value text per name])]) over ``recs`` (one row's jobs)."""
    values: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in recs:
        for step, d in (r.get("diagnostics") or {}).items():
            for name, v in d.items():
                values[step][name].append(v)
    names = sorted({n for d in values.values() for n in d})
    lines = []
    for step in sorted(values, key=_step_key):
        lines.append((step, [_text(values[step].get(n, [])) for n in names]))
    return names, lines


def _text(vs: list) -> str:
    vs = [v for v in vs if v is not None]
    if not vs:
        return "–"
    if isinstance(vs[0], list):
        width = min(len(v) for v in vs)
        mean = np.nanmean(np.array([[np.nan if x is None else x for x in v[:width]] for v in vs], dtype=float), 0)
        return "[" + ", ".join(_num(x) for x in mean) + "]"
    return _num(float(np.mean(vs)))


def _num(x: float) -> str:
    if x != x:
        return "–"
    return f"{x:.0f}" if x == int(x) and abs(x) < 1e6 else f"{x:.4g}"


def render(recs: list[dict], title: str) -> str:
    """Markdown: a table per label with diagnostics among ``recs``."""
    by_label: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in recs:
        if r["status"] == "ok" and r.get("diagnostics"):
            by_label[(r["suite"], r["label"])].append(r)
    out = [f"**{md(title)}**", ""]
    for (suite, label), rs in sorted(by_label.items()):
        names, lines = table(rs)
        named = ", ".join(f"seed {r['seed']} order {r['order_index']}" for r in rs)
        jobs = (named if len(rs) <= 3 else f"{len(rs)} jobs") + ("" if len(rs) == 1 else "; mean over them")
        out += [f"{md(suite)} / {md(label)} ({jobs}):", ""]
        out += ["| step | " + " | ".join(md(n) for n in names) + " |", "|---|" + "---|" * len(names)]
        out += [f"| {step} | " + " | ".join(cells) + " |" for step, cells in lines]
        out.append("")
    return "\n".join(out)
