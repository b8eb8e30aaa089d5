"""Recipe probe used to find the micro merge suite's regime (issue 3).

    THREADS=1 python tools/probe_recipe.py suites/micro-digits-merge.yaml '{experts: {finetune: {lr: 1.0e-3}}}' [SEED]

Builds θ0, heads and experts for one seed of the suite with the YAML overrides (cached in
/tmp/exp/cache), then prints θ0's and the experts' mean accuracy and the *final* merged
model's accuracy for averaging, TA (λ 0.3/0.5/1) and TIES (λ 0.5/1) in the listed task
order — quick to compare recipes; the benchmark numbers come from `cmbench run`.
"""

import json
import os
import sys
import time

import torch
import yaml

from cmbench import methods as M

from cmbench import registry as R
from cmbench.artefacts import SuiteArtefacts
from cmbench.protocol import Evaluator
from cmbench.store import Store
from cmbench.suite import Suite

torch.set_num_threads(int(os.environ.get("THREADS", "1")))


def deep_update(d, u):
    for k, v in u.items():
        if isinstance(v, dict) and isinstance(d.get(k), dict):
            deep_update(d[k], v)
        else:
            d[k] = v
    return d


base = yaml.safe_load(open(sys.argv[1]))
over = yaml.safe_load(sys.argv[2]) if len(sys.argv) > 2 else {}
seed = int(sys.argv[3]) if len(sys.argv) > 3 else 0
suite = Suite.model_validate(deep_update(base, over))
art = SuiteArtefacts(suite, seed, Store("/tmp/exp/cache"))
t = time.time()
th = art.theta0()
heads = art.heads()
tp = time.time() - t
order = suite.task_names()
ev = Evaluator(suite, heads, order, th, seed)
r0 = ev.row(th)
E, ex = [], []
t = time.time()
for n in order:
    e, meta = art.expert(n)
    ex.append(e)
    E.append(meta["test_accuracy"])
te = time.time() - t


def mean(v):
    return sum(v) / len(v)


out = {"theta0": mean(r0), "experts": mean(E)}


def run(name, hp):
    m = R.create(name, hp)
    ctx = M.Context(theta0=th, num_tasks=len(order), seed=0)
    merged = th
    for i, e in enumerate(ex, 1):
        ctx.step = i
        merged = m.merge(ctx, merged, e, order[i - 1])
    return ev.row(merged)


rows = {}
for name, hp in [
    ("weight_average", {}),
    ("task_arithmetic", {"lam": 0.3}),
    ("task_arithmetic", {"lam": 0.5}),
    ("task_arithmetic", {"lam": 1.0}),
    ("ties", {"lam": 0.5}),
    ("ties", {"lam": 1.0}),
]:
    row = run(name, hp)
    key = name + "".join(f"_{v}" for v in hp.values())
    out[key] = mean(row)
    rows[key] = row
gap = out["experts"] - out["theta0"]
best = max(v for k, v in out.items() if k not in ("theta0", "experts"))
worst = min(v for k, v in out.items() if k not in ("theta0", "experts"))
print(json.dumps({k: round(100 * v, 1) for k, v in out.items()}))
print(
    f"θ0 per task {[round(100 * x) for x in r0]}  experts {[round(100 * x) for x in E]}  min expert {100 * min(E):.1f}"
)
print(
    f"closed by best: {(best - out['theta0']) / gap:.2f}; best-worst {100 * (best - worst):.1f}; "
    f"pretrain {tp:.0f}s experts {te:.0f}s"
)
