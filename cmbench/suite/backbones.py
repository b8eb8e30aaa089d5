"""The backbones a suite can name: the tiny ViT of the micro suites, OpenCLIP and timm models,
and Hugging Face sequence-to-sequence language models (Flan-T5)."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Field, model_validator

from .base import Strict


class TinyViT(Strict):
    """The tiny timm VisionTransformer used by the micro suites (θ0 pretrained by the harness)."""

    kind: Literal["tiny_vit"] = "tiny_vit"
    img_size: int = Field(16, gt=0, le=512)
    patch_size: int = Field(4, gt=0, le=64)
    # bounded: a micro backbone, never a size that exhausts the machine before a line is said
    in_chans: int = Field(1, gt=0, le=16)
    embed_dim: int = Field(64, gt=0, le=4096)
    depth: int = Field(4, gt=0, le=64)
    num_heads: int = Field(4, gt=0, le=64)
    mlp_ratio: float = Field(2.0, gt=0, le=16, allow_inf_nan=False)
    linearized: bool = Field(False, description="fine-tune and merge the model linearised at θ0 (tangent space)")
    act: Literal["gelu", "relu"] = Field(
        "gelu",
        description="the MLPs' activation; relu: exactly sparse activations, as large pretrained "
        "transformers' MLPs are nearly (Li et al. 2023), which a model this small does not become with gelu",
    )

    @model_validator(mode="after")
    def _shapes(self):
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size ({self.img_size}) must be a multiple of patch_size ({self.patch_size})")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim ({self.embed_dim}) must be a multiple of num_heads ({self.num_heads})")
        return self

    @property
    def image_size(self) -> int:
        return self.img_size

    @property
    def feature_dim(self) -> int:
        return self.embed_dim


Backbone = TinyViT  # the default kind; ``AnyBackbone`` is the union a suite accepts

# Backbone fields added after results were committed: at their defaults they are left out of
# hashes and keys (``keyed``), so results computed before they existed stay valid.
LATER_BACKBONE_FIELDS = {"act": "gelu"}


def keyed(backbone, **dump) -> dict:
    """A backbone's settings as hashes and keys see them (later fields dropped at their defaults)."""
    out = backbone.model_dump(**dump)
    for f, default in LATER_BACKBONE_FIELDS.items():
        if out.get(f, default) == default:
            out.pop(f, None)
    return out


@functools.lru_cache(maxsize=1)
def open_clip_configs() -> dict[str, dict]:
    """open_clip's architectures by name, read from the JSON files it ships and registers at
    import (``open_clip/model_configs/*.json`` with embed_dim, vision_cfg and text_cfg), the
    same files without the import: importing open_clip pulls in timm and the Hugging Face
    libraries, seconds that a suite's validation (and its error line) must not wait for."""
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    where = [Path(d) / "model_configs" for d in (spec.submodule_search_locations or [])] if spec else []
    configs = {}
    for f in sorted(p for d in where if d.is_dir() for p in d.glob("*.json")):
        cfg = json.loads(f.read_text())
        if {"embed_dim", "vision_cfg", "text_cfg"} <= set(cfg):
            configs[f.stem] = cfg
    if configs:
        return configs
    import open_clip  # a layout we do not know: ask the library

    return {m: open_clip.get_model_config(m) for m in open_clip.list_models()}


