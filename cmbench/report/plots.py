"""Plots for the leaderboard and the site (matplotlib, Agg), drawn from a suite's
:class:`~cmbench.report.summary.SuiteSummary`: the same rows, order and 95 % intervals as the
tables. Each is written as PNG and SVG with fixed metadata and a fixed SVG id salt, so the
same result files give the same bytes. A white figure background keeps them readable on
light and dark pages; at most ``LINES_PER_PANEL`` curves share a panel."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import metrics
from . import stats
from .escape import plot as _t  # `$` in a name would start a formula

if TYPE_CHECKING:
    from .summary import SuiteSummary

LINES_PER_PANEL = 8


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "svg.hashsalt": "cmbench",
            "figure.facecolor": "white",
            "axes.facecolor": "white",
            "savefig.facecolor": "white",
            "font.size": 9,
        }
    )
    return plt


def _save(fig, plots_dir: Path, name: str) -> Path:
    plots_dir.mkdir(parents=True, exist_ok=True)
    png = plots_dir / f"{name}.png"
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(png, dpi=120, metadata={"Software": None})
    fig.savefig(plots_dir / f"{name}.svg", metadata={"Date": None, "Creator": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return png


def _colors(labels):
    plt = _plt()
    cmap = plt.get_cmap("tab20")
    return {lb: cmap(i % 20) for i, lb in enumerate(sorted(labels))}


def _integer_ticks(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _by_label(s: SuiteSummary) -> dict[str, list[dict]]:
    return {row.label: row.records for row in s.rows}


def plot_accuracy_over_steps(s: SuiteSummary, plots_dir: Path) -> Path:
    """Mean accuracy over seen tasks after each step, per method, with its 95 % interval as a
    band; rows in the tables' order, at most ``LINES_PER_PANEL`` per panel."""
    plt = _plt()
    rows = [row for row in s.rows]
    colors = _colors([row.label for row in rows])
    panels = [rows[i : i + LINES_PER_PANEL] for i in range(0, len(rows), LINES_PER_PANEL)] or [[]]
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(8.6, 3.6 * len(panels)), squeeze=False, sharex=True, layout="constrained"
    )
    levels = None
    if s.stream and s.ok:  # merge stream reference levels
        by_seed = {r["seed"]: r for r in s.ok}
        levels = (
            100 * np.mean([np.mean(r["R"][0]) for r in by_seed.values()]),
            100 * np.mean([np.mean(r["E"]) for r in by_seed.values()]),
        )
    for ax, panel in zip(axes[:, 0], panels):
        for row in panel:
            curves = {(r["seed"], r["order_index"]): metrics.step_average(r["R"]) for r in row.records}
            T = len(next(iter(curves.values())))
            est = [
                stats.estimate({j: c[t] for j, c in curves.items()}, s.suite, row.label, "step", t) for t in range(T)
            ]
            steps = np.arange(1, T + 1)
            mean = np.array([100 * e.mean if e else np.nan for e in est])
            name = _t(row.label) + s.kind_note(row.label)
            ax.plot(steps, mean, marker="o", ms=3, color=colors[row.label], label=f"{name} ({s.runs(row.label)})")
            if not s.demonstration:
                lo = np.array([100 * e.lo if e else np.nan for e in est])
                hi = np.array([100 * e.hi if e else np.nan for e in est])
                ax.fill_between(steps, lo, hi, color=colors[row.label], alpha=0.12, linewidth=0)
        if levels:
            ax.axhline(levels[0], color="0.45", ls=":", lw=1.2, label="pretrained θ0 (all tasks)")
            ax.axhline(levels[1], color="0.45", ls="--", lw=1.2, label="individual experts")
        ax.set_ylabel("mean accuracy on seen tasks (%)")
        ax.grid(alpha=0.3)
        _integer_ticks(ax)
        ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes[-1, 0].set_xlabel("step t (tasks merged)")
    band = "" if s.demonstration else "; bands: 95 % intervals"
    axes[0, 0].set_title(f"{_t(s.suite)}\nmean over seeds × orders{band} (runs in brackets)", fontsize=10)
    return _save(fig, plots_dir, f"{s.suite}-accuracy-over-steps")


