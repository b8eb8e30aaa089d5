"""``cmbench``: run suites, render the leaderboard, list what exists.

cmbench run suites/micro-digits-merge.yaml           # all methods, seeds and orders
cmbench run SUITE --methods ties,task_arithmetic --seeds 1 --orders 2
cmbench run clip-vit-b32-ta8 --dry-run                # jobs, downloads, fine-tuning, GPU time
cmbench finetune SUITE                                # the experts a suite needs (Ray jobs)
cmbench report                                        # results/ -> leaderboard.md + plots/
cmbench list methods | suites
cmbench check my_method                               # the conformance kit
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from . import CmbenchError


def resolve_suite(arg: str) -> Path:
    from .suite import resolve_suite as resolve  # lazily: `cmbench --help` never imports torch

    return resolve(arg)


def _data_env(args) -> None:
    """Where data lives, and whether anything may be fetched: offline unless --allow-download
    (the Hugging Face libraries are told so too, before they are imported: none of them
    then tries the network, with or without retries)."""
    if getattr(args, "data_root", None):
        os.environ["CMBENCH_DATA_ROOT"] = str(Path(args.data_root).expanduser().resolve())
    if getattr(args, "allow_download", False):
        os.environ["CMBENCH_ALLOW_DOWNLOAD"] = "1"
    else:
        for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            os.environ.setdefault(k, "1")


def _int_at_least(minimum: int):
    """argparse type: an integer ≥ ``minimum`` (``--seeds 0`` or ``-1`` used to select every
    seed, or all but one)."""

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if n < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum} or more (got {n})")
        return n

    return parse


_positive_int = _int_at_least(1)


def _hparams(items: list[str] | None) -> dict[str, dict]:
    """``--hparam LABEL.NAME=VALUE`` (VALUE read as YAML) -> {label: {name: value}}."""
    import yaml

    out: dict[str, dict] = {}
    for item in items or []:
        target, eq, value = item.partition("=")
        label, dot, name = target.rpartition(".")
        if not (eq and dot and label and name):
            raise CmbenchError(f"--hparam {item!r}: write METHOD_OR_LABEL.NAME=VALUE, e.g. ode_m.post_refine_steps=1")
        out.setdefault(label, {})[name] = yaml.safe_load(value)
    return out


def _added_methods(names: list[str] | None, sets: list[str] | None) -> list[dict] | None:
    """``--add NAME`` / ``--set NAME.k=v`` -> suite method entries (values read as YAML)."""
    if not names:
        if sets:
            raise CmbenchError("--set goes with --add: `--add ties --set ties.k=0.1`")
        return None
    values = _hparams(sets)
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise CmbenchError(
            f"--set {unknown[0]}.…: {unknown[0]!r} is not a method given with --add ({', '.join(names)})"
        )
    return [{"name": n, **({"hparams": values[n]} if n in values else {})} for n in names]


def cmd_run(args) -> int:
    kwargs = dict(
        methods=[m for m in args.methods.split(",") if m] if args.methods else None,
        skip=[m for m in args.skip.split(",") if m] if args.skip else None,
        seeds=args.seeds,
        orders=args.orders,
        workers=args.workers,
        ray_address=args.ray_address,
        force=args.force,
        dry_run=args.dry_run,
        tracking_uri=args.tracking_uri,
        executor="local" if args.no_ray else "ray",
        use_tuned=args.use_tuned,
        retries=args.retries,
        store=args.store,
        dashboard=args.dashboard,
        job_time_limit=args.job_time_limit,
        add=_added_methods(args.add, args.set),
        accept_cost=args.accept_cost,
    )
    if args.rehearse:
        if args.data_root or args.allow_download:
            raise CmbenchError("--rehearse writes its own data and weights: drop --data-root / --allow-download")
        from .rehearse import default_out, rehearse, use_stand_ins

        out = Path(args.out) if args.out else default_out(resolve_suite(args.suite))
        use_stand_ins((out / ".cmbench" / "stand-ins").resolve())  # before anything imports the HF libraries
        from .suite import Rehearsal

        try:
            r = Rehearsal(
                seed=args.rehearsal_seed,
                scale=args.scale,
                max_per_split=args.max_per_split,
                max_train_per_split=args.max_train_per_split,
            )
        except ValueError as e:
            raise CmbenchError(f"--scale / --max-per-split: {str(e).splitlines()[-1].strip()}") from None
        summary = rehearse(
            resolve_suite(args.suite),
            out=out,
            rehearsal=r,
            eval_cap=args.eval_cap,
            train_steps=args.train_steps,
            train_batch=args.train_batch,
            hparams=_hparams(args.hparam),
            **kwargs,
        )
        return 1 if summary["failed"] else 0
    if (
        args.scale != 1.0
        or args.max_per_split
        or args.max_train_per_split
        or args.eval_cap
        or args.train_steps
        or args.train_batch
        or args.hparam
    ):
        raise CmbenchError(
            "--scale, --max-per-split, --max-train-per-split, --eval-cap, --train-steps, --train-batch and --hparam "
            "shape a rehearsal: add --rehearse (a real run takes them from the suite)"
        )
    path = resolve_suite(args.suite)
    from .suite import load_suite

    load_suite(path)  # a malformed suite is refused here, before the runner imports torch, Ray and MLflow
    from .runner import run_suite

    _data_env(args)
    summary = run_suite(path, out=args.out or ".", allow_download=args.allow_download, **kwargs)
    return 1 if summary["failed"] else 0


def cmd_tune(args) -> int:
    from .tune import tune_method

    _data_env(args)
    tune_method(
        resolve_suite(args.suite),
        args.method,
        out=args.out,
        seeds=args.seeds,
        orders=args.orders,
        workers=args.workers,
        executor="local" if args.no_ray else "ray",
        tracking_uri=args.tracking_uri,
        store=args.store,
        ray_address=args.ray_address,
    )
    return 0


def cmd_finetune(args) -> int:
    from .runner import finetune_experts

    _data_env(args)
    finetune_experts(
        resolve_suite(args.suite),
        seeds=args.seeds,
        workers=args.workers,
        ray_address=args.ray_address,
        out=args.out,
        executor="local" if args.no_ray else "ray",
        store=args.store,
    )
    return 0


def cmd_bench(args) -> int:
    from .bench import DEFAULT_METHODS, main_json, run_bench

    methods = [m for m in args.methods.split(",") if m] if args.methods else list(DEFAULT_METHODS)
    stream = () if args.stream_memory == "none" else tuple(m for m in args.stream_memory.split(",") if m)
    skip = () if args.suite_skip == "none" else tuple(m for m in args.suite_skip.split(",") if m)
    hparams = _hparams(args.hparam)
    r = run_bench(
        methods,
        threads=args.threads,
        repeats=args.repeats,
        device=args.device,
        suite=args.suite,
        stream_memory=stream,
        suite_skip=skip,
        hparams=hparams,
        evaluation=not args.no_eval,
    )
    main_json(args.json, r)
    return 0


def cmd_data(args) -> int:
    from .data import export

    _data_env(args)
    if args.action == "list":
        print("\n".join(export.status()))
        return 0
    if not args.tasks:
        raise CmbenchError("data export: name the tasks to export (e.g. eurosat dtd)")
    for t in args.tasks:
        export.export(t)
    return 0


def _selected(recs: list[dict], results: Path, suite: str | None, methods: list[str] | None) -> list[dict]:
    """The records of ``suite`` and ``methods``; an empty or unknown selection is an error
    that says what exists."""
    from .suite import did_you_mean

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
    from .record import printable
    from .report import outputs
    from .results import load_results

    methods = [m for m in args.methods.split(",") if m] if args.methods else None
    results, folder = outputs.results_and_folder(args.results)
    skipped: list[str] = []

    def bad(path: Path, why: str) -> None:  # one stranger's file never stops the report
        skipped.append(str(path))
        print(f"cmbench: warning: skipped {printable(str(path))}: {why}", file=sys.stderr)

    recs = load_results(results, args.include_rehearsal, on_bad=bad)
    done = ""
    if args.diagnostics:
        from .report.diagnostics import render

        recs = _selected(recs, results, args.suite, [args.diagnostics])
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
        _selected(recs, results, None, None)
        from .report.site import render_site

        index = render_site(results, args.site, args.include_rehearsal, recs=recs)
        done = f"wrote the site {index} (open it in a browser; it needs no server and no network)"
    elif args.format or args.table:
        from .report.tables import render_table

        recs = _selected(recs, results, args.suite, methods)
        kind = args.table or "stream"
        fmt = args.format or ("csv" if kind == "jobs" else "markdown")
        print(render_table(recs, kind, fmt, methods, args.suite), end="")
    else:
        _selected(recs, results, args.suite, methods)
        from .report import render_leaderboard

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
    from .verify import verify

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
    from .runner import Paths
    from .tracking import log_results

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


def cmd_list(args) -> int:
    if args.what == "methods":
        from .registry import discover

        for name, cls in sorted(discover().items()):
            hp = ", ".join(f"{k}={v!r}" for k, v in cls.defaults().items()) or "-"
            tag = " [reconstruction]" if cls.reconstruction else ""
            print(
                f"{name}{tag}\n  settings: {', '.join(cls.settings)}; data: {cls.data_access}; "
                f"hyperparameters: {hp}\n  paper: {cls.paper or '-'}"
            )
    else:  # read, not validated (validation imports every method, i.e. torch): a second, not ten
        import yaml

        from .suite import suite_dirs

        for d in suite_dirs():
            for p in sorted(d.glob("*.yaml")):
                try:
                    s = yaml.safe_load(p.read_text())
                    print(
                        f"{p}: {s.get('setting', 'merge_stream')}, {len(s.get('tasks') or [])} tasks, "
                        f"{len(s.get('seeds') or [0])} seeds, {len(s.get('methods') or [])} methods"
                    )
                except (yaml.YAMLError, AttributeError, TypeError) as e:
                    print(f"{p}: unreadable YAML ({type(e).__name__})")
        print("(`cmbench run SUITE --dry-run` validates a suite and lists its jobs)")
    return 0


def cmd_check(args) -> int:
    from .conformance import check
    from .registry import discover

    names = args.methods or sorted(discover())
    bad = 0
    for name in names:
        problems = check(name)
        print(f"{name}: {'ok' if not problems else 'FAILED'}")
        for p in problems:
            print("  - " + p.replace("\n", "\n    "))
        bad += bool(problems)
    return 1 if bad else 0


def _store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store",
        help="artefact store shared by workers: a directory or an fsspec URL "
        "(s3://…, gs://…); default OUT/.cmbench/cache",
    )


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", help="where datasets live (default: $CMBENCH_DATA_ROOT or ~/.cache/cmbench/data)")
    p.add_argument(
        "--allow-download",
        action="store_true",
        help="let datasets and weights be fetched from the hubs (default: local caches only)",
    )


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="cmbench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--version", action="store_true", help="print cmbench's version")
    sub = ap.add_subparsers(dest="cmd")

    r = sub.add_parser(
        "run",
        help="run a suite's jobs (method × seed × order); finished jobs are skipped",
        description="Run a suite. Artefacts (θ0, heads, experts) are built once and cached; "
        "each job writes results/<suite>/<method>/seed<S>-order<O>.json.",
    )
    r.add_argument("suite", help="path to a suite YAML file, or the name of one in suites/")
    r.add_argument("--methods", help="comma-separated method names or labels (default: all in the suite)")
    r.add_argument("--skip", help="comma-separated method names or labels to leave out")
    r.add_argument("--seeds", type=_positive_int, help="use only the first N seeds of the suite")
    r.add_argument("--orders", type=_positive_int, help="use only the first N task orders per seed")
    r.add_argument(
        "--workers", type=_positive_int, help="parallel jobs on the local Ray instance (default: cores / cpus_per_job)"
    )
    r.add_argument("--ray-address", help="join a Ray cluster at this address instead of starting a local one")
    r.add_argument(
        "--out",
        help="directory for results/ and .cmbench/ (cache, MLflow) (default: ., and rehearsals/SUITE with --rehearse)",
    )
    r.add_argument("--force", action="store_true", help="recompute jobs even if their result exists")
    r.add_argument(
        "--accept-cost",
        action="store_true",
        help="run a suite estimated above the cost limit (the dry run's estimate; see cmbench/plan.py)",
    )
    r.add_argument(
        "--add",
        action="append",
        metavar="METHOD",
        help="run this method on the suite too (repeatable; validated as a suite entry; only the "
        "added methods run unless --methods names others)",
    )
    r.add_argument(
        "--set",
        action="append",
        metavar="METHOD.NAME=VALUE",
        help="a hyperparameter of a method given with --add (repeatable)",
    )
    r.add_argument(
        "--job-time-limit",
        type=float,
        metavar="SECONDS",
        help="stop a job that runs longer (recorded as failed; a rerun resumes from its last "
        "completed step); overrides the suite's resources.job_time_limit_s",
    )
    r.add_argument(
        "--dashboard",
        action="store_true",
        help="start the local Ray instance with its dashboard (http://127.0.0.1:8265; needs the "
        "`dashboard` extra); a cluster's dashboard is the head node's",
    )
    r.add_argument(
        "--dry-run",
        action="store_true",
        help="validate; list the jobs, what must be downloaded or fine-tuned first, and a GPU-time "
        "estimate (no network)",
    )
    r.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite under OUT/.cmbench)")
    r.add_argument("--no-ray", action="store_true", help="run jobs in this process, one after another")
    r.add_argument(
        "--use-tuned",
        action="store_true",
        help="also run <label>-tuned rows with the values `cmbench tune` chose (OUT/tuned/)",
    )
    r.add_argument(
        "--retries", type=_int_at_least(0), default=2, help="retries of a job whose worker process dies (default: 2)"
    )
    _data_args(r)
    _store_arg(r)
    rh = r.add_argument_group(
        "rehearsal",
        "the real code at the real sizes on generated stand-ins for the "
        "backbone weights, datasets and experts (cmbench/rehearse.py); offline",
    )
    rh.add_argument("--rehearse", action="store_true", help="rehearse the suite (results are watermarked)")
    rh.add_argument("--scale", type=float, default=1.0, help="generated split sizes as a fraction of the real ones")
    rh.add_argument("--max-per-split", type=int, help="at most N generated images per dataset split")
    rh.add_argument(
        "--max-train-per-split", type=int, help="at most N generated images per train split (default: --max-per-split)"
    )
    rh.add_argument("--eval-cap", type=int, help="evaluate on at most N test images per task")
    rh.add_argument("--train-steps", type=int, help="train-then-merge: optimiser steps per task")
    rh.add_argument("--train-batch", type=int, help="train-then-merge: batch size (default: the suite's)")
    rh.add_argument(
        "--hparam",
        action="append",
        metavar="LABEL.NAME=VALUE",
        help="override a method's hyperparameter (repeatable), e.g. ode_m.post_refine_steps=1",
    )
    rh.add_argument("--rehearsal-seed", type=int, default=0, help="seed of the stand-ins (default: 0)")
    r.set_defaults(fn=cmd_run)

    tu = sub.add_parser(
        "tune",
        help="choose a method's hyperparameters on validation data (Ray Tune)",
        description="Grid search over the method's `search` space in the suite; every trial "
        "runs the method's jobs scored on validation splits (never test). "
        "Scoring on every task's validation data is an oracle (it sees later "
        "tasks); the output and the leaderboard say so.",
    )
    tu.add_argument("suite", help="path to a suite YAML file, or the name of one in suites/")
    tu.add_argument("--method", required=True, help="method name or label in the suite")
    tu.add_argument("--seeds", type=_positive_int, default=1, help="seeds per trial (default: 1)")
    tu.add_argument("--orders", type=_positive_int, help="orders per seed per trial (default: all)")
    tu.add_argument("--workers", type=_positive_int, help="parallel trials (default: cores / cpus_per_job)")
    tu.add_argument("--out", default=".", help="directory for tuned/ and .cmbench/ (default: .)")
    tu.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite under OUT/.cmbench)")
    tu.add_argument("--no-ray", action="store_true", help="run trials in this process")
    tu.add_argument("--ray-address", help="run the trials on the Ray cluster at this address")
    _data_args(tu)
    _store_arg(tu)
    tu.set_defaults(fn=cmd_tune)

    ft = sub.add_parser(
        "finetune",
        help="fine-tune (and cache) the experts a merge-stream suite needs",
        description="Builds θ0, the heads and every task's expert with the suite's "
        "experts.finetune recipe, as Ray jobs; `cmbench run` reuses them.",
    )
    ft.add_argument("suite", help="path to a suite YAML file, or the name of one in suites/")
    ft.add_argument("--seeds", type=_positive_int, help="use only the first N seeds of the suite")
    ft.add_argument("--workers", type=_positive_int, help="parallel fine-tuning jobs (default: cores / cpus_per_job)")
    ft.add_argument("--ray-address", help="join a Ray cluster at this address")
    ft.add_argument("--out", default=".", help="directory whose .cmbench/cache holds the experts (default: .)")
    ft.add_argument("--no-ray", action="store_true", help="fine-tune in this process")
    _data_args(ft)
    _store_arg(ft)
    ft.set_defaults(fn=cmd_finetune)

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

    dt = sub.add_parser(
        "data",
        help="dataset status, and export of hub copies to image folders",
        description="`list`: each real dataset's state here (image folder, decoded cache, hub copy); "
        "`export TASK...`: write a hub copy as an image folder under the data root.",
    )
    dt.add_argument("action", choices=["list", "export"])
    dt.add_argument("tasks", nargs="*", help="export: CLIP task names (e.g. eurosat dtd)")
    _data_args(dt)
    dt.set_defaults(fn=cmd_data)

    bn = sub.add_parser(
        "bench",
        help="merge-step time and memory per method on 88M parameters, "
        "bandwidth floor, evaluation img/s, suite wall time",
        description="Time each method's merge step on an 88M-parameter model (against the memory-bandwidth "
        "floor), measure its peak memory over a stream, evaluation throughput, and optionally a suite's "
        "cold and warm wall time.",
    )
    bn.add_argument("--methods", help="comma-separated methods (default: the data-free baselines)")
    bn.add_argument("--threads", type=_positive_int, default=2, help="torch threads (default: 2)")
    bn.add_argument("--repeats", type=_positive_int, default=3, help="timed merge steps per method (median reported)")
    bn.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    bn.add_argument(
        "--stream-memory",
        default="task_arithmetic,ties,magmax,opcm",
        help="methods whose merge-stream peak memory is measured at T = 8 and T = 20 "
        "(comma-separated, or none; default: %(default)s)",
    )
    bn.add_argument("--suite", help="also time `cmbench run SUITE --seeds 1` cold and warm (e.g. micro-digits-merge)")
    bn.add_argument(
        "--suite-skip",
        default="ode_m",
        help="methods or labels --suite leaves out (comma-separated, or none; default: %(default)s, "
        "whose micro jobs take 1–36 min each and are timed by their own results)",
    )
    bn.add_argument(
        "--hparam",
        action="append",
        default=[],
        metavar="METHOD.NAME=VALUE",
        help="override a method's hyperparameter (repeatable); METHOD.bench_samples=N: the random "
        "images a data-using method is handed (default 256)",
    )
    bn.add_argument("--no-eval", action="store_true", help="skip the evaluation-throughput figures")
    bn.add_argument("--json", help="also write the figures to this JSON file")
    bn.set_defaults(fn=cmd_bench)

    ck = sub.add_parser(
        "check",
        help="run the conformance kit on methods (default: all)",
        description="Checks that a method does not modify its inputs, keeps keys/shapes/dtypes "
        "and integer tensors, is deterministic, respects its declared data access "
        "and has measurable storage.",
    )
    ck.add_argument("methods", nargs="*", help="method names (default: every discovered method)")
    ck.set_defaults(fn=cmd_check)

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
        type=_positive_int,
        help="check N jobs: at least one per suite, setting and harness component version, the cheapest first",
    )
    vf.add_argument("--workers", type=_positive_int, help="parallel jobs (default: cores / cpus_per_job)")
    vf.add_argument("--no-ray", action="store_true", help="recompute in this process, one job after another")
    vf.set_defaults(fn=cmd_verify)

    lg = sub.add_parser(
        "log",
        help="log result files to MLflow (what a run whose tracking was down could not log)",
        description="Logs every job under RESULTS that the tracking store does not hold yet (by label, "
        "seed, order and key), one parent run per suite named 'SUITE (cmbench log)'.",
    )
    lg.add_argument("results", help="a results directory (OUT/results of a run)")
    lg.add_argument("--tracking-uri", help="MLflow tracking URI (default: the run's, sqlite under RESULTS/../.cmbench)")
    lg.set_defaults(fn=cmd_log)

    ls = sub.add_parser(
        "list",
        help="list methods or suites",
        description="`methods`: every method found (baselines/ and plugins) with its settings, data access, "
        "hyperparameters and paper; `suites`: the suite files in ./suites and the repository's.",
    )
    ls.add_argument("what", choices=["methods", "suites"])
    ls.set_defaults(fn=cmd_list)
    return ap


def main(argv: list[str] | None = None) -> int:
    if hasattr(signal, "SIGPIPE"):  # `cmbench run ... --dry-run | head` ends quietly
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__

        print(f"cmbench {__version__}")
        return 0
    if args.cmd is None:  # `cmbench` alone: what it can do
        parser.print_help()
        return 0
    try:
        return args.fn(args)
    except CmbenchError as e:
        print(f"cmbench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cmbench: interrupted; finished jobs are saved, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
