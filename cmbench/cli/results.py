"""`cmbench report`, `verify` and `log`: what is done with result files."""

from __future__ import annotations

import sys
from pathlib import Path

from .. import CmbenchError
from .common import positive_int


def selected(recs: list[dict], results: Path, suite: str | None, methods: list[str] | None) -> list[dict]:
    """The records of ``suite`` and ``methods``; an empty or unknown selection is an error
    that says what exists."""
    from ..suite import did_you_mean

    if not recs:
        raise CmbenchError(f"{results}: no result files; run `cmbench run SUITE --out {results.parent}` first")
    suites = sorted({r["suite"] for r in recs})
    if suite is not None:
        if suite not in suites:
            raise CmbenchError(
                f"--suite {suite}: no results under {results}{did_you_mean(suite, suites)} (have: {', '.join(suites)})"
            )
        recs = [r for r in recs if r["suite"] == suite]
    if methods:
        labels = sorted({r["label"] for r in recs} | {r["method"] for r in recs})
        for m in methods:
            if m not in labels:
                raise CmbenchError(f"--methods {m}: no results{did_you_mean(m, labels)} (have: {', '.join(labels)})")
    return recs


def cmd_report(args) -> int:
    from ..record import printable
    from ..report import outputs
    from ..results import load_results

    methods = [m for m in args.methods.split(",") if m] if args.methods else None
    results, folder = outputs.results_and_folder(args.results)
    skipped: list[str] = []

    def bad(path: Path, why: str) -> None:  # one stranger's file never stops the report
        skipped.append(str(path))
        print(f"cmbench: warning: skipped {printable(str(path))}: {why}", file=sys.stderr)

    recs = load_results(results, args.include_rehearsal, on_bad=bad)
    done = ""
    if args.diagnostics:
        from ..report.diagnostics import render

        recs = selected(recs, results, args.suite, [args.diagnostics])
        recs = [r for r in recs if args.diagnostics in (r["label"], r["method"])]
        if args.job:
            seed, _, order = args.job.partition(",")
            if not (seed.isdigit() and order.isdigit()):
                raise CmbenchError(f"--job {args.job!r}: write SEED,ORDER (e.g. 0,0)")
            recs = [r for r in recs if (r["seed"], r["order_index"]) == (int(seed), int(order))]
        if not any(r.get("diagnostics") for r in recs):
            raise CmbenchError(
                f"--diagnostics {args.diagnostics}: its results record no diagnostics (results written before "
                "methods recorded them, or a method that records none); rerun its jobs to record them"
            )
        print(render(recs, f"diagnostics of {args.diagnostics}"), end="")
    elif args.site:
        selected(recs, results, None, None)
        from ..report.site import render_site

        index = render_site(results, args.site, args.include_rehearsal, recs=recs)
        done = f"wrote the site {index} (open it in a browser; it needs no server and no network)"
    elif args.format or args.table:
        from ..report.tables import render_table

        recs = selected(recs, results, args.suite, methods)
        kind = args.table or "stream"
        fmt = args.format or ("csv" if kind == "jobs" else "markdown")
        print(render_table(recs, kind, fmt, methods, args.suite), end="")
    else:
        selected(recs, results, args.suite, methods)
        from ..report import render_leaderboard

        output = Path(args.output) if args.output else outputs.default_output(results, folder)
        output.parent.mkdir(parents=True, exist_ok=True)
        plots = Path(args.plots) if args.plots else output.parent / "plots"
        out = render_leaderboard(results, output, plots, args.include_rehearsal, recs=recs)
        done = f"wrote {out} and its plots in {plots}"
    if done:
        print(done)
    if skipped:
        print(f"cmbench: {len(skipped)} file(s) skipped (see the warnings above)", file=sys.stderr)
    return 0


def cmd_verify(args) -> int:
    from ..verify import verify

    r = verify(
        args.results,
        suites=[x for x in args.suite.split(",") if x] if args.suite else None,
        methods=[m for m in args.methods.split(",") if m] if args.methods else None,
        sample=args.sample,
        workers=args.workers,
        executor="local" if args.no_ray else "ray",
    )
    return 1 if r["mismatched"] or r["stale"] else 0


