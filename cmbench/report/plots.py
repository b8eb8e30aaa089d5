"""Plots for the leaderboard (matplotlib, Agg). Each is written as PNG and SVG with fixed
metadata and a fixed SVG id salt, so the same result files give the same bytes. A white
figure background keeps them readable on light and dark pages."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .. import metrics
from .escape import plot as _t  # `$` in a name would start a formula


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


def plot_accuracy_over_steps(suite: str, by_label: dict[str, list[dict]], plots_dir: Path) -> Path:
    """Mean accuracy over seen tasks after each step, per method, with a ±std band."""
    plt = _plt()
    colors = _colors(by_label)
    fig, ax = plt.subplots(figsize=(8.4, 4.2))
    for label in sorted(by_label):
        curves = np.array([metrics.step_average(r["R"]) for r in by_label[label]], dtype=float) * 100
        steps = np.arange(1, curves.shape[1] + 1)
        mean = np.nanmean(curves, axis=0)
        std = np.nanstd(curves, axis=0, ddof=1) if len(curves) > 1 else np.zeros_like(mean)
        ax.plot(steps, mean, marker="o", ms=3, color=colors[label], label=f"{_t(label)} (n={len(curves)})")
        ax.fill_between(steps, mean - std, mean + std, color=colors[label], alpha=0.07, linewidth=0)
    any_recs = [r for rs in by_label.values() for r in rs]
    if any_recs and any_recs[0].get("E"):  # merge stream reference levels
        by_seed = {r["seed"]: r for r in any_recs}
        theta0 = 100 * np.mean([np.mean(r["R"][0]) for r in by_seed.values()])
        experts = 100 * np.mean([np.mean(r["E"]) for r in by_seed.values()])
        ax.axhline(theta0, color="0.45", ls=":", lw=1.2, label="pretrained θ0 (all tasks)")
        ax.axhline(experts, color="0.45", ls="--", lw=1.2, label="individual experts")
    ax.set_xlabel("step t (tasks merged)")
    ax.set_ylabel("mean accuracy on seen tasks (%)")
    ax.set_title(f"{_t(suite)}\nmean ± std over seeds × orders", fontsize=10)
    ax.grid(alpha=0.3)
    _integer_ticks(ax)
    # beside the axes, best final value first: the legend never covers the curves
    handles, names = ax.get_legend_handles_labels()
    final = {_t(lb): np.nanmean([metrics.step_average(r["R"])[-1] for r in rs]) for lb, rs in by_label.items()}
    rank = sorted(range(len(names)), key=lambda i: -final.get(names[i].rsplit(" (n=", 1)[0], -1.0))
    ax.legend(
        [handles[i] for i in rank],
        [names[i] for i in rank],
        fontsize=7,
        frameon=False,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
    )
    return _save(fig, plots_dir, f"{suite}-accuracy-over-steps")


def _integer_ticks(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def mean_matrix(rs: list[dict]) -> np.ndarray:
    """The accuracy matrix (%) averaged cell by cell over jobs; a cell no job measured (θ0's
    row in train then merge) stays NaN."""
    Rs = np.array([[[np.nan if v is None else v for v in row] for row in r["R"]] for r in rs], dtype=float) * 100
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(Rs, axis=0)


def plot_heatmaps(suite: str, by_label: dict[str, list[dict]], plots_dir: Path) -> Path:
    """The mean accuracy matrix of each method over its jobs, values in the cells. Jobs see
    the tasks in different orders, so columns are arrival positions (the j-th task to
    arrive), rows the model after each step; the mean is over every (seed, order) job."""
    plt = _plt()
    labels = sorted(by_label)
    cols = min(4, len(labels))
    rows = -(-len(labels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols + 0.8, 3.1 * rows), squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, label in zip(axes.flat, labels):
        R = mean_matrix(by_label[label])
        T = R.shape[1]
        ax.axis("on")
        im = ax.imshow(R, vmin=0, vmax=100, cmap="viridis", aspect="auto")
        ax.set_title(f"{_t(label)} (mean of {len(by_label[label])} jobs)", fontsize=8)
        ax.set_xticks(range(T), [str(j + 1) for j in range(T)], fontsize=6)
        ax.set_yticks(range(len(R)), ["θ0"] + [f"M{t}" for t in range(1, len(R))], fontsize=6)
        ax.set_xlabel("task, by arrival", fontsize=6)
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
                            fontsize=5,
                            color="black" if R[i, j] > 60 else "white",
                        )
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="accuracy (%)")
    return _save(fig, plots_dir, f"{suite}-accuracy-matrices")


def plot_final_vs_expert(suite: str, by_label: dict[str, list[dict]], plots_dir: Path) -> Path:
    """Method × task: final accuracy minus the expert's on that task (mean over jobs, points),
    values in the cells; methods by mean, best first (merge stream)."""
    plt = _plt()
    recs = [r for rs in by_label.values() for r in rs]
    tasks = sorted({t for r in recs for t in r["tasks"]})

    def gap(r, t):
        i = r["tasks"].index(t)
        return 100 * (r["R"][-1][i] - r["E"][i])

    D = {lb: [np.mean([gap(r, t) for r in rs]) for t in tasks] for lb, rs in by_label.items()}
    labels = sorted(D, key=lambda lb: -np.mean(D[lb]))
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
                fontsize=6,
                color="white" if abs(M[i, j]) > 0.6 * lim else "black",
            )
    ax.set_xticks(range(len(tasks)), [_t(t) for t in tasks], rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), [f"{_t(lb)}  ({np.mean(D[lb]):+.1f})" for lb in labels], fontsize=7)
    ax.set_title(f"{_t(suite)}: final accuracy minus the expert's (points, mean over jobs)", fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8, label="final − expert (points)")
    return _save(fig, plots_dir, f"{suite}-final-vs-expert")


def plot_forgetting(suite: str, by_label: dict[str, list[dict]], plots_dir: Path) -> Path:
    """BWT and FGT per method, mean ± std over jobs."""
    plt = _plt()
    labels = sorted(by_label, key=lambda lb: np.nanmean([r["metrics"]["BWT"] for r in by_label[lb]]))
    fig, ax = plt.subplots(figsize=(6.4, 0.35 * len(labels) + 1.5))
    y = np.arange(len(labels))
    for off, key, color in ((-0.2, "BWT", "tab:red"), (0.2, "FGT", "tab:blue")):
        vals = [
            [100 * (r["metrics"][key] if r["metrics"][key] is not None else np.nan) for r in by_label[lb]]
            for lb in labels
        ]
        ax.barh(
            y + off,
            [np.nanmean(v) for v in vals],
            0.38,
            xerr=[np.nanstd(v) for v in vals],
            color=color,
            alpha=0.8,
            label=key,
            error_kw={"lw": 0.8},
        )
    ax.set_yticks(y, [_t(lb) for lb in labels])
    ax.axvline(0, color="0.3", lw=0.8)
    ax.set_xlabel("points (BWT < 0 and FGT > 0 mean forgetting)")
    ax.set_title(f"{_t(suite)}: backward transfer and forgetting", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, plots_dir, f"{suite}-forgetting")


def plot_pareto(suite: str, by_label: dict[str, list[dict]], plots_dir: Path) -> Path:
    """ACC against storage and against time, one numbered point per method; the numbers are
    keyed in a legend beside the axes (labels written at the points overlapped)."""
    plt = _plt()
    colors = _colors(by_label)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10.4, 3.8), layout="constrained")
    rows = []
    for label, rs in by_label.items():
        acc = 100 * np.mean([r["metrics"]["ACC"] for r in rs])
        storage = np.mean([r["storage_bytes"]["peak"] for r in rs]) / 2**20
        t = max(1e-3, np.mean([r["timings"]["merge_total_s"] + r["timings"].get("train_total_s", 0.0) for r in rs]))
        rows.append((acc, label, storage, t))
    for i, (acc, label, storage, t) in enumerate(sorted(rows, reverse=True), start=1):
        for ax, xv in ((a1, storage), (a2, t)):
            key = f"{i}  {_t(label)} ({acc:.1f})" if ax is a1 else None
            ax.scatter([xv], [acc], color=colors[label], s=60, label=key)
            ax.annotate(str(i), (xv, acc), fontsize=6, ha="center", va="center")
    a1.set_xlabel("storage kept between steps (MiB)")
    a2.set_xlabel("merge + train time per job (s)")
    a2.set_xscale("log")
    for ax in (a1, a2):
        ax.set_ylabel("ACC (%)")
        ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=7, frameon=False)
    fig.suptitle(f"{_t(suite)}: accuracy vs cost", fontsize=10)
    return _save(fig, plots_dir, f"{suite}-pareto")


def plot_grad_norm(suite: str, by_label: dict[str, list[dict]], plots_dir: Path) -> Path:
    """Train then merge: gradient norm at the start of each task's training."""
    plt = _plt()
    colors = _colors(by_label)
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for label, rs in sorted(by_label.items()):
        g = np.array([r["start_grad_norm"] for r in rs], dtype=float)
        steps = np.arange(1, g.shape[1] + 1)
        ax.plot(steps, g.mean(0), marker="o", ms=3, color=colors[label], label=_t(label))
    ax.set_xlabel("task t")
    _integer_ticks(ax)
    ax.set_ylabel("‖∇θ L‖ at the start of task t's training")
    ax.set_yscale("log")
    ax.set_title(f"{_t(suite)}: start-of-task gradient norm (mean over jobs)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, plots_dir, f"{suite}-start-grad-norm")
