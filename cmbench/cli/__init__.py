"""``cmbench``: run suites, render the leaderboard, list what exists.

cmbench run suites/micro-digits-merge.yaml           # all methods, seeds and orders
cmbench run SUITE --methods ties,task_arithmetic --seeds 1 --orders 2
cmbench run clip-vit-b32-ta8 --dry-run                # jobs, downloads, fine-tuning, GPU time
cmbench finetune SUITE                                # the experts a suite needs (Ray jobs)
cmbench report                                        # results/ -> leaderboard.md + plots/
cmbench list methods | suites
cmbench check my_method                               # the conformance kit

Each subcommand's parser is built beside its handler (``run``, ``results``, ``tools``).
"""

from __future__ import annotations

import argparse
import signal
import sys

from .. import CmbenchError
from ..config import applied
from . import results, run, tools
from .common import config_of


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="cmbench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--version", action="store_true", help="print cmbench's version")
    sub = ap.add_subparsers(dest="cmd")
    for add in (
        run.add_run,
        run.add_tune,
        run.add_finetune,
        results.add_report,
        tools.add_data,
        tools.add_bench,
        tools.add_check,
        results.add_verify,
        results.add_log,
        tools.add_list,
    ):
        add(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    if hasattr(signal, "SIGPIPE"):  # `cmbench run ... --dry-run | head` ends quietly
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from .. import __version__

        print(f"cmbench {__version__}")
        return 0
    if args.cmd is None:  # `cmbench` alone: what it can do
        parser.print_help()
        return 0
    try:
        with applied(config_of(args)):
            return args.fn(args)
    except CmbenchError as e:
        print(f"cmbench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cmbench: interrupted; finished jobs are saved, rerun to resume", file=sys.stderr)
        return 130
