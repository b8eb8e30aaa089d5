"""The published JSON Schema of a result file, generated from ``cmbench.record.ResultRecord``.

``--write`` rewrites ``docs/result-schema.json``; ``--check`` exits 1 when the committed file
differs from what the record model gives now (tests/test_frame.py checks the same).

    python tools/result_schema.py --check | --write
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cmbench.record import SCHEMA_PATH, schema_text  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help=f"rewrite {SCHEMA_PATH}")
    mode.add_argument("--check", action="store_true", help=f"exit 1 if {SCHEMA_PATH} is out of date")
    args = ap.parse_args(argv)
    path = ROOT / SCHEMA_PATH
    text = schema_text()
    if args.write:
        path.write_text(text, encoding="utf-8")
        print(f"wrote {SCHEMA_PATH} ({len(text.encode())} bytes)")
        return 0
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        print(f"{SCHEMA_PATH} is out of date: run python tools/result_schema.py --write", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
