"""The stand-ins a rehearsal writes where the real loaders look: backbone weights, datasets
(hub copies and image folders) and experts, each in its real format."""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path
from typing import Any, cast

import numpy as np

from .. import CmbenchError
from ..catalog import TEXT_DATASETS
from ..suite import OpenCLIP, Rehearsal, Suite


# -- backbone weights ------------------------------------------------------------------------


# the stand-ins' fixed commit in the HF cache layout (a real cache holds the repo's sha)
COMMIT = "0" * 40


def rehearsal_of(suite: Suite) -> Rehearsal:
    """The suite's rehearsal section (a suite ``capped_suite`` made has one)."""
    if suite.rehearsal is None:
        raise CmbenchError(f"suite {suite.name} has no rehearsal section: rehearse it with `cmbench run --rehearse`")
    return suite.rehearsal


def hub_file(repo: str, filename: str, repo_type: str = "model") -> Path:
    """The path ``hf_hub_download(repo, filename)`` resolves offline (``refs/main`` -> snapshot)."""
    folder = Path(os.environ["HF_HUB_CACHE"]) / f"{repo_type}s--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(COMMIT)
    path = folder / "snapshots" / COMMIT / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _save(state: dict, path: Path) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")  # renamed into place: a killed writer leaves no file
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    os.replace(tmp, path)


def write_backbone(suite: Suite, seed: int) -> Path | None:
    """The suite's architecture at random (seeded), as the pretrained tag's checkpoint file."""
    import torch

    b = suite.backbone
    if b.kind == "open_clip" and b.pretrained and b.config is None:
        import open_clip

        hub = (open_clip.get_pretrained_cfg(b.model, b.pretrained) or {}).get("hf_hub", "").strip("/")
        if not hub:
            raise CmbenchError(f"rehearsal: open_clip {b.model}/{b.pretrained} has no hub repo to stand in for")
        path = hub_file(hub, "open_clip_model.safetensors")
        if not path.exists():
            quick = bool(open_clip.get_pretrained_cfg(b.model, b.pretrained).get("quick_gelu"))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = open_clip.create_model(b.model, pretrained=None, force_quick_gelu=quick)
            _save(model.state_dict(), path)
        return path
    if b.kind == "timm" and b.pretrained:
        import timm

        cfg = timm.models.get_pretrained_cfg(b.model)
        if cfg is None or not cfg.hf_hub_id:
            raise CmbenchError(f"backbone.model {b.model}: timm knows no hub checkpoint for it to stand in for")
        path = hub_file(cfg.hf_hub_id, "model.safetensors")
        if not path.exists():
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = timm.create_model(b.model, pretrained=False, **b.kwargs)
            _save(model.state_dict(), path)
        return path
    if b.kind == "hf_seq2seq":
        return _write_text_backbone(b.model, seed)
    return None  # random init or harness-pretrained already: nothing is downloaded


def _write_text_backbone(repo: str, seed: int) -> Path:
    """A text model's repository in the hub cache: its config, random weights (seeded) in
    ``model.safetensors`` and a stand-in tokenizer with T5's special tokens (the real
    SentencePiece vocabulary is not at hand: words of the stand-in GLUE sentences, the label
    words and numbers, then filler tokens up to the model's vocabulary size, so every id a
    random model generates decodes)."""
    from ..models.seq2seq import FLAN_T5_BASE, random_model

    if repo != "google/flan-t5-base":
        raise CmbenchError(f"rehearsal: no stand-in architecture is known for {repo!r} (google/flan-t5-base is)")
    weights = hub_file(repo, "model.safetensors")
    if not weights.exists():
        model = cast(Any, random_model(FLAN_T5_BASE, seed))  # a transformers model: save_pretrained
        model.save_pretrained(weights.parent)
        stand_in_tokenizer(cast(int, FLAN_T5_BASE["vocab_size"])).save_pretrained(weights.parent)
    return weights