def mean_matrix(rs: list[dict]) -> np.ndarray:
    """The accuracy matrix (%) averaged cell by cell over jobs; a cell no job measured (θ0's
    row in train then merge) stays NaN."""
    Rs = np.array([[[np.nan if v is None else v for v in row] for row in r["R"]] for r in rs], dtype=float) * 100
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(Rs, axis=0)


def task_axis(rs: list[dict]) -> tuple[list[str], str]:
    """Column names of a mean matrix: the tasks when every job saw one order, else arrival
    positions (the j-th task to arrive differs between orders)."""
    orders = {tuple(r["tasks"]) for r in rs}
    if len(orders) == 1:
        return [_t(t) for t in next(iter(orders))], "task (in arrival order)"
    T = len(rs[0]["tasks"])
    return [str(j + 1) for j in range(T)], "task by arrival position (orders differ between jobs)"


def plot_heatmaps(s: SuiteSummary, plots_dir: Path) -> Path:
    """The mean accuracy matrix of each method over its jobs, values in the cells; rows the
    model before any step (θ0) and after each."""
    plt = _plt()
    by_label = _by_label(s)
    labels = list(by_label)
    cols = min(3, len(labels))
    rows = -(-len(labels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols + 0.8, 3.9 * rows), squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    im = None
    for ax, label in zip(axes.flat, labels):
        R = mean_matrix(by_label[label])
        T = R.shape[1]
        names, xlabel = task_axis(by_label[label])
        ax.axis("on")
        im = ax.imshow(R, vmin=0, vmax=100, cmap="viridis", aspect="auto")
        n = len(by_label[label])
        ax.set_title(f"{_t(label)} (" + ("one job" if n == 1 else f"mean of {n} jobs") + ")", fontsize=9)
        ax.set_xticks(range(T), names, fontsize=7, rotation=30 if len(names[0]) > 2 else 0, ha="right")
        ax.set_yticks(range(len(R)), ["θ0"] + [f"M{t}" for t in range(1, len(R))], fontsize=7)
        ax.set_xlabel(xlabel, fontsize=7)
        if T <= 12:
            for i in range(len(R)):
                for j in range(T):
                    if np.isfinite(R[i, j]):
                        ax.text(
                            j,
                            i,
                            f"{R[i, j]:.0f}",
                            ha="center",
                            va="center",
                            fontsize=6.5,
                            color="black" if R[i, j] > 60 else "white",
                        )
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="accuracy (%)")
    return _save(fig, plots_dir, f"{s.suite}-accuracy-matrices")


def plot_final_vs_expert(s: SuiteSummary, plots_dir: Path) -> Path:
    """Method × task: final accuracy minus the expert's on that task (mean over jobs, points),
    values in the cells; rows in the tables' order (merge stream)."""
    plt = _plt()
    by_label = _by_label(s)
    recs = [r for rs in by_label.values() for r in rs]
    tasks = sorted({t for r in recs for t in r["tasks"]})

    def gap(r, t):
        i = r["tasks"].index(t)
        return 100 * (r["R"][-1][i] - r["E"][i])

    D = {lb: [np.mean([gap(r, t) for r in rs]) for t in tasks] for lb, rs in by_label.items()}
    labels = list(by_label)
    M = np.array([D[lb] for lb in labels])
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(tasks) + 1.6, 0.32 * len(labels) + 1.6))
    lim = max(1.0, float(np.nanmax(np.abs(M))))
    im = ax.imshow(M, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    for i in range(len(labels)):
        for j in range(len(tasks)):
            ax.text(
                j,
                i,
                f"{M[i, j]:+.0f}",
                ha="center",
                va="center",
                fontsize=6.5,
                color="white" if abs(M[i, j]) > 0.6 * lim else "black",
            )
    ax.set_xticks(range(len(tasks)), [_t(t) for t in tasks], rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), [f"{_t(lb)}  ({np.mean(D[lb]):+.1f})" for lb in labels], fontsize=7)
    ax.set_title(f"{_t(s.suite)}: final accuracy minus the expert's (points, mean over jobs)", fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8, label="final − expert (points)")
    return _save(fig, plots_dir, f"{s.suite}-final-vs-expert")


