"""Does a micro merge suite rank the methods as CLIP does at scale? (issue #38's check)

    python tools/rank_check.py RESULTS_DIR SUITE [--column ta8|tall14|tall20]

Compares the suite's mean ACC (over its jobs) of six methods with the published continual
results on CLIP ViT-B/32 (OPCM paper, repeated in MINGLE, arXiv 2505.11883, Table 1; mean over
10 orders): Spearman's rank correlation, where published values within 1.5 points form one
tie group whose members' order among themselves does not count (their ranks are averaged in
both columns), and OPCM against weight averaging paired job by job. Run it on the reported
seeds only, after the recipe was fixed from structure (``tools/probe_recipe.py``).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

PUBLISHED = {  # method -> ACC %, ViT-B/32 (TA8, TALL14, TALL20)
    "opcm": (75.5, 71.9, 65.7),
    "magmax": (70.7, 67.0, 61.2),
    "task_arithmetic": (67.5, 66.5, 60.0),
    "consensus_ta": (67.1, 64.1, 45.8),
    "weight_average": (66.3, 65.4, 61.1),
    "ties": (49.0, 66.2, 59.9),
}
COLUMNS = {"ta8": 0, "tall14": 1, "tall20": 2}
TIE = 1.5


def tie_groups(values: dict[str, float]) -> list[list[str]]:
    """Chains of methods whose consecutive published values are within ``TIE`` points."""
    order = sorted(values, key=lambda m: -values[m])
    groups = [[order[0]]]
    for m in order[1:]:
        if values[groups[-1][-1]] - values[m] <= TIE:
            groups[-1].append(m)
        else:
            groups.append([m])
    return groups


def ranks(values: dict[str, float], groups: list[list[str]]) -> dict[str, float]:
    """Rank 1 = best; members of a tie group share their average rank."""
    order = sorted(values, key=lambda m: -values[m])
    r = {m: float(i + 1) for i, m in enumerate(order)}
    for g in groups:
        avg = float(np.mean([r[m] for m in g]))
        for m in g:
            r[m] = avg
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results")
    ap.add_argument("suite")
    ap.add_argument("--column", default="ta8", choices=sorted(COLUMNS))
    a = ap.parse_args()
    col = COLUMNS[a.column]
    acc: dict[str, dict[tuple, float]] = defaultdict(dict)
    for p in sorted((Path(a.results) / a.suite).glob("*/*.json")):
        r = json.loads(p.read_text())
        if r.get("status") == "ok" and r["label"] in PUBLISHED:
            final = [v for v in r["R"][-1] if v is not None]
            acc[r["label"]][(r["seed"], r["order_index"])] = sum(final) / len(final)
    methods = [m for m in PUBLISHED if m in acc]
    ours = {m: 100 * float(np.mean(list(acc[m].values()))) for m in methods}
    published = {m: PUBLISHED[m][col] for m in methods}
    groups = tie_groups(published)
    tied = [g for g in groups if len(g) > 1]
    rp, ro = ranks(published, groups), ranks(ours, tied)
    x, y = np.array([rp[m] for m in methods]), np.array([ro[m] for m in methods])
    rho = float(np.corrcoef(x, y)[0, 1])
    print(f"| method | published ({a.column}) | ours | published rank | our rank |")
    print("|---|---|---|---|---|")
    for m in sorted(methods, key=lambda m: -published[m]):
        print(f"| {m} | {published[m]:.1f} | {ours[m]:.1f} | {rp[m]:g} | {ro[m]:g} |")
    print(f"Spearman (tie groups {tied}): {rho:.3f}")
    if "opcm" in acc and "weight_average" in acc:
        jobs = sorted(set(acc["opcm"]) & set(acc["weight_average"]))
        wins = sum(acc["opcm"][j] > acc["weight_average"][j] for j in jobs)
        print(f"OPCM above weight averaging on {wins} of {len(jobs)} jobs")


if __name__ == "__main__":
    main()
