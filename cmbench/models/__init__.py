"""Backbones and heads.

The merged object is the backbone's state dict. Heads are per task, fixed before any
expert is trained and shared by θ0, the experts and every merged model (as CLIP's
zero-shot heads are): a head maps L2-normalised features to logits.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..suite import Backbone


def create_backbone(cfg: Backbone) -> nn.Module:
    """A timm VisionTransformer without a classifier: forward(x) -> pooled features."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans, num_classes=0,
        embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio,
        global_pool="token", class_token=True,
    )


class Head(nn.Module):
    """logits = W · normalize(features) (+ b): the frozen per-task classifier."""

    def __init__(self, weight: Tensor, bias: Tensor | None = None):
        super().__init__()
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, feats: Tensor) -> Tensor:
        return nn.functional.linear(nn.functional.normalize(feats, dim=-1), self.weight, self.bias)

    def state(self) -> dict[str, Tensor]:
        return {"weight": self.weight} | ({} if self.bias is None else {"bias": self.bias})


@torch.no_grad()
def features(model: nn.Module, x_uint8: Tensor, batch_size: int) -> Tensor:
    """Backbone features for uint8 images, in large batches."""
    model.eval()
    out = []
    for i in range(0, len(x_uint8), batch_size):
        out.append(model(x_uint8[i : i + batch_size].float().div_(127.5).sub_(1.0)))
    return torch.cat(out)


@torch.no_grad()
def accuracy(model: nn.Module, head: Head, x_uint8: Tensor, y: Tensor, batch_size: int) -> float:
    logits = head(features(model, x_uint8, batch_size))
    return float((logits.argmax(-1) == y).float().mean())
