"""Evidence that a code change moves no number: every method of ``baselines/`` run through
both settings on nano suites, R and E written as JSON. Run it at two commits on one machine
and compare the files (``--compare A.json B.json``); bitwise-equal matrices are the
evidence ``tools/rekey_method_code.py`` asks for when a change re-keys methods whose numbers
it does not alter. Hyperparameters are cut (fewer optimisation steps and samples) so every
code path runs in a few minutes on 2 cores.

    python tools/nano_evidence.py OUT.json
    python tools/nano_evidence.py --compare OLD.json NEW.json
"""

from __future__ import annotations

import json
import sys
import tempfile

MERGE = {
    "name": "nano-evidence-merge",
    "seeds": [0],
    "backbone": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2},
    "pretrain": {"recipe": "family_rotation", "epochs": 1, "lr": 1e-3, "batch_size": 64},
    "tasks": [
        {"name": n, "dataset": n, "params": {"n_train": 300, "n_val": 50, "n_test": 100}}
        for n in ("bars", "quadrant", "dots")
    ],
    "heads": {"kind": "prototype", "shots": 5},
    "experts": {"finetune": {"epochs": 1, "lr": 1e-3, "batch_size": 32}},
    "orders": {"explicit": [["bars", "quadrant", "dots"], ["dots", "bars", "quadrant"]]},
    "methods": [
        {"name": "weight_average"},
        {"name": "task_arithmetic"},
        {"name": "ties"},
        {"name": "magmax"},
        {"name": "opcm"},
        {"name": "consensus_ta"},
        {"name": "sequential"},
        {"name": "iso_c"},
        {"name": "iso_cts"},
        {"name": "tsv_m"},
        {"name": "wudi", "hparams": {"iter_num": 10}},
        {"name": "regmean", "hparams": {"n_samples": 32}},
        {"name": "regmean_plusplus", "hparams": {"n_samples": 32}},
        {"name": "dop", "hparams": {"num_steps": 10}},
        {"name": "fisher_average", "hparams": {"n_samples": 16}},
        {"name": "fisher_average", "label": "fisher_batch", "hparams": {"n_samples": 16, "fisher": "model_batch"}},
        {
            "name": "ode_m",
            "hparams": {"num_samples": 64, "batch_size": 16, "step_size": 0.1, "post_refine_steps": 3},
        },
        {
            "name": "ode_m",
            "label": "ode_m-per-step",
            "hparams": {
                "num_samples": 64,
                "batch_size": 16,
                "step_size": 0.1,
                "post_refine_steps": 2,
                "refine": "per_step",
            },
        },
    ],
    "evaluation": {"batch_size": 512},
}
SPLIT = {
    "name": "nano-evidence-split",
    "setting": "train_then_merge",
    "seeds": [0],
    "backbone": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2},
    "pretrain": {
        "recipe": "multitask",
        "epochs": 1,
        "batch_size": 64,
        "tasks": [{"name": "bars", "dataset": "bars", "params": {"n_train": 200, "n_val": 20, "n_test": 20}}],
    },
    "tasks": [
        {"name": f"d{a}{b}", "dataset": "digits", "params": {"classes": [a, b]}} for a, b in ((0, 1), (2, 3), (4, 5))
    ],
    "heads": {"kind": "class_incremental"},
    "training": {"epochs": 1, "lr": 1e-3, "batch_size": 32},
    "methods": [
        {"name": "sequential"},
        {"name": "weight_average"},
        {"name": "magmax"},
        {"name": "multitask"},
        {"name": "fisher_average", "hparams": {"n_samples": 16}},
        {"name": "regmean", "hparams": {"n_samples": 32}},
        {"name": "pm", "hparams": {"fisher_samples": 16}},
        {"name": "pm", "label": "pm-lora", "hparams": {"fisher_samples": 16}, "lora": {"rank": 4}},
        {"name": "pm", "label": "pm-per-module", "hparams": {"fisher_samples": 16, "alpha": "per_module"}},
        {"name": "trm", "hparams": {"steps": 5}},
        {"name": "trm", "label": "trm-lora", "hparams": {"steps": 5}, "lora": {"rank": 4}},
    ],
}


def run_all(out: str) -> None:
    from cmbench.protocol import run
    from cmbench.store import Store
    from cmbench.suite import Suite, expand

    found = {}
    for spec in (MERGE, SPLIT):
        suite = Suite.model_validate(spec)
        store = Store(tempfile.mkdtemp(prefix="cmbench-evidence-"))
        for job in expand(suite):
            rec = run(suite, job, store, threads=1)
            nan = lambda v: None if v != v else v  # noqa: E731 - NaN cells as the files hold them
            found[f"{suite.name}/{job.label}/seed{job.seed}-order{job.order_index}"] = {
                "R": [[nan(v) for v in row] for row in rec["R"]],
                "E": rec.get("E"),
                "diagnostics": rec.get("diagnostics"),
            }
            print(job.label, job.order_index, "done", file=sys.stderr)
    with open(out, "w") as fh:
        json.dump(found, fh, indent=1, sort_keys=True)


def compare(a: str, b: str) -> int:
    old, new = json.load(open(a)), json.load(open(b))
    same = [k for k in old if k in new and (old[k]["R"], old[k]["E"]) == (new[k]["R"], new[k]["E"])]
    differ = sorted(set(old) - set(same))
    print(f"{len(same)} of {len(old)} jobs bitwise equal (R and E)" + (f"; differ: {differ}" if differ else ""))
    return 1 if differ else 0


if __name__ == "__main__":
    if sys.argv[1] == "--compare":
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    run_all(sys.argv[1])