def plot_forgetting(s: SuiteSummary, plots_dir: Path) -> Path:
    """BWT and FGT per method with their 95 % intervals; rows in the tables' order."""
    plt = _plt()
    labels = [row.label for row in s.rows]
    fig, ax = plt.subplots(figsize=(6.6, 0.38 * len(labels) + 1.5))
    y = np.arange(len(labels))
    for off, key, color in ((-0.2, "BWT", "tab:red"), (0.2, "FGT", "tab:blue")):
        est = [s.est(lb, key) for lb in labels]
        mean = np.array([100 * e.mean if e else np.nan for e in est])
        err = np.array([[100 * (e.mean - e.lo), 100 * (e.hi - e.mean)] if e else [0, 0] for e in est]).T
        ax.barh(
            y + off,
            mean,
            0.38,
            xerr=None if s.demonstration else err,
            color=color,
            alpha=0.8,
            label=key,
            error_kw={"lw": 0.8},
        )
    ax.set_yticks(y, [_t(lb) for lb in labels])
    ax.invert_yaxis()  # the tables' first row on top
    ax.axvline(0, color="0.3", lw=0.8)
    ax.set_xlabel("points (BWT < 0 and FGT > 0 mean forgetting)")
    whiskers = "" if s.demonstration else "; whiskers: 95 % intervals"
    ax.set_title(f"{_t(s.suite)}: backward transfer and forgetting{whiskers}", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, plots_dir, f"{s.suite}-forgetting")


def plot_pareto(s: SuiteSummary, plots_dir: Path) -> Path:
    """The rank figure against storage and against time, one numbered point per method (its
    95 % interval as a vertical bar); the numbers are keyed in a legend beside the axes."""
    plt = _plt()
    colors = _colors([row.label for row in s.rows])
    # the legend keys every row: the figure grows with them (about 21 legend lines fit 3.8 in)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10.4, max(3.8, 0.16 * len(s.rows) + 0.6)), layout="constrained")
    for i, row in enumerate(s.rows, start=1):
        rs = row.records
        e = s.est(row.label, s.headline)
        if e is None:  # no defined headline figure in any job (the summary ranks it last): nothing to place
            continue
        acc = 100 * e.mean
        storage = np.mean([r["storage_bytes"]["peak"] for r in rs]) / 2**20
        t = max(1e-3, np.mean([r["timings"]["merge_total_s"] + (r["timings"].get("train_total_s") or 0.0) for r in rs]))
        yerr = None if s.demonstration else [[100 * (e.mean - e.lo)], [100 * (e.hi - e.mean)]]
        for ax, xv in ((a1, storage), (a2, t)):
            key = f"{i}  {_t(row.label)}{s.kind_note(row.label)} ({acc:.1f})" if ax is a1 else None
            ax.errorbar([xv], [acc], yerr=yerr, color=colors[row.label], fmt="o", ms=7, lw=0.8, label=key)
            ax.annotate(str(i), (xv, acc), fontsize=6, ha="center", va="center")
    a1.set_xlabel("storage kept between steps (MiB)")
    a2.set_xlabel("merge + train time per job (s)")
    a2.set_xscale("log")
    for ax in (a1, a2):
        ax.set_ylabel(f"{s.headline} (%)")
        ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=7, frameon=False)
    fig.suptitle(f"{_t(s.suite)}: accuracy vs cost", fontsize=10)
    return _save(fig, plots_dir, f"{s.suite}-pareto")


def plot_grad_norm(s: SuiteSummary, plots_dir: Path) -> Path:
    """Train then merge: gradient norm at the start of each task's training (mean over jobs),
    at most ``LINES_PER_PANEL`` rows per panel."""
    plt = _plt()
    rows = list(s.rows)
    colors = _colors([row.label for row in rows])
    panels = [rows[i : i + LINES_PER_PANEL] for i in range(0, len(rows), LINES_PER_PANEL)] or [[]]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.4 * len(panels), 3.9), squeeze=False, sharey=True)
    for ax, panel in zip(axes[0], panels):
        for row in panel:
            g = np.array([r["start_grad_norm"] for r in row.records], dtype=float)
            steps = np.arange(1, g.shape[1] + 1)
            ax.plot(steps, g.mean(0), marker="o", ms=3, color=colors[row.label], label=_t(row.label))
        ax.set_xlabel("task t")
        _integer_ticks(ax)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0, 0].set_ylabel("‖∇θ L‖ at the start of task t's training")
    fig.suptitle(f"{_t(s.suite)}: start-of-task gradient norm (mean over jobs)", fontsize=10)
    return _save(fig, plots_dir, f"{s.suite}-start-grad-norm")
