"""Plots for the leaderboard (matplotlib, Agg; deterministic file contents)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import metrics


def plot_accuracy_over_steps(suite: str, by_label: dict[str, list[dict]], plots_dir: Path) -> Path:
    """Mean accuracy over seen tasks after each step, per method, with a ±std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    fig.patch.set_facecolor("white")
    for label in sorted(by_label):
        curves = np.array([metrics.step_average(r["R"]) for r in by_label[label]], dtype=float) * 100
        steps = np.arange(1, curves.shape[1] + 1)
        mean = np.nanmean(curves, axis=0)
        std = np.nanstd(curves, axis=0, ddof=1) if len(curves) > 1 else np.zeros_like(mean)
        (line,) = ax.plot(steps, mean, marker="o", ms=3, label=f"{label} (n={len(curves)})")
        ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.18, linewidth=0)
    any_recs = [r for rs in by_label.values() for r in rs]
    if any_recs and any_recs[0].get("E"):  # merge stream reference levels: θ0 and the experts, mean over seeds
        by_seed = {r["seed"]: r for r in any_recs}
        theta0 = 100 * np.mean([np.mean(r["R"][0]) for r in by_seed.values()])
        experts = 100 * np.mean([np.mean(r["E"]) for r in by_seed.values()])
        ax.axhline(theta0, color="0.45", ls=":", lw=1.2, label="pretrained θ0 (all tasks)")
        ax.axhline(experts, color="0.45", ls="--", lw=1.2, label="individual experts")
    ax.set_xlabel("step t (tasks merged)")
    ax.set_ylabel("mean accuracy on seen tasks (%)")
    ax.set_title(f"{suite}\nmean ± std over seeds × orders", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=True)
    fig.tight_layout()
    path = plots_dir / f"{suite}-accuracy-over-steps.png"
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return path
