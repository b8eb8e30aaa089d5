"""Which state-dict entries the matrix-wise merges (Iso-C, TSV-M, WUDI) treat as matrices.

Their reference code (FusionBench, on transformers' CLIP vision model) decides by shape:
every 2-D entry, which there is each linear layer's weight (q, k and v separate) and the
position embedding table. Here the same entries are read from the modules (``ctx.layout``):
linear weights, split into q, k and v where fused, and 2-D embedding tables; every other
entry (biases, norms, convolutions, class tokens) is averaged by those methods.
"""

from __future__ import annotations

import torch

from .layout import Layout


def is_matrix(layout: Layout, name: str, value: torch.Tensor) -> bool:
    """A 2-D entry of the reference's model: a linear weight or a 2-D embedding table."""
    kind = layout[name].kind
    return kind == "linear" or (kind == "embedding" and value.dim() == 2)


def matrices(layout: Layout, name: str, value: torch.Tensor) -> list[torch.Tensor]:
    """The matrices of a matrix entry as the reference holds them (q, k, v apart when fused)."""
    return layout.matrices(name, value) if layout.is_linear(name) else [value]
