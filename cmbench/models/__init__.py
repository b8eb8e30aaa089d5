"""Backbones and heads.

The merged object is the backbone's state dict. Heads are per task, fixed before any
expert is trained and shared by θ0, the experts and every merged model (as CLIP's
zero-shot heads are): a head maps L2-normalised features to logits.
"""

from __future__ import annotations

import contextlib
import os
from functools import lru_cache

import torch
from torch import Tensor, nn

from .. import CmbenchError
from ..suite import AnyBackbone

# Bump when a change alters any number a backbone produces: how it is built and initialised,
# its forward pass (incl. the linearised model and models/clip.py's encoders), the heads,
# and how ``features``/``accuracy`` feed images and count hits. Per backbone kind, so a
# change to one kind recomputes only its artefacts and jobs.
# open_clip 2: QuickGELU for OpenAI tags; the output projection frozen (a buffer)
_MODELS_VERSIONS = {"tiny_vit": 1, "open_clip": 2, "timm": 1, "hf_seq2seq": 1}


def models_version(cfg: AnyBackbone) -> int:
    """The version of the backbone code that computes with ``cfg`` (a key component)."""
    return _MODELS_VERSIONS[cfg.kind]


def layout_of(model: nn.Module):
    """What each state-dict entry of a backbone is (``cmbench.layout``), read from the
    plain model under a linearisation."""
    from ..layout import Layout, describe

    plain = model.model if isinstance(model, Linearized) else model
    return Layout({**describe(plain), **rms_norm_roles(plain)})


def rms_norm_roles(model: nn.Module) -> dict:
    """The norms ``cmbench.layout`` cannot know by class: RMS norms a model library writes
    itself (T5's ``T5LayerNorm``), recognised by what they hold: a leaf whose only parameter
    is a 1-d ``weight``, with a ``variance_epsilon``. None in the vision backbones."""
    from ..layout import Role

    out = {}
    for mname, m in model.named_modules():
        params = dict(m.named_parameters(recurse=False))
        if next(m.children(), None) is None and hasattr(m, "variance_epsilon") and list(params) == ["weight"]:
            if params["weight"].dim() == 1:
                out[f"{mname}.weight" if mname else "weight"] = Role("norm", True)
    return out


def feature_dim(cfg: AnyBackbone) -> int:
    """The backbone's feature width: from its config where it says (tiny ViT, open_clip),
    else from the model built once (timm)."""
    if cfg.kind == "timm":
        return _timm_feature_dim(cfg.model_dump_json())
    if cfg.kind == "hf_seq2seq":
        raise CmbenchError("a text backbone answers in text: it has no feature width (heads: generative)")
    return cfg.feature_dim


@lru_cache(maxsize=8)
def _timm_feature_dim(cfg_json: str) -> int:
    from ..suite import TimmViT

    # TimmEncoder.num_features: timm's int (nn.Module's __getattr__ types attributes as Tensor | Module)
    return int(create_backbone(TimmViT.model_validate_json(cfg_json)).num_features)  # type: ignore[arg-type]


def create_backbone(cfg: AnyBackbone, theta0: dict[str, Tensor] | None = None) -> nn.Module:
    """The backbone of a suite without a classifier: forward(x in [-1, 1]) -> features.

    ``tiny_vit``: a small timm VisionTransformer (micro suites). ``open_clip``: a CLIP image
    encoder (see :class:`CLIPImageEncoder`). ``timm``: any timm model, e.g. ViT-B/16.
    Weights are random here; θ0 is loaded by the caller (``artefacts.theta0``).

    With ``cfg.linearized`` and the θ0 it is linearised at, the model fine-tuned and merged
    is the first-order Taylor expansion around θ0 (see :class:`Linearized`); its state
    dict is still θ, so methods and checkpoints do not change.
    """
    model: nn.Module
    if cfg.kind == "tiny_vit":
        from timm.models.vision_transformer import VisionTransformer

        model = VisionTransformer(
            img_size=cfg.img_size,
            patch_size=cfg.patch_size,
            in_chans=cfg.in_chans,
            num_classes=0,
            embed_dim=cfg.embed_dim,
            depth=cfg.depth,
            num_heads=cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio,
            act_layer={"gelu": nn.GELU, "relu": nn.ReLU}[cfg.act],
            global_pool="token",
            class_token=True,
        )
    elif cfg.kind == "open_clip":
        from .clip import CLIPImageEncoder

        model = CLIPImageEncoder.create(cfg)
    elif cfg.kind == "hf_seq2seq":
        from . import seq2seq

        return seq2seq.create(cfg, theta0)
    else:
        from .clip import TimmEncoder

        model = TimmEncoder.create(cfg)
    if cfg.linearized and theta0 is not None:
        return Linearized(model, theta0)
    return model


class Linearized(nn.Module):
    """f_lin(x; θ) = f(x; θ0) + J_θ f(x; θ0)·(θ − θ0)   (Ortiz-Jiménez et al. 2023,
    "Task Arithmetic in the Tangent Space", arXiv:2305.12827).

    Fine-tuning and merging in the tangent space keep task vectors disentangled. Parameters
    are θ (the wrapped model's); θ0 is a frozen copy. ``state_dict``/``load_state_dict``
    read and write θ under the plain model's names.
    """

    def __init__(self, model: nn.Module, theta0: dict[str, Tensor]):
        super().__init__()
        self.model = model
        for m in model.modules():  # forward-mode AD through the math attention
            if hasattr(m, "fused_attn"):
                m.fused_attn = False  # type: ignore[assignment]  # timm's attention: a bool attribute
        model.load_state_dict(theta0)
        self._theta0 = {k: v.detach().clone() for k, v in model.named_parameters()}

    def forward(self, x: Tensor) -> Tensor:
        from torch.func import functional_call, jvp

        params = dict(self.model.named_parameters())
        if next(iter(self._theta0.values())).device != x.device:  # follow the module to the GPU
            self._theta0 = {k: v.to(x.device) for k, v in self._theta0.items()}
        dparams = {k: params[k] - self._theta0[k] for k in params}
        # without has_aux jvp returns (output, tangent); torch annotates a 2- or 3-tuple
        out, tangent = jvp(lambda p: functional_call(self.model, p, (x,)), (self._theta0,), (dparams,))  # type: ignore[misc]
        return out + tangent

    def state_dict(self, *args, **kwargs):
        return self.model.state_dict(*args, **kwargs)

    def named_parameters(self, *args, **kwargs):  # θ under the plain model's names
        return self.model.named_parameters(*args, **kwargs)

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        return self.model.load_state_dict(state, strict=strict, assign=assign)


