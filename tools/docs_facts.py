"""Facts the documentation quotes that the repository itself determines, generated instead of typed.

README.md and every page of docs/ (``docs/*.md``) may mark such a fact:
``<!-- fact:NAME -->value<!-- /fact -->``. This tool computes every fact from the repository
(the tests pytest collects, the shipped suites, the committed result files) and either
rewrites the marked values in each file (``--write``, what ``make docs-facts`` runs) or exits
1 naming each one that differs, by file (``--check``, what ``make test`` runs: documentation
that says something the repository no longer does fails CI). Figures that a machine measures
(how long ``make test`` took) are not facts of the repository: they are recorded with their
date in ``docs/ci.md``.

    python tools/docs_facts.py --check | --write
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FACT = re.compile(r"<!-- fact:([a-z0-9_-]+) -->(.*?)<!-- /fact -->", re.S)


def _tests() -> int:
    """Tests `make test` runs (pytest's default selection: slow tests left out)."""
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q"], capture_output=True, text=True, cwd=ROOT
    ).stdout
    m = re.search(r"(\d+)(?:/\d+)? tests? collected", out) or re.search(r"^(\d+) tests? collected", out, re.M)
    if not m:
        raise SystemExit(f"docs_facts: cannot count the tests:\n{out[-2000:]}")
    return int(m.group(1))


def _suite(name: str):
    from cmbench.suite import load_suite

    return load_suite(ROOT / "suites" / f"{name}.yaml")


def _job_minutes(name: str) -> int:
    """Minutes of job time the committed results of a suite record (their cold recompute on
    the machine that made them, artefacts aside)."""
    total = 0.0
    for p in (ROOT / "results" / name).rglob("*.json"):
        total += json.loads(p.read_text())["timings"]["job_s"]
    return round(total / 60)


def facts() -> dict[str, str]:
    quick = _suite("quick-merge")
    out = {
        "tests": str(_tests()),
        "quick-tasks": str(len(quick.tasks)),
        "quick-seeds": str(len(quick.seeds)),
        "quick-orders": str(quick.orders_per_seed()),
        "quick-jobs": str(len(quick.methods) * len(quick.seeds) * quick.orders_per_seed()),
    }
    for name in ("micro-colour-merge", "micro-colour-merge20", "micro-digits-merge", "micro-glyphs-split"):
        s = _suite(name)
        out[f"{name}-grid"] = f"{len(s.seeds)} seeds × {s.orders_per_seed()} orders"
        out[f"{name}-minutes"] = str(_job_minutes(name))
    return out


def documents() -> list[Path]:
    """The files whose markers this tool keeps: README.md and docs/*.md."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def main(mode: str) -> int:
    if mode not in ("--check", "--write"):
        print(f"usage: {sys.argv[0]} [--check | --write]")
        return 2
    have = facts()
    failed = False
    for path in documents():
        name = path.relative_to(ROOT).as_posix()
        text = path.read_text()
        found = list(FACT.finditer(text))
        if not found:
            continue
        unknown = sorted({m.group(1) for m in found} - set(have))
        if unknown:
            print(f"{name}: unknown facts {unknown}; known: {sorted(have)}")
            failed = True
            continue
        stale = [(m.group(1), m.group(2), have[m.group(1)]) for m in found if m.group(2) != have[m.group(1)]]
        if mode == "--write":
            if stale:
                path.write_text(FACT.sub(lambda m: f"<!-- fact:{m.group(1)} -->{have[m.group(1)]}<!-- /fact -->", text))
            print(f"{name}: {len(stale)} fact(s) rewritten")
            continue
        for fact, said, now in stale:
            print(f"{name}: fact {fact} says {said!r}, the repository says {now!r}; run `make docs-facts`")
        failed = failed or bool(stale)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "--check"))
