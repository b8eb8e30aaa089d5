"""Training recipes (#21, deviation 5): each method's own recipe over the suite's, random
resized crops drawn in the whole image's geometry, InfLoRA's test crop, and keys that stay
as they were for suites that use none of it."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cmbench import CmbenchError
from cmbench.suite import Augment, Suite, expand, load_suite
from cmbench.train import random_resized_crops

from .test_protocol_ttm import NANO_SPLIT

REPO = Path(__file__).resolve().parents[1]
SPLIT_SUITES = sorted(REPO.glob("suites/split-vit-*.yaml"))


@pytest.mark.parametrize("path", SPLIT_SUITES, ids=[p.stem for p in SPLIT_SUITES])
def test_split_vit_rows_train_with_their_papers_recipes(path):
    """LoRA rows: P&M's recipe (lr 1e-3); full-parameter rows: MagMax's sequential
    fine-tuning recipe (lr 1e-5, not the LoRA rate); both with InfLoRA's augmentation."""
    suite = load_suite(path)
    for spec in suite.methods:
        recipe = suite.training_of(spec)
        assert recipe.augment is not None, spec.display
        if spec.lora or suite.training.lora:  # InfLoRA's crops and flips
            assert recipe.lr == 1e-3 and recipe.optimizer == "adamw" and recipe.augment.hflip, spec.display
        else:  # open_clip's train crops, no flip, clipped gradients
            assert recipe.lr == 1e-5 and recipe.weight_decay == 0.1 and recipe.warmup_steps == 500, spec.display
            assert recipe.batch_size == 128 and recipe.epochs == 10 and recipe.grad_clip == 1.0, spec.display
            assert recipe.augment.scale == (0.9, 1.0) and not recipe.augment.hflip, spec.display
    test_crop = {t.params.get("crop_pct", 1.0) for t in suite.tasks}
    source = suite.tasks[0].params["source"]
    assert test_crop == ({1.0} if source == "cifar100" else {0.875})  # InfLoRA's test transforms


def _coordinate_image(w: int, h: int) -> np.ndarray:
    """Red = column, green = row, in the original geometry (0..255 across the image)."""
    xx, yy = np.meshgrid((np.arange(w) + 0.5) / w, (np.arange(h) + 0.5) / h)
    return np.stack([xx * 255, yy * 255, np.zeros_like(xx)]).astype(np.float32)


def test_random_resized_crops_are_drawn_in_the_original_geometry():
    """A 3:1 image squashed to a square: every crop's area fraction and aspect ratio, read
    back from the coordinates its pixels show, lie in the recipe's ranges."""
    w, h, side, out = 300, 100, 96, 32
    img = torch.from_numpy(_coordinate_image(w, h))[None]
    squashed = torch.nn.functional.interpolate(img, size=(side, side), mode="bilinear", align_corners=False)
    x = squashed.round().clamp(0, 255).to(torch.uint8).repeat(64, 1, 1, 1)
    aug = Augment(scale=(0.2, 0.6), ratio=(0.75, 1.333), hflip=False)
    crops = random_resized_crops(x, torch.full((64,), w / h), aug, torch.Generator().manual_seed(0), out)
    assert crops.shape == (64, 3, out, out)
    px = (crops + 1) * 127.5
    for c in px:
        fw = (c[0, :, -1].mean() - c[0, :, 0].mean()) / 255 * out / (out - 1)  # width as a fraction of w
        fh = (c[1, -1, :].mean() - c[1, 0, :].mean()) / 255 * out / (out - 1)
        area, ratio = float(fw * fh), float(fw * w / (fh * h))
        assert 0.2 * 0.85 <= area <= 0.6 * 1.15, area
        assert 0.75 * 0.85 <= ratio <= 1.333 * 1.15, ratio
    # the same generator state gives the same crops; flips mirror
    again = random_resized_crops(x, torch.full((64,), w / h), aug, torch.Generator().manual_seed(0), out)
    assert torch.equal(crops, again)
    flipped = random_resized_crops(
        x[:1], None, Augment(random_resized_crop=False, hflip=True), torch.Generator().manual_seed(3), side
    )
    plain = x[:1].float().div(127.5).sub(1)
    assert torch.allclose(flipped, plain, atol=1e-4) or torch.allclose(flipped, plain.flip(-1), atol=1e-4)


