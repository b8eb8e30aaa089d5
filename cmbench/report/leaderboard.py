"""``leaderboard.md`` from ``results/``: one table per suite, reference rows set apart.

Aggregation: every (seed, order) job is one observation; a cell is mean ± sample std
(ddof=1) over them, with n. Reference rows come from the same files: ``pretrained`` is
row 0 of R (θ0), ``individual`` is E (each expert on its own task); both depend on the
seed only, so they are aggregated over seeds.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from ..results import job_of, load_results
from . import plots
from .escape import md
from .outputs import MARK, check_markdown, claim_plots

STREAM_COLS = ("ACC", "AIA", "BWT", "FGT", "FWT", "NACC")
TTM_COLS = ["ACC", "AIA", "BWT", "FGT"]  # FWT undefined: unlearned classes have no cells
DATA_LABEL = {
    "none": "data-free",
    "current_task": "current task",
    "calibration": "calibration samples",
    "all_seen": "all seen tasks",
}
LONG_HPARAMS = 8  # beyond this many, a row lists what differs from its method's first row


def _devices(recs: list[dict]) -> list[str]:
    """Where the jobs computed, as their keys say (device type, evaluation precision), with
    the device's name where the result records it."""
    out: dict[str, None] = {}
    for r in recs:
        inp = r.get("inputs") or {}
        name = (r.get("device") or {}).get("name") or (r.get("versions") or {}).get("cpu_capability")
        out[md(f"{inp.get('device', '?')} {inp.get('precision', '?')}" + (f" ({name})" if name else ""))] = None
    return list(out)


def _stat(values) -> tuple[float, float, int]:
    v = np.array([x for x in values if x is not None and x == x], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)


def _final_mean(row: list) -> float:
    return float(np.nanmean([np.nan if v is None else v for v in row]))


def _pct(values, signed: bool = False) -> str:
    m, s, n = _stat(values)
    if n == 0:
        return "–"
    fmt = "{:+.1f}" if signed else "{:.1f}"
    return fmt.format(100 * m) if n == 1 else f"{fmt.format(100 * m)} ± {100 * s:.1f}"  # one job: no spread


def _bytes(n: float) -> str:
    if n != n:
        return "–"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _published_cell(p: dict | None) -> str:
    if not p:
        return "–"
    return f"{p['acc']:.1f}" + (f" ± {p['std']:.1f}" if p.get("std") is not None else "")  # numbers only


def _storage_cell(rs: list[dict]) -> str:
    peak = _bytes(_stat([r["storage_bytes"]["peak"] for r in rs])[0])
    kinds = sorted({k for r in rs for k in r["storage_bytes"].get("peak_by_kind", {})})
    if len(kinds) < 2:
        return peak + (f" ({kinds[0]})" if kinds else "")
    parts = [f"{k} {_bytes(_stat([r['storage_bytes']['peak_by_kind'].get(k, 0) for r in rs])[0])}" for k in kinds]
    return f"{peak} ({', '.join(parts)})"


def _per_seed(recs: list[dict], fn) -> dict[int, float]:
    """One value per seed (these quantities do not depend on the order)."""
    out = {}
    for r in recs:
        out.setdefault(r["seed"], fn(r))
    return out


