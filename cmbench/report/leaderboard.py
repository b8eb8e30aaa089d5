"""``leaderboard.md`` from ``results/``: one section per suite, rendered from its
:class:`~cmbench.report.summary.SuiteSummary` (rows, order, ranks, intervals: decided there
once for every output).

Every figure is a mean over seeds (each seed's orders averaged first) with its 95 % interval
(``report/stats.py``); the Runs column says how many independent runs are behind it.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from ..results import load_results
from . import plots, stats
from .cells import data_text, devices, final_mean, hparam_text, published_text, storage_text
from .escape import md
from .outputs import MARK, check_markdown, claim_plots
from .summary import (
    LEVELS,
    SIGNED,
    SuiteSummary,
    level_runs,
    pct,
    reference_levels,
    scored_by,
    summarise,
    task_title,
)

INTRO = (
    "Rendered by `cmbench report` from the result files under `results/` alone. Accuracies in %: the mean over "
    "seeds (each seed's task orders averaged first) and its 95 % interval in brackets, from a hierarchical "
    "bootstrap (seeds, then orders within a seed; B = 10,000, seeded: the same files give the same bytes), "
    "with the test split's binomial error added to ACC, NACC and ACC_all when every seed is tested on the same "
    "images. Runs: independent runs behind a row (seeds × orders per seed; a row whose figures are the same in "
    "every order of a seed has as many independent values as seeds: order-invariant). Rank: rows whose paired "
    "difference to the best row (same seed and order, 95 % interval with both rows' test-set error) contains 0 "
    "share its rank; the best of the rest starts the next rank. Rows with fewer jobs than the suite's grid "
    "(n = k of N) are not ranked and are compared with the full rows on their own jobs under the table; "
    "reference rows (all seen tasks' data, θ0, the experts) are never ranked; test-time rows (*(test-time)*: "
    "they adapt on the current task's unlabeled test inputs, in suites that allow it) are ranked among "
    "themselves only (T1, T2, ...), never with rows that see no test data. With three seeds an interval is "
    "optimistic: read it with its runs. "
    "ACC final average accuracy, AIA average incremental accuracy, BWT backward transfer (negative = "
    "forgetting), FGT forgetting, FWT forward transfer, NACC accuracy normalised by each expert's own. "
    "Class-incremental suites also report ACC_all (accuracy over the union of all seen tasks' test samples, "
    "sample-weighted: the number P&M, InfLoRA and MagMax report; the rank figure there) and AAA (its mean over "
    "steps); ACC/AIA/BWT/FGT there are per-task means. Start ‖∇‖: gradient norm at the start of each task's "
    "training, mean over steps. Storage: bytes a method keeps between steps beyond the merged model (binary "
    "units). Verified: jobs that `cmbench verify` recomputed from scratch and found equal, with the file's "
    "bytes unchanged since (`results/verified.jsonl`; checksums in the files catch accidental edits, not "
    "forgery: only recomputing proves a number). † reconstruction of a method without public code; "
    "‡ end-of-stream refinement (lifts only the final row). Hyperparameters: suite defaults (paper or "
    "public-code values) or tuned by `cmbench tune` on validation splits (rows `<label>-tuned`; scored on "
    "every task's validation data, which is an oracle: the values have seen tasks that arrive later). "
    "What a method did at each step (P&M's α_t, TRM's coefficients, ...): `cmbench report --diagnostics METHOD`."
)
DEMO = (
    "**Demonstration** (one job per method): a first look at the harness, not a benchmark. No rank and no "
    "interval are claimed; run a benchmark suite (three seeds × three orders) for those."
)


def row_name(s: SuiteSummary, label: str) -> str:
    name, note = md(s.title(label)), s.kind_note(label)
    return f"*{name}*{note}" if note else name


def rank_text(s: SuiteSummary, label: str) -> str:
    """The row's rank group; a test-time row's counts among test-time rows only ("T1")."""
    row = s.row(label)
    if row.reference:
        return "ref"
    return f"{'T' if row.test_time else ''}{row.rank}" if row.rank else "–"


def suite_section(s: SuiteSummary, plots_dir: Path, md_dir: Path, figures: bool = True) -> list[str]:
    lines = _heading(s) + _main_table(s) + [""] + _notes(s)
    ok, ranked = s.ok, not s.demonstration
    if ok:
        lines += seed_table(s)
    if ok and len(s.rows) > 1 and ranked:
        # train then merge with LoRA: P&M's comparisons, to averaging and to sequential LoRA
        labels = [row.label for row in s.rows]
        refs: list[str] = [r for r in ("weight_average-lora", "sequential-lora") if r in labels and not s.stream]
        plain = sorted(row.label for row in s.rows if not (row.test_time or row.reference))
        for ref in refs or ["weight_average" if "weight_average" in labels else (plain or sorted(labels))[0]]:
            lines += paired_section(s, ref)
        lines += matched_data_section(s)
    if ok and not s.stream and any(r.get("R_within") for r in ok):
        lines += calibration_section(s)
    if ok and s.stream:
        lines += per_task_section(s)
    if ok and figures:
        lines += figure_lines(s, plots_dir, md_dir)
    return lines


def _heading(s: SuiteSummary) -> list[str]:
    """The suite's title, banners (rehearsal, demonstration) and provenance line."""
    recs = s.records
    hashes = sorted({r["suite_hash"] for r in recs})
    commits = sorted({r.get("git_commit") or "?" for r in recs})
    last = max((r.get("finished_at") or "" for r in recs), default="")
    lines = [f"## {md(s.suite)}", ""]
    if any(r.get("rehearsal") for r in recs):
        lines += [
            "**rehearsal: random weights** (generated data and experts; these numbers measure the "
            "harness, not the methods)",
            "",
        ]
    if s.demonstration:
        lines += [DEMO, ""]
    lines += [
        f"Setting: `{md(s.setting)}` · suite hash {', '.join(f'`{md(h)}`' for h in hashes)} · "
        f"{', '.join(md(d) for d in devices(recs))} · "
        f"commit {', '.join(f'`{md(c[:10])}`' for c in commits)} · last job {md(last)}",
        "",
    ]
    return lines


