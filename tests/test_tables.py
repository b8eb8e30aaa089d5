"""Paper tables: a row with fewer jobs is marked with its n and ranked on the jobs it shares
with the others (a mean over other jobs would differ by the jobs, not by the method)."""

from cmbench.report.tables import render_table


def _rec(label, seed, acc):
    R = [[0.1, 0.1], [acc, 0.1], [acc, acc]]
    return {
        "status": "ok",
        "setting": "merge_stream",
        "suite": "s",
        "label": label,
        "method": label,
        "seed": seed,
        "order_index": 0,
        "tasks": ["a", "b"],
        "R": R,
        "metrics": {"ACC": acc, "BWT": 0.0, "AIA": acc},
    }


def test_a_partial_row_is_marked_and_ranked_on_shared_jobs():
    # full rows on seeds 0-2: "steady" 0.6 everywhere; "lucky" 0.5, 0.5, 0.9 (mean 0.63)
    # partial row "partial": only seed 2, 0.8. On seed 2 alone: lucky 0.9 > partial 0.8 > steady 0.6
    recs = [_rec("steady", s, 0.6) for s in range(3)] + [_rec("lucky", s, a) for s, a in enumerate((0.5, 0.5, 0.9))]
    recs.append(_rec("partial", 2, 0.8))
    table = render_table(recs, "stream", "markdown")
    avg = {line.split(" | ")[0].strip("| "): line.split(" | ")[3] for line in table.splitlines() if " | " in line}
    assert "partial (n = 1 of 3)" in avg
    assert avg["lucky"].startswith("**") and avg["partial (n = 1 of 3)"] == "<u>80.0</u>"
    assert not avg["steady"].startswith(("**", "<u>"))
    csv = render_table(recs, "stream", "csv")
    assert "partial" in csv and ",80.0000,,1," in csv


def test_the_leaderboard_compares_a_partial_row_on_its_own_jobs():
    from cmbench.report.leaderboard import shared_job_comparisons

    recs = [_rec("steady", s, 0.6) for s in range(3)] + [_rec("lucky", s, a) for s, a in enumerate((0.5, 0.5, 0.9))]
    by_label = {"steady": recs[:3], "lucky": recs[3:], "partial": [_rec("partial", 2, 0.8)]}
    assert shared_job_comparisons(by_label, 3) == ["partial 80.0 vs lucky 90.0 (best full row there)"]
