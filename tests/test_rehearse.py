"""Rehearsals: the real loaders read generated stand-ins written in the real formats and
places, inside the output directory only; results are watermarked and the report refuses
them unless asked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.test_clip_path import TINY_CLIP

ROOT = Path(__file__).parents[1]


def _cli(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """The CLI in a fresh process, as a user runs it (the HF libraries read their caches at import)."""
    e = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "CMBENCH_"))}
    e.update(HOME=str(cwd / "home"), **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "cmbench", *args], cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout
    )


def test_open_clip_to_hf_clip_vision_inverts_the_loader_mapping():
    from open_clip.model import CLIP

    from cmbench.models.checkpoint import hf_clip_vision_to_open_clip, open_clip_to_hf_clip_vision
    from tests.test_clip_path import hf_from_open_clip

    torch.manual_seed(0)
    visual = {
        "visual." + k: v
        for k, v in CLIP(embed_dim=16, vision_cfg=TINY_CLIP["vision_cfg"], text_cfg=TINY_CLIP["text_cfg"])
        .visual.state_dict()
        .items()
    }
    hf = open_clip_to_hf_clip_vision(visual)
    ref = hf_from_open_clip(visual, 2)  # the test file's independent inverse
    assert set(hf) == set(ref) and all(torch.equal(hf[k], ref[k]) for k in ref)
    back = hf_clip_vision_to_open_clip(hf, visual)
    assert all(torch.equal(back[k], visual[k]) for k in visual)


def test_perturbation_is_low_rank_plus_sparse_and_seeded():
    from cmbench.rehearse.standins import perturbation
    from cmbench.suite import Rehearsal

    torch.manual_seed(0)
    theta0 = {"a.weight": torch.randn(64, 48), "a.bias": torch.randn(64), "visual.proj": torch.randn(48, 8)}
    r = Rehearsal(expert_sparse=0.0)
    e = perturbation(theta0, r, 3)
    delta = e["a.weight"] - theta0["a.weight"]
    s = torch.linalg.svdvals(delta)
    assert (s > 1e-4 * s[0]).sum() == r.expert_rank  # no sparse part: exactly the low rank
    assert abs(float(delta.norm() / theta0["a.weight"].norm()) - r.expert_lowrank) < 1e-3
    assert torch.equal(e["visual.proj"], theta0["visual.proj"])
    assert torch.equal(perturbation(theta0, r, 3)["a.weight"], e["a.weight"])
    assert not torch.equal(perturbation(theta0, r, 4)["a.weight"], e["a.weight"])


@pytest.mark.slow  # 27 s: in make test-slow (the make test budget)
def test_rehearsal_reads_stand_ins_through_the_real_loaders(tmp_path):
    """Hub datasets cache + HF CLIPVisionModel experts, read offline by the unchanged loaders;
    everything written under --out; results watermarked; report refuses them unless asked."""
    suite = {
        "name": "tiny-rehearse",
        "setting": "merge_stream",
        "seeds": [0],
        "backbone": {"kind": "open_clip", "model": "tiny", "pretrained": None, "config": TINY_CLIP},
        "tasks": [{"name": "eurosat", "dataset": "eurosat"}, {"name": "pcam", "dataset": "pcam"}],
        "heads": {"kind": "zero_shot"},
        "experts": {
            "source": "checkpoints",
            "checkpoints": {
                t: {"format": "hf_clip_vision", "path": f"hf://someone/tiny_{t}"} for t in ("eurosat", "pcam")
            },
        },
        "evaluation": {"batch_size": 8},
        "resources": {"cpus_per_job": 1},
        "methods": [{"name": "ties"}, {"name": "fisher_average", "hparams": {"n_samples": 4}}],
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(suite))
    out = tmp_path / "out"
    p = _cli(["run", "s.yaml", "--rehearse", "--max-per-split", "12", "--no-ray", "--out", "out"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    # nothing outside --out (the suite file and the process's HOME, which stays empty of caches)
    assert {x.name for x in tmp_path.iterdir()} <= {"home", "out", "s.yaml"}
    assert not [x for x in (tmp_path / "home").rglob("*") if "huggingface" in str(x) or "cmbench" in str(x)]
    stand = out / ".cmbench" / "stand-ins"
    expert = stand / "hf" / "hub" / "models--someone--tiny_eurosat" / "snapshots" / ("0" * 40) / "model.safetensors"
    from safetensors.torch import load_file

    assert all(k.startswith("vision_model.") for k in load_file(str(expert)))
    assert list((stand / "hf" / "datasets" / "tanganke___eurosat").rglob("eurosat-test.arrow"))
    recs = [json.loads(f.read_text()) for f in (out / "results").rglob("*.json")]
    assert len(recs) == 2 and all(r["status"] == "ok" and r["rehearsal"]["max_per_split"] == 12 for r in recs)
    assert all(r["evaluation"]["test_samples"] == {"eurosat": 12, "pcam": 12} for r in recs)
    report = (out / "rehearsal.md").read_text()
    assert "| ties |" in report and "projection" in report and "GPU-h" in report
    # the report refuses rehearsal results, then labels them
    p = _cli(["report", "--results", "out/results", "--output", "lb.md"], tmp_path)
    assert p.returncode == 2 and "rehearsal" in p.stderr and not (tmp_path / "lb.md").exists()
    p = _cli(["report", "--results", "out/results", "--output", "lb.md", "--include-rehearsal"], tmp_path)
    assert p.returncode == 0 and "rehearsal: random weights" in (tmp_path / "lb.md").read_text()
    # a rerun resumes: stand-ins and results are kept
    p = _cli(["run", "s.yaml", "--rehearse", "--max-per-split", "12", "--no-ray", "--out", "out"], tmp_path)
    assert p.returncode == 0 and "2 up to date, 0 to run" in p.stdout, p.stdout[-2000:]


@pytest.mark.slow
@pytest.mark.full_size  # about 20 min on 2 cores: `make test-full-size`, by hand (docs/ci.md)
def test_rehearsal_of_clip_vit_b32_ta8_at_full_model_size(tmp_path):
    """ViT-B/32 at full size, capped data: TIES, OPCM and a data-using method (Fisher) on every
    step of one order, through the stand-in openai weights, hub datasets and HF experts."""
    p = _cli(
        [
            "run",
            str(ROOT / "suites" / "clip-vit-b32-ta8.yaml"),
            "--rehearse",
            "--max-per-split",
            "16",
            "--eval-cap",
            "8",
            "--methods",
            "ties,opcm,fisher_average",
            "--hparam",
            "fisher_average.n_samples=2",  # the exact model Fisher: a backward pass per sample and class (758 classes)
            "--seeds",
            "1",
            "--orders",
            "1",
            "--no-ray",
            "--out",
            "out",
        ],
        tmp_path,
        timeout=3600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    recs = [json.loads(f.read_text()) for f in (tmp_path / "out" / "results").rglob("*.json")]
    assert sorted(r["label"] for r in recs) == ["fisher_average", "opcm", "ties"]
    assert all(r["status"] == "ok" and len(r["R"]) == 9 and r["rehearsal"] for r in recs)
    assert "| opcm |" in (tmp_path / "out" / "rehearsal.md").read_text()


def test_projection_ignores_a_merge_time_rehearsed_with_other_hyperparameters():
    """A rehearsal may lower a method's hyperparameters (`--hparam fisher_average.n_samples=2`,
    the suite's 256); its merge time then measures another cost and is not projected onto
    the suite's jobs: they count as not measured, and the estimate line says why."""
    from cmbench.plan import cost_line, project
    from cmbench.suite import expand, load_suite

    suite = load_suite(ROOT / "suites" / "clip-vit-b32-ta8.yaml")
    jobs = expand(suite, methods=["ties", "fisher_average"], n_seeds=1, n_orders=1)
    T = len(suite.tasks)
    own = {j.label: dict(j.hparams) for j in jobs}  # every hyperparameter, defaults included
    step = {"merge_step_s": 10.0, "data_access": "none"}
    measured = {
        "methods": {
            "ties": {**step, "hparams": own["ties"]},
            "fisher_average": {
                **step,
                "data_access": "current_task",
                "hparams": {**own["fisher_average"], "n_samples": 2},
            },
        }
    }
    c = project(suite, jobs, measured)
    assert c["merge_s"] == 10.0 * T and c["unmeasured_merge_steps"] == T == c["other_hparams_merge_steps"]
    assert f"{T} not measured: rehearse the suite, {T} of them rehearsed with other hyperparameters" in cost_line(
        suite, c
    )
    measured["methods"]["fisher_average"]["hparams"] = own["fisher_average"]  # as the suite runs it
    assert project(suite, jobs, measured)["merge_s"] == 20.0 * T
