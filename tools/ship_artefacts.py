"""Ship a suite's artefacts with the repository: θ0, heads and independent experts of every
seed, copied from a run's store into a folder that the suite names as ``shipped:``.

Different CPUs fine-tune different last bits, so a suite whose experts are rebuilt on each
machine merges other experts than its committed results did. With the artefacts shipped, a
fresh clone reads them (each checked against its content hash) and fine-tunes none of them
(sequential experts' chains excepted): its jobs come back identical on a machine of the
same CPU kind. The folder keeps the store's layout (``<kind>/<key>.safetensors`` and
``.json``, keyed exactly as the store keys them), so nothing about the jobs' keys changes.
Usage:

    python tools/ship_artefacts.py SUITE.yaml STORE_DIR DEST_DIR [--max-mb 40] [--kinds theta0,heads,experts]

STORE_DIR is a run's store (``OUT/.cmbench/cache``, after ``cmbench finetune SUITE --out
OUT``); DEST_DIR is then named in the suite file as ``shipped: <DEST_DIR relative to it>``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from cmbench import CmbenchError
from cmbench.artefacts import SHIPPABLE, shipped_keys
from cmbench.store import Store
from cmbench.suite import load_suite


def ship(suite_path: Path, store_dir: Path, dest: Path, max_mb: float, kinds: tuple[str, ...] = SHIPPABLE) -> list[str]:
    suite = load_suite(suite_path)
    store = Store(store_dir)
    wanted = shipped_keys(suite, kinds)
    missing = [f"{k}/{key}" for k, key in wanted if not store.has(k, key)]
    if missing:
        raise CmbenchError(
            f"{store_dir}: {len(missing)} artefacts of {suite.name} are not in this store (first: {missing[0]}); "
            f"build them first: cmbench finetune {suite_path} --out OUT"
        )
    size = 0
    for kind, key in wanted:
        if store.read(kind, key) is None:  # checks the content hash before anything is copied
            raise CmbenchError(f"{store_dir}: {kind}/{key} vanished while shipping")
        size += sum((store_dir / kind / f"{key}{ext}").stat().st_size for ext in (".safetensors", ".json"))
    if size > max_mb * 2**20:
        raise CmbenchError(f"{suite.name}: its artefacts take {size / 2**20:.1f} MB, above --max-mb {max_mb:g}")
    for kind, key in wanted:
        (dest / kind).mkdir(parents=True, exist_ok=True)
        for ext in (".safetensors", ".json"):
            shutil.copyfile(store_dir / kind / f"{key}{ext}", dest / kind / f"{key}{ext}")
    return [f"{suite.name}: {len(wanted)} artefacts, {size / 2**20:.1f} MB, shipped to {dest}"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suite", type=Path)
    ap.add_argument("store", type=Path)
    ap.add_argument("dest", type=Path)
    ap.add_argument("--max-mb", type=float, default=40.0, help="refuse to ship more than this (default 40)")
    ap.add_argument(
        "--kinds",
        default=",".join(SHIPPABLE),
        help="ship only these kinds, comma-separated (default: all; the others are rebuilt where the suite runs)",
    )
    args = ap.parse_args(argv)
    kinds = tuple(k for k in args.kinds.split(",") if k)
    if not kinds or set(kinds) - set(SHIPPABLE):
        print(f"ship_artefacts: error: --kinds {args.kinds}: choose among {','.join(SHIPPABLE)}", file=sys.stderr)
        return 2
    try:
        for line in ship(args.suite, args.store, args.dest, args.max_mb, kinds):
            print(line)
    except CmbenchError as e:
        print(f"ship_artefacts: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
