"""The statistics every output shows (issue #37): independent runs, intervals, rank groups,
the same rules in the leaderboard, the paper tables and the site."""

import re

from cmbench.report.leaderboard import paired_section, shared_job_comparisons
from cmbench.report.site import suite_data
from cmbench.report.summary import summarise
from cmbench.report.tables import render_table


def _rec(label, seed, acc, order=0, tasks=("a", "b"), data_access="none"):
    R = [[0.1, 0.1], [acc, 0.1], [acc, acc]]
    return {
        "status": "ok",
        "setting": "merge_stream",
        "suite": "s",
        "suite_hash": "0",
        "label": label,
        "method": label,
        "hparams": {},
        "seed": seed,
        "order_index": order,
        "tasks": list(tasks),
        "R": R,
        "E": [0.9, 0.9],
        "metrics": {"ACC": acc, "BWT": 0.0, "AIA": acc, "FGT": 0.0, "FWT": 0.0, "NACC": acc / 0.9},
        "evaluation": {"test_samples": {"a": 500, "b": 500}},
        "storage_bytes": {"peak": 0},
        "timings": {"merge_total_s": 0.0},
        "data_access": data_access,
        "verified": False,
    }


def test_a_partial_row_is_marked_not_ranked_and_compared_on_its_own_jobs():
    # full rows on seeds 0-2: "steady" 0.6 everywhere; "lucky" 0.5, 0.5, 0.9 (mean 0.63)
    # partial row "partial": only seed 2, 0.8. On seed 2 alone: lucky 0.9 > partial 0.8 > steady 0.6
    recs = [_rec("steady", s, 0.6) for s in range(3)] + [_rec("lucky", s, a) for s, a in enumerate((0.5, 0.5, 0.9))]
    recs.append(_rec("partial", 2, 0.8))
    table = render_table(recs, "stream", "markdown")
    avg = {line.split(" | ")[0].strip("| "): line.split(" | ")[3] for line in table.splitlines() if " | " in line}
    assert "partial (n = 1 of 3)" in avg
    # one seed in three against the other: their difference is not distinguishable, both rank 1
    assert avg["lucky"].startswith("**") and avg["steady"].startswith("**")
    assert not avg["partial (n = 1 of 3)"].startswith(("**", "<u>"))
    csv = render_table(recs, "stream", "csv")
    assert "partial (n = 1 of 3)" in csv and ",80.0000," in csv
    s = summarise("s", recs)
    assert shared_job_comparisons(s) == ["partial 80.0 vs lucky 90.0 (best full row there)"]
    assert s.row("partial").rank is None and s.row("lucky").rank == s.row("steady").rank == 1


def _stream(values: dict[str, list[list[float]]]) -> list[dict]:
    """label -> per seed, the ACC of each of its orders."""
    return [
        _rec(label, seed, acc, order)
        for label, seeds in values.items()
        for seed, accs in enumerate(seeds)
        for order, acc in enumerate(accs)
    ]


def test_an_order_invariant_row_counts_its_seeds_not_its_jobs():
    """Averaging's final model does not depend on the order: 3 seeds × 3 orders are 3 values.
    Its runs say so, and paired wins against it are counted per seed."""
    recs = _stream(
        {
            "average": [[0.60] * 3, [0.62] * 3, [0.58] * 3],  # the same in every order of a seed
            "ordered": [[0.61, 0.66, 0.63], [0.64, 0.60, 0.68], [0.60, 0.62, 0.59]],
        }
    )
    s = summarise("s", recs)
    assert s.runs("average") == "3 (order-invariant)" and s.runs("ordered") == "3 × 3"
    est, wins, seeds = s.paired("ordered", "average", "ACC")
    assert (wins, seeds) == (3, 3)  # each seed's mean difference, not 9 job pairs
    section = "\n".join(paired_section(s, "average"))
    assert re.search(r"\| ordered \| \+[0-9.]+ \[[-+0-9., ]+\] \| 3/3 \|", section), section


def test_rows_half_a_point_apart_share_a_rank_group_in_every_output():
    """Two rows 0.5 points apart whose intervals overlap share rank 1 in the leaderboard's
    table, the paper tables (markdown and LaTeX bold both) and the site; a row far below
    them ranks 2."""
    recs = _stream(
        {
            "first": [[0.700, 0.710, 0.690], [0.680, 0.690, 0.700], [0.720, 0.700, 0.710]],
            "second": [[0.690, 0.712, 0.683], [0.672, 0.688, 0.695], [0.717, 0.691, 0.707]],
            "far": [[0.40, 0.41, 0.42], [0.39, 0.40, 0.41], [0.42, 0.40, 0.41]],
        }
    )
    s = summarise("s", recs)
    a, b = s.est("first", "ACC"), s.est("second", "ACC")
    assert abs(a.mean - b.mean - 0.005) < 1e-9 and a.lo < b.hi and b.lo < a.hi  # overlapping intervals
    assert [(r.label, r.rank) for r in s.rows] == [("first", 1), ("second", 1), ("far", 2)]
    md = render_table(recs, "stream", "markdown")
    avg = {line.split(" | ")[0].strip("| "): line.split(" | ")[3] for line in md.splitlines() if " | " in line}
    assert avg["first"].startswith("**") and avg["second"].startswith("**") and avg["far"].startswith("<u>")
    latex = render_table(recs, "stream", "latex")
    rows = {line.split(" & ")[0]: line.split(" & ")[3] for line in latex.splitlines() if " & " in line}
    assert rows["first"].startswith("\\textbf") and rows["second"].startswith("\\textbf")
    site = {r["label"]: r for r in suite_data(s)["rows"]}
    assert site["first"]["top"] and site["second"]["top"] and not site["far"]["top"]
    assert site["first"]["rank"] == site["second"]["rank"] == "1" and site["far"]["rank"] == "2"


