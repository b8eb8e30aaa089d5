"""Sequential experts (MagMax's sequential fine-tuning) and the continual fine-tuning row."""

import pytest
import torch
import yaml

from .conftest import NANO


def _nano(tmp_path, **extra):
    data = yaml.safe_load(NANO.read_text())
    data.update(extra)
    path = tmp_path / "nano-merge.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_chain_of_experts_is_keyed_by_what_came_before(tmp_path):
    from cmbench.artefacts import expert_key
    from cmbench.keys import job_inputs
    from cmbench.suite import expand, load_suite

    suite = load_suite(NANO)
    # a chain's first expert is fine-tuned from θ0: the independent expert, one artefact
    assert expert_key(suite, 0, "bars", ()) == expert_key(suite, 0, "bars")
    after_bars = expert_key(suite, 0, "quadrant", ("bars",))
    assert after_bars not in (expert_key(suite, 0, "quadrant"), expert_key(suite, 0, "quadrant", ("dots",)))
    assert expert_key(suite, 0, "dots", ("bars", "quadrant")) != expert_key(suite, 0, "dots", ("quadrant", "bars"))
    assert expert_key(suite, 1, "quadrant", ("bars",)) != after_bars
    # an independent row's inputs are as before the field existed; a sequential row says so
    data = yaml.safe_load(NANO.read_text())
    data["methods"].append({"name": "magmax", "label": "magmax-seq", "experts": "sequential"})
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    s2 = load_suite(path)
    assert s2.hash() == suite.hash()  # a method's experts are not the suite's environment
    jobs = {j.label: j for j in expand(s2) if j.seed == 0 and j.order_index == 0}
    assert "experts" not in job_inputs(s2, jobs["weight_average"])
    seq = job_inputs(s2, jobs["magmax-seq"])
    assert seq["experts"] == "sequential"
    order = jobs["magmax-seq"].order
    assert seq["artefacts"]["experts"][order[0]] == expert_key(s2, 0, order[0])
    assert seq["artefacts"]["experts"][order[2]] == expert_key(s2, 0, order[2], order[:2])


def test_sequential_rows_merge_experts_fine_tuned_one_after_another(tmp_path, nano_copy):
    from cmbench.artefacts import SuiteArtefacts, make_expert
    from cmbench.results import load_results
    from cmbench.runner import run_suite
    from cmbench.store import Store
    from cmbench.suite import load_suite

    path = _nano(tmp_path)
    add = [
        {"name": "sequential", "label": "continual-ft", "experts": "sequential"},
        {"name": "magmax", "label": "magmax-seq", "experts": "sequential"},
    ]
    lines: list[str] = []
    summary = run_suite(path, out=nano_copy, executor="local", add=add, seeds=1, orders=1, log=lines.append)
    assert summary["failed"] == 0 and summary["ran"] == 2
    recs = {r["label"]: r for r in load_results(nano_copy / "results") if r["seed"] == 0 and r["order_index"] == 0}
    ft, mm, ind = recs["continual-ft"], recs["magmax-seq"], recs["weight_average"]
    assert ft["experts"] == mm["experts"] == "sequential" and "experts" not in ind
    # continual fine-tuning keeps the newest expert: its step t evaluates θ_t, whose own task is E[t]
    for t in range(1, 4):
        assert ft["R"][t][t - 1] == ft["E"][t - 1]
    assert ft["E"] == mm["E"]
    assert ft["E"][0] == ind["E"][0]  # the chain starts with the independent expert
    assert ft["E"][1:] != ind["E"][1:]
    # the stored chain is what fine-tuning each expert from the previous one gives, bit for bit
    suite = load_suite(path)
    order = tuple(ft["tasks"])
    art = SuiteArtefacts(suite, 0, Store(nano_copy / ".cmbench" / "cache"))
    first, _ = art.expert(order[0], ())
    second, meta = art.expert(order[1], order[:1])
    assert meta["sequential_after"] == [order[0]]
    again, _ = make_expert(suite, 0, order[1], art.theta0(), art.heads()[order[1]], start=first)
    assert all(torch.equal(again[k], second[k]) for k in second)
    independent, _ = art.expert(order[1])
    assert not all(torch.equal(independent[k], second[k]) for k in second)
    # a rerun finds both rows current
    again_summary = run_suite(path, out=nano_copy, executor="local", add=add, seeds=1, orders=1, log=lambda s: None)
    assert again_summary["ran"] == 0


def test_sequential_experts_and_per_task_epochs_are_checked(tmp_path):
    from cmbench.suite import load_suite

    glyphs = yaml.safe_load((NANO.parent / "micro-glyphs-split.yaml").read_text())
    glyphs["methods"] = [{"name": "weight_average", "experts": "sequential"}]
    p = tmp_path / "g.yaml"
    p.write_text(yaml.safe_dump(glyphs))
    with pytest.raises(Exception, match="methods.0.experts"):
        load_suite(p)
    data = yaml.safe_load(NANO.read_text())
    data["experts"]["epochs_per_task"] = {"nope": 2}
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(Exception, match="experts.epochs_per_task.nope"):
        load_suite(p)
    data["experts"]["epochs_per_task"] = {"bars": 3}
    p.write_text(yaml.safe_dump(data))
    from cmbench.artefacts import expert_key

    suite, base = load_suite(p), load_suite(NANO)
    assert suite.experts.recipe_for("bars").epochs == 3 and suite.experts.recipe_for("dots").epochs == 1
    assert expert_key(suite, 0, "bars") != expert_key(base, 0, "bars")
    assert expert_key(suite, 0, "dots") == expert_key(base, 0, "dots")  # only that task's recipe changed