def test_class_split_test_crop_and_whole_train_view(tmp_path, monkeypatch):
    from PIL import Image

    from cmbench.data import build

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in range(200):
            d = tmp_path / "imagenet_r" / split / f"n{c:03d}"
            d.mkdir(parents=True)
            for i in range(1 if split == "test" else 3):
                Image.fromarray(rng.integers(0, 255, (12, 18, 3), dtype=np.uint8)).save(d / f"{i}.png")  # 18 wide
    monkeypatch.setenv("CMBENCH_DATA_ROOT", str(tmp_path))
    params = {"source": "imagenet_r", "n_tasks": 10, "index": 0, "crop_pct": 0.875}
    td = build("class_split", "t0", 0, 8, params)
    first = sorted((tmp_path / "imagenet_r" / "test").iterdir())[min(td.class_ids)] / "0.png"  # folder order
    want = Image.open(first).convert("RGB").resize((14, 9), Image.BICUBIC).crop((3, 0, 11, 8))  # 9 = round(8/0.875)
    assert torch.equal(td.test.x[0], torch.from_numpy(np.asarray(want).transpose(2, 0, 1).copy()))
    view = td.train_view(16)
    assert view.x.shape[1:] == (3, 16, 16) and torch.equal(view.y, td.train.y)
    assert torch.allclose(view.aspect, torch.full((len(view.y),), 18 / 12))
    with pytest.raises(CmbenchError, match="crop_pct"):
        build("class_split", "t0", 0, 8, {**params, "crop_pct": 1.5})


SPLIT = {**NANO_SPLIT, "methods": [{"name": "sequential"}]}


def test_a_methods_own_recipe_is_keyed_validated_and_trained_with(tmp_path):
    from cmbench.store import Store
    from cmbench.keys import job_inputs, key_of
    from cmbench.protocol import run

    plain = Suite.model_validate(SPLIT)
    env = plain.environment()
    assert not set(env["training"]) & {"optimizer", "augment", "warmup_steps", "precision", "momentum", "grad_clip"}
    own = {"lr": 1e-2, "optimizer": "adam", "warmup_steps": 0, "augment": {"scale": [0.5, 1.0]}}
    both = Suite.model_validate(
        {**SPLIT, "methods": [{"name": "sequential"}, {"name": "sequential", "label": "seq-own", "training": own}]}
    )
    assert both.hash() == plain.hash()  # a method's recipe keys its own jobs only
    j_plain, j_both, j_own = expand(plain)[0], *expand(both)
    assert key_of(job_inputs(plain, j_plain)) == key_of(job_inputs(both, j_both))
    assert key_of(job_inputs(both, j_own)) != key_of(job_inputs(both, j_both))
    assert both.training_of(j_own).optimizer == "adam" and both.training_of(j_own).augment.scale == (0.5, 1.0)
    store = Store(tmp_path / "cache")
    a, b = run(both, j_both, store, threads=1), run(both, j_own, store, threads=1)
    assert a["R"] != b["R"]  # trained with another recipe
    bf16 = Suite.model_validate({**SPLIT, "methods": [{"name": "sequential", "training": {"precision": "bf16"}}]})
    c = run(bf16, expand(bf16)[0], store, threads=1)
    assert c["R"] != a["R"] and all(0 <= v <= 1 for v in c["R"][-1])  # trains under bf16 autocast

    for bad, field in (
        ({"lr": -1}, "methods.1.training.lr"),
        ({"optimizer": "rmsprop"}, "methods.1.training.optimizer"),
        ({"augment": {"scale": [0.9, 0.1]}}, "methods.1.training.augment"),
        ({"lora": {"rank": 2}}, "methods.1.training.lora"),
    ):
        data = {**SPLIT, "methods": [{"name": "sequential"}, {"name": "sequential", "label": "x", "training": bad}]}
        f = tmp_path / "bad.yaml"
        f.write_text(yaml.safe_dump(data))
        with pytest.raises(CmbenchError, match=field.replace(".", r"\.")):
            load_suite(f)


def test_micro_tasks_in_colour_domains():
    """``colour``: a task's grey images painted bg + (fg − bg)·grey on three channels; ``random``
    a pair per image; without it the images are the grey ones, unchanged."""
    from cmbench.data import build

    grey = build("shapes", "shapes", 0, 16, {"n_train": 20, "n_val": 2, "n_test": 4})
    fg, bg = [1.0, 0.5, 0.0], [0.0, 0.0, 1.0]
    col = build("shapes", "shapes", 0, 16, {"n_train": 20, "n_val": 2, "n_test": 4, "colour": {"fg": fg, "bg": bg}})
    assert grey.train.x.shape == (20, 1, 16, 16) and col.train.x.shape == (20, 3, 16, 16)
    g = grey.train.x.float() / 255
    want = torch.tensor(bg).view(1, 3, 1, 1) + (torch.tensor(fg) - torch.tensor(bg)).view(1, 3, 1, 1) * g
    assert (col.train.x.float() / 255 - want).abs().max() < 1.5 / 255
    assert torch.equal(col.train.y, grey.train.y)
    rnd = build("digits", "d", 0, 16, {"colour": "random"}).train.x.float()
    assert rnd.shape[1] == 3 and not torch.allclose(rnd[0].amax((1, 2)), rnd[1].amax((1, 2)))
