"""What each entry of a backbone's state dict is, read from its modules.

Per-matrix methods (OPCM's projections, DOP's optimisation) treat the weight of a linear
layer differently from an embedding table, a norm, a convolution kernel or a bare parameter
such as a class token; their reference code decides by module type (``isinstance(module,
nn.Linear)``) and by whether the owning module is a leaf (FusionBench's
``is_leaf_module``), never by name or shape. The harness reads the same facts from the
backbone once per job and hands them to methods as ``ctx.layout``.

Rules, by the module that owns a parameter:

* ``nn.Linear``: ``linear`` (weight) and ``bias``. A fused q/k/v projection (a Linear held
  as ``qkv`` by an attention module with ``num_heads``, as timm's) is three matrices.
* ``nn.MultiheadAttention`` (open_clip): ``in_proj_weight`` is three linear matrices and
  ``in_proj_bias`` their biases, both counted as owned by leaf modules: in the layout the
  reference code uses (transformers' CLIP), q, k and v are three leaf ``nn.Linear``.
* ``nn.Embedding``: ``embedding``; norm layers: ``norm``; convolutions: ``conv``.
* anything else, e.g. a parameter set directly on a module with children (a class token, a
  position table held as a bare tensor): ``other``, with ``leaf`` telling whether its owner
  has children.
* floating-point buffers saved in the state dict: ``buffer`` (not trained; e.g. CLIP's
  output projection, frozen at θ0 as in the reference, where it is not part of the merged
  ``CLIPVisionModel``).

A tied parameter (a language model's head sharing its token embedding) keeps the role of its
first owner under every name, so it is never treated as two different things. A backbone
whose bare tensors stand for modules of the reference architecture says so with a
``reference_roles()`` method (see ``models.clip.CLIPImageEncoder``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

KINDS = ("linear", "bias", "embedding", "norm", "conv", "other", "buffer")
NORMS = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


@dataclass(frozen=True)
class Role:
    kind: str  # one of KINDS
    leaf: bool  # owned by a module without children (in the reference layout)
    split: int = 1  # matrices stacked by rows: 3 for a fused q/k/v projection


class Layout(Mapping[str, Role]):
    """State-dict name -> :class:`Role`, for every floating-point entry of a backbone."""

    def __init__(self, roles: dict[str, Role]):
        self._roles = dict(roles)

    def __getitem__(self, name: str) -> Role:
        try:
            return self._roles[name]
        except KeyError:
            raise KeyError(f"{name!r} is not an entry of the backbone this layout was read from") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._roles)

    def __len__(self) -> int:
        return len(self._roles)

    def is_linear(self, name: str) -> bool:
        """A linear layer's weight matrix (or several stacked, see :meth:`matrices`)."""
        return self[name].kind == "linear"

    def matrices(self, name: str, value: Tensor) -> list[Tensor]:
        """The per-matrix views of a linear weight: a fused q/k/v weight is three matrices.
        Views share storage; per-matrix methods give the same result on fused and separate
        layouts."""
        return list(value.chunk(self[name].split, dim=0))

    def map_matrices(self, name: str, fn: Callable[..., Tensor], *values: Tensor) -> Tensor:
        """Apply ``fn`` matrix by matrix (q, k, v separately when fused); a new tensor."""
        parts = zip(*(self.matrices(name, v) for v in values))
        return torch.cat([fn(*p) for p in parts], dim=0)


def _fused_qkv(parent: nn.Module, child: nn.Module) -> bool:
    return (
        getattr(parent, "qkv", None) is child
        and hasattr(parent, "num_heads")
        and child.out_features == 3 * child.in_features
    )


def _role(module: nn.Module, pname: str, leaf: bool, split: int) -> Role:
    if isinstance(module, nn.Linear):
        return Role("linear", leaf, split) if pname == "weight" else Role("bias", leaf)
    if isinstance(module, nn.MultiheadAttention):
        if pname == "in_proj_weight":
            return Role("linear", True, 3)
        if pname in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
            return Role("linear", True)
        if pname == "in_proj_bias":
            return Role("bias", True)
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return Role("embedding", leaf)
    if isinstance(module, NORMS):
        return Role("norm", leaf)
    if isinstance(module, nn.modules.conv._ConvNd):
        return Role("conv", leaf)
    return Role("other", leaf)


def describe(model: nn.Module) -> Layout:
    """The layout of ``model``'s state dict (floating-point entries), read from its modules."""
    roles: dict[str, Role] = {}
    first: dict[int, Role] = {}  # id(tensor) -> role of its first owner (tied weights)
    fused = {id(c) for m in model.modules() for c in m.children() if isinstance(c, nn.Linear) and _fused_qkv(m, c)}
    persistent = set(model.state_dict(keep_vars=True))
    overrides: dict[str, Role] = {}
    for mname, module in model.named_modules(remove_duplicate=False):
        prefix = f"{mname}." if mname else ""
        leaf = next(module.children(), None) is None
        for pname, p in module.named_parameters(recurse=False):
            role = first.setdefault(id(p), _role(module, pname, leaf, 3 if id(module) in fused else 1))
            roles[prefix + pname] = role
        for bname, b in module.named_buffers(recurse=False):
            if b is not None and b.is_floating_point() and prefix + bname in persistent:
                roles[prefix + bname] = first.setdefault(id(b), Role("buffer", leaf))
        if hasattr(module, "reference_roles"):
            overrides.update({prefix + k: r for k, r in module.reference_roles().items()})
    roles.update(overrides)
    return Layout({k: r for k, r in roles.items() if k in persistent})