class Head(nn.Module):
    """logits = W · normalize(features) (+ b): the frozen per-task classifier."""

    weight: Tensor  # buffers
    bias: Tensor | None

    def __init__(self, weight: Tensor, bias: Tensor | None = None):
        super().__init__()
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, feats: Tensor) -> Tensor:
        return nn.functional.linear(nn.functional.normalize(feats, dim=-1), self.weight, self.bias)

    def state(self) -> dict[str, Tensor]:
        return {"weight": self.weight} | ({} if self.bias is None else {"bias": self.bias})


def device_type(suite) -> str:
    """The device type a suite's jobs run on: ``cuda`` when it asks for GPUs
    (``resources.gpus_per_job`` > 0), else ``cpu``. Part of every job's and expert's key."""
    return "cuda" if suite.resources.gpus_per_job > 0 else "cpu"


def numerics(suite) -> dict[str, str]:
    """The device type and evaluation precision a suite's jobs compute with (their key part)."""
    return {"device": device_type(suite), "precision": suite.evaluation.precision}


def device_for(suite) -> torch.device:
    """Where a job computes: θ0 pretraining, heads, training, the methods' networks, merge
    arithmetic and evaluation. A suite that asks for a GPU never falls back to the CPU
    silently: its results are keyed as GPU results."""
    if device_type(suite) == "cuda":
        if not torch.cuda.is_available():
            raise CmbenchError(
                f"suite {suite.name}: resources.gpus_per_job is {suite.resources.gpus_per_job} but "
                "this worker sees no GPU; run it where one is visible, or set gpus_per_job: 0"
            )
        _deterministic_cuda()
        return torch.device("cuda")
    return torch.device("cpu")


def _deterministic_cuda() -> None:
    """GPU reruns reproduce bitwise on the same GPU model and software where every kernel has
    a deterministic variant (cuBLAS with a fixed workspace, no cuDNN autotuning); an op
    without one warns instead of failing (its results then agree to rounding only)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def to_device(state: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    """A state dict on ``device`` (the same dict, no copy, when it is already there)."""
    if all(v.device == device for v in state.values()):
        return state
    return {k: v.to(device, non_blocking=True) for k, v in state.items()}


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@contextlib.contextmanager
def arithmetic(device: torch.device, precision: str = "fp32"):
    """Evaluation arithmetic (``evaluation.precision``): ``fp32`` is IEEE float32 everywhere
    (TensorFloat-32 off for CUDA matmuls *and* cuDNN convolutions, whose PyTorch default is
    on); ``tf32`` lets CUDA use TensorFloat-32 (10-bit mantissa products, float32 sums);
    ``bf16`` autocasts to bfloat16 on either device. Restores the global flags after."""
    if device.type != "cuda":
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            yield
        return
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


@torch.no_grad()
def features(model: nn.Module, x_uint8: Tensor, batch_size: int, precision: str = "fp32") -> Tensor:
    """Backbone features (float32, on the CPU) for uint8 images, in large batches on the
    model's device, in the evaluation ``precision``; on a GPU uint8 batches are sent pinned
    and converted there."""
    model.eval()
    device = _device(model)
    out = []
    with arithmetic(device, precision):
        for i in range(0, len(x_uint8), batch_size):
            xb = x_uint8[i : i + batch_size]
            if device.type == "cuda":
                xb = (xb.pin_memory() if xb.device.type == "cpu" else xb).to(device, non_blocking=True)
            out.append(model(xb.float().div_(127.5).sub_(1.0)).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def accuracy(
    model: nn.Module, head: Head, x_uint8: Tensor, y: Tensor, batch_size: int, precision: str = "fp32"
) -> float:
    logits = head(features(model, x_uint8, batch_size, precision))
    check_logits(logits)
    return float((logits.argmax(-1) == y).float().mean())


def split_score(cfg: AnyBackbone, model: nn.Module, head: Head | None, split, batch_size: int, precision: str = "fp32"):
    """A model's score on one test split: the accuracy of its head's predictions on images,
    or (a text split) its generated answers by the task's metric (``seq2seq.split_score``)."""
    from ..data import TextSplit

    if isinstance(split, TextSplit):
        from . import seq2seq

        return seq2seq.split_score(cfg, model, split, batch_size, precision)
    assert head is not None, "an image task is scored through its head"
    return accuracy(model, head, split.x, split.y, batch_size, precision)


def check_logits(logits: Tensor) -> None:
    """A model with finite weights can still give non-finite logits (weights × 3e38): then
    argmax would pick class 0 for NaN and the accuracy would look plausible; fail instead."""
    if not bool(torch.isfinite(logits).all()):
        bad = int((~torch.isfinite(logits)).any(-1).sum())
        raise CmbenchError(
            f"evaluation: the model's logits are not finite for {bad} of {len(logits)} test images "
            "(the merged weights overflow); the job fails rather than record a meaningless accuracy"
        )
