"""``cmbench report --site DIR``: the leaderboard as a static web site, from the result files alone.

One page per suite (its table sortable by any column and filterable, rows linking to each
method's paper, the published number beside ours, every row's provenance; accuracy over
steps and the mean accuracy matrices drawn in the page with values on hover; each job's
matrix on demand; the static plots) and an index of suites. Everything the pages need is
in the files written here: the script and styles are inline, no CDN, no server, nothing
fetched; the pages open from the file system. The same result files give the same bytes
(no timestamps; sorted keys; plots written without dates).
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..results import load_results
from . import diagnostics, plots, stats
from .cells import data_text, devices, hparam_text, published_text, storage_text
from .escape import html as _esc
from .escape import json_in_html
from .leaderboard import DEMO, rank_lines, rank_text
from .outputs import clear_site, write_manifest
from .summary import LEVELS, SIGNED, SuiteSummary, curve, level_runs, pct, reference_levels, summarise, task_title


def _paper_link(paper: str | None) -> str | None:
    """A URL for a method's paper or public code, read from its ``paper`` line."""
    if not paper:
        return None
    m = re.search(r"arXiv:(\d{4}\.\d{4,5})", paper)
    if m:
        return f"https://arxiv.org/abs/{m.group(1)}"
    m = re.search(r"public code ([\w.-]+/[\w.-]+)", paper)
    return f"https://github.com/{m.group(1)}" if m else None


def _cell(e: stats.Estimate | None, signed: bool, interval: bool) -> dict:
    """A table cell: its text (mean [95 % interval] in %) and the mean it sorts by (None: no value)."""
    if e is None or not np.isfinite(e.mean):
        return {"text": "–", "v": None}
    return {"text": pct(e, signed, interval), "v": round(100 * e.mean, 4)}


def _mean_matrix(rs: list[dict]) -> list[list[float | None]]:
    return [[None if np.isnan(v) else round(float(v), 2) for v in row] for row in plots.mean_matrix(rs)]


def _job_matrix(r: dict) -> dict:
    return {
        "job": f"seed {r['seed']}, order {r['order_index']}",
        "tasks": [task_title(r, t) for t in r["tasks"]],
        "R": [[None if v is None or v != v else round(100 * v, 2) for v in row] for row in r["R"]],
        "key": r.get("key", ""),
    }


def suite_data(s: SuiteSummary) -> dict:
    """Everything a suite page shows, as JSON-able data, in the summary's row order."""
    interval = not s.demonstration
    first_of: dict[str, tuple[str, dict]]  # method -> its first row's label and hparams
    rows, first_of = [], {}
    for row in s.rows:
        rs = row.records
        pub = (row.first.get("published") or {}).get("ACC")
        rows.append(
            {
                "label": row.label,
                "name": s.title(row.label) + s.kind_note(row.label),
                "rank": rank_text(s, row.label) if interval else "",
                # the rank's sort value: a test-time rank (T1) after every other rank, among its own
                "rank_v": str(row.rank + (1000 if row.test_time else 0)) if interval and row.rank else "",
                "top": row.rank == 1 and not row.test_time,
                "reconstruction": bool(row.first.get("reconstruction")),
                "reference": row.reference,
                "test_time": row.test_time,
                "partial": row.partial,
                "paper": row.first.get("paper") or "",
                "url": _paper_link(row.first.get("paper")),
                "n": len(rs),
                "runs": s.runs(row.label),
                "verified": sum(r["verified"] for r in rs),
                "metrics": {c: _cell(s.est(row.label, c), c in SIGNED, interval) for c in s.cols},
                "published": {"text": published_text(pub), "v": pub["acc"]} if pub else {"text": "–", "v": None},
                "data": data_text(row.first),
                "storage": storage_text(rs),
                "merge_s": round(float(np.mean([r["timings"]["merge_total_s"] for r in rs])), 4),
                "hparams": hparam_text(row.label, rs, first_of),
                "commits": sorted({(r.get("git_commit") or "?")[:10] for r in rs}),
                "curve": curve(rs),
                "matrix": _mean_matrix(rs),
                "jobs": [_job_matrix(r) for r in rs],
                "diagnostics": diagnostics.table(rs) if any(r.get("diagnostics") for r in rs) else None,
            }
        )
    levels = reference_levels(s)
    return {
        "suite": s.suite,
        "setting": s.setting,
        "demonstration": s.demonstration,
        "headline": s.headline,
        "hashes": sorted({r["suite_hash"] for r in s.records}),
        "commits": sorted({(r.get("git_commit") or "?")[:10] for r in s.records}),
        "devices": devices(s.records),
        "last_job": max((r.get("finished_at") or "" for r in s.records), default=""),
        "failed": len(s.records) - len(s.ok),
        "rehearsal": any(r.get("rehearsal") for r in s.records),
        "cols": list(s.cols),
        "rows": rows,
        "levels": {k: {"text": pct(e, interval=interval), "runs": level_runs(e)} for k, e in levels.items()},
        "ranks": rank_lines(s)[0] if interval and any(r.rank for r in s.rows) else "",
    }