def stand_in_tokenizer(vocab_size: int):
    """A word-level tokenizer with T5's special tokens (<pad> 0, </s> 1, <unk> 2; </s>
    appended to every text) over the stand-in vocabulary, ``vocab_size`` entries."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from ..models.seq2seq import GLUE_TEMPLATES

    words = list(GLUE_WORDS) + [f"{x / 10:.1f}" for x in range(51)]
    for t in GLUE_TEMPLATES.values():
        words += t["input_text"].split() + (
            list(t["target_text"].values()) if isinstance(t["target_text"], dict) else []
        )
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in words:
        vocab.setdefault(w, len(vocab))
    for i in range(len(vocab), vocab_size):
        vocab[f"<w{i}>"] = i
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


# -- datasets ---------------------------------------------------------------------------------


def split_size(source: str, split: str, r: Rehearsal) -> int:
    """Examples the rehearsal writes for ``split`` (train or test) of ``source``: the real
    split's size (an image source's, or a GLUE task's) scaled, then capped."""
    from ..data.text import GLUE_SIZES
    from ..data.vision import SPLIT_SIZES

    real = SPLIT_SIZES.get(source) or GLUE_SIZES[source.removeprefix("glue_")]
    n = math.ceil(real[0 if split == "train" else 1] * r.scale)
    cap = (r.max_train_per_split or r.max_per_split) if split == "train" else r.max_per_split
    return min(n, cap) if cap else n


def _image(rng: np.random.Generator, label: int, n_classes: int, side: int, mode: str) -> bytes:
    """A class-coloured noisy image at the source's native size, encoded as the source is."""
    from PIL import Image

    hue = np.array([(label * 97) % 256, (label * 57 + 80) % 256, (label * 31 + 160) % 256], dtype=np.float32)
    img = np.clip(hue + rng.normal(0, 40, (side, side, 3)), 0, 255).astype(np.uint8)
    im = Image.fromarray(img if mode == "RGB" else img[..., 0])
    buf = io.BytesIO()
    im.save(buf, "PNG" if side <= 96 else "JPEG", quality=90)
    return buf.getvalue()


def write_datasets(suite: Suite, r: Rehearsal) -> int:
    """Every source the suite's tasks read: CLIP tasks as their hub copy's datasets cache,
    class-incremental sources as image folders. Returns the number of images written."""
    from ..data.vision import CIL_SOURCES, clip_tasks

    sources = []
    shipped = {
        t.params["source"] for t in suite.tasks if t.dataset == "class_split" and t.params.get("split") == "shipped"
    }
    for t in suite.tasks:
        src = t.params.get("source") if t.dataset == "class_split" else t.dataset
        if src not in sources:
            sources.append(src)
    n = 0
    for src in sources:
        if src in TEXT_DATASETS:
            n += _write_glue(str(src).removeprefix("glue_"), r)
        elif src in clip_tasks():
            n += _write_hub_copy(src, r)
        elif src in shipped:
            n += _write_shipped(str(src), r)
        elif src in CIL_SOURCES:
            n += _write_folder(src, r)
        else:
            raise CmbenchError(f"rehearsal: dataset {src!r} has no known split sizes to stand in for")
    return n


def hub_dataset_cache(repo: str, config: str | None, features, splits: dict) -> bool:
    """Write the ``datasets`` cache a real ``load_dataset(repo, config)`` leaves behind:
    ``HF_DATASETS_CACHE/<ns>___<name>/<config>/0.0.0/<sha>/{name-split.arrow,dataset_info.json}``;
    ``splits``: the hub's split name -> an iterable of rows. False if it is there already."""
    import datasets
    from datasets.arrow_writer import ArrowWriter
    from datasets.naming import camelcase_to_snakecase

    parts = repo.split("/")
    name = camelcase_to_snakecase(parts[-1])
    d = Path(os.environ["HF_DATASETS_CACHE"]).joinpath(
        "___".join(parts[:-1] + [name]), config or "default", "0.0.0", COMMIT
    )
    if (d / "dataset_info.json").exists():
        return False
    d.mkdir(parents=True, exist_ok=True)
    infos = datasets.SplitDict()
    for split, rows in splits.items():
        w = ArrowWriter(features=features, path=str(d / f"{name}-{split}.arrow"))
        for row in rows:
            w.write(row)
        count, nbytes = w.finalize()
        w.close()
        infos.add(datasets.SplitInfo(name=split, num_examples=count, num_bytes=nbytes, dataset_name=name))
    # written last: its presence marks a complete copy (for us and for `datasets`)
    datasets.DatasetInfo(
        features=features, splits=infos, config_name=config or "default", dataset_name=name, version="0.0.0"
    ).write_to_directory(str(d))
    return True