def test_a_one_job_suite_is_a_demonstration_everywhere():
    recs = [_rec(lb, 0, acc) for lb, acc in (("x", 0.7), ("y", 0.6))]
    s = summarise("s", recs)
    assert s.demonstration and all(r.rank is None for r in s.rows)
    table = render_table(recs, "stream", "markdown")
    assert "demonstration" in table and "**" not in table.split("\n", 1)[1] and "[" not in table
    d = suite_data(s)
    assert d["demonstration"] and d["ranks"] == "" and all(r["rank"] == "" for r in d["rows"])


def test_intervals_are_deterministic_and_include_the_test_split_error():
    recs = _stream({"a": [[0.7] * 3] * 3, "b": [[0.6] * 3] * 3})
    one, two = summarise("s", recs), summarise("s", recs)
    assert one.est("a", "ACC") == two.est("a", "ACC")
    e = one.est("a", "ACC")  # no spread over seeds at all: the interval is the test split's
    sd = (0.7 * 0.3 / 500) ** 0.5 / 2 * 2**0.5
    assert abs(e.test_sd - sd) < 1e-12 and 0.05 < e.hi - e.lo < 0.065  # ± 1.96 sd


def test_a_calibration_row_is_compared_with_its_matched_data_baseline_of_the_same_budget():
    from cmbench.report.leaderboard import MATCHED_DATA, matched_data_section

    def calib(label, method, n, seed, acc):
        hp = {"num_samples": n, "step_size": 0.01}
        return {**_rec(label, seed, acc, data_access="calibration"), "method": method, "hparams": hp}

    recs = [calib("ode", "ode_m", 121, s, 0.70 + 0.01 * s) for s in range(3)]
    recs += [calib("ode-big", "ode_m", 2048, s, 0.9) for s in range(3)]  # another budget: no baseline
    recs += [calib("matched", MATCHED_DATA, 121, s, 0.75 + 0.01 * s) for s in range(3)]
    recs += [_rec("weight_average", s, 0.6) for s in range(3)]  # data-free: not compared here
    lines = matched_data_section(summarise("s", recs))
    rows = [line for line in lines if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 1 and rows[0].startswith("| ode | matched | 121 (60 a task at t = 2) | -5.0")
    assert rows[0].endswith("| 0/3 |")
    assert matched_data_section(summarise("s", recs[:6] + recs[9:])) == []  # no baseline row: no section


def test_rows_of_one_seed_on_different_theta0s_are_flagged():
    from cmbench.report.leaderboard import mixed_artefacts

    def on(label, seed, theta0):
        return {**_rec(label, seed, 0.6), "inputs": {"content": {"theta0": theta0}}}

    same = [on(lb, s, f"h{s}") for lb in ("a", "b") for s in range(3)]
    assert mixed_artefacts(summarise("s", same)) == []
    mixed = [on("a", s, f"h{s}") for s in range(3)] + [on("b", s, f"h{s}" if s else "other") for s in range(3)]
    (line, _) = mixed_artefacts(summarise("s", mixed))
    assert "in 1 of 3 seeds" in line and "(seed 0: a | b)" in line


def test_a_task_scored_by_spearman_has_a_correlations_test_error_not_a_binomial_one():
    """STS-B's column is Spearman's ρ: its test error follows ρ's sampling error (Fisher's z,
    Bonett-Wright), which is not √(p(1-p)/n) for p = ρ; an exact-match column stays binomial."""
    import math

    from cmbench.report import stats
    from cmbench.report.summary import test_error

    def rec(metric):
        return {
            "tasks": ["a"],
            "R": [[0.8]],
            "E": None,
            "metrics": {},
            "evaluation": {"test_samples": {"a": 1500}, "metric": {"a": metric} if metric else {}},
        }

    rho_sd = (1 - 0.8**2) * math.sqrt((1 + 0.8**2 / 2) / (1500 - 3))
    assert math.isclose(test_error([rec("spearman")], "ACC"), rho_sd)
    assert math.isclose(test_error([rec(None)], "ACC"), stats.binomial_sd(0.8, 1500))
    assert math.isclose(test_error([rec("exact_match")], "ACC"), stats.binomial_sd(0.8, 1500))
    assert stats.spearman_sd(0.0, 3) == 0.0  # too few pairs for an error
