"""Train-then-merge protocol, LoRA, data access and storage accounting."""

import json
import math

import pytest
import torch

from cmbench import methods as M
from cmbench import registry as R
from cmbench.store import Store
from cmbench.protocol import run
from cmbench.suite import Suite, expand
from cmbench.lora import add_lora, merge_lora


NANO_SPLIT = {
    "name": "nano-split",
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
        {"name": "magmax"},
        {"name": "fisher_average", "hparams": {"n_samples": 16}},
        {"name": "multitask"},
        {"name": "weight_average"},
    ],
}


@pytest.fixture(scope="module")
def ttm_results(tmp_path_factory):
    suite = Suite.model_validate(NANO_SPLIT)
    store = Store(tmp_path_factory.mktemp("cache"))
    return suite, {j.method: run(suite, j, store, threads=1) for j in expand(suite)}


def test_class_incremental_matrix(ttm_results):
    suite, res = ttm_results
    from cmbench.record import nan_to_none
    from cmbench.record import parse

    for r in res.values():  # what the runner writes reads back (digits: a finite population, recorded)
        rec = parse(json.dumps(nan_to_none(r)).encode())
        assert set(rec["evaluation"]["test_population"]) == {"d01", "d23", "d45"}
    for name, r in res.items():
        R = r["R"]
        assert len(R) == 4 and all(len(row) == 3 for row in R)
        for t in range(4):  # learned cells defined, the rest NaN
            assert all(not math.isnan(v) for v in R[t][:t]), (name, t)
            assert all(math.isnan(v) for v in R[t][t:]), (name, t)
        assert "ACC_all" in r["metrics"] and "AAA" in r["metrics"]
        # within-task accuracy (own classes only) from the same logits: never below all-class
        W = r["R_within"]
        assert [[math.isnan(v) for v in row] for row in W] == [[math.isnan(v) for v in row] for row in R]
        assert all(w >= a for rw, ra in zip(W, R) for w, a in zip(rw, ra) if not math.isnan(a)), name
        assert math.isnan(r["metrics"]["FWT"])
        assert len(r["start_grad_norm"]) == 3 and all(g > 0 for g in r["start_grad_norm"])
    # sample-weighted ACC_all equals the per-task mean when test sets are equal-sized only
    r = res["sequential"]
    assert 0.0 <= r["metrics"]["ACC_all"] <= 1.0


def test_storage_is_measured_by_kind(ttm_results):
    _, res = ttm_results
    assert res["sequential"]["storage_bytes"]["peak"] == 0
    assert set(res["magmax"]["storage_bytes"]["peak_by_kind"]) == {"models", "vectors"}
    assert res["fisher_average"]["storage_bytes"]["peak_by_kind"]["vectors"] > 0
    assert res["fisher_average"]["data_samples_handed"] > 0
    assert res["weight_average"]["data_samples_handed"] == 0


def test_multitask_trains_on_all_seen_tasks(ttm_results):
    _, res = ttm_results
    # it retrains from θ0 on the union each step: the last step's training set is 3 tasks
    assert res["multitask"]["timings"]["train_steps_s"][-1] > res["multitask"]["timings"]["train_steps_s"][0]


def test_storage_constant_vs_linear():
    """TA / averaging / OPCM keep constant bytes as T grows; a method keeping every expert grows."""
    from cmbench.protocol import measure_storage
    from .test_baselines_zoo import LAYOUT, models

    def kept_after(name, T):
        theta0, experts = models(T)
        method = R.create(name, {})
        ctx = M.Context(theta0=theta0, num_tasks=T, seed=0, layout=LAYOUT)
        merged = theta0
        sizes = []
        for t, e in enumerate(experts, start=1):
            ctx.step = t
            merged = method.merge(ctx, merged, e, f"t{t}")
            sizes.append(sum(measure_storage(method, theta0).values()))
        return sizes

    for name in ("task_arithmetic", "weight_average", "opcm", "magmax"):
        s = kept_after(name, 6)
        assert len(set(s[1:])) == 1, (name, s)
    s = kept_after("consensus_ta", 6)  # keeps every task vector
    assert all(b > a for a, b in zip(s, s[1:])) and s[-1] == 6 * s[0]


