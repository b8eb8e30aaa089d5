"""Published numbers beside ours (cmbench.published): which suites and rows they apply to,
the report's column, and the setup check on θ0's and the experts' per-task accuracies."""

import json

from cmbench import registry as R
from cmbench import published as P
from cmbench.protocol.recording import published_rows, setup_check
from cmbench.runner import Paths
from cmbench.suite import expand, load_suite

from .conftest import REPO, write_record

TA8 = REPO / "suites" / "clip-vit-b32-ta8.yaml"


def test_published_rows_apply_by_backbone_tasks_and_hyperparameters():
    suite = load_suite(TA8)
    rows = {j.label: published_rows(suite, j, R.get(j.method)) for j in expand(suite)}
    assert rows["opcm"]["published"]["ACC"]["acc"] == 75.5 and rows["opcm"]["published"]["ACC"]["std"] == 0.5
    assert rows["task_arithmetic"]["published"]["ACC"]["acc"] == 67.5
    assert rows["weight_average"]["published"]["theta0"]["acc"] == 48.1
    assert rows["weight_average"]["published"]["experts"]["acc"] == 90.4
    assert "ACC" not in rows["dop"]["published"]  # no published table for DOP
    # continual fine-tuning is the newest *sequential* expert; keeping the newest hub expert is not it
    assert rows["continual-ft"]["published"]["ACC"]["acc"] == 79.8
    assert "ACC" not in rows["sequential"]["published"]
    # MagMax's published continual row used independent experts; its sequential protocol (one fixed
    # order, FusionBench's 2500-step recipe) is not this suite's: no number beside magmax-seq
    assert rows["magmax"]["published"]["ACC"]["acc"] == 70.7 and "ACC" not in rows["magmax-seq"]["published"]
    # another λ is another row: the published one used 0.3
    assert P.method_acc(suite, "task_arithmetic", {"lam": 0.5}) is None
    # the same tasks on another CLIP: that CLIP's column
    l14 = suite.model_copy(update={"backbone": suite.backbone.model_copy(update={"model": "ViT-L-14"})})
    assert P.method_acc(l14, "opcm", {"alpha": 0.5}).acc == 87.0
    # a different task set (TA8 minus one task) has no published column
    fewer = suite.model_copy(update={"tasks": suite.tasks[:7]})
    assert P.method_acc(fewer, "opcm", {"alpha": 0.5}) is None and P.per_task(fewer)["sun397"]["theta0"] == 63.18
    # P&M's split table: the LoRA row only
    split = load_suite(REPO / "suites" / "split-vit-b16-imagenet-r-10.yaml")
    lora = {"rank": 10, "targets": ["k", "v"]}
    pm = {"perturbation": "task_vector", "alpha": "global"}
    assert P.method_acc(split, "pm", pm, lora, split.training).acc == 79.95
    assert P.method_acc(split, "pm", pm, None) is None
    assert P.method_acc(split, "weight_average", {}, lora, split.training).acc == 76.90


def test_a_near_miss_of_the_split_protocol_gets_no_published_number():
    """Another timm tag of the same architecture, or another recipe, is another run: no
    published number, and the record says why."""
    split = load_suite(REPO / "suites" / "split-vit-b16-imagenet-r-10.yaml")
    lora = {"rank": 10, "targets": ["k", "v"]}
    pm = {"perturbation": "task_vector", "alpha": "global"}
    assert P.split_mismatch(split, split.training) is None
    ft_in1k = split.model_copy(
        update={"backbone": split.backbone.model_copy(update={"model": "vit_base_patch16_224.augreg_in21k_ft_in1k"})}
    )
    assert P.method_acc(ft_in1k, "pm", pm, lora, ft_in1k.training) is None
    assert "backbone vit_base_patch16_224.augreg_in21k_ft_in1k" in P.split_mismatch(ft_in1k, ft_in1k.training)
    slow = split.training.model_copy(update={"lr": 1e-4})
    assert P.method_acc(split, "pm", pm, lora, slow) is None
    assert P.split_mismatch(split, slow) == "recipe lr 0.0001 (source: 0.001)"
    # the data protocol, field by field: scaled inputs, a permuted class order, a held-out share,
    # the split drawn from folders instead of the shipped file
    scaled = split.model_copy(
        update={"backbone": split.backbone.model_copy(update={"input_mean": None, "input_std": None})}
    )
    assert P.split_mismatch(scaled, split.training) == "inputs scaled by the checkpoint config, the source's [0, 1]"
    for field, value, said in (
        ("class_order", "permuted", "data class_order permuted in task task3 (source: index)"),
        ("holdout", 0.1, "data holdout 0.1 in task task3 (source: 0.0)"),
        ("split", "folders", "data split folders in task task3 (source: shipped)"),
        ("interpolation", "bicubic", "data interpolation bicubic in task task3 (source: bilinear)"),
    ):
        tasks = [
            t.model_copy(update={"params": {**t.params, field: value}}) if t.name == "task3" else t for t in split.tasks
        ]
        off = split.model_copy(update={"tasks": tasks})
        assert P.split_mismatch(off, split.training) == said
        assert P.method_acc(off, "pm", pm, lora, split.training) is None
    job = next(j for j in expand(ft_in1k) if j.label == "pm-lora")
    rec = published_rows(ft_in1k, job, R.get("pm"))
    assert "ACC" not in rec.get("published", {}) and rec["published_unmatched"].startswith("backbone")


