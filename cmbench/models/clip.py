"""Real-scale backbones: CLIP image encoders (open_clip) and timm ViTs.

Both take the harness's canonical input (images in [-1, 1], see ``models.features``) and
apply their own normalisation inside ``forward``, so datasets are decoded once as uint8
and shared by every backbone. The merged object is the module's state dict: for CLIP the
image tower under open_clip's names (``visual.*``), for timm the ViT without its classifier.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import cast

import torch
from torch import Tensor, nn

from .. import CmbenchError
from ..config import current

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class _Normalize(nn.Module):
    mean: Tensor  # buffers
    std: Tensor

    def __init__(self, mean, std):
        super().__init__()
        # buffers are not persistent: the merged state dict holds only weights
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:  # x in [-1, 1]
        return ((x + 1) * 0.5 - self.mean) / self.std


def build_open_clip(cfg, pretrained: bool, seed: int = 0) -> nn.Module:
    """The full open_clip model (image and text towers). ``pretrained``: load the tag's
    weights from the local cache (``CMBENCH_ALLOW_DOWNLOAD=1`` lets open_clip fetch them).
    Random initialisation (custom config, no tag) is seeded, so θ0 and its text tower agree
    between calls."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build_open_clip(cfg, pretrained)


def _build_open_clip(cfg, pretrained: bool) -> nn.Module:
    import open_clip

    if cfg.config is not None:
        from open_clip.model import CLIP

        c = cfg.config
        return CLIP(
            embed_dim=c["embed_dim"],
            vision_cfg=c["vision_cfg"],
            text_cfg=c["text_cfg"],
            quick_gelu=c.get("quick_gelu", False),
        )
    # the architecture the tag's weights need: OpenAI's CLIPs use QuickGELU, which open_clip's
    # `ViT-B-32` config does not say (it only warns when the tag's weights are loaded into GELU)
    tag_cfg = (open_clip.get_pretrained_cfg(cfg.model, cfg.pretrained) or {}) if cfg.pretrained else {}
    quick = bool(tag_cfg.get("quick_gelu"))
    if not pretrained or cfg.pretrained is None:
        import logging

        logging.disable(logging.WARNING)  # open_clip warns that no weights were loaded: θ0 is loaded next
        try:
            return open_clip.create_model(cfg.model, pretrained=None, force_quick_gelu=quick)
        finally:
            logging.disable(logging.NOTSET)
    if not current().allow_download:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        model = open_clip.create_model(
            cfg.model, pretrained=cfg.pretrained, require_pretrained=True, force_quick_gelu=quick
        )
        hub = tag_cfg.get("hf_hub", "").strip("/")
        _pin_hub_weights(
            f"open_clip {cfg.model}/{cfg.pretrained}",
            hub,
            ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),
        )
        return model
    except CmbenchError:
        raise
    except Exception as e:  # noqa: BLE001 - missing cache, no network, bad tag
        raise CmbenchError(
            f"backbone: cannot load open_clip {cfg.model} / {cfg.pretrained} ({str(e).splitlines()[0][:200]}); "
            "put the weights in the HF / open_clip cache or rerun with --allow-download"
        ) from None


def _pin_hub_weights(source: str, repo: str, filenames: tuple[str, ...]) -> None:
    """Pin the weight file a pretrained tag was loaded from (``cmbench.pins``), where it is
    a Hugging Face hub file in the local cache."""
    if not repo:
        return
    from huggingface_hub import try_to_load_from_cache

    from .. import pins

    for name in filenames:
        path = try_to_load_from_cache(repo, name)
        if isinstance(path, str):
            pins.check("backbone weights", source, [Path(path)], pins.hub_revision(Path(path)))
            return


