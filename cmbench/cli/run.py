"""`cmbench run`, `tune` and `finetune`: computing results."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import CmbenchError
from .common import added_methods, data_args, hparams_of, int_at_least, positive_int, resolve_suite, store_arg


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
        add=added_methods(args.add, args.set),
        accept_cost=args.accept_cost,
    )
    if args.rehearse:
        if args.data_root or args.allow_download:
            raise CmbenchError("--rehearse writes its own data and weights: drop --data-root / --allow-download")
        from ..rehearse import default_out, rehearse, use_stand_ins

        out = Path(args.out) if args.out else default_out(resolve_suite(args.suite))
        use_stand_ins((out / ".cmbench" / "stand-ins").resolve())  # before anything imports the HF libraries
        from ..suite import Rehearsal

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
            hparams=hparams_of(args.hparam),
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
    from ..suite import load_suite

    load_suite(path)  # a malformed suite is refused here, before the runner imports torch, Ray and MLflow
    from ..runner import run_suite

    summary = run_suite(path, out=args.out or ".", **kwargs)
    return 1 if summary["failed"] else 0


def cmd_tune(args) -> int:
    from ..tune import tune_method

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
    from ..runner import finetune_experts

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


def add_run(sub) -> None:
    r = sub.add_parser(
        "run",
        help="run a suite's jobs (method × seed × order); finished jobs are skipped",
        description="Run a suite. Artefacts (θ0, heads, experts) are built once and cached; "
        "each job writes results/<suite>/<method>/seed<S>-order<O>.json.",
    )
    r.add_argument("suite", help="path to a suite YAML file, or the name of one in suites/")
    r.add_argument("--methods", help="comma-separated method names or labels (default: all in the suite)")
    r.add_argument("--skip", help="comma-separated method names or labels to leave out")
    r.add_argument("--seeds", type=positive_int, help="use only the first N seeds of the suite")
    r.add_argument("--orders", type=positive_int, help="use only the first N task orders per seed")
    r.add_argument(
        "--workers", type=positive_int, help="parallel jobs on the local Ray instance (default: cores / cpus_per_job)"
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
        "--retries", type=int_at_least(0), default=2, help="retries of a job whose worker process dies (default: 2)"
    )
    data_args(r)
    store_arg(r)
    _rehearsal_args(r)
    r.set_defaults(fn=cmd_run)


def add_tune(sub) -> None:
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
    tu.add_argument("--seeds", type=positive_int, default=1, help="seeds per trial (default: 1)")
    tu.add_argument("--orders", type=positive_int, help="orders per seed per trial (default: all)")
    tu.add_argument("--workers", type=positive_int, help="parallel trials (default: cores / cpus_per_job)")
    tu.add_argument("--out", default=".", help="directory for tuned/ and .cmbench/ (default: .)")
    tu.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite under OUT/.cmbench)")
    tu.add_argument("--no-ray", action="store_true", help="run trials in this process")
    tu.add_argument("--ray-address", help="run the trials on the Ray cluster at this address")
    data_args(tu)
    store_arg(tu)
    tu.set_defaults(fn=cmd_tune)


def add_finetune(sub) -> None:
    ft = sub.add_parser(
        "finetune",
        help="fine-tune (and cache) the experts a merge-stream suite needs",
        description="Builds θ0, the heads and every task's expert with the suite's "
        "experts.finetune recipe, as Ray jobs; `cmbench run` reuses them.",
    )
    ft.add_argument("suite", help="path to a suite YAML file, or the name of one in suites/")
    ft.add_argument("--seeds", type=positive_int, help="use only the first N seeds of the suite")
    ft.add_argument("--workers", type=positive_int, help="parallel fine-tuning jobs (default: cores / cpus_per_job)")
    ft.add_argument("--ray-address", help="join a Ray cluster at this address")
    ft.add_argument("--out", default=".", help="directory whose .cmbench/cache holds the experts (default: .)")
    ft.add_argument("--no-ray", action="store_true", help="fine-tune in this process")
    data_args(ft)
    store_arg(ft)
    ft.set_defaults(fn=cmd_finetune)


def _rehearsal_args(r: argparse.ArgumentParser) -> None:
    """--rehearse and what shapes a rehearsal."""
    rh = r.add_argument_group(
        "rehearsal",
        "the real code at the real sizes on generated stand-ins for the "
        "backbone weights, datasets and experts (cmbench/rehearse/); offline",
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