class OpenCLIP(Strict):
    """A CLIP image encoder through open_clip; the merged model is ``visual.*``.

    ``model`` is an open_clip architecture (``ViT-B-32``, ``ViT-B-16``, ``ViT-L-14``) and
    ``pretrained`` its tag (``openai``), loaded from the local open_clip / HF cache (set
    ``CMBENCH_ALLOW_DOWNLOAD=1`` to fetch). ``config`` gives a custom architecture instead
    (an open_clip model config: tiny models in tests); ``pretrained: null`` initialises it
    from the seed. Zero-shot heads come from the text tower (see ``Heads``).
    """

    kind: Literal["open_clip"]
    model: str = Field(min_length=1)
    pretrained: Optional[str] = "openai"
    config: Optional[dict[str, Any]] = Field(
        None, description="open_clip model config (embed_dim, vision_cfg, text_cfg)"
    )
    linearized: bool = False

    @model_validator(mode="after")
    def _known(self):
        if self.config is None:
            if self.model not in open_clip_configs():
                raise ValueError(
                    f"unknown open_clip model {self.model!r}; e.g. ViT-B-32, ViT-B-16, ViT-L-14 (or give `config`)"
                )
        elif not {"embed_dim", "vision_cfg", "text_cfg"} <= set(self.config):
            raise ValueError("config needs embed_dim, vision_cfg and text_cfg (an open_clip model config)")
        return self

    def open_clip_config(self) -> dict:
        return self.config if self.config is not None else copy.deepcopy(open_clip_configs()[self.model])

    @property
    def image_size(self) -> int:
        size = self.open_clip_config()["vision_cfg"].get("image_size", 224)
        return size if isinstance(size, int) else size[0]

    @property
    def feature_dim(self) -> int:
        return int(self.open_clip_config()["embed_dim"])


_Positive = Annotated[float, Field(gt=0)]


class TimmViT(Strict):
    """A timm ViT (e.g. ``vit_base_patch16_224.augreg_in21k_ft_in1k``: ImageNet-21k
    pretrained, ImageNet-1k fine-tuned, as in the InfLoRA / P&M line of work). ``kwargs``
    go to ``timm.create_model`` (tiny test models: ``img_size``, ``depth``, …)."""

    kind: Literal["timm"]
    model: str = Field(min_length=1)
    pretrained: bool = True
    kwargs: dict[str, Any] = Field(default_factory=dict)
    linearized: bool = False
    input_mean: Optional[tuple[float, float, float]] = Field(
        None,
        description="per-channel mean subtracted from pixels in [0, 1] (default: the checkpoint's timm config; "
        "InfLoRA feeds [0, 1] unchanged: mean 0, std 1)",
    )
    input_std: Optional[tuple[_Positive, _Positive, _Positive]] = Field(
        None, description="per-channel std (with input_mean)"
    )

    @model_validator(mode="after")
    def _both(self):
        if (self.input_mean is None) != (self.input_std is None):
            raise ValueError("input_mean and input_std go together; give both or neither")
        return self

    @property
    def image_size(self) -> int:
        return int(self.kwargs.get("img_size", 224))


class HFSeq2Seq(Strict):
    """A Hugging Face sequence-to-sequence language model of the T5 family (``model``: a hub
    repository such as ``google/flan-t5-base``, or a local directory), its weights and
    tokenizer read from the hub cache (``models.seq2seq``). The merged object is the whole
    model's state dict; tasks are text to text, scored on the generated answers (``heads:
    {kind: generative}``)."""

    kind: Literal["hf_seq2seq"]
    model: str = Field(min_length=1, max_length=300)
    revision: Optional[str] = Field(None, max_length=100, description="the hub revision (default: main)")
    tokenizer: Optional[str] = Field(None, max_length=300, description="the tokenizer's repository (default: model)")
    config: Optional[dict[str, Any]] = Field(
        None,
        description="a T5 config (d_model, num_layers, ...): a micro model pretrained by the harness (the "
        "suite's pretrain section) with the generated tasks' word-level tokenizer, instead of a hub model",
    )
    linearized: Literal[False] = False  # no tangent-space text model

    @model_validator(mode="after")
    def _micro(self):
        if self.config is not None:
            if self.tokenizer is not None or self.revision is not None:
                raise ValueError("a micro text model (config) has the generated tokenizer and no revision")
            bad = sorted(k for k in self.config if k in ("vocab_size", "model_type"))
            if bad:
                raise ValueError(f"config: {bad} are set by the harness (a T5 over the generated vocabulary)")
        return self

    @property
    def image_size(self) -> int:  # builders take an image size: text has none
        return 0


AnyBackbone = Annotated[Union[TinyViT, OpenCLIP, TimmViT, HFSeq2Seq], Field(discriminator="kind")]