def test_per_task_expert_values_only_for_fusionbench_hub_experts():
    suite = load_suite(TA8)
    assert P.per_task(suite)["svhn"] == {"theta0": 31.63, "expert": 97.27}
    ck = dict(suite.experts.checkpoints)
    ck["svhn"] = ck["svhn"].model_copy(update={"path": "/data/my_svhn_expert.safetensors"})
    other = suite.model_copy(update={"experts": suite.experts.model_copy(update={"checkpoints": ck})})
    assert P.per_task(other)["svhn"] == {"theta0": 31.63}


def test_setup_check_fires_beyond_the_tolerance_and_is_silent_within(capsys):
    suite = load_suite(TA8)
    n = {t: 2000 for t in suite.task_names()}
    pub = {t: v["theta0"] / 100 for t, v in P.per_task(suite).items()}
    tol = P.tolerance(63.18, 2000, 19850)
    assert 5.0 < tol < 5.3  # 2 points + 3 standard errors of 2000 of SUN397's 19 850 test images
    assert P.tolerance(63.18, 19850, 19850) == 2.0  # the whole split: no sampling error
    near = dict(pub, sun397=pub["sun397"] + (tol - 0.1) / 100)
    assert P.warnings(P.setup_check(suite, "theta0", near, n)) == []
    off = dict(pub, sun397=pub["sun397"] - (tol + 0.1) / 100)
    lines = P.warnings(P.setup_check(suite, "theta0", off, n))
    assert len(lines) == 1 and "sun397" in lines[0] and "63.2%" in lines[0] and lines[0].startswith("warning: ")
    # what a job records: every comparison, with its outcome
    order = suite.task_names()
    rec = setup_check(suite, order, [off[t] for t in order], [0.99] * 8, n)["setup_check"]
    from cmbench.data.vision import SPLIT_SIZES

    full = {t.name: SPLIT_SIZES[t.dataset][1] for t in suite.tasks}
    experts_off = sum(
        abs(99.0 - v["expert"]) > P.tolerance(v["expert"], 2000, full[t]) for t, v in P.per_task(suite).items()
    )
    assert 0 < experts_off < 8
    assert len(rec) == 16 and sum(not c["ok"] for c in rec) == 1 + experts_off  # θ0 on sun397, experts at 99%


def test_report_shows_the_published_column(nano_run, tmp_path):
    """Result files shaped as a clip-vit-b32-ta8 run writes them (the nano suite's records,
    relabelled, with the published block and setup check the job records): the report
    puts the published ACC beside ours, and the published per-task rows under ours."""
    from cmbench.report.leaderboard import render_leaderboard

    suite = load_suite(TA8)
    out = tmp_path / "results" / suite.name
    jobs = {j.method: j for j in expand(suite)}
    written = 0
    for f in sorted(Paths(nano_run).results.rglob("*.json")):
        rec = json.loads(f.read_text())
        if rec.get("method") not in jobs:
            continue
        job = jobs[rec["method"]]
        order = suite.task_names()
        n = len(rec["tasks"])
        rename = dict(zip(rec["tasks"], order[:n]))
        rec["evaluation"]["test_samples"] = {rename[t]: k for t, k in rec["evaluation"]["test_samples"].items()}
        rec.update(
            suite=suite.name,
            tasks=order[:n],
            **published_rows(suite, job, R.get(job.method)),
            **setup_check(suite, order[:n], rec["R"][0], rec["E"], {t: 500 for t in order}),
        )
        write_record(out / rec["label"] / f.name, rec)
        written += 1
    assert written
    md = tmp_path / "lb.md"
    render_leaderboard(tmp_path / "results", md, plots_dir=tmp_path / "plots")
    text = md.read_text()
    assert "Published ACC" in text and "arXiv:2501.09522" in text
    row = next(line for line in text.splitlines() if " | weight_average | " in line and "Published" not in line)
    assert "| 66.3 |" in row  # the main table's row (its rank first)
    assert any(line.startswith("| ref | *pretrained θ0* |") and "| 48.1 |" in line for line in text.splitlines())
    assert "| θ0, published |" in text and "Setup check:" in text
    from cmbench.report.tables import render_table
    from cmbench.results import load_results

    recs = load_results(tmp_path / "results")
    for kind in ("stream", "benchmarks"):
        table = render_table(recs, kind, "markdown")
        assert "(published)" in table and "66.3" in table, kind
    assert "49.0 $\\pm$ 10.2" in render_table(recs, "stream", "latex")


def test_report_of_a_run_off_the_protocol_shows_no_published_number_and_says_why(nano_run, tmp_path):
    from cmbench.report.leaderboard import render_leaderboard

    why = "backbone vit_base_patch16_224.augreg_in21k_ft_in1k, the source's vit_base_patch16_224.augreg_in21k"
    for f in sorted(Paths(nano_run).results.rglob("*.json")):
        rec = json.loads(f.read_text())
        rec.pop("published", None)
        rec["published_unmatched"] = why
        write_record(tmp_path / "results" / f.relative_to(Paths(nano_run).results), rec)
    text = render_leaderboard(tmp_path / "results", tmp_path / "lb.md", plots_dir=tmp_path / "plots").read_text()
    assert "| Published ACC |" not in text
    assert f"Published ACC not shown: this run is not the source's protocol ({why}" in text
