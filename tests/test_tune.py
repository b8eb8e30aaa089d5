"""`cmbench tune`: grid over a declared search space, scored on validation splits only."""

import json

import pytest
import yaml

from tests.conftest import NANO


class PoisonedSplit:
    """Stands in for a test split: any read fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"a test split was read ({name})")

    def __len__(self):
        raise AssertionError("a test split was read (len)")


def test_tune_picks_on_validation_never_reads_test_and_use_tuned_runs(nano_copy, monkeypatch, tmp_path):
    import dataclasses

    from cmbench import artefacts
    from cmbench.protocol import loop
    from cmbench.report import render_leaderboard
    from cmbench.results import load_results
    from cmbench.runner import run_suite
    from cmbench.tune import tune_method

    suite = yaml.safe_load(NANO.read_text())
    suite["methods"][1]["search"] = {"lam": [0.1, 0.5, 1.0]}
    path = tmp_path / "nano-merge.yaml"  # same name and environment: the cached artefacts apply
    path.write_text(yaml.safe_dump(suite))

    real = artefacts.load_tasks

    def poisoned(s, seed, pretraining=False):
        tasks = real(s, seed, pretraining)
        return tasks if pretraining else {n: dataclasses.replace(td, test=PoisonedSplit()) for n, td in tasks.items()}

    monkeypatch.setattr(loop, "load_tasks", poisoned)
    monkeypatch.setattr(artefacts, "load_tasks", poisoned)
    result = tune_method(
        path, "task_arithmetic", out=nano_copy, seeds=1, orders=1, executor="local", log=lambda s: None
    )
    monkeypatch.undo()

    assert [t["hparams"]["lam"] for t in result["trials"]] == [0.1, 0.5, 1.0]
    assert result["oracle"] is True and "validation" in result["scored_on"]
    best = max(result["trials"], key=lambda t: t["val_acc"])
    assert result["best"] == best["hparams"]
    saved = json.loads((nano_copy / "tuned" / "nano-merge" / "task_arithmetic.json").read_text())
    assert saved["best"] == result["best"]

    # --use-tuned adds a task_arithmetic-tuned row with the chosen λ, labelled in results and leaderboard
    run_suite(
        path,
        methods=["task_arithmetic"],
        seeds=1,
        orders=1,
        out=nano_copy,
        executor="local",
        use_tuned=True,
        log=lambda s: None,
    )
    tuned = [r for r in load_results(nano_copy / "results") if r["label"] == "task_arithmetic-tuned"]
    assert len(tuned) == 1 and tuned[0]["hparams"]["lam"] == result["best"]["lam"]
    assert tuned[0]["hparam_source"]["kind"] == "tuned" and tuned[0]["hparam_source"]["oracle"] is True
    md = render_leaderboard(nano_copy / "results", nano_copy / "lb.md", nano_copy / "plots").read_text()
    assert "tuned on validation data, oracle: all tasks" in md and "(suite defaults)" in md


def test_tune_without_search_space_is_a_clear_error(nano_copy):
    from cmbench import CmbenchError
    from cmbench.tune import tune_method

    with pytest.raises(CmbenchError, match=r"declares no search space"):
        tune_method(NANO, "ties", out=nano_copy, executor="local", log=lambda s: None)


def test_search_values_are_validated(tmp_path):
    from cmbench import CmbenchError
    from cmbench.suite import load_suite

    suite = yaml.safe_load(NANO.read_text())
    suite["methods"][1]["search"] = {"lam": ["big"]}
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(suite))
    with pytest.raises(CmbenchError, match=r"methods\.1\.search\.lam"):
        load_suite(p)


def test_a_suite_trained_on_whole_train_splits_cannot_be_tuned_and_says_how(tmp_path):
    """The published split suites train on all of each train split (no hold-out): tuning
    there would need test data; the error names the separate path (a hold-out copy)."""
    from cmbench import CmbenchError
    from cmbench.tune import tune_method

    suite = yaml.safe_load((NANO.parent / "split-vit-b16-cifar100-10.yaml").read_text())
    magmax = next(m for m in suite["methods"] if m["name"] == "magmax")
    magmax["search"] = {"lam": [0.3, 0.5]}
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(suite))
    with pytest.raises(CmbenchError, match=r"holdout: 0.1` in every task's params"):
        tune_method(p, "magmax", out=tmp_path, log=print)