def suite_section(suite: str, recs: list[dict], plots_dir: Path, md_dir: Path) -> list[str]:
    ok = [r for r in recs if r["status"] == "ok"]
    failed = [r for r in recs if r["status"] != "ok"]
    by_label: dict[str, list[dict]] = defaultdict(list)
    for r in ok:
        by_label[r["label"]].append(r)
    hashes = sorted({r["suite_hash"] for r in recs})
    commits = sorted({r.get("git_commit") or "?" for r in recs})
    last = max((r.get("finished_at") or "" for r in recs), default="")
    lines = [f"## {md(suite)}", ""]
    if any(r.get("rehearsal") for r in recs):
        lines += [
            "**rehearsal: random weights** (generated data and experts; these numbers measure the "
            "harness, not the methods)",
            "",
        ]
    setting = recs[0].get("setting", "merge_stream")
    lines.append(
        f"Setting: `{md(setting)}` · suite hash {', '.join(f'`{md(h)}`' for h in hashes)} · "
        f"{', '.join(_devices(recs))} · "
        f"commit {', '.join(f'`{md(c[:10])}`' for c in commits)} · last job {md(last)}"
    )
    lines.append("")

    stream = setting == "merge_stream"
    cols = (
        STREAM_COLS
        if stream
        else ([*TTM_COLS, "ACC_all", "AAA"] if any("ACC_all" in r["metrics"] for r in ok) else TTM_COLS)
    )
    # the published ACC of a row, where a source covers the suite and the method (cmbench.published)
    pub = {r["label"]: r["published"]["ACC"] for r in ok if (r.get("published") or {}).get("ACC")}
    pub_refs = next((r["published"] for r in ok if r.get("published")), {})
    pub_cols = ["Published ACC"] if pub or pub_refs.get("theta0") else []
    header = [
        "Method",
        "n",
        "Verified",
        *cols,
        *pub_cols,
        "Storage (peak)",
        "Data",
        *([] if stream else ["Train time (s)", "Start ‖∇‖"]),
        "Merge time (s)",
        "Hyperparameters",
    ]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = []
    first_of = {}  # method -> its first row's label and hyperparameters (the base for long lists)
    # rows with fewer jobs than the fullest row are marked, ranked after the full rows, and
    # compared with them on their own jobs only (a note under the table)
    full = max((len(rs) for rs in by_label.values()), default=0)
    for label, rs in by_label.items():
        acc_mean = _stat([r["metrics"]["ACC"] for r in rs])[0]
        hp = hparam_text(label, rs, first_of)
        name = (
            md(label)
            + (" †" if rs[0].get("reconstruction") else "")
            + (" ‡" if rs[0].get("R_final_before_finish") else "")
        )
        partial = len(rs) < full
        if partial:
            name += f" (n = {len(rs)} of {full})"
        reference = rs[0].get("data_access") == "all_seen"
        cells = [f"*{name}* (reference)" if reference else name, str(len(rs)), f"{sum(r['verified'] for r in rs)}"]
        for col in cols:
            cells.append(_pct([r["metrics"].get(col) for r in rs], signed=col in ("BWT", "FWT")))
        if pub_cols:
            cells.append(_published_cell(pub.get(label)))
        cells.append(md(_storage_cell(rs)))
        cells.append(md(DATA_LABEL.get(rs[0].get("data_access", "none"), rs[0].get("data_access", "?"))))
        if not stream:
            cells.append(f"{_stat([r['timings']['train_total_s'] for r in rs])[0]:.1f}")
            cells.append(f"{_stat([np.mean(r['start_grad_norm']) for r in rs])[0]:.3g}")
        cells.append(f"{_stat([r['timings']['merge_total_s'] for r in rs])[0]:.3f}")
        cells.append(md(hp))
        rows.append((reference, partial, -acc_mean, label, cells))
    for *_, cells in sorted(rows):
        lines.append("| " + " | ".join(cells) + " |")

    # reference rows of the merge stream, set apart: θ0 (row 0 of R) and the experts (E)
    theta0 = indiv = None
    if ok and stream:
        theta0 = _per_seed(ok, lambda r: float(np.mean(r["R"][0])))
        indiv = _per_seed(ok, lambda r: float(np.mean(r["E"])))
        pad = " | ".join(["–"] * (len(header) - len(cols) - len(pub_cols) - 3))
        blank = ["–"] * (len(cols) - 1)
        ref_pub = {k: [_published_cell(pub_refs.get(k))] if pub_cols else [] for k in ("theta0", "experts")}
        lines.append(
            f"| *pretrained θ0* | {len(theta0)} seeds | – | {_pct(theta0.values())} | "
            + " | ".join(blank + ref_pub["theta0"])
            + f" | {pad} |"
        )
        lines.append(
            f"| *individual experts* | {len(indiv)} seeds | – | {_pct(indiv.values())} | "
            + " | ".join(blank[:-1] + ["100.0 ± 0.0"] + ref_pub["experts"])
            + f" | {pad} |"
        )
    shared = shared_job_comparisons(by_label, full)
    if shared:  # under the table, after its reference rows
        lines += ["", "Rows with fewer jobs, compared on their own jobs: " + "; ".join(shared) + "."]
    if pub_cols:
        sources = sorted({p["source"] for p in [*pub.values(), *pub_refs.values()]})
        lines += [
            "",
            "Published ACC (the source's row, mean over its task orders ± std where given): "
            + "; ".join(md(s) for s in sources),
        ]
    off: dict[tuple, list[dict]] = defaultdict(list)  # (θ0 or expert, task) -> its failed checks
    for r in ok:
        for c in r.get("setup_check") or []:
            if not c["ok"]:
                off[(c["what"], c["task"])].append(c)
    if off:
        lines += [
            "",
            f"**Setup check: {len(off)} per-task accuracies differ from the published ones** "
            "(preprocessing, class names and templates, or the checkpoint?): "
            + "; ".join(
                f"{'θ0' if w == 'theta0' else 'expert'} on {md(t)} {np.mean([c['ours'] for c in cs]):.1f}% vs "
                f"{cs[0]['published']:.1f}% (±{max(c['tolerance'] for c in cs):.1f})"
                for (w, t), cs in sorted(off.items())
            ),
        ]
    finished = {lb: rs for lb, rs in by_label.items() if rs[0].get("R_final_before_finish")}
    if finished:  # what the final row was before the end-of-stream step (e.g. ODE-M without refinement)
        lines += [
            "",
            "‡ final ACC before the end-of-stream step (the same jobs): "
            + "; ".join(
                f"{md(lb)} {_pct([_final_mean(r['R_final_before_finish']) for r in rs])} (n = {len(rs)})"
                for lb, rs in sorted(finished.items())
            ),
        ]
    if failed:
        lines += ["", f"**{len(failed)} failed job(s)** (counted, not dropped):"]
        for r in sorted(failed, key=lambda r: (r["label"], r["seed"], r["order_index"])):
            lines.append(f"- {md(r['label'])} seed {r['seed']} order {r['order_index']}: {md(r.get('error') or '?')}")
    lines.append("")

    if ok:
        # ACC per seed, mean over orders: shows seed-to-seed spread next to the method gaps
        seeds = sorted({r["seed"] for r in ok})
        lines += ["ACC per seed (mean over orders):", ""]
        lines += ["| Method | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
        for label in sorted(by_label, key=lambda lb: -_stat([r["metrics"]["ACC"] for r in by_label[lb]])[0]):
            cells = []
            for s in seeds:
                m, _, n = _stat([r["metrics"]["ACC"] for r in by_label[label] if r["seed"] == s])
                cells.append(f"{100 * m:.1f}" if n else "–")
            lines.append(f"| {md(label)} | " + " | ".join(cells) + " |")
        if stream:
            lines.append("| *pretrained θ0* | " + " | ".join(f"{100 * theta0[s]:.1f}" for s in seeds) + " |")
            lines.append("| *individual experts* | " + " | ".join(f"{100 * indiv[s]:.1f}" for s in seeds) + " |")
        lines.append("")

    if ok and len(by_label) > 1:
        # train then merge with LoRA: P&M's comparisons, to averaging and to sequential LoRA
        refs = [r for r in ("weight_average-lora", "sequential-lora") if r in by_label and not stream]
        for ref in refs or ["weight_average" if "weight_average" in by_label else sorted(by_label)[0]]:
            lines += paired_section(by_label, ref)

    if ok and not stream and any(r.get("R_within") for r in ok):
        lines += calibration_section(by_label)

    if ok and stream:
        # each expert and θ0 on each task (mean over seeds)
        tasks = ok[0]["tasks"]
        task_order = sorted(tasks, key=tasks.index)
        per_task_e, per_task_0 = defaultdict(dict), defaultdict(dict)
        for r in ok:
            for j, t in enumerate(r["tasks"]):
                per_task_e[t][r["seed"]] = r["E"][j]
                per_task_0[t][r["seed"]] = r["R"][0][j]
        lines += ["Per task (mean ± std over seeds): θ0 with the frozen head, and the expert on its own task:", ""]
        lines += ["| | " + " | ".join(md(t) for t in task_order) + " |", "|---|" + "---|" * len(task_order)]
        lines.append("| θ0 | " + " | ".join(_pct(per_task_0[t].values()) for t in task_order) + " |")
        lines.append("| expert | " + " | ".join(_pct(per_task_e[t].values()) for t in task_order) + " |")
        published_task = {(c["what"], c["task"]): c["published"] for r in ok for c in r.get("setup_check") or []}
        for what, name in (("theta0", "θ0, published"), ("expert", "expert, published")):
            if any(w == what for w, _ in published_task):
                lines.append(
                    f"| {name} | "
                    + " | ".join(
                        f"{published_task[(what, t)]:.1f}" if (what, t) in published_task else "–" for t in task_order
                    )
                    + " |"
                )
        lines.append("")

    if ok:
        figs = [
            ("average accuracy over steps", plots.plot_accuracy_over_steps),
            ("accuracy matrices", plots.plot_heatmaps),
            ("forgetting", plots.plot_forgetting),
            ("accuracy vs cost", plots.plot_pareto),
        ]
        figs += (
            [("final accuracy vs the expert", plots.plot_final_vs_expert)]
            if stream
            else [("start-of-task gradient norm", plots.plot_grad_norm)]
        )
        links = []
        for i, (title, fn) in enumerate(figs):
            png = Path(fn(suite, by_label, plots_dir))
            rel = png.resolve().relative_to(md_dir.resolve()).as_posix()
            if i == 0:
                lines += [f"![{title}]({rel})", ""]
            links.append(f"[{title}]({rel}) ([SVG]({rel[:-4]}.svg))")
        lines += ["Plots: " + " · ".join(links), ""]
    return lines


def shared_job_comparisons(by_label: dict[str, list[dict]], full: int) -> list[str]:
    """For each row with fewer jobs than ``full``: its mean ACC and the best full row's on the
    same (seed, order) jobs, the only comparison its mean supports."""
    full_rows = {
        lb: {job_of(r): r["metrics"]["ACC"] for r in rs}
        for lb, rs in by_label.items()
        if len(rs) == full and rs[0].get("data_access") != "all_seen"
    }
    out = []
    for label, rs in sorted(by_label.items()):
        if len(rs) >= full or not full_rows:
            continue
        jobs = sorted({job_of(r) for r in rs})
        on_jobs = {lb: np.mean([v[j] for j in jobs if j in v]) for lb, v in full_rows.items()}
        best = max(on_jobs, key=lambda lb: on_jobs[lb])
        own = np.mean([r["metrics"]["ACC"] for r in rs])
        out.append(f"{md(label)} {100 * own:.1f} vs {md(best)} {100 * on_jobs[best]:.1f} (best full row there)")
    return out


def hparam_text(label: str, rs: list[dict], first_of: dict) -> str:
    """A row's hyperparameters (and LoRA spec, and where the values come from); long lists
    say what differs from the first row of the same method (``first_of``: method -> that
    row's label and values, filled as rows are seen)."""
    hparams = rs[0]["hparams"]
    base_label, base = first_of.setdefault(rs[0]["method"], (label, hparams))
    if len(hparams) <= LONG_HPARAMS:
        hp = ", ".join(f"{k}={v}" for k, v in sorted(hparams.items()))
    elif base_label == label:  # e.g. ODE-M's 35 public-config values: in the result files
        hp = f"{len(hparams)} values, listed in the result files"
    else:
        diff = ", ".join(f"{k}={v}" for k, v in sorted(hparams.items()) if base.get(k) != v)
        hp = f"{diff or 'same values'}; others as {base_label}"
    lora = rs[0].get("lora")
    if lora:
        hp = f"LoRA rank {lora['rank']} on {'/'.join(lora['targets'])}" + (f"; {hp}" if hp else "")
    own = rs[0].get("training")
    if own:  # the method's own training recipe fields (e.g. a full-parameter lr)
        hp = "training " + ", ".join(f"{k}={v}" for k, v in sorted(own.items())) + (f"; {hp}" if hp else "")
    hp = hp or "–"
    src = rs[0].get("hparam_source") or {"kind": "suite"}
    return hp + (
        " (suite defaults)"
        if src["kind"] == "suite"
        else (" (tuned on validation data" + (", oracle: all tasks" if src.get("oracle") else "") + ")")
    )


def calibration_section(by_label: dict[str, list[dict]]) -> list[str]:
    """Class-incremental heads: how much of the accuracy is lost to confusing one task's
    classes with another's (all seen classes vs each task's own classes, from the same
    logits) — if the gap were large and alike for every method, head calibration, not the
    methods, would rank them."""
    lines = [
        "Head calibration (mean ± std over jobs): final accuracy over all seen classes vs within each task's "
        "own classes, and the newest task after its step: its all-class accuracy in the deployed model over its "
        "within-task accuracy in the model just trained (for sequential training the same model):",
        "",
        "| Method | final, all classes | final, within task | newest task, all / within |",
        "|---|---|---|---|",
    ]
    rows = []
    for label, rs in by_label.items():
        rs = [r for r in rs if r.get("R_within")]
        if not rs:
            continue
        final_all = [_final_mean(r["R"][-1]) for r in rs]
        final_within = [_final_mean(r["R_within"][-1]) for r in rs]
        ratio = [  # steps whose trained model scored 0 within its task have no ratio
            float(
                np.nanmean(
                    [
                        r["R"][t][t - 1] / own if (own := r["trained_own_task_acc"][t - 1]) else np.nan
                        for t in range(1, len(r["R"]))
                    ]
                )
            )
            for r in rs
        ]
        m, sd, _ = _stat(ratio)
        rows.append(
            (-np.mean(final_all), f"| {md(label)} | {_pct(final_all)} | {_pct(final_within)} | {m:.2f} ± {sd:.2f} |")
        )
    return lines + [row for _, row in sorted(rows)] + [""]


def paired_section(by_label: dict[str, list[dict]], ref: str) -> list[str]:
    """ACC differences to ``ref`` on the same (seed, order): removes the seed-to-seed spread
    that unpaired mean ± std mixes in."""
    base = {job_of(r): r["metrics"]["ACC"] for r in by_label[ref]}
    lines = [
        f"Paired ACC difference to {md(ref)} (same seed and order; mean ± std, wins/n):",
        "",
        "| Method | Δ ACC | wins |",
        "|---|---|---|",
    ]
    rows = []
    for label, rs in by_label.items():
        if label == ref:
            continue
        d = [r["metrics"]["ACC"] - base[job_of(r)] for r in rs if job_of(r) in base]
        if d:
            m, sd, n = _stat(d)
            spread = f" ± {100 * sd:.1f}" if n > 1 else ""  # one pair has no spread to show
            rows.append((-m, label, f"| {md(label)} | {100 * m:+.1f}{spread} | {sum(x > 0 for x in d)}/{n} |"))
    return lines + [row for *_, row in sorted(rows)] + [""]


def render_leaderboard(
    results_dir: str | Path = "results",
    output: str | Path = "leaderboard.md",
    plots_dir: str | Path | None = None,
    include_rehearsal: bool = False,
    recs: list[dict] | None = None,
) -> Path:
    """Write ``output`` and its plots from the results under ``results_dir`` (or ``recs``,
    read from there already). Refuses to overwrite a file or fill a folder it did not write
    (``cmbench.report.outputs``)."""
    results_dir, output = Path(results_dir), Path(output)
    plots_dir = Path(plots_dir) if plots_dir else output.parent / "plots"
    check_markdown(output)
    claim_plots(plots_dir)
    if recs is None:
        recs = load_results(results_dir, include_rehearsal)
    by_suite: dict[str, list[dict]] = defaultdict(list)
    for r in recs:
        by_suite[r["suite"]].append(r)
    lines = [
        MARK,
        "",
        "# cmbench leaderboard",
        "",
        "Rendered by `cmbench report` from the result files under `results/` alone. Accuracies in %, "
        "mean ± sample std over every (seed, task order) job; n = number of jobs. ACC final average "
        "accuracy, AIA average incremental accuracy, BWT backward transfer (negative = forgetting), "
        "FGT forgetting, FWT forward transfer, NACC accuracy normalised by each expert's own. "
        "Class-incremental suites also report ACC_all (accuracy over the union of all seen tasks' test "
        "samples, sample-weighted: the number P&M, InfLoRA and MagMax report) and AAA (its mean over steps); "
        "ACC/AIA/BWT/FGT there are per-task means. Start ‖∇‖: gradient norm at the start of each task's "
        "training, mean over steps. "
        "Storage: bytes a method keeps between steps beyond the merged model. "
        "Verified: jobs that `cmbench verify` recomputed from scratch and found equal, with the file's "
        "bytes unchanged since (`results/verified.jsonl`; checksums in the files catch accidental edits, "
        "not forgery: only recomputing proves a number). "
        "† reconstruction of a method without public code; ‡ end-of-stream refinement (lifts only the final row). "
        "Hyperparameters: the values each row lists: suite defaults (paper or public-code values) or tuned "
        "by `cmbench tune` on validation splits (rows `<label>-tuned`; scored on every task's validation "
        "data, which is an oracle: the values have seen tasks that arrive later).",
        "",
    ]
    if not by_suite:
        lines.append("_No results yet: run `cmbench run suites/<suite>.yaml`._")
    for suite in sorted(by_suite):
        lines += suite_section(suite, by_suite[suite], plots_dir, output.parent)
    output.write_text("\n".join(lines).rstrip() + "\n")
    return output
