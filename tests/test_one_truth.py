"""Every output says the same about a suite: the committed results rendered as the
leaderboard, the markdown, LaTeX and CSV paper tables and the site, and the rules compared
(rows and their order, rank 1, partial and reference markers, θ0/expert rows, wording, units)."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest

from cmbench.report.leaderboard import render_leaderboard
from cmbench.report.site import suite_data
from cmbench.report.summary import LEVELS, summarise
from cmbench.report.tables import render_table
from cmbench.results import load_results

ROOT = Path(__file__).resolve().parents[1]
LEVEL_NAMES = [name for _, name in LEVELS]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    recs = load_results(ROOT / "results")
    out = tmp_path_factory.mktemp("board")
    # the text only: drawing the committed suites' figures would take a minute and they say nothing compared here
    md = render_leaderboard(
        ROOT / "results", out / "leaderboard.md", out / "plots", recs=recs, figures=False
    ).read_text()
    return recs, md


def _leaderboard_rows(md: str, suite: str) -> list[tuple[str, str]]:
    """(rank, name) of the suite's main table, in order."""
    section = md.split(f"\n## {suite}\n", 1)[1].split("\n## ", 1)[0]
    lines = section.split("\n\n")
    table = next(b for b in lines if b.startswith("| ") and "| Method |" in b.split("\n")[0])
    head = [c.strip() for c in table.split("\n")[0].strip("|").split("|")]
    rows = []
    for line in table.split("\n")[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rank = cells[0] if head[0] == "Rank" else ""
        name = cells[head.index("Method")]
        name = re.sub(r"^\*(.*)\*( \((?:reference|test-time)\))?$", lambda m: m[1] + (m[2] or ""), name)
        rows.append((rank, name))
    return rows


def _plain(name: str) -> str:
    return _bare(name.replace("\\_", "_").replace("\\*", "*"))


def _bare(name: str) -> str:
    """A row's name without the class it is marked with (reference, test-time)."""
    return name.removesuffix(" (reference)").removesuffix(" (test-time)")


def _md_table(text: str) -> list[list[str]]:
    lines = [ln for ln in text.splitlines() if ln.startswith("| ")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]


SUITES = sorted(p.name for p in (ROOT / "results").iterdir() if p.is_dir() and not p.name.startswith("."))


@pytest.mark.parametrize("suite", SUITES)
def test_every_output_says_the_same_about_a_committed_suite(rendered, suite):
    recs, md = rendered
    mine = [r for r in recs if r["suite"] == suite]
    s = summarise(suite, mine)
    board = _leaderboard_rows(md, suite)
    methods = [(rank, name) for rank, name in board if _plain(name) not in LEVEL_NAMES]
    levels = [_plain(name) for _, name in board if _plain(name) in LEVEL_NAMES]
    titles = [s.title(row.label) for row in s.rows]

    # rows, their order and markers (†, ‡, n = k of N): the same names everywhere
    assert [_plain(n) for _, n in methods] == titles
    site = suite_data(s)
    assert [_bare(r["name"]) for r in site["rows"]] == titles
    kind = "stream" if s.stream else "benchmarks"
    table = _md_table(render_table(mine, kind, "markdown", suite=suite))
    table_names = [_plain(r[0]) for r in table[1:]]
    assert table_names[: len(titles)] == titles
    latex = render_table(mine, kind, "latex", suite=suite)
    latex_rows = [ln for ln in latex.splitlines() if ln.endswith("\\\\")][1:]
    assert len(latex_rows) == len(table) - 1
    rows_csv = list(csv.reader(io.StringIO(render_table(mine, kind, "csv", suite=suite))))
    assert [r[1] for r in rows_csv[1:]] == [r[0].replace("\\_", "_") for r in table[1:]]

    # θ0 and the experts: in the leaderboard, the site and the table alike (merge streams only)
    expected_levels = LEVEL_NAMES if s.stream else []
    assert levels == expected_levels
    assert [name for key, name in LEVELS if key in site["levels"]] == expected_levels
    assert table_names[len(titles) :] == expected_levels
    for key, name in LEVELS:
        if s.stream:  # the same figure and run count
            board_line = next(ln for ln in md.split(f"\n## {suite}\n", 1)[1].splitlines() if f"*{name}*" in ln)
            assert site["levels"][key]["text"] in board_line
            assert site["levels"][key]["runs"] in board_line

    # references: marked in every output, never ranked
    refs = {s.title(row.label) for row in s.rows if row.reference}
    assert {_plain(n) for r, n in methods if r == "ref"} == refs
    assert {r["name"].removesuffix(" (reference)") for r in site["rows"] if r["reference"]} == refs
    assert {_plain(r[0]) for r in table[1:] if r[0].endswith("(reference)")} == refs | set(expected_levels)

    # test-time rows: marked in every output, ranked among themselves only (T1, T2, ...)
    tts = {s.title(row.label) for row in s.rows if row.test_time}
    assert {_plain(n) for r, n in methods if r.startswith("T")} == {
        _plain(n) for r, n in methods if n.endswith("(test-time)") and r != "–"
    }
    assert {_plain(n) for _, n in methods if n.endswith("(test-time)")} == tts
    assert {_bare(r["name"]) for r in site["rows"] if r["test_time"]} == tts
    assert {_plain(r[0]) for r in table[1:] if r[0].endswith("(test-time)")} == tts

    # rank 1: the leaderboard's Rank, the site's bold rows, the table's bold headline column,
    # the CSV's rank and LaTeX's \textbf agree; a demonstration ranks nothing anywhere
    headline = table[0].index("Avg" if s.stream else f"{suite} Final" + (" (demonstration)" if s.demonstration else ""))
    top = {_plain(n) for r, n in methods if r == "1"}
    assert {r["name"] for r in site["rows"] if r["top"]} == top
    assert {_plain(r[0]) for r in table[1:] if r[headline].startswith("**")} == top
    col = rows_csv[0].index(f"{table[0][headline]} rank")
    assert {r[1] for r in rows_csv[1:] if r[col] == "1"} == top
    assert {
        _plain(ln.split(" & ")[0]).replace("\\_", "_") for ln in latex_rows if "\\textbf" in ln.split(" & ")[headline]
    } == top
    if s.demonstration:
        assert top == set() and all(r == "" for r, _ in methods)
        assert "**Demonstration**" in md.split(f"\n## {suite}\n", 1)[1].split("\n## ", 1)[0]
        assert "(demonstration" in table[0][headline] or "(demonstration" in render_table(
            mine, kind, "markdown", suite=suite
        )
    else:
        assert top, "a benchmark suite names its rank-1 group"

    # wording and units: no "1 seeds", "1 jobs", decimal megabytes, "± 0.0" at one job
    section = md.split(f"\n## {suite}\n", 1)[1].split("\n## ", 1)[0]
    for text in (section, render_table(mine, kind, "markdown", suite=suite), str(site)):
        assert not re.search(r"\b1 (seeds|jobs|runs)\b", text)
        assert not re.search(r"\d (MB|GB|KB)\b", text)
        assert "± 0.0" not in text