def _published_columns(s: SuiteSummary) -> tuple[dict, dict, list[str]]:
    """Each row's published ACC, the reference rows' (θ0, experts), and the column if any."""
    pub = {r.label: (r.first.get("published") or {}).get("ACC") for r in s.rows}
    pub_refs: dict = next((r["published"] for r in s.ok if r.get("published")), {})
    return pub, pub_refs, ["Published ACC"] if any(pub.values()) or pub_refs.get("theta0") else []


def _main_table(s: SuiteSummary) -> list[str]:
    """One row per label (rank, runs, every figure with its interval, cost, hyperparameters),
    then the merge stream's reference rows."""
    ranked = not s.demonstration
    pub, pub_refs, pub_cols = _published_columns(s)
    header = [
        *(["Rank"] if ranked else []),
        "Method",
        "Runs",
        "Verified",
        *s.cols,
        *pub_cols,
        "Storage (peak)",
        "Data",
        *([] if s.stream else ["Train time (s)", "Start ‖∇‖"]),
        "Merge time (s)",
        "Hyperparameters",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    first_of: dict = {}
    for row in s.rows:
        rs = row.records
        cells = [
            *([rank_text(s, row.label)] if ranked else []),
            row_name(s, row.label),
            md(s.runs(row.label)),
            f"{sum(r['verified'] for r in rs)} of {len(rs)}",
            *(pct(s.est(row.label, c), c in SIGNED, interval=ranked) for c in s.cols),
            *([published_text(pub.get(row.label))] if pub_cols else []),
            md(storage_text(rs)),
            md(data_text(row.first)),
        ]
        if not s.stream:
            cells.append(f"{np.mean([r['timings']['train_total_s'] for r in rs]):.1f}")
            cells.append(f"{np.mean([np.mean(r['start_grad_norm']) for r in rs]):.3g}")
        cells.append(f"{np.mean([r['timings']['merge_total_s'] for r in rs]):.3f}")
        cells.append(md(hparam_text(row.label, rs, first_of)))
        lines.append("| " + " | ".join(cells) + " |")
    # reference rows of the merge stream, set apart: θ0 (row 0 of R) and the experts (E)
    levels = reference_levels(s)
    if levels:
        pad = ["–"] * (len(header) - len(s.cols) - len(pub_cols) - (4 if ranked else 3))
        blank = ["–"] * (len(s.cols) - 1)
        nacc_expert = ["100.0"] if "NACC" in s.cols else []
        for key, name in LEVELS:
            e = levels[key]
            figures = blank if key == "theta0" else blank[: len(blank) - len(nacc_expert)] + nacc_expert
            lines.append(
                "| "
                + " | ".join(
                    [
                        *(["ref"] if ranked else []),
                        f"*{name}*",
                        level_runs(e),
                        "–",
                        pct(e, interval=ranked),
                        *figures,
                        *([published_text(pub_refs.get(key))] if pub_cols else []),
                        *pad,
                    ]
                )
                + " |"
            )
    return lines


def mixed_artefacts(s: SuiteSummary) -> list[str]:
    """Rows of one seed computed on different θ0s (the content hash each result recorded):
    a paired difference across them compares artefacts as well as methods."""
    by_seed: dict[int, dict[str, set]] = defaultdict(lambda: defaultdict(set))
    for r in s.ok:
        h = ((r.get("inputs") or {}).get("content") or {}).get("theta0")
        if isinstance(h, str) and h != "unrecorded":
            by_seed[r["seed"]][h].add(r["label"])
    mixed = {seed: groups for seed, groups in sorted(by_seed.items()) if len(groups) > 1}
    if not mixed:
        return []
    seed, groups = next(iter(mixed.items()))
    sets = " | ".join(", ".join(md(lb) for lb in sorted(g)) for g in sorted(groups.values(), key=sorted))
    return [
        f"**Rows on different artefacts**: in {len(mixed)} of {len(by_seed)} seeds the rows were computed on "
        f"different θ0s (their recorded content hashes differ: built on different machines), so paired "
        f"differences and rank groups across these groups compare artefacts as well as methods (seed {seed}: "
        f"{sets}). Recompute them on one set of artefacts (a suite that ships them) to compare the methods alone.",
        "",
    ]


def _notes(s: SuiteSummary) -> list[str]:
    """Under the table: rank groups, partial rows on their own jobs, published sources,
    setup-check warnings, ‡ rows before their end-of-stream step, failed jobs."""
    ok, ranked, lines = s.ok, not s.demonstration, []
    pub, pub_refs, pub_cols = _published_columns(s)
    failed = [r for r in s.records if r["status"] != "ok"]
    if ranked:
        lines += rank_lines(s) + [""]
    lines += mixed_artefacts(s)
    shared = shared_job_comparisons(s)
    if shared:
        lines += ["Rows with fewer jobs, compared on their own jobs: " + "; ".join(shared) + ".", ""]
    unmatched = sorted({r["published_unmatched"] for r in ok if r.get("published_unmatched")})
    if unmatched:  # a benchmark with published numbers, run another way: none is shown, and why
        lines += [
            "Published ACC not shown: this run is not the source's protocol ("
            + "; ".join(md(u) for u in unmatched)
            + "; cmbench/data/published.json, docs/fidelity.md).",
            "",
        ]
    if pub_cols:
        sources = sorted({p["source"] for p in [*(p for p in pub.values() if p), *pub_refs.values()]})
        lines += [
            "Published ACC (the source's row, mean over its task orders ± std where given): "
            + "; ".join(md(x) for x in sources),
            "",
        ]
    off: dict[tuple, list[dict]] = defaultdict(list)  # (θ0 or expert, task) -> its failed checks
    for r in ok:
        for c in r.get("setup_check") or []:
            if not c["ok"]:
                off[(c["what"], c["task"])].append(c)
    if off:
        lines += [
            f"**Setup check: {len(off)} per-task accuracies differ from the published ones** "
            "(preprocessing, class names and templates, or the checkpoint?): "
            + "; ".join(
                f"{'θ0' if w == 'theta0' else 'expert'} on {md(t)} {np.mean([c['ours'] for c in cs]):.1f}% vs "
                f"{cs[0]['published']:.1f}% (±{max(c['tolerance'] for c in cs):.1f})"
                for (w, t), cs in sorted(off.items())
            ),
            "",
        ]
    finished = [row for row in s.rows if row.first.get("R_final_before_finish")]
    if finished:  # what the final row was before the end-of-stream step (e.g. ODE-M without refinement)
        lines += [
            "‡ final ACC before the end-of-stream step (the same jobs): "
            + "; ".join(
                f"{md(row.label)} "
                + pct(
                    stats.estimate(
                        {(r["seed"], r["order_index"]): final_mean(r["R_final_before_finish"]) for r in row.records},
                        s.suite,
                        row.label,
                        "before-finish",
                    ),
                    interval=ranked,
                )
                for row in finished
            ),
            "",
        ]
    lines += floor_note(s)
    if failed:
        lines += [f"**{len(failed)} failed job(s)** (counted, not dropped):"]
        for r in sorted(failed, key=lambda r: (r["label"], r["seed"], r["order_index"])):
            lines.append(f"- {md(r['label'])} seed {r['seed']} order {r['order_index']}: {md(r.get('error') or '?')}")
        lines.append("")

    return lines


def floor_note(s: SuiteSummary) -> list[str]:
    """Fisher averaging's ε floor: on what share of the entries a confident expert's floor
    outweighs every earlier expert (its diagnostics), which explains a collapse of the row."""
    parts = []
    for row in s.rows:
        if row.first.get("method") != "fisher_average":
            continue
        shares = [
            step["floor_takes_over_fraction"]
            for r in row.records
            for step in (r.get("diagnostics") or {}).values()
            if "floor_takes_over_fraction" in step
        ]
        what = (
            f"{100 * np.mean(shares):.2f} % of entries (mean over steps and jobs; "
            f"largest step {100 * max(shares):.2f} %)"
            if shares
            else "not recorded (results made before the method recorded it)"
        )
        parts.append(f"{md(row.label)}: {what}")
    if not parts:
        return []
    return [
        "Fisher averaging's ε floor (the reference's (F + ε)/‖F‖: a confident expert's floor ε/‖F‖ can outweigh "
        "every earlier expert; `floor: relative` scales it to each model, docs/fidelity.md): " + "; ".join(parts) + ".",
        "",
    ]


def rank_lines(s: SuiteSummary) -> list[str]:
    groups: dict[str, list[str]] = defaultdict(list)
    for row in s.rows:
        if row.rank:
            groups[rank_text(s, row.label)].append(md(row.label))
    unranked = [md(row.label) for row in s.rows if not row.rank and not row.reference]
    sd = [s.test_sd(row.label, s.headline) for row in s.rows if row.rank]
    test = (
        "the test split's error included"
        if s.fixed_test_split and sd and all(x is not None for x in sd)
        else "test-set error in the seeds' spread (the data seed varies with the seed)"
        if not s.fixed_test_split
        else "the test split's error not included (these results do not record their test sizes)"
    )
    return [
        f"Rank groups by {s.headline} (95 %, paired on seed and order; {test}): "
        + "; ".join(f"{k}: {', '.join(v)}" for k, v in groups.items())
        + (f"; not ranked (fewer jobs): {', '.join(unranked)}" if unranked else "")
        + "."
        + (
            " T: test-time rows (they adapt on unlabeled test inputs), ranked among themselves only."
            if any(row.test_time and row.rank for row in s.rows)
            else ""
        )
    ]


def seed_table(s: SuiteSummary) -> list[str]:
    """The headline figure per seed (mean over orders): the seed-to-seed spread beside the gaps."""
    seeds = sorted({r["seed"] for r in s.ok})
    lines = [f"{s.headline} per seed (mean over orders):", ""]
    lines += ["| Method | " + " | ".join(f"seed {x}" for x in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for row in s.rows:
        cells = []
        for x in seeds:
            v = [r["metrics"][s.headline] for r in row.records if r["seed"] == x]
            cells.append(f"{100 * np.mean(v):.1f}" if v else "–")
        lines.append(f"| {row_name(s, row.label)} | " + " | ".join(cells) + " |")
    if s.stream:
        for name, fn in (
            ("pretrained θ0", lambda r: np.mean(r["R"][0])),
            ("individual experts", lambda r: np.mean(r["E"])),
        ):
            by = {r["seed"]: fn(r) for r in s.ok}
            lines.append(f"| *{name}* | " + " | ".join(f"{100 * by[x]:.1f}" for x in seeds) + " |")
    return lines + [""]


def shared_job_comparisons(s: SuiteSummary) -> list[str]:
    """For each partial row: its mean and the best full row's on the same (seed, order) jobs,
    the only comparison its mean supports (a test-time row with test-time rows only, and the
    others without them)."""
    out = []
    for row in s.rows:
        if not row.partial:
            continue
        full_rows = [f for f in s.rows if not (f.partial or f.reference) and f.test_time == row.test_time]
        if not full_rows:
            continue
        own = row.values(s.headline)
        on_jobs = {
            f.label: np.mean([f.values(s.headline)[j] for j in own if j in f.values(s.headline)]) for f in full_rows
        }
        best = max(on_jobs, key=lambda lb: on_jobs[lb])
        out.append(
            f"{md(row.label)} {100 * np.mean(list(own.values())):.1f} vs {md(best)} {100 * on_jobs[best]:.1f} "
            "(best full row there)"
        )
    return out


def paired_section(s: SuiteSummary, ref: str) -> list[str]:
    """Headline differences to ``ref`` on the same (seed, order), with their intervals and the
    wins counted per seed (the independent unit); test-time rows last, marked."""
    lines = [
        f"Paired {s.headline} difference to {md(ref)} (same seed and order; mean [95 % interval], "
        "wins of the row counted per seed):",
        "",
        f"| Method | Δ {s.headline} | wins / seeds |",
        "|---|---|---|",
    ]
    rows = []
    for row in s.rows:
        if row.label == ref:
            continue
        d = s.paired(row.label, ref, s.headline)
        if d:
            est, wins, seeds = d
            line = f"| {row_name(s, row.label)} | {pct(est, signed=True)} | {wins}/{seeds} |"
            rows.append((row.test_time, -est.mean, row.label, line))
    return lines + [line for *_, line in sorted(rows)] + [""]


# the matched-data baseline of calibration-set methods (baselines/calibrated_average.py), and
# what it shares with the row it is matched to: the samples (their number) and the step grid
MATCHED_DATA = "calibrated_average"
MATCHED_ON = ("num_samples", "step_size")


def matched_data_section(s: SuiteSummary) -> list[str]:
    """Each row that reads calibration samples against the matched-data baseline with the same
    budget and step grid (the same samples, seeds and orders): the gain of its method over its
    data."""
    out = []
    for base in s.rows:
        if base.records[0].get("method") != MATCHED_DATA:
            continue
        matched = {k: base.records[0]["hparams"].get(k) for k in MATCHED_ON}
        budget = matched["num_samples"]
        for row in s.rows:
            r0 = row.records[0]
            if row is base or r0.get("method") == MATCHED_DATA or r0.get("data_access") != "calibration":
                continue
            if any(r0["hparams"].get(k) != v for k, v in matched.items()):
                continue
            d = s.paired(row.label, base.label, s.headline)
            if d:
                est, wins, seeds = d
                delta = pct(est, signed=True)
                T = len(r0["tasks"])  # the budget is shared by the seen tasks: budget // t each at step t
                parts = [f"{budget // 2} a task at t = 2"] + ([f"{budget // T} at t = {T}"] if T > 2 else [])
                share = f"{budget} ({', '.join(parts)})" if T > 1 else str(budget)
                out.append(f"| {md(row.label)} | {md(base.label)} | {share} | {delta} | {wins}/{seeds} |")
    if not out:
        return []
    return [
        f"Matched data: paired {s.headline} difference of each row that reads calibration samples to "
        f"{md(MATCHED_DATA)} with the same budget (weight averaging, then as many plain gradient steps on the "
        "same samples; same seed and order; mean [95 % interval], wins counted per seed): what the method adds "
        "over its data.",
        "",
        f"| Method | matched baseline | calibration samples | Δ {s.headline} | wins / seeds |",
        "|---|---|---|---|---|",
        *out,
        "",
    ]


def calibration_section(s: SuiteSummary) -> list[str]:
    """Class-incremental heads: how much of the accuracy is lost to confusing one task's
    classes with another's (all seen classes vs each task's own classes, from the same
    logits) — if the gap were large and alike for every method, head calibration, not the
    methods, would rank them."""
    lines = [
        "Head calibration (mean over jobs [95 % interval]): final accuracy over all seen classes vs within each "
        "task's own classes, and the newest task after its step: its all-class accuracy in the deployed model over "
        "its within-task accuracy in the model just trained (for sequential training the same model):",
        "",
        "| Method | final, all classes | final, within task | newest task, all / within |",
        "|---|---|---|---|",
    ]
    for row in s.rows:
        rs = [r for r in row.records if r.get("R_within")]
        if not rs:
            continue

        def est(fn, what):
            return stats.estimate({(r["seed"], r["order_index"]): fn(r) for r in rs}, s.suite, row.label, what)

        def ratio(r):  # steps whose trained model scored 0 within its task have no ratio
            own = r["trained_own_task_acc"]
            return float(
                np.nanmean([r["R"][t][t - 1] / own[t - 1] if own[t - 1] else np.nan for t in range(1, len(r["R"]))])
            )

        e = est(ratio, "calibration-ratio")
        lines.append(
            f"| {md(row.label)} | {pct(est(lambda r: final_mean(r['R'][-1]), 'final-all'))} | "
            f"{pct(est(lambda r: final_mean(r['R_within'][-1]), 'final-within'))} | "
            f"{e.mean:.2f} [{e.lo:.2f}, {e.hi:.2f}] |"
        )
    return lines + [""]


def per_task_section(s: SuiteSummary) -> list[str]:
    """θ0 and each expert on each task (mean over seeds), with the published numbers."""
    ok = s.ok
    tasks = ok[0]["tasks"]
    per_task_e: dict[str, dict[tuple[int, int], float]]  # task -> (seed, 0) -> accuracy
    per_task_0: dict[str, dict[tuple[int, int], float]]
    per_task_e, per_task_0 = defaultdict(dict), defaultdict(dict)
    for r in ok:
        for j, t in enumerate(r["tasks"]):
            per_task_e[t][(r["seed"], 0)] = r["E"][j]
            per_task_0[t][(r["seed"], 0)] = r["R"][0][j]
    how = "mean over seeds" + ("" if s.demonstration else " [95 % interval]")
    theta0 = "θ0 answering in words" if scored_by(ok[0]) else "θ0 with the frozen head"  # text: no head
    lines = [f"Per task ({how}): {theta0}, and the expert on its own task:", ""]
    lines += ["| | " + " | ".join(md(task_title(ok[0], t)) for t in tasks) + " |", "|---|" + "---|" * len(tasks)]
    for name, table in (("θ0", per_task_0), ("expert", per_task_e)):
        lines.append(
            f"| {name} | "
            + " | ".join(pct(stats.estimate(table[t], s.suite, name, t), interval=not s.demonstration) for t in tasks)
            + " |"
        )
    published_task = {(c["what"], c["task"]): c["published"] for r in ok for c in r.get("setup_check") or []}
    for what, name in (("theta0", "θ0, published"), ("expert", "expert, published")):
        if any(w == what for w, _ in published_task):
            lines.append(
                f"| {name} | "
                + " | ".join(f"{published_task[(what, t)]:.1f}" if (what, t) in published_task else "–" for t in tasks)
                + " |"
            )
    return lines + [""]


def figure_lines(s: SuiteSummary, plots_dir: Path, md_dir: Path) -> list[str]:
    figs = [
        ("average accuracy over steps", plots.plot_accuracy_over_steps),
        ("accuracy matrices", plots.plot_heatmaps),
        ("forgetting", plots.plot_forgetting),
        ("accuracy vs cost", plots.plot_pareto),
    ]
    figs += (
        [("final accuracy vs the expert", plots.plot_final_vs_expert)]
        if s.stream
        else [("start-of-task gradient norm", plots.plot_grad_norm)]
    )
    lines, links = [], []
    for i, (title, fn) in enumerate(figs):
        png = Path(fn(s, plots_dir))
        rel = png.resolve().relative_to(md_dir.resolve()).as_posix()
        if i == 0:
            lines += [f"![{title}]({rel})", ""]
        links.append(f"[{title}]({rel}) ([SVG]({rel[:-4]}.svg))")
    return lines + ["Plots: " + " · ".join(links), ""]


def render_leaderboard(
    results_dir: str | Path = "results",
    output: str | Path = "leaderboard.md",
    plots_dir: str | Path | None = None,
    include_rehearsal: bool = False,
    recs: list[dict] | None = None,
    figures: bool = True,
) -> Path:
    """Write ``output`` and its plots from the results under ``results_dir`` (or ``recs``,
    read from there already); ``figures`` False: the text alone, no plot drawn or linked.
    Refuses to overwrite a file or fill a folder it did not write (``cmbench.report.outputs``)."""
    results_dir, output = Path(results_dir), Path(output)
    plots_dir = Path(plots_dir) if plots_dir else output.parent / "plots"
    check_markdown(output)
    claim_plots(plots_dir)
    if recs is None:
        recs = load_results(results_dir, include_rehearsal)
    by_suite: dict[str, list[dict]] = defaultdict(list)
    for r in recs:
        by_suite[r["suite"]].append(r)
    where = results_dir.as_posix() if results_dir.is_absolute() else f"{results_dir.as_posix()}/"
    lines = [MARK, "", "# cmbench leaderboard", "", INTRO.replace("`results/`", f"`{md(where)}`"), ""]
    if not by_suite:
        lines.append("_No results yet: run `cmbench run suites/<suite>.yaml`._")
    for suite in sorted(by_suite):
        lines += suite_section(summarise(suite, by_suite[suite]), plots_dir, output.parent, figures)
    output.write_text("\n".join(lines).rstrip() + "\n")
    return output