def cmd_log(args) -> int:
    from ..runner import Paths
    from ..tracking import log_results

    results = Path(args.results)
    if not results.is_dir():
        raise CmbenchError(f"{results}: no such results directory (give OUT/results of a run)")
    uri = args.tracking_uri or Paths(results.resolve().parent).tracking_uri
    counts = log_results(results, uri)
    print(
        f"logged {counts['logged']} jobs to {uri}; {counts['already']} were there already"
        + (f"; {counts['skipped']} file(s) skipped (see the warnings)" if counts["skipped"] else "")
    )
    return 1 if counts["skipped"] else 0


def add_report(sub) -> None:
    rp = sub.add_parser(
        "report",
        help="render leaderboard.md and plots from result files",
        description="Render the leaderboard (leaderboard.md, plots/), a paper table (--format), the site "
        "(--site) or a method's per-step diagnostics (--diagnostics) from result files alone. Every "
        "figure is a mean with its 95 % interval; rows not distinguishable from the best share its rank.",
    )
    rp.add_argument(
        "--results",
        default="results",
        help="a run's output folder (--out of `cmbench run`) or its results/ (default: results)",
    )
    rp.add_argument(
        "--output",
        help="markdown file to write (default: leaderboard.md for the repository's results/, else "
        "leaderboard.md in the run's folder)",
    )
    rp.add_argument("--plots", help="directory for plots (default: plots/ next to the output)")
    rp.add_argument(
        "--format", choices=["markdown", "latex", "csv"], help="print a paper table instead of writing the leaderboard"
    )
    rp.add_argument(
        "--table",
        choices=["stream", "benchmarks", "ablation", "jobs"],
        help="print a paper table (markdown unless --format says otherwise; --format alone: stream): "
        "stream: methods × tasks + Avg + BWT; benchmarks: methods × suites (final, AAA); "
        "ablation: variants of one method (--methods NAME) × suites; "
        "jobs: CSV only, one row per job (failed ones too) with its metrics, key, commit and device",
    )
    rp.add_argument(
        "--site",
        metavar="DIR",
        help="write the leaderboard as a static web site in DIR (the files of its last render are replaced; a "
        "folder cmbench did not write is refused): sortable tables, plots with values "
        "on hover; self-contained, opens from the file system",
    )
    rp.add_argument("--suite", help="only this suite's results")
    rp.add_argument(
        "--diagnostics",
        metavar="METHOD",
        help="print what METHOD (a method or label) recorded at each step (P&M's α_t, TRM's coefficients, ...)",
    )
    rp.add_argument("--job", metavar="SEED,ORDER", help="with --diagnostics: one job only")
    rp.add_argument("--methods", help="comma-separated method names or labels")
    rp.add_argument(
        "--include-rehearsal",
        action="store_true",
        help="render a rehearsal's results (refused otherwise); every table is labelled 'rehearsal: random weights'",
    )
    rp.set_defaults(fn=cmd_report)


def add_verify(sub) -> None:
    vf = sub.add_parser(
        "verify",
        help="recompute committed jobs from scratch and compare them with their files",
        description="Recomputes result files cold in a temporary directory (θ0, heads and experts "
        "rebuilt) and compares R and E cell by cell: identically when the result was "
        "made with this torch version on this device type, else within a measured "
        "tolerance. Reports stale keys. Exits 1 on any mismatch or stale result.",
    )
    vf.add_argument("--results", default="results", help="results directory (default: results)")
    vf.add_argument("--suite", help="only these suites (comma-separated names)")
    vf.add_argument("--methods", help="only these methods or labels (comma-separated)")
    vf.add_argument(
        "--sample",
        type=positive_int,
        help="check N jobs: at least one per suite, setting and harness component version, the cheapest first",
    )
    vf.add_argument("--workers", type=positive_int, help="parallel jobs (default: cores / cpus_per_job)")
    vf.add_argument("--no-ray", action="store_true", help="recompute in this process, one job after another")
    vf.set_defaults(fn=cmd_verify)


def add_log(sub) -> None:
    lg = sub.add_parser(
        "log",
        help="log result files to MLflow (what a run whose tracking was down could not log)",
        description="Logs every job under RESULTS that the tracking store does not hold yet (by label, "
        "seed, order and key), one parent run per suite named 'SUITE (cmbench log)'.",
    )
    lg.add_argument("results", help="a results directory (OUT/results of a run)")
    lg.add_argument("--tracking-uri", help="MLflow tracking URI (default: the run's, sqlite under RESULTS/../.cmbench)")
    lg.set_defaults(fn=cmd_log)