def _write_hub_copy(source: str, r: Rehearsal) -> int:
    """A CLIP task's hub copy, as its ``datasets`` cache (:func:`hub_dataset_cache`)."""
    import datasets

    from ..data.vision import NATIVE_IMAGE, clip_tasks

    meta = clip_tasks()[source]
    names = meta["classnames"]
    side, mode = NATIVE_IMAGE[source]
    written = 0
    by_repo: dict[tuple, list[tuple[str, str]]] = {}
    for split in ("train", "test"):
        spec = meta["hub"][split]
        by_repo.setdefault((spec["path"], spec.get("config")), []).append((split, spec["split"]))
    cols = meta["hub"]["test"].get("columns", {})
    img_col, lab_col = cols.get("image", "image"), cols.get("label", "label")
    features = datasets.Features({img_col: datasets.Image(), lab_col: datasets.ClassLabel(names=names)})

    def rows(ours: str, n: int):
        rng = np.random.default_rng([r.seed, ours == "test", len(names)])
        for i in range(n):
            label = i % len(names)
            yield {img_col: {"bytes": _image(rng, label, len(names), side, mode), "path": None}, lab_col: label}

    for (repo, config), splits in by_repo.items():
        sizes = {ours: split_size(source, ours, r) for ours, _ in splits}
        if hub_dataset_cache(repo, config, features, {theirs: rows(ours, sizes[ours]) for ours, theirs in splits}):
            written += sum(sizes.values())
    return written


GLUE_WORDS = (
    "the a film story cast plot music scene actor writer movie book play song city river man woman child dog "
    "cat house car road good bad long short old new bright dark quick slow happy sad calm loud rich poor"
).split()


def glue_features(task: str):
    """The columns of GLUE's hub copy of ``task`` (``nyu-mll/glue``): its text fields, the
    label (class names, or a float for STS-B) and ``idx``."""
    import datasets

    from ..models.seq2seq import GLUE_TEMPLATES

    t = GLUE_TEMPLATES[task]
    words = t["target_text"]
    label = datasets.Value("float32") if isinstance(words, str) else datasets.ClassLabel(names=list(words.values()))
    return datasets.Features(
        {**{f: datasets.Value("string") for f in t["fields"]}, "label": label, "idx": datasets.Value("int32")}
    )


def _write_glue(task: str, r: Rehearsal) -> int:
    """GLUE ``task``'s hub copy: generated sentences in its fields, labels cycling over its
    classes (STS-B: 0.0 to 5.0), train and the evaluated split at the real sizes (capped)."""
    from ..data.text import GLUE_REPO
    from ..models.seq2seq import GLUE_EVAL_SPLIT, GLUE_TEMPLATES

    t = GLUE_TEMPLATES[task]
    n_cls = len(t["target_text"]) if isinstance(t["target_text"], dict) else 0

    def rows(ours: str, n: int):
        rng = np.random.default_rng([r.seed, ours == "test", len(task)])
        for i in range(n):
            text = {f: " ".join(rng.choice(GLUE_WORDS, size=int(rng.integers(6, 24)))) for f in t["fields"]}
            label = i % n_cls if n_cls else round(float(rng.uniform(0, 5)), 2)
            yield {**text, "label": label, "idx": i}

    sizes = {ours: split_size(f"glue_{task}", ours, r) for ours in ("train", "test")}
    splits = {"train": rows("train", sizes["train"]), GLUE_EVAL_SPLIT[task]: rows("test", sizes["test"])}
    return sum(sizes.values()) if hub_dataset_cache(GLUE_REPO, task, glue_features(task), splits) else 0


