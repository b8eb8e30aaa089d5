"""The real-scale CLIP path, offline: a tiny open_clip config (random init), image-folder
datasets the test writes, an expert in transformers' CLIPVisionModel format."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cmbench import CmbenchError

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def write_folder(root: Path, name: str, n_classes: int, per_class: int, seed: int) -> None:
    """ROOT/name/{train,test}/<class index>/<i>.png: class c is a colour + noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("test", per_class // 2)):
        for c in range(n_classes):
            d = root / name / split / str(c)
            d.mkdir(parents=True, exist_ok=True)
            base = rng.integers(0, 255, 3)
            for i in range(n):
                img = np.clip(base + rng.normal(0, 30, (40, 48, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i}.png")


def hf_from_open_clip(visual: dict, layers: int) -> dict:
    """The inverse naming, written independently of cmbench's converter."""
    out = {
        "vision_model.embeddings.class_embedding": visual["visual.class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": visual["visual.conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": visual["visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": visual["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": visual["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": visual["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": visual["visual.ln_post.bias"],
    }
    for i in range(layers):
        o, h = f"visual.transformer.resblocks.{i}.", f"vision_model.encoder.layers.{i}."
        for kind in ("weight", "bias"):
            q, k, v = visual[o + f"attn.in_proj_{kind}"].chunk(3)
            out |= {
                h + f"self_attn.q_proj.{kind}": q,
                h + f"self_attn.k_proj.{kind}": k,
                h + f"self_attn.v_proj.{kind}": v,
                h + f"self_attn.out_proj.{kind}": visual[o + f"attn.out_proj.{kind}"],
                h + f"layer_norm1.{kind}": visual[o + f"ln_1.{kind}"],
                h + f"layer_norm2.{kind}": visual[o + f"ln_2.{kind}"],
                h + f"mlp.fc1.{kind}": visual[o + f"mlp.c_fc.{kind}"],
                h + f"mlp.fc2.{kind}": visual[o + f"mlp.c_proj.{kind}"],
            }
    return {k: v.contiguous().clone() for k, v in out.items()}


def test_hf_clip_vision_mapping_matches_transformers():
    """A transformers CLIPVisionModel and open_clip's visual tower with the converted weights
    give the same embedding (before the projection) on the same input."""
    transformers = pytest.importorskip("transformers")
    from cmbench.models.checkpoint import hf_clip_vision_to_open_clip
    from open_clip.model import CLIP

    torch.manual_seed(0)
    cfg = transformers.CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
    )
    hf = transformers.CLIPVisionModel(cfg).eval()
    for p in hf.parameters():  # non-trivial LayerNorms and biases
        torch.nn.init.normal_(p, std=0.2)
    oc = CLIP(embed_dim=16, vision_cfg=TINY_CLIP["vision_cfg"], text_cfg=TINY_CLIP["text_cfg"]).visual.eval()
    theta0 = {"visual." + k: v for k, v in oc.state_dict().items()}
    mapped = hf_clip_vision_to_open_clip(hf.state_dict(), theta0)
    assert set(mapped) == set(theta0)
    oc.load_state_dict({k.removeprefix("visual."): v for k, v in mapped.items()})
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = hf(pixel_values=x).pooler_output  # post-layernorm CLS token
        oc.proj = None  # compare before the projection CLIPVisionModel does not have
        got = oc(x)
    assert torch.allclose(got, ref, atol=1e-5), (got - ref).abs().max()


def test_clip_suite_end_to_end_offline(tmp_path, monkeypatch):
    """Zero-shot heads from the text tower, an expert from a HF-format safetensors file, a
    second from open_clip names; merged by TA, evaluated, result file written; a wrong pin
    and a wrong checkpoint are refused naming the task and the keys."""
    from safetensors.torch import save_file

    from cmbench import CmbenchError
    from cmbench.artefacts import SuiteArtefacts
    from cmbench.store import Store
    from cmbench.results import load_results
    from cmbench.runner import run_suite
    from cmbench.suite import load_suite

    data = tmp_path / "data"
    write_folder(data, "eurosat", 10, 6, 0)
    write_folder(data, "pcam", 2, 12, 1)
    monkeypatch.setenv("CMBENCH_DATA_ROOT", str(data))
    base = {
        "name": "tiny-clip",
        "setting": "merge_stream",
        "backbone": {"kind": "open_clip", "model": "tiny", "pretrained": None, "config": TINY_CLIP},
        "tasks": [{"name": "eurosat", "dataset": "eurosat"}, {"name": "pcam", "dataset": "pcam"}],
        "heads": {"kind": "zero_shot"},
        "methods": [{"name": "task_arithmetic", "hparams": {"lam": 0.3}}, {"name": "weight_average"}],
        "evaluation": {"batch_size": 64, "max_test_per_task": 8},
    }
    # experts: θ0 + noise, one saved under transformers' names, one under open_clip's
    suite0 = tmp_path / "s0.yaml"
    suite0.write_text(yaml.safe_dump(base))
    art = SuiteArtefacts(load_suite(suite0), 0, Store(tmp_path / "cache0"))
    theta0 = art.theta0()
    assert any(k.startswith("visual.transformer.resblocks.1.attn.in_proj") for k in theta0)
    g = torch.Generator().manual_seed(1)
    e1 = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in theta0.items()}
    e2 = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in theta0.items()}
    e1_hf = hf_from_open_clip(e1, layers=2)
    e1_hf["vision_model.embeddings.position_ids"] = torch.arange(17)[None]
    save_file(e1_hf, str(tmp_path / "eurosat_hf.safetensors"))
    save_file({k: v.contiguous() for k, v in e2.items()}, str(tmp_path / "pcam.safetensors"))
    from cmbench.models.checkpoint import file_sha256

    pin = file_sha256(tmp_path / "eurosat_hf.safetensors")
    suite = dict(
        base,
        experts={
            "source": "checkpoints",
            "checkpoints": {
                "eurosat": {
                    "format": "hf_clip_vision",
                    "path": str(tmp_path / "eurosat_hf.safetensors"),
                    "sha256": pin,
                },
                "pcam": {"format": "open_clip", "path": str(tmp_path / "pcam.safetensors")},
            },
        },
    )
    path = tmp_path / "tiny-clip.yaml"
    path.write_text(yaml.safe_dump(suite))
    out = tmp_path / "out"
    summary = run_suite(path, out=out, executor="local", log=lambda s: None)
    assert summary["failed"] == 0
    recs = load_results(out / "results")
    assert len(recs) == 2
    heads = SuiteArtefacts(load_suite(path), 0, Store(out / ".cmbench" / "cache")).heads()
    assert heads["eurosat"].weight.shape == (10, 16) and heads["pcam"].weight.shape == (2, 16)
    for r in recs:
        assert len(r["R"]) == 3 and all(0 <= v <= 1 for row in r["R"] for v in row)
        assert r["evaluation"]["test_samples"] == {"eurosat": 8, "pcam": 8}
        assert r["R"][0] == recs[0]["R"][0]  # row 0: the cached θ0 row, the same for every job
    # the converted HF expert equals e1 (the projection, absent in CLIPVisionModel, is θ0's)
    from cmbench.models.checkpoint import load_expert
    from cmbench.suite import ExpertCheckpoint

    got, meta = load_expert(
        ExpertCheckpoint(format="hf_clip_vision", path=str(tmp_path / "eurosat_hf.safetensors")),
        "eurosat",
        theta0,
        "experts.checkpoints",
    )
    assert meta["sha256"] == pin
    for k in theta0:
        expect = theta0[k] if k == "visual.proj" else e1[k]
        assert torch.equal(got[k], expect), k
    # a wrong pin and a checkpoint of another backbone are refused, naming the task
    with pytest.raises(CmbenchError, match=r"experts.checkpoints.eurosat: .* pins"):
        load_expert(
            ExpertCheckpoint(format="hf_clip_vision", path=str(tmp_path / "eurosat_hf.safetensors"), sha256="0" * 64),
            "eurosat",
            theta0,
            "experts.checkpoints",
        )
    bad = {k: v for k, v in e2.items() if "resblocks.1" not in k}
    bad["visual.conv1.weight"] = torch.zeros(8, 3, 8, 8)
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(
        CmbenchError, match=r"pcam .*does not match the backbone: missing .*resblocks.1.*shape mismatch"
    ):
        load_expert(ExpertCheckpoint(path=str(tmp_path / "bad.safetensors")), "pcam", theta0, "experts.checkpoints")


def test_zero_shot_head_is_clip_zero_shot_classifier():
    """normalise(text) per template, mean, normalise, × exp(logit_scale): recomputed by hand."""
    import open_clip

    from cmbench.models.clip import build_open_clip, zero_shot_weights
    from cmbench.suite import OpenCLIP

    cfg = OpenCLIP(kind="open_clip", model="tiny", pretrained=None, config=TINY_CLIP)
    w = zero_shot_weights(cfg, ["cat", "dog"], ["a photo of a {c}.", "a {c}!"], seed=3)
    model = build_open_clip(cfg, pretrained=True, seed=3).eval()
    with torch.no_grad():
        rows = []
        for c in ("cat", "dog"):
            e = model.encode_text(open_clip.tokenize([f"a photo of a {c}.", f"a {c}!"]))
            e = e / e.norm(dim=-1, keepdim=True)
            m = e.mean(0)
            rows.append(m / m.norm())
        ref = torch.stack(rows) * model.logit_scale.exp()
    assert torch.allclose(w, ref, atol=1e-6)


def test_image_folder_dataset_splits_and_cache(tmp_path, monkeypatch):
    """FusionBench's val rule (randperm seeded 0, last 10 %), train/val disjoint, decoded
    once: the second load reads the uint8 cache."""
    from cmbench.data import build
    from cmbench.config import current

    write_folder(tmp_path, "eurosat", 10, 10, 0)
    monkeypatch.setenv("CMBENCH_DATA_ROOT", str(tmp_path))
    td = build("eurosat", "eurosat", 0, 24, {})
    assert td.train.x.dtype == torch.uint8 and td.train.x.shape[1:] == (3, 24, 24)
    assert len(td.train) == 90 and len(td.val) == 10 and len(td.test) == 50
    assert (
        td.classes[0]
        == json.loads((Path(__file__).parents[1] / "cmbench/data/clip_tasks.json").read_text())["tasks"]["eurosat"][
            "classnames"
        ][0]
    )
    perm = torch.randperm(100, generator=torch.Generator().manual_seed(0))
    assert sorted(perm[90:].tolist()) != sorted(perm[:10].tolist())
    cached = [p for p in (current().data_root / ".decoded").glob("eurosat-train-24-*") if p.is_dir()]
    assert len(cached) == 1 and (cached[0] / "x.npy").exists()
    again = build("eurosat", "eurosat", 0, 24, {})
    assert torch.equal(again.train.x, td.train.x) and torch.equal(again.val.y, td.val.y)
    # train and val are FusionBench's split in FusionBench's order: rows perm[:90], perm[90:]
    # of the folder's images (sorted by class folder, then file name), views of one mapped file
    from cmbench.data.vision import _decode

    files = sorted((tmp_path / "eurosat" / "train").glob("*/*.png"), key=lambda p: (int(p.parent.name), p.name))
    natural = torch.stack([torch.from_numpy(_decode(p, 24)[0]) for p in files])
    assert torch.equal(td.train.x, natural[perm[:90]]) and torch.equal(td.val.x, natural[perm[90:]])
    assert td.train.x.untyped_storage().data_ptr() == td.val.x.untyped_storage().data_ptr()


def test_class_split_follows_the_seed_1993_order(tmp_path, monkeypatch):
    from cmbench.data import build
    from cmbench.data.vision import permuted_order

    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in range(100):
            d = tmp_path / "cifar100" / split / f"class{c:03d}"
            d.mkdir(parents=True)
            for i in range(2 if split == "test" else 10):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(d / f"{i}.png")
    monkeypatch.setenv("CMBENCH_DATA_ROOT", str(tmp_path))
    order = permuted_order(100)
    assert order[:5] == np.random.RandomState(1993).permutation(100)[:5].tolist()
    tasks = [build("class_split", f"t{i}", 0, 8, {"source": "cifar100", "n_tasks": 10, "index": i}) for i in range(10)]
    assert [c for t in tasks for c in t.class_ids] == order
    assert all(len(t.classes) == 10 and len(t.test) == 20 for t in tasks)


def test_finetune_then_dry_run_then_run(tmp_path, monkeypatch, capsys):
    """`cmbench finetune` builds the experts with the suite's recipe (zero-shot head frozen);
    the dry run then sees them cached, lists the datasets and estimates GPU time; `run` uses
    them without training again."""
    from cmbench.cli import main

    data = tmp_path / "data"
    write_folder(data, "eurosat", 10, 6, 0)
    write_folder(data, "pcam", 2, 12, 1)
    suite = {
        "name": "tiny-clip-ft",
        "setting": "merge_stream",
        "backbone": {"kind": "open_clip", "model": "tiny", "pretrained": None, "config": TINY_CLIP},
        "tasks": [{"name": "eurosat", "dataset": "eurosat"}, {"name": "pcam", "dataset": "pcam"}],
        "heads": {"kind": "zero_shot"},
        "experts": {"finetune": {"lr": 1e-3, "weight_decay": 0.1, "batch_size": 16, "steps": 6}},
        "methods": [{"name": "weight_average"}],
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(suite))
    out = tmp_path / "out"
    common = ["--out", str(out), "--data-root", str(data), "--no-ray"]
    assert main(["run", str(path), "--dry-run", *common]) == 0
    text = capsys.readouterr().out
    assert "experts to fine-tune: 2" in text and f"image folder {data / 'eurosat'}" in text
    assert "estimate (" in text and "CPU thread-h" in text  # a CPU suite: thread-hours
    assert main(["finetune", str(path), *common]) == 0
    text = capsys.readouterr().out
    assert "2 to fine-tune" in text and "seed 0 pcam: test accuracy" in text
    assert main(["run", str(path), "--dry-run", *common]) == 0
    assert "experts to fine-tune: 0" in capsys.readouterr().out
    from cmbench.config import Config
    from cmbench.results import load_results
    from cmbench.runner import run_suite

    # a library call names its configuration (the command line's --data-root ended with it)
    run_suite(path, out=out, executor="local", log=lambda s: None, config=Config(data_root=data))
    rec = load_results(out / "results")[0]
    assert rec["status"] == "ok" and len(rec["E"]) == 2


def test_suite_validation_reads_open_clips_own_architecture_configs():
    """A CLIP suite is validated against the architecture files open_clip ships without
    importing it (seconds of timm and Hugging Face imports before an error line); what it
    reads is exactly open_clip's registry."""
    import subprocess
    import sys

    code = (
        "import sys; from cmbench.suite import open_clip_configs; c = open_clip_configs(); "
        "assert {'ViT-B-32', 'ViT-B-16', 'ViT-L-14'} <= set(c), sorted(c)[:5]; "
        "assert 'open_clip' not in sys.modules and 'timm' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    import open_clip

    from cmbench.suite import open_clip_configs

    assert open_clip_configs() == {m: open_clip.get_model_config(m) for m in open_clip.list_models()}


def test_every_shipped_suite_loads_and_dry_runs_offline(tmp_path, monkeypatch):
    """The real-scale suites validate and their dry run needs no network."""
    from cmbench.runner import run_suite

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("CMBENCH_DATA_ROOT", str(tmp_path / "nodata"))
    suites = sorted((Path(__file__).parents[1] / "suites").glob("*.yaml"))
    real = [s for s in suites if s.name.startswith(("clip-", "split-vit-", "flan-t5-"))]
    assert len(real) == 18
    lines = []
    for s in real:
        summary = run_suite(s, out=tmp_path / "o", dry_run=True, log=lines.append)
        assert summary["ran"] == 0 and summary["jobs"] > 0
    assert sum(ln.startswith("estimate (") for ln in lines) == 18
    assert any("TO DOWNLOAD" in ln for ln in lines) and any("MISSING" in ln for ln in lines)


def test_split_vit_suite_runs_offline_on_a_tiny_timm_vit(tmp_path, monkeypatch):
    """The split ViT path (timm backbone, class_split tasks, LoRA on k/v) end to end."""
    from PIL import Image

    from cmbench.results import load_results
    from cmbench.runner import run_suite

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in range(100):
            d = tmp_path / "data" / "cifar100" / split / f"c{c:03d}"
            d.mkdir(parents=True)
            base = rng.integers(0, 255, 3)
            for i in range(2 if split == "test" else 6):
                img = np.clip(base + rng.normal(0, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i}.png")
    monkeypatch.setenv("CMBENCH_DATA_ROOT", str(tmp_path / "data"))
    lora = {"rank": 2, "targets": ["k", "v"]}
    suite = {
        "name": "tiny-split",
        "setting": "train_then_merge",
        "backbone": {
            "kind": "timm",
            "model": "vit_tiny_patch16_224",
            "pretrained": False,
            "kwargs": {"img_size": 16, "patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2},
        },
        "tasks": [
            {"name": f"t{i}", "dataset": "class_split", "params": {"source": "cifar100", "n_tasks": 10, "index": i}}
            for i in range(2)
        ],
        "heads": {"kind": "class_incremental"},
        "training": {"epochs": 1, "lr": 1e-3, "head_lr": 1e-2, "batch_size": 16, "augment": {"view_size": 20}},
        "methods": [
            {"name": "pm", "label": "pm-lora", "lora": lora},
            {
                "name": "trm",
                "training": {
                    "lr": 1e-5,
                    "warmup_steps": 2,
                    "grad_clip": 1.0,
                    "augment": {"scale": [0.9, 1.0], "hflip": False, "view_size": 20},
                },
            },
        ],
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(suite))
    summary = run_suite(path, out=tmp_path / "out", executor="local", log=lambda s: None)
    assert summary["failed"] == 0
    # training drew its random resized crops from the whole train images, decoded once at 20 px
    whole = [p.name.split("-v")[0] for p in (tmp_path / "data" / ".decoded").glob("*-whole-v*") if p.is_dir()]
    assert whole == ["cifar100-train-20-whole"]
    recs = load_results(tmp_path / "out" / "results")
    assert {r["label"] for r in recs} == {"pm-lora", "trm"}
    assert all(len(r["start_grad_norm"]) == 2 and r["metrics"]["ACC_all"] is not None for r in recs)
    # what a rehearsal's report says of the protocol, read from the objects the run uses
    from cmbench.rehearse.findings import protocol_facts
    from cmbench.suite import load_suite

    facts = protocol_facts(load_suite(path))
    assert facts["backbone"] == "timm vit_tiny_patch16_224"
    from cmbench.data.vision import permuted_order

    assert facts["class order"] == f"a permutation of 20 classes, first ten {permuted_order(100)[:10]}"
    assert "mean [0.5, 0.5, 0.5], std [0.5, 0.5, 0.5]" in facts["input scaling"]
    assert facts["images of the first task"] == "train 48, validation 12 (held out of the train split), test 20"


def _write_folder(root, source, n_classes, per_class, names=None):
    from PIL import Image

    rng = np.random.default_rng(1)
    for c in range(n_classes):
        d = root / source / (names[c] if names else f"c{c:03d}")
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (12, 20, 3), dtype=np.uint8)).save(d / f"{i}.jpg")


def test_the_published_split_protocol_options(tmp_path, monkeypatch):
    """InfLoRA's protocol, field by field: classes in index order, the whole train split
    (no hold-out), pixels in [0, 1], bilinear test resizing, and ImageNet-R's shipped split
    read from the dataset's own folders."""
    from cmbench.data import build
    from cmbench.data.vision import _decode, shipped_classes, shipped_split
    from cmbench.models import create_backbone
    from cmbench.suite.backbones import TimmViT

    monkeypatch.setenv("CMBENCH_DATA_ROOT", str(tmp_path / "data"))
    from cmbench.config import Config, applied

    for split in ("train", "test"):
        _write_folder(tmp_path / "data" / "cifar100", split, 100, 3 if split == "train" else 1)
    with applied(Config.from_env()):
        p = {"source": "cifar100", "n_tasks": 10, "index": 1}
        idx = build("class_split", "t1", 0, 16, {**p, "class_order": "index", "holdout": 0.0})
        assert idx.class_ids == list(range(10, 20))
        assert (len(idx.train), len(idx.val), len(idx.test)) == (30, 0, 10)  # all of train, no validation
        held = build("class_split", "t1", 0, 16, p)
        assert (len(held.train) + len(held.val), len(held.test)) == (30, 10) and len(held.val) > 0
        bil = build("class_split", "t1", 0, 16, {**p, "class_order": "index", "interpolation": "bilinear"})
        assert not torch.equal(bil.test.x, idx.test.x)  # the same images, resized the other way
        with pytest.raises(CmbenchError, match="class_order 'sorted'"):
            build("class_split", "t1", 0, 16, {**p, "class_order": "sorted"})
    a = _decode(str(tmp_path / "data" / "cifar100" / "test" / "c000" / "0.jpg"), 8, interpolation="bilinear")[0]
    b = _decode(str(tmp_path / "data" / "cifar100" / "test" / "c000" / "0.jpg"), 8)[0]
    assert a.shape == b.shape == (3, 8, 8) and not np.array_equal(a, b)
    # pixels in [0, 1] unchanged: mean 0, std 1, instead of the checkpoint's config
    cfg = {"kind": "timm", "model": "vit_tiny_patch16_224", "pretrained": False, "kwargs": {"img_size": 16}}
    plain = create_backbone(TimmViT.model_validate(cfg)).normalize
    infl = create_backbone(TimmViT.model_validate({**cfg, "input_mean": [0, 0, 0], "input_std": [1, 1, 1]})).normalize
    assert plain.mean.flatten().tolist() == [0.5] * 3 and infl.std.flatten().tolist() == [1.0] * 3
    with pytest.raises(ValueError, match="input_mean and input_std go together"):
        TimmViT.model_validate({**cfg, "input_mean": [0, 0, 0]})
    # ImageNet-R's shipped split: 24,000 train and 6,000 test files over 200 classes, read from
    # the folders as distributed; a missing file is one line naming it
    spec = shipped_split("imagenet_r")
    assert (len(spec["train"]), len(spec["test"]), len(shipped_classes("imagenet_r"))) == (24000, 6000, 200)
    assert not set(spec["train"]) & set(spec["test"])
    root = tmp_path / "data" / "imagenet_r"
    for rel in spec["train"] + spec["test"]:
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"")  # only the file list is read before decoding
    with applied(Config.from_env()):
        from cmbench.data.vision import _shipped_files

        _, files, labels, names = _shipped_files("imagenet_r", "test")
        assert len(files) == 6000 and names == shipped_classes("imagenet_r")
        assert labels[0] == names.index(spec["test"][0].split("/")[0])
        (root / spec["test"][5]).unlink()
        with pytest.raises(CmbenchError, match=r"1 of the 6000 test images of its shipped split are missing"):
            _shipped_files("imagenet_r", "test")


def test_data_export_writes_the_folder_layout_the_loader_reads(tmp_path, monkeypatch):
    """`cmbench data export` with a stand-in for the `datasets` library (no network)."""
    import sys
    import types

    from PIL import Image

    from cmbench.data import build
    from cmbench.data.export import export

    rng = np.random.default_rng(0)

    def load_dataset(path, config=None, split=None):
        assert path == "tanganke/eurosat"
        n = 20 if split == "train" else 10
        return [
            {"image": Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)), "label": i % 10}
            for i in range(n)
        ]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.setenv("CMBENCH_DATA_ROOT", str(tmp_path))
    export("eurosat", log=lambda s: None)
    assert len(list((tmp_path / "eurosat" / "train").rglob("*.png"))) == 20
    td = build("eurosat", "eurosat", 0, 8, {})
    assert len(td.train) + len(td.val) == 20 and len(td.test) == 10


@pytest.mark.slow
@pytest.mark.parametrize("suite_file", ["clip-vit-b32-ta8.yaml", "clip-vit-b16-ta8.yaml", "clip-vit-l14-ta8.yaml"])
def test_full_size_hf_clip_vision_checkpoint_gives_transformers_features(suite_file, tmp_path):
    """At the real sizes: a random transformers CLIPVisionModel with the suite backbone's
    architecture, saved as safetensors the way FusionBench's experts are, read by the expert
    loader and mapped to open_clip names, gives transformers' own image features (float32)."""
    transformers = pytest.importorskip("transformers")
    from cmbench.models.checkpoint import check_matches, hf_clip_vision_to_open_clip, load_checkpoint
    from cmbench.models.clip import build_open_clip
    from cmbench.suite import load_suite

    backbone = load_suite(Path(__file__).parents[1] / "suites" / suite_file).backbone
    visual = build_open_clip(backbone, pretrained=False).visual.eval()  # the architecture, not the weights
    block = visual.transformer.resblocks[0]
    act = type(block.mlp.gelu).__name__
    cfg = transformers.CLIPVisionConfig(
        hidden_size=visual.transformer.width,
        num_hidden_layers=visual.transformer.layers,
        num_attention_heads=block.attn.num_heads,
        intermediate_size=block.mlp.c_fc.out_features,
        image_size=visual.image_size[0],
        patch_size=visual.conv1.kernel_size[0],
        hidden_act={"QuickGELU": "quick_gelu", "GELU": "gelu"}[act],
        layer_norm_eps=block.ln_1.eps,
    )
    torch.manual_seed(0)
    hf = transformers.CLIPVisionModel(cfg).eval()
    hf.save_pretrained(tmp_path / "expert", safe_serialization=True)
    theta0 = {"visual." + k: v for k, v in visual.state_dict().items()}
    mapped = hf_clip_vision_to_open_clip(load_checkpoint(tmp_path / "expert" / "model.safetensors"), theta0)
    check_matches(mapped, theta0, suite_file)
    visual.load_state_dict({k.removeprefix("visual."): v for k, v in mapped.items()})
    visual.proj = None  # compare before the projection a CLIPVisionModel does not have
    x = torch.randn(2, 3, *visual.image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(pixel_values=x).pooler_output
        got = visual(x)
    diff = (got - ref).abs().max().item()
    print(
        f"{backbone.model}: {sum(p.numel() for p in hf.parameters()) / 1e6:.0f}M parameters, "
        f"max |open_clip - transformers| = {diff:.2e} (features up to {ref.abs().max().item():.2f})"
    )
    assert diff < 1e-4 * max(1.0, ref.abs().max().item())
