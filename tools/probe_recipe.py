"""Structure of a micro merge recipe, measured the honest way (issue #38's rules).

    python tools/probe_recipe.py SUITE.yaml [--seeds 10,11,12] [--data-seed 7] [--set YAML] [--cache DIR]

For each exploration seed (never a reported one: the suite's own seeds are refused) and a data
seed other than the suite's, it builds θ0, the heads and the experts with the suite's recipe
(``--set`` overrides it, as YAML merged into the suite), and measures on the tasks'
**validation** splits, never their test splits:

* θ0's and each expert's accuracy: the margin (experts / θ0) and the gap the merges close;
* the two merges the design may look at, weight averaging and Task Arithmetic (λ 0.3, the
  published value), final model only (both are order-invariant);
* the task vectors' geometry: their norms and pairwise cosine similarities (over all
  floating-point parameters), beside what the literature reports for CLIP (near-orthogonal).

The other methods' numbers are deliberately not shown: a recipe is chosen from structure,
and the ranking is only *checked*, on the reported seeds, with ``cmbench run``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import time
from pathlib import Path

import torch
import yaml

from cmbench import methods as M
from cmbench import registry as R
from cmbench.artefacts import SuiteArtefacts, load_tasks
from cmbench.protocol import Evaluator
from cmbench.store import Store
from cmbench.suite import Suite


def deep_update(d: dict, u: dict) -> dict:
    for k, v in u.items():
        if isinstance(v, dict) and isinstance(d.get(k), dict):
            deep_update(d[k], v)
        else:
            d[k] = v
    return d


def _flat(state: dict, theta0: dict) -> torch.Tensor:
    return torch.cat([(state[k] - theta0[k]).double().flatten() for k in theta0 if theta0[k].is_floating_point()])


def probe(suite: Suite, seed: int, cache: Path) -> dict:
    art = SuiteArtefacts(suite, seed, Store(cache))
    t0 = time.time()
    theta0, heads = art.theta0(), art.heads()
    order = suite.task_names()
    experts = [art.expert(t)[0] for t in order]
    built = time.time() - t0
    ev = Evaluator(suite, load_tasks(suite, seed), heads, order, theta0)
    for name, td in ev.tasks.items():  # every accuracy below is a validation accuracy
        ev.tasks[name] = dataclasses.replace(td, test=td.val)
    r0 = ev.row(theta0)
    E = [ev.accuracies(e, [t])[t] for e, t in zip(experts, order)]

    def final(name: str, hp: dict) -> list[float]:
        m = R.create(name, hp)
        ctx = M.Context(theta0=theta0, num_tasks=len(order), seed=seed)
        merged = theta0
        for i, (e, t) in enumerate(zip(experts, order), start=1):
            ctx.step, ctx.task, ctx.seen_tasks = i, t, order[:i]
            merged = m.merge(ctx, merged, e, t)
        return ev.row(merged)

    wa, ta = final("weight_average", {}), final("task_arithmetic", {"lam": 0.3})
    # one expert on the other tasks, against θ0 there: how much a single task vector disturbs
    # what θ0 knew (CLIP's experts keep most of it)
    off = []
    for i, e in enumerate(experts):
        row = ev.row(e)
        others = [j for j in range(len(order)) if j != i]
        off.append(sum(row[j] - r0[j] for j in others) / len(others))
    # how concentrated a task vector is: the share of its energy in its top 20 % entries, and
    # how much of the expert's gain over θ0 the top 20 % alone keep (TIES's trim; at scale a
    # trimmed task vector keeps most of it, Yadav et al. 2023)
    share, kept = [], []
    floating = [k for k in theta0 if theta0[k].is_floating_point()]
    for i, (e, t) in enumerate(zip(experts, order)):
        tau = _flat(e, theta0)
        cut = tau.abs().kthvalue(int(0.8 * tau.numel())).values
        share.append(float((tau[tau.abs() > cut] ** 2).sum() / (tau**2).sum()))
        trimmed = dict(e)
        for k in floating:
            d = e[k] - theta0[k]
            trimmed[k] = theta0[k] + d * (d.abs() > cut.to(d.dtype)).to(d.dtype)
        acc = ev.accuracies(trimmed, [t])[t]
        kept.append((acc - r0[i]) / max(E[i] - r0[i], 1e-9))
    # how much of an expert's gain a fraction of its task vector already gives on its own task:
    # weight averaging adds 1/T of each; when that is most of the gain, merges close the gap
    scaled = []
    for i, (e, t) in enumerate(zip(experts, order)):
        part = {k: theta0[k] + (e[k] - theta0[k]) / len(order) if k in floating else e[k] for k in e}
        scaled.append((ev.accuracies(part, [t])[t] - r0[i]) / max(E[i] - r0[i], 1e-9))
    taus = [_flat(e, theta0) for e in experts]
    # localisation across tasks (TALL masks' view, Wang et al. 2024): the entries where task i's
    # task vector has the largest magnitude of all tasks, and how much of its gain they alone
    # keep (θ0 + τ_i on those entries). Near 1 when tasks live on their own large entries.
    winner = torch.stack([t.abs() for t in taus]).argmax(0)
    own, won = [], []
    for i, (e, t) in enumerate(zip(experts, order)):
        mask = winner == i
        won.append(float(mask.double().mean()))
        masked, at = dict(e), 0
        for k in floating:
            n = theta0[k].numel()
            m = mask[at : at + n].view(theta0[k].shape).to(theta0[k].dtype)
            masked[k] = theta0[k] + (e[k] - theta0[k]) * m
            at += n
        acc = ev.accuracies(masked, [t])[t]
        own.append((acc - r0[i]) / max(E[i] - r0[i], 1e-9))
    norms = [float(t.norm()) for t in taus]
    cos = [float(a @ b / (a.norm() * b.norm())) for a, b in itertools.combinations(taus, 2)]
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    out = {
        "seed": seed,
        "theta0": mean(r0),
        "experts": mean(E),
        "weight_average": mean(wa),
        "task_arithmetic_0.3": mean(ta),
        "tau_norm_min": min(norms),
        "tau_norm_max": max(norms),
        "off_task_drop": mean(off),
        "top20_energy": mean(share),
        "top20_kept": mean(kept),
        "maxwin_kept": mean(own),
        "own_1_over_T": mean(scaled),
        "maxwin_share_min": min(won),
        "cos_mean": mean(cos),
        "cos_max": max(cos),
        "cos_min": min(cos),
        "built_s": built,
        "per_task": {
            t: {"theta0": a, "expert": b, "tau_norm": n, "maxwin_share": w, "maxwin_kept": k}
            for t, a, b, n, w, k in zip(order, r0, E, norms, won, own)
        },
    }
    gap = out["experts"] - out["theta0"]
    out["margin"] = out["experts"] / max(out["theta0"], 1e-9)
    out["closed_wa"] = (out["weight_average"] - out["theta0"]) / gap if gap else math.nan
    out["closed_ta"] = (out["task_arithmetic_0.3"] - out["theta0"]) / gap if gap else math.nan
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("suite")
    ap.add_argument("--seeds", default="10,11,12")
    ap.add_argument("--data-seed", type=int, default=7)
    ap.add_argument("--set", default="{}", help="YAML merged into the suite (the recipe being probed)")
    ap.add_argument("--cache", default="/tmp/cmbench-probe")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="also write the figures to this file")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    raw = deep_update(yaml.safe_load(Path(a.suite).read_text()), yaml.safe_load(a.set) or {})
    reported = set(raw.get("seeds", [0]))
    seeds = [int(s) for s in a.seeds.split(",")]
    if reported & set(seeds) or a.data_seed == raw.get("data_seed", 0):
        raise SystemExit(f"probe: seeds {sorted(reported & set(seeds))} or data seed {a.data_seed} are reported ones")
    raw.update(seeds=seeds, data_seed=a.data_seed)
    suite = Suite.model_validate(raw)
    rows = [probe(suite, s, Path(a.cache)) for s in seeds]
    keys = ["theta0", "experts", "margin", "weight_average", "task_arithmetic_0.3", "closed_wa", "closed_ta"]
    geo = ["off_task_drop", "own_1_over_T", "top20_energy", "top20_kept", "maxwin_kept", "maxwin_share_min"]
    geo += ["tau_norm_min", "tau_norm_max"]
    geo += ["cos_mean", "cos_min", "cos_max"]
    print("| seed | " + " | ".join(keys + geo) + " |")
    print("|---|" + "---|" * (len(keys) + len(geo)))
    for r in rows:
        cells = [f"{100 * r[k]:.1f}" if k not in ("margin", "closed_wa", "closed_ta") else f"{r[k]:.2f}" for k in keys]
        cells += [f"{r[k]:.3g}" for k in geo]
        print(f"| {r['seed']} | " + " | ".join(cells) + " |")
    print(
        "per task (validation, seed %d): " % rows[0]["seed"]
        + json.dumps({t: [round(100 * v["theta0"]), round(100 * v["expert"])] for t, v in rows[0]["per_task"].items()})
    )
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