# the page's styles and script are files beside this module (package data), inlined into every
# page so that it opens from the file system with no server and no network
STYLE = (Path(__file__).parent / "site.css").read_text()
SCRIPT = (Path(__file__).parent / "site.js").read_text()


REHEARSAL = "<p><b>rehearsal: random weights</b> (these numbers measure the harness, not the methods)</p>"


def _page(title: str, body: str, data: dict) -> str:
    blob = json_in_html(data)
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_esc(title)}</title><style>{STYLE}</style></head><body>\n{body}\n"
        f'<div id="tip"></div><script id="data" type="application/json">{blob}</script>'
        f"<script>{SCRIPT}</script></body></html>\n"
    )


def _suite_page(d: dict, figures: list[tuple[str, str]]) -> str:
    e = _esc
    ranked = not d["demonstration"]
    access = sorted({r["data"] for r in d["rows"]})
    options = "".join(f'<option value="{e(a)}">{e(a)}</option>' for a in access)
    meta = (
        f"Setting <b>{e(d['setting'])}</b> · suite hash {e(', '.join(d['hashes']))} · {e(', '.join(d['devices']))} · "
        f"commit {e(', '.join(d['commits']))} · last job {e(d['last_job'])}"
        + (f" · <b>{d['failed']} failed job(s)</b>" if d["failed"] else "")
    )
    details = "".join(
        f'<details data-label="{e(r["label"])}"><summary>{e(r["label"])}: {r["n"]} jobs</summary></details>'
        for r in d["rows"]
    )
    figs = "".join(f'<h3>{e(t)}</h3><img src="{e(src)}" alt="{e(t)}">' for t, src in figures)
    diag = _diagnostics(d)
    how = (
        "mean [95 % interval] over seeds × orders; bold: rank 1 (not distinguishable from the best row)"
        if ranked
        else "one job per method: no rank, no interval"
    )
    body = f"""<p><a href="../index.html">← all suites</a></p>
<h1>{e(d["suite"])}</h1>
{REHEARSAL if d["rehearsal"] else ""}{"<p>" + DEMO.replace("**", "") + "</p>" if d["demonstration"] else ""}
<div class="meta">{meta}</div>
<div class="controls"><input id="q" placeholder="filter methods"> <label>data access
<select id="access"><option value="">all</option>{options}</select></label>
<span class="meta">click a column to sort ({e(how)}; missing values last)</span></div>
{_board(d)}
<p class="meta">{e(d["ranks"])} † reconstruction (no public code); ‡ end-of-stream refinement. Rows marked
(n = k of N) have fewer jobs than the grid and are not ranked. Published ACC: the source's number where one covers this
suite and method.</p>
<h2>Accuracy over steps</h2><div class="legend" id="legend"></div><svg id="curves" width="720" height="300"></svg>
<h2>Mean accuracy matrices</h2><p class="meta">rows: the model before any step and after each; columns: tasks by
arrival position; hover a cell for its value</p><div class="mats" id="mats"></div>
<h2>Each job's matrix</h2>{details}
{diag}
<h2>Plots</h2>{figs}"""
    return _page(f"{d['suite']} · cmbench", body, d)