def _write_folder(source: str, r: Rehearsal) -> int:
    """``ROOT/<source>/{train,test}/<class>/<i>.jpg`` (class names: CIFAR-100's real ones,
    else ``class_000``…: the real folder names of ImageNet-R/A, DomainNet and CUB are not
    known here; only their number matters to the code)."""
    from ..config import current
    from ..data.vision import CIL_SOURCES, NATIVE_IMAGE, clip_tasks

    c = CIL_SOURCES[source]
    names = clip_tasks()[source]["classnames"] if source in clip_tasks() else [f"class_{i:03d}" for i in range(c)]
    side, mode = NATIVE_IMAGE[source]
    written = 0
    for split in ("train", "test"):
        d = current().data_root / source / split
        done = d.parent / f".{split}.complete"
        if done.exists():
            continue
        rng = np.random.default_rng([r.seed, split == "test", c])
        for i in range(split_size(source, split, r)):
            label = i % c
            (d / names[label]).mkdir(parents=True, exist_ok=True)
            data = _image(rng, label, c, side, mode)
            ext = "png" if data.startswith(b"\x89PNG") else "jpg"
            (d / names[label] / f"{i}.{ext}").write_bytes(data)
            written += 1
        done.touch()
    return written


def _write_shipped(source: str, r: Rehearsal) -> int:
    """Every file the source's shipped split lists, at its path (``ROOT/<source>/<class>/<file>``,
    the dataset as distributed): the split file *is* the protocol, so no cap applies."""
    from ..config import current
    from ..data.vision import NATIVE_IMAGE, shipped_classes, shipped_split

    base = current().data_root / source
    done = base / ".shipped.complete"
    if done.exists():
        return 0
    spec, names = shipped_split(source), shipped_classes(source)
    index = {n: i for i, n in enumerate(names)}
    side, mode = NATIVE_IMAGE[source]
    rng = np.random.default_rng([r.seed, len(names)])
    written = 0
    for rel in spec["train"] + spec["test"]:
        label = index[rel.split("/")[0]]
        f = base / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(_image(rng, label, len(names), side, mode))  # a JPEG, whatever the name says
        written += 1
    done.touch()
    return written


# -- experts ----------------------------------------------------------------------------------


def perturbation(theta0: dict, r: Rehearsal, index: int) -> dict:
    """θ0 + Δ_index: for every weight matrix (conv kernels as out × rest) a rank-``expert_rank``
    product plus a sparse matrix (``expert_density`` of the entries), each with a Frobenius
    norm relative to the matrix's; 1-d parameters get a small dense perturbation. Not the
    projection ``visual.proj``: FusionBench's fine-tuning leaves it at θ0."""
    import torch

    gen = torch.Generator().manual_seed(r.seed * 100003 + index)
    out = {}
    for k, w in theta0.items():
        if not w.is_floating_point() or k == "visual.proj":
            out[k] = w.clone()
            continue
        norm = float(w.float().norm()) or 1.0
        if w.ndim >= 2:
            m = w.reshape(w.shape[0], -1)
            u = torch.randn(m.shape[0], r.expert_rank, generator=gen)
            v = torch.randn(r.expert_rank, m.shape[1], generator=gen)
            low = u @ v
            delta = low * (r.expert_lowrank * norm / float(low.norm()))
            nnz = max(1, int(r.expert_density * m.numel()))
            idx = torch.randint(0, m.numel(), (nnz,), generator=gen)
            vals = torch.randn(nnz, generator=gen)
            delta.view(-1).index_add_(0, idx, vals * (r.expert_sparse * norm / float(vals.norm())))
            out[k] = (m.float() + delta).reshape(w.shape).to(w.dtype)
        else:
            noise = torch.randn(w.shape, generator=gen)
            out[k] = (w.float() + noise * (r.expert_vector * norm / float(noise.norm()))).to(w.dtype)
    return out


def write_experts(suite: Suite, r: Rehearsal, root: Path) -> None:
    """Each task's expert in its checkpoint's format, where its ``path`` resolves: ``hf://``
    in the stand-in HF cache, a local path under ``root/experts`` (the suite is pointed
    there)."""
    import torch

    from ..artefacts import make_theta0
    from ..models.checkpoint import open_clip_to_hf_clip_vision

    theta0 = None
    for i, task in enumerate(suite.task_names()):
        spec = suite.experts.checkpoints[task]
        path = expert_path(spec.path, root)
        if path.exists():
            continue
        if theta0 is None:  # θ0 exactly as the run loads it (the stand-in weights, read back)
            theta0 = make_theta0(suite, suite.seeds[0])[0]
        if spec.format == "hf_seq2seq":
            _write_text_expert(suite, spec.path, theta0, r, i)
            continue
        state = perturbation(theta0, r, i)
        if spec.format == "hf_clip_vision":
            _save(open_clip_to_hf_clip_vision(state), path)
            (path.parent / "config.json").write_text(json.dumps(_hf_vision_config(suite), indent=1))
        elif spec.format == "task_vectors":
            tmp = path.with_name(path.name + ".tmp")
            torch.save({"model." + k: v for k, v in state.items()}, tmp)
            os.replace(tmp, path)
        else:  # open_clip / timm: the state dict under the backbone's own names
            _save(state, path)
        del state


