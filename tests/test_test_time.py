"""Test-time adaptation (``data_access: test_inputs``): what the harness hands such a method
(the current task's test inputs, never a label), the suite's opt-in, how the report sets the
rows apart, and C-AdaMerging against a transcription of its public loop."""

import contextlib
import copy
import io

import pytest
import torch
import yaml
from torch.func import functional_call

from cmbench import CmbenchError
from cmbench import methods as M
from cmbench import registry
from cmbench.cli import main
from cmbench.conformance import TINY, _models, _tiny_task
from cmbench.models import Head, create_backbone
from cmbench.protocol import DataAccess
from cmbench.report.summary import summarise

from .conftest import REPO

registry.discover()


def _access(declared, seed=0):
    tasks = {n: _tiny_task(n, i, n=96) for i, n in enumerate(["a", "b"])}
    data = DataAccess("m", declared, tasks, seed)
    data.ctx = M.Context(theta0={}, num_tasks=2, seed=seed, step=1, task="a", seen_tasks=["a"])
    return data, tasks


def test_a_test_time_method_gets_the_current_tasks_test_inputs_and_no_labels():
    data, tasks = _access("test_inputs")
    x = data.test_inputs(5)
    test = tasks["a"].test
    assert isinstance(x, torch.Tensor) and x.dtype == torch.uint8 and x.shape[1:] == test.x.shape[1:]
    # every returned input is a test input of the current task, 5 of each class, no repeats
    rows = [int(torch.nonzero((test.x == xi).flatten(1).all(1))[0]) for xi in x]
    assert len(set(rows)) == len(rows) == 15
    assert torch.bincount(test.y[rows]).tolist() == [5, 5, 5]
    assert data.samples_handed == 15
    # a class with fewer test inputs than asked gives all it has
    everything = _access("test_inputs")[0].test_inputs(10_000)
    assert len(everything) == len(test.y)
    # the same inputs in the same order for the same seed (a rerun resumes bitwise)
    assert torch.equal(_access("test_inputs")[0].test_inputs(5), x)
    # a method that did not declare it gets none; a test-time method gets no training data
    for declared in ("none", "current_task", "calibration", "all_seen"):
        with pytest.raises(CmbenchError, match="declared data_access"):
            _access(declared)[0].test_inputs(5)
    with pytest.raises(CmbenchError, match="declared data_access='test_inputs'"):
        data.current("train")


def _suite(tmp_path, opt_in):
    s = yaml.safe_load((REPO / "suites" / "quick-merge.yaml").read_text())
    s["methods"] = [{"name": "weight_average"}, {"name": "c_adamerging"}]
    s.pop("shipped", None)
    if opt_in:
        s["test_time_adaptation"] = True
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(s))
    return p


def test_a_suite_without_the_opt_in_refuses_a_test_time_method_in_one_line(tmp_path):
    path = _suite(tmp_path, opt_in=False)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["run", str(path), "--dry-run", "--out", str(tmp_path / "out")])
    assert rc == 2
    assert err.getvalue().count("\n") == 1
    assert "methods.1.name" in err.getvalue() and "test_time_adaptation: true" in err.getvalue()
    assert not (tmp_path / "out").exists()
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["run", str(_suite(tmp_path, opt_in=True)), "--dry-run", "--out", str(tmp_path / "o2")]) == 0


def test_the_opt_in_keys_no_result():
    """A permission changes no number: the suite's hash is the same with it."""
    from cmbench.suite import load_suite

    s = load_suite(REPO / "suites" / "micro-colour-merge.yaml")
    assert s.test_time_adaptation
    assert (
        load_suite(REPO / "suites" / "micro-colour-merge.yaml").hash()
        == s.model_copy(update={"test_time_adaptation": False}).hash()
    )


def _rec(label, access, acc, seed, order):
    return {
        "status": "ok",
        "label": label,
        "method": label,
        "data_access": access,
        "seed": seed,
        "order_index": order,
        "order": ["a", "b"],
        "tasks": ["a", "b"],
        "metrics": {"ACC": acc, "AIA": acc, "BWT": 0.0, "FGT": 0.0, "FWT": 0.0, "NACC": acc},
        "R": [[0.5, 0.5], [acc, 0.5], [acc, acc]],
        "E": [0.9, 0.9],
        "suite_hash": "h",
        "verified": False,
        "storage_bytes": {"peak": 0},
        "timings": {"merge_total_s": 0.0},
        "hparams": {},
    }


def test_test_time_rows_are_ranked_among_themselves_only():
    recs = []
    for seed in range(3):
        for order in range(3):
            j = 0.001 * (seed + order)
            recs += [
                _rec("wa", "none", 0.60 + j, seed, order),
                _rec("ta", "none", 0.50 + j, seed, order),
                _rec("tt", "test_inputs", 0.90 + j, seed, order),
                _rec("tt2", "test_inputs", 0.40 + j, seed, order),
            ]
    s = summarise("x", recs)
    assert [r.label for r in s.rows] == ["wa", "ta", "tt", "tt2"]  # far above both, yet after them
    assert [s.row(lb).rank for lb in ("wa", "ta", "tt", "tt2")] == [1, 2, 1, 2]
    assert s.kind("tt") == "test-time" and s.kind("wa") == ""
    from cmbench.report.leaderboard import rank_lines, rank_text

    assert rank_text(s, "tt") == "T1" and rank_text(s, "tt2") == "T2" and rank_text(s, "wa") == "1"
    assert "T1: tt; T2: tt2" in rank_lines(s)[0]
    # the paper tables mark the best of the rows that saw no test data, never a test-time row
    from cmbench.report.site import suite_data
    from cmbench.report.tables import stream_table

    table = stream_table([{**r, "suite": "x"} for r in recs], "markdown").splitlines()
    assert next(x for x in table if x.startswith("| wa |")).count("**") == 8
    assert "**" not in next(x for x in table if x.startswith("| tt (test-time) |"))
    site = {r["label"]: r for r in suite_data(s)["rows"]}
    assert site["tt"]["test_time"] and not site["tt"]["top"] and site["wa"]["top"]