def _board(d: dict) -> str:
    """The suite's sortable table: a row per label, the reference levels in its foot."""
    e = _esc
    ranked = not d["demonstration"]
    published = any(r["published"]["v"] is not None for r in d["rows"])  # a column only where a source has one
    pub_head = ["Published ACC"] if published else []
    ranked = not d["demonstration"]
    head = [
        *(["Rank"] if ranked else []),
        "Method",
        "Runs",
        "Verified",
        *d["cols"],
        *pub_head,
        "Storage (peak)",
        "Data",
        "Merge time (s)",
        "Hyperparameters",
        "Provenance",
    ]
    types = [
        *(["num"] if ranked else []),
        "text",
        "text",
        "num",
        *["num"] * (len(d["cols"]) + len(pub_head)),
        "text",
        "text",
        "num",
        "text",
        "text",
    ]
    ths = "".join(f'<th data-type="{t}" class="{"l" if t == "text" else ""}">{e(h)}</th>' for h, t in zip(head, types))
    trs = []
    for r in d["rows"]:
        name = e(r["name"])
        link = (
            f'<a href="{e(r["url"])}" title="{e(r["paper"])}">{name}</a>'
            if r["url"]
            else f'<span title="{e(r["paper"])}">{name}</span>'
        )
        cells = [
            *([f'<td data-v="{e(r["rank_v"])}">{e(r["rank"])}</td>'] if ranked else []),
            f'<td class="l" data-v="{e(r["label"])}">{link}</td>',
            f'<td class="l" data-v="{e(r["runs"])}">{e(r["runs"])}</td>',
            f'<td data-v="{r["verified"]}">{r["verified"]} of {r["n"]}</td>',
        ]
        for c in [*(r["metrics"][c] for c in d["cols"]), *([r["published"]] if published else [])]:
            cells.append(f'<td data-v="{"" if c["v"] is None else c["v"]}">{e(c["text"])}</td>')
        cells.append(f'<td class="l" data-v="{e(r["storage"])}">{e(r["storage"])}</td>')
        cells.append(f'<td class="l" data-v="{e(r["data"])}">{e(r["data"])}</td>')
        cells.append(f'<td data-v="{r["merge_s"]}">{r["merge_s"]:.3f}</td>')
        cells.append(f'<td class="l hp" data-v="{e(r["hparams"])}">{e(r["hparams"])}</td>')
        prov = f"{r['n']} jobs · commit {', '.join(r['commits'])}"
        cells.append(f'<td class="l pv" data-v="{e(prov)}">{e(prov)}</td>')
        marks = (("ref", r["reference"]), ("top", r["top"]), ("partial", r["partial"]), ("tt", r["test_time"]))
        cls = " ".join(c for c, on in marks if on)
        trs.append(f'<tr class="{cls}" data-label="{e(r["label"])}" data-access="{e(r["data"])}">{"".join(cells)}</tr>')
    foot = []  # the merge stream's reference levels, as in leaderboard.md: below the rows, never sorted
    for key, name in LEVELS:
        if key in d["levels"]:
            blank = "".join("<td>–</td>" for _ in range(len(head) - (5 if ranked else 4)))
            foot.append(
                f'<tr class="ref level" data-label="{e(name)}" data-access="">'
                + ("<td>ref</td>" if ranked else "")
                + f'<td class="l">{e(name)}</td><td class="l">{e(d["levels"][key]["runs"])}</td><td>–</td>'
                f"<td>{e(d['levels'][key]['text'])}</td>{blank}</tr>"
            )
    return (
        f'<table id="board"><thead><tr>{ths}</tr></thead><tbody>{"".join(trs)}</tbody>'
        f"<tfoot>{''.join(foot)}</tfoot></table>"
    )


def _diagnostics(d: dict) -> str:
    """What the methods recorded per step, a table per row that has any."""
    e = _esc
    diag = "".join(
        f'<details class="diag"><summary>{e(r["label"])}</summary><table><thead><tr><th class="l">step</th>'
        + "".join(f"<th>{e(n)}</th>" for n in r["diagnostics"][0])
        + "</tr></thead><tbody>"
        + "".join(
            f'<tr><td class="l">{e(step)}</td>' + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>"
            for step, cells in r["diagnostics"][1]
        )
        + "</tbody></table></details>"
        for r in d["rows"]
        if r["diagnostics"]
    )
    if diag:
        diag = (
            '<h2>What the methods did</h2><p class="meta">per step, mean over the row\'s jobs (recorded by the '
            "methods: <code>cmbench report --diagnostics METHOD</code>)</p>" + diag
        )
    return diag