def _write_text_expert(suite: Suite, path: str, theta0: dict, r: Rehearsal, index: int) -> None:
    """A text expert's repository: a LoRA-16 adapter where the name says ``lora-16`` (rank-16
    factors of the attention's q and v, alpha 32, scaled so B A is ``expert_lowrank`` of each
    matrix), else a full model (θ0 perturbed as the vision experts are), saved as
    transformers saves it."""
    import torch

    from ..models import create_backbone
    from ..models.seq2seq import ADAPTER_FILES, WEIGHT_FILE

    repo = path.removeprefix("hf://")
    if "lora-16" in repo:
        cfg = hub_file(repo, ADAPTER_FILES[0])
        gen = torch.Generator().manual_seed(r.seed * 100003 + index)
        factors = {}
        for k, w in theta0.items():
            if k.endswith(("SelfAttention.q.weight", "SelfAttention.v.weight")):
                a, b = torch.randn(16, w.shape[1], generator=gen), torch.randn(w.shape[0], 16, generator=gen)
                b *= r.expert_lowrank * float(w.norm()) / float((b @ a).norm()) / 2.0  # alpha / r = 2
                module = k.removesuffix(".weight")
                factors[f"base_model.model.{module}.lora_A.weight"] = a
                factors[f"base_model.model.{module}.lora_B.weight"] = b
        _save(factors, hub_file(repo, ADAPTER_FILES[1]))
        cfg.write_text(json.dumps({"peft_type": "LORA", "r": 16, "lora_alpha": 32, "target_modules": ["q", "v"]}))
        return
    model = cast(Any, create_backbone(suite.backbone, theta0))  # a transformers model: save_pretrained
    model.load_state_dict(perturbation(theta0, r, index))
    model.save_pretrained(hub_file(repo, WEIGHT_FILE).parent)


def expert_path(path: str, root: Path) -> Path:
    """Where a rehearsal writes the expert the suite names ``path``."""
    if path.startswith("hf://"):
        parts = path[len("hf://") :].split("/")
        return hub_file("/".join(parts[:2]), "/".join(parts[2:]) or "model.safetensors")
    return root / "experts" / Path(path).name


def local_experts(suite: Suite, root: Path) -> Suite:
    """Local expert paths pointed at the rehearsal's copies (hub paths resolve by themselves)."""
    if suite.experts.source != "checkpoints":
        return suite
    ck = {
        t: s.model_copy(
            update={
                "sha256": None,  # stand-ins have their own bytes
                "path": s.path if s.path.startswith("hf://") else str(expert_path(s.path, root)),
            }
        )
        for t, s in suite.experts.checkpoints.items()
    }
    return suite.model_copy(update={"experts": suite.experts.model_copy(update={"checkpoints": ck})})


def _hf_vision_config(suite: Suite) -> dict:
    from ..models import feature_dim

    assert isinstance(suite.backbone, OpenCLIP)  # hf_clip_vision experts go with an open_clip backbone
    v = suite.backbone.open_clip_config()["vision_cfg"]
    return {
        "architectures": ["CLIPVisionModel"],
        "model_type": "clip_vision_model",
        "hidden_size": v["width"],
        "intermediate_size": int(v["width"] * v.get("mlp_ratio", 4.0)),
        "num_hidden_layers": v["layers"],
        "num_attention_heads": v["width"] // v.get("head_width", 64),
        "image_size": suite.backbone.image_size,
        "patch_size": v["patch_size"],
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": feature_dim(suite.backbone),
    }