def test_lora_targets_q_k_v_of_fused_qkv():
    from cmbench.models import create_backbone
    from cmbench.suite import Backbone

    m = create_backbone(Backbone(embed_dim=16, num_heads=2, depth=1))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    adapters = add_lora(m, rank=2, alpha=None, targets=["k", "v"], seed=0)
    x = torch.randn(3, 1, 16, 16)
    assert torch.allclose(m(x), create_backbone_like(m, before)(x), atol=1e-6)  # B = 0: unchanged
    for a in adapters:
        for B in a.B:
            torch.nn.init.normal_(B)
    merge_lora(m)
    after = m.state_dict()
    assert set(after) == set(before)
    d = after["blocks.0.attn.qkv.weight"] - before["blocks.0.attn.qkv.weight"]
    q, k, v = d.chunk(3)
    assert q.abs().max() == 0 and k.abs().max() > 0 and v.abs().max() > 0
    assert torch.linalg.matrix_rank(k) <= 2 and torch.linalg.matrix_rank(v) <= 2
    assert all(torch.equal(after[n], before[n]) for n in before if "qkv.weight" not in n)


def create_backbone_like(m, state):
    from cmbench.models import create_backbone
    from cmbench.suite import Backbone

    fresh = create_backbone(Backbone(embed_dim=16, num_heads=2, depth=1))
    fresh.load_state_dict(state)
    return fresh


def test_template_methods_conform(tmp_path):
    from pathlib import Path

    from cmbench import conformance

    src = Path(__file__).resolve().parents[1] / "baselines" / "_template.py"
    (tmp_path / "my_template_copy.py").write_text(src.read_text())
    R.discover([tmp_path])
    assert conformance.check("my_merge") == [] and conformance.check("my_stateful_merge") == []


def test_undeclared_data_access_is_refused():
    from cmbench.data import Split, TaskData
    from cmbench.protocol import DataAccess
    from cmbench import CmbenchError

    s = Split(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.zeros(4, dtype=torch.long))
    tasks = {"a": TaskData("a", ["0"], s, s, s), "b": TaskData("b", ["0"], s, s, s)}
    ctx = M.Context(theta0={}, num_tasks=2, seed=0, task="a", seen_tasks=["a"])
    for declared, call in (
        ("none", lambda d: d.current()),
        ("current_task", lambda d: d.seen("a")),
        ("current_task", lambda d: d.calibration("a", 2)),
        ("calibration", lambda d: d.calibration("b", 2)),
        ("all_seen", lambda d: d.current("test")),
    ):
        d = DataAccess("m", declared, tasks, 0)
        d.ctx = ctx
        with pytest.raises(CmbenchError):
            call(d)
    d = DataAccess("m", "calibration", tasks, 0)
    d.ctx = ctx
    a, b = d.calibration("a", 2), d.calibration("a", 3)
    assert torch.equal(a.x, b.x[:2])  # nested: a smaller budget is a prefix


def test_current_weights_fold_lora_without_changing_the_model():
    """What TRM's trajectory checkpoints hold under LoRA (deviation 4): the plain names with
    the low-rank update folded in, as ``merge_lora`` would leave them."""
    import copy

    from cmbench.models import create_backbone
    from cmbench.suite import Backbone
    from cmbench.lora import current_weights

    m = create_backbone(Backbone(embed_dim=16, num_heads=2, depth=1))
    plain = set(m.state_dict())
    adapters = add_lora(m, rank=2, alpha=None, targets=["k", "v"], seed=0)
    with torch.no_grad():
        for a in adapters:
            for B in a.B:
                B.normal_()
    got = current_weights(m)
    folded = copy.deepcopy(m)
    merge_lora(folded)
    want = folded.state_dict()
    assert set(got) == plain == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert any("parametrizations" in k for k in m.state_dict())  # the model itself still has LoRA


def test_trm_trains_with_the_suites_lora(tmp_path):
    """TRM with a LoRA spec runs (it crashed: its checkpoints had the parametrised names) and
    merges only what LoRA trained: the targeted k and v rows."""
    spec = dict(
        NANO_SPLIT,
        methods=[
            {"name": "trm", "hparams": {"steps": 3, "checkpoints": 2}, "lora": {"rank": 2, "targets": ["k", "v"]}}
        ],
    )
    suite = Suite.model_validate(spec)
    job = expand(suite)[0]
    R.discover()
    import cmbench_baselines.trm as trm

    seen = []
    real = trm.TRM.merge

    def spy(self, ctx, merged, incoming, task):
        out = real(self, ctx, merged, incoming, task)
        seen.append({k: (out[k] - merged[k]).abs().max().item() for k in merged if merged[k].is_floating_point()})
        return out

    trm.TRM.merge = spy
    try:
        res = run(suite, job, Store(tmp_path), threads=1)
    finally:
        trm.TRM.merge = real
    assert res["status"] == "ok" and len(res["R"]) == 4
    for moved in seen:
        changed = {k for k, d in moved.items() if d > 0}
        assert changed and all(k.endswith("attn.qkv.weight") for k in changed), changed