def _index_page(suites: list[dict]) -> str:
    e = _esc
    rows = []
    for d in suites:
        head = d["headline"]
        top = [r for r in d["rows"] if r["top"]]
        if d["demonstration"]:
            best_text = "demonstration: not ranked"
        elif top:
            best_text = "; ".join(f"{r['label']} ({r['metrics'][head]['text']})" for r in top)
        else:
            best_text = "–"
        jobs = sum(r["n"] for r in d["rows"])
        rows.append(
            f'<tr data-label="{e(d["suite"])}" data-access="{e(d["setting"])}"><td class="l" data-v="{e(d["suite"])}">'
            f'<a href="{e(d["suite"])}/index.html">{e(d["suite"])}</a></td><td class="l" data-v="{e(d["setting"])}">'
            f'{e(d["setting"])}</td><td data-v="{len(d["rows"])}">{len(d["rows"])}</td><td data-v="{jobs}">{jobs}</td>'
            f'<td class="l" data-v="{e(best_text)}">{e(best_text)}</td></tr>'
        )
    settings = "".join(f'<option value="{e(s)}">{e(s)}</option>' for s in sorted({d["setting"] for d in suites}))
    body = f"""<h1>cmbench leaderboard</h1>
<div class="meta">continual model merging: every number from the result files in this repository</div>
<div class="controls"><input id="q" placeholder="filter suites"> <label>setting
<select id="access"><option value="">all</option>{settings}</select></label></div>
<table id="board"><thead><tr><th class="l" data-type="text">Suite</th><th class="l" data-type="text">Setting</th>
<th data-type="num">Methods</th><th data-type="num">Jobs</th><th class="l" data-type="text">Rank 1 (rows not
distinguishable from the best; mean [95 % interval])</th></tr></thead>
<tbody>{"".join(rows)}</tbody></table>"""
    return _page("cmbench leaderboard", body, {"rows": []})


def render_site(
    results_dir: str | Path, site_dir: str | Path, include_rehearsal: bool = False, recs: list[dict] | None = None
) -> Path:
    """Write the site for every suite under ``results_dir`` (or ``recs``, read from there
    already) into ``site_dir``: the files of its last render are replaced, nothing else is
    touched, and a folder the site did not write is refused (``cmbench.report.outputs``)."""
    site = Path(site_dir)
    clear_site(site)
    if recs is None:
        recs = load_results(results_dir, include_rehearsal)
    by_suite: dict[str, list[dict]] = defaultdict(list)
    for r in recs:
        by_suite[r["suite"]].append(r)
    written: list[Path] = []
    suites = []
    for suite in sorted(by_suite):
        summary = summarise(suite, by_suite[suite])
        d = suite_data(summary)
        page_dir = site / suite
        figures = []
        if summary.ok:
            fns = [("forgetting", plots.plot_forgetting), ("accuracy vs cost", plots.plot_pareto)]
            fns += (
                [("final accuracy vs the expert", plots.plot_final_vs_expert)]
                if d["setting"] == "merge_stream"
                else [("start-of-task gradient norm", plots.plot_grad_norm)]
            )
            for title, fn in fns:
                png = Path(fn(summary, page_dir / "plots"))
                png.with_suffix(".svg").unlink(missing_ok=True)  # the PNG is shown; one file per figure
                figures.append((title, png.relative_to(page_dir).as_posix()))
                written.append(png)
        page_dir.mkdir(parents=True, exist_ok=True)
        (page_dir / "index.html").write_text(_suite_page(d, figures), encoding="utf-8")
        written.append(page_dir / "index.html")
        suites.append(d)
    (site / "index.html").write_text(_index_page(suites), encoding="utf-8")
    write_manifest(site, [*written, site / "index.html"])
    return site / "index.html"