class CLIPImageEncoder(nn.Module):
    """CLIP's image tower: f(x) = visual(normalise(x)), the embedding before the logit scale.
    Zero-shot heads (``artefacts.make_heads``) normalise it and take cosines with the text
    embeddings, exactly CLIP's zero-shot classifier.

    The output projection ``visual.proj`` is a buffer, not a parameter: the reference
    (FusionBench) fine-tunes and merges a ``CLIPVisionModel``, which has no projection; it
    stays at θ0's value beside the text tower. So no method moves it by gradients (ODE-M,
    Fisher weights, fine-tuning), while it stays in the state dict that checkpoints hold."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        proj = getattr(visual, "proj", None)
        if isinstance(proj, nn.Parameter):
            del visual.proj
            visual.register_buffer("proj", proj.detach())
        self.visual = visual
        self.normalize = _Normalize(OPENAI_MEAN, OPENAI_STD)

    def reference_roles(self) -> dict:
        """open_clip holds the position table as a bare tensor; in the reference layout
        (transformers' CLIP) it is an ``nn.Embedding``, a leaf module (see cmbench.layout)."""
        from ..layout import Role

        return {"visual.positional_embedding": Role("embedding", leaf=True)}

    @classmethod
    def create(cls, cfg) -> "CLIPImageEncoder":
        return cls(cast(nn.Module, build_open_clip(cfg, pretrained=False).visual))

    def forward(self, x: Tensor) -> Tensor:
        return self.visual(self.normalize(x))


class TimmEncoder(nn.Module):
    """A timm model without its classifier, normalising with its pretrained config (or the
    suite's ``input_mean``/``input_std``: InfLoRA feeds pixels in [0, 1] unchanged)."""

    def __init__(self, model: nn.Module, mean=None, std=None):
        super().__init__()
        self.model = model
        pc = getattr(model, "pretrained_cfg", None) or {}
        if mean is None:
            mean, std = pc.get("mean", (0.5, 0.5, 0.5)), pc.get("std", (0.5, 0.5, 0.5))
        self.normalize = _Normalize(mean, std)
        self.num_features = model.num_features

    @classmethod
    def create(cls, cfg, pretrained: bool = False) -> "TimmEncoder":
        import timm

        if pretrained and not current().allow_download:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            model = timm.create_model(cfg.model, pretrained=pretrained, num_classes=0, **cfg.kwargs)
            if pretrained:
                _pin_hub_weights(
                    f"timm {cfg.model}",
                    (cast(dict, model.pretrained_cfg) or {}).get("hf_hub_id") or "",
                    ("model.safetensors", "pytorch_model.bin"),
                )
        except CmbenchError:
            raise
        except Exception as e:  # noqa: BLE001
            raise CmbenchError(
                f"backbone: cannot create timm {cfg.model} (pretrained={pretrained}): "
                f"{str(e).splitlines()[0][:200]}; put the weights in the HF cache or rerun with "
                "--allow-download"
            ) from None
        return cls(model, cfg.input_mean, cfg.input_std)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(self.normalize(x))


def pretrained_state(cfg, seed: int) -> dict[str, Tensor]:
    """θ0 of a real-scale backbone: its published weights (or, with no tag / a custom
    config, the random initialisation drawn from ``seed``)."""
    if cfg.kind == "open_clip":
        return CLIPImageEncoder(cast(nn.Module, build_open_clip(cfg, pretrained=True, seed=seed).visual)).state_dict()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TimmEncoder.create(cfg, pretrained=cfg.pretrained).state_dict()


@torch.no_grad()
def zero_shot_weights(
    cfg,
    classnames: list[str],
    templates: list[str],
    seed: int,
    device: str = "cpu",
    model: nn.Module | None = None,
    batch_size: int = 256,
) -> Tensor:
    """CLIP zero-shot head: for each class, encode every template filled with its name,
    L2-normalise, average over templates, L2-normalise again; times exp(logit_scale).

    Prompts are encoded ``batch_size`` at a time (one class per call took 6.6 min for TA8's
    1 140 classes on a CPU); pass ``model`` to reuse one loaded model across tasks."""
    import open_clip

    if model is None:
        model = build_open_clip(cfg, pretrained=True, seed=seed).to(device).eval()
    tokenizer = open_clip.get_tokenizer(cfg.model) if cfg.config is None else open_clip.tokenize
    prompts = [t.format(c=c) for c in classnames for t in templates]
    # model: open_clip's CLIP (nn.Module's __getattr__ types its attributes as Tensor | Module)
    emb = torch.cat(
        [
            model.encode_text(tokenizer(prompts[i : i + batch_size]).to(device)).float()  # type: ignore[operator]
            for i in range(0, len(prompts), batch_size)
        ]
    )
    emb = nn.functional.normalize(emb, dim=-1).view(len(classnames), len(templates), -1).mean(1)
    return nn.functional.normalize(emb, dim=-1).cpu() * model.logit_scale.exp().float().cpu()  # type: ignore[operator]