# -- C-AdaMerging against its public loop -----------------------------------------------------


def reference_c_adamerging(expert, model, head, x, order, carry_from, init=0.3, lr=1e-4):
    """ContinualLayerWiseAdaMerging.run / test_time_adaptation (zihuanqiu/MINGLE,
    fusion_bench/method/mingle/c_adamerging.py) with LayerWiseMergedModel's merge_weights,
    transcribed for a tower and a head (the reference's path is CLIP-only): the merged model
    is ``carry_from`` plus the clamped layer-wise weights times the task vector, one weight per
    parameter, Adam on the entropy, re-merged after every step. ``order`` is the batches' index
    sequence (the reference's shuffled DataLoader draws it from the global RNG)."""
    pretrained = copy.deepcopy(model)
    pretrained.load_state_dict(carry_from)
    ft = copy.deepcopy(model)
    ft.load_state_dict(expert)
    names = [n for n, _ in pretrained.named_parameters()]
    base = dict(pretrained.named_parameters())
    tv = {n: dict(ft.named_parameters())[n].detach() - base[n].detach() for n in names}
    merge_weight = torch.nn.Parameter(torch.full((1, len(names)), init), requires_grad=True)
    opt = torch.optim.Adam([merge_weight], lr=lr)

    def merge_weights():
        w = merge_weight.clamp(0, 1)
        sd = pretrained.state_dict(keep_vars=True)
        sd = {k: v.detach() for k, v in sd.items()}
        for wi, n in zip(w[0], names):
            sd[n] = sd[n] + tv[n] * wi
        return sd

    sd = merge_weights()
    for idx in order:
        logits = head(functional_call(pretrained, sd, (x[idx].float().div(127.5).sub(1.0),)))
        probs = torch.softmax(logits, dim=-1)
        loss = -torch.sum(probs * torch.log(probs + 1e-8), dim=-1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        sd = merge_weights()
    return {k: v.detach() for k, v in sd.items()}


def test_c_adamerging_batches_are_shuffled_passes_with_a_short_last_batch():
    from cmbench_baselines.c_adamerging import batches

    out = batches(10, 4, 7, torch.Generator().manual_seed(0))
    assert [len(b) for b in out] == [4, 4, 2, 4, 4, 2, 4]
    first, second = torch.cat(out[:3]), torch.cat(out[3:6])
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(10))
    assert not torch.equal(first, second)  # a fresh order every pass


@pytest.mark.parametrize("carry", ["theta0", "merged"])
def test_c_adamerging_matches_its_public_loop(carry):
    from cmbench_baselines.c_adamerging import batches

    theta0, experts = _models(3)
    theta0.pop("conformance_counter")
    experts = [{k: v for k, v in e.items() if k != "conformance_counter"} for e in experts]
    names = ["a", "b", "c"]
    tasks = {n: _tiny_task(n, i, n=96) for i, n in enumerate(names)}
    heads = {n: Head(torch.nn.functional.normalize(torch.randn(3, TINY.embed_dim), dim=-1) * 10) for n in names}
    model = create_backbone(TINY)
    # a large rate: the weights move off 0.3, some to the clamp; 15 inputs in batches of 4 cross passes
    hp = {"carry": carry, "lr": 1e-2, "steps": 12, "batch_size": 4}
    method = registry.create("c_adamerging", hp)
    data = DataAccess("c_adamerging", "test_inputs", tasks, seed=0)
    ctx = M.Context(theta0=theta0, num_tasks=3, seed=0, data=data)
    data.ctx = ctx

    def network(state, classes="task", task=None):
        model.load_state_dict(state)
        return model, heads[task or ctx.task]

    ctx.network = network
    merged, worst = theta0, 0.0
    for t, (task, expert) in enumerate(zip(names, experts), start=1):
        ctx.step, ctx.task, ctx.seen_tasks = t, task, names[:t]
        x = DataAccess("ref", "test_inputs", tasks, seed=0)
        x.ctx = ctx
        xs = x.test_inputs(5)
        order = batches(len(xs), 4, 12, torch.Generator().manual_seed(0 * 7919 + t))
        ref = reference_c_adamerging(
            expert, model, heads[task], xs, order, theta0 if carry == "theta0" else merged, lr=1e-2
        )
        merged = method.merge(ctx, merged, expert, task)
        worst = max(worst, max(float((merged[k] - ref[k]).abs().max()) for k in ref))
        assert ctx.diagnostics[str(t)]["lambda_mean"] != pytest.approx(0.3)  # it adapted
    print(f"c_adamerging carry={carry}: max |Δ| against the transcription {worst:.1e}")
    assert worst < 1e-6
