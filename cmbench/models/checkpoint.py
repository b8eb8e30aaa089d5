"""Checkpoint I/O that never executes what it loads.

* ``.safetensors``: read as tensors;
* ``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt``: ``torch.load(weights_only=True)`` (tensors and
  plain containers only); a file that needs full unpickling (e.g. the task-vectors
  release's pickled modules) is refused unless the suite says ``trust_pickle: true``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .. import CmbenchError, pins
from ..tensors import StateDict

# Bump when a change alters the state dict a checkpoint is turned into (reading, name
# mapping, conversion); every expert loaded from a checkpoint is then rebuilt.
CHECKPOINT_VERSION = 1
# how torch.load(weights_only=True) says a file holds more than tensors (a class or function
# to import), as opposed to a file it cannot parse at all
_REFUSED = re.compile(r"unsupported global", re.IGNORECASE)


def load_checkpoint(path: str | Path, trust_pickle: bool = False) -> StateDict:
    path = Path(path)
    if not path.exists():
        raise CmbenchError(f"{path}: checkpoint not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001
            raise CmbenchError(f"{path}: not a readable safetensors file ({e})") from None
    if path.stat().st_size == 0:
        raise CmbenchError(f"{path}: an empty file, not a checkpoint; download or export it again")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - every way a file can fail to load is named below
        if not _REFUSED.search(str(e)):  # not weights_only's refusal: the file is damaged or not a checkpoint
            raise CmbenchError(f"{path}: not a readable PyTorch checkpoint ({_first_line(e)})") from None
        if not trust_pickle:
            raise CmbenchError(
                f"{path}: refused: the file needs full unpickling, which can run arbitrary code "
                f"({_first_line(e)}); convert it to safetensors, or set "
                f"`trust_pickle: true` for this source in the suite if you trust it"
            ) from None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)  # noqa: S614 - explicitly trusted
        except Exception as e2:  # noqa: BLE001
            raise CmbenchError(f"{path}: not a readable PyTorch checkpoint ({_first_line(e2)})") from None
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CmbenchError(f"{path}: expected a state dict of tensors, got {type(obj).__name__}")
    return obj


def _first_line(e: BaseException) -> str:
    text = str(e)
    refused = _REFUSED.search(text)
    if refused:  # torch's refusal: the useful line is deep in its text
        text = text[refused.start() :]
    lines = [x for x in text.splitlines() if x.strip()]
    return f"{type(e).__name__}: {lines[0][:160] if lines else 'no message'}"


def check_matches(state: StateDict, reference: StateDict, what: str) -> None:
    """Raise naming the missing/unexpected keys and shape mismatches against the backbone."""
    missing = sorted(set(reference) - set(state))
    extra = sorted(set(state) - set(reference))
    shapes = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(reference[k].shape)}"
        for k in sorted(set(state) & set(reference))
        if state[k].shape != reference[k].shape
    ]
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' …' if len(missing) > 5 else ''}")
        if extra:
            parts.append(f"unexpected {extra[:5]}{' …' if len(extra) > 5 else ''}")
        if shapes:
            parts.append(f"shape mismatch {shapes[:5]}")
        raise CmbenchError(f"{what}: does not match the backbone: " + "; ".join(parts))


# -- expert checkpoints from where users have them -----------------------------------------


def resolve(path: str, what: str, offline: bool = False) -> Path:
    """A local file, or ``hf://OWNER/REPO[/FILE]`` from the Hugging Face cache (fetched only
    when downloads are allowed, ``--allow-download``, and not ``offline``; FILE defaults to
    model.safetensors)."""
    if not path.startswith("hf://"):
        return Path(path).expanduser()
    from ..config import current

    parts = path[len("hf://") :].split("/")
    if len(parts) < 2:
        raise CmbenchError(f"{what}: {path!r} is not hf://OWNER/REPO[/FILE]")
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:]) or "model.safetensors"
    try:
        from huggingface_hub import hf_hub_download

        local = Path(hf_hub_download(repo, filename, local_files_only=offline or not current().allow_download))
    except Exception as e:  # noqa: BLE001 - not cached, offline, no such repo
        raise CmbenchError(
            f"{what}: {path} is not in the local Hugging Face cache ({type(e).__name__}); "
            "rerun with --allow-download to fetch it, or give a local path"
        ) from None
    pins.check("expert checkpoint", path, [local], pins.hub_revision(local))
    return local


def file_sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def hf_clip_vision_to_open_clip(state: StateDict, theta0: StateDict) -> StateDict:
    """transformers ``CLIPVisionModel`` names → open_clip's ``visual.*`` (q, k, v stacked
    into ``in_proj``). ``visual_projection`` (in ``CLIPModel`` / ``…WithProjection``
    checkpoints) becomes ``visual.proj`` (transposed); a ``CLIPVisionModel`` has none, and
    FusionBench's fine-tuning leaves the projection at its pretrained value, so θ0's is used."""
    pre = "vision_model."
    bare = ("embeddings.", "encoder.", "pre_layrnorm.", "post_layernorm.")  # transformers ≥ 5 drops the prefix
    s = {k.removeprefix("model."): v for k, v in state.items()}
    s = {(pre + k if k.startswith(bare) else k): v for k, v in s.items()}
    out: StateDict = {}
    simple = {
        "embeddings.class_embedding": "class_embedding",
        "embeddings.patch_embedding.weight": "conv1.weight",
        "embeddings.position_embedding.weight": "positional_embedding",
        "pre_layrnorm.weight": "ln_pre.weight",
        "pre_layrnorm.bias": "ln_pre.bias",
        "post_layernorm.weight": "ln_post.weight",
        "post_layernorm.bias": "ln_post.bias",
    }
    layer = {
        "self_attn.out_proj": "attn.out_proj",
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
    }
    used = set()
    for src, dst in simple.items():
        if pre + src in s:
            out["visual." + dst] = s[pre + src]
            used.add(pre + src)
    i = 0
    while f"{pre}encoder.layers.{i}.layer_norm1.weight" in s:
        lp, op = f"{pre}encoder.layers.{i}.", f"visual.transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            qkv = [lp + f"self_attn.{x}_proj.{kind}" for x in "qkv"]
            if all(k in s for k in qkv):
                out[op + f"attn.in_proj_{kind}"] = torch.cat([s[k] for k in qkv])
                used.update(qkv)
            for src, dst in layer.items():
                if lp + f"{src}.{kind}" in s:
                    out[op + f"{dst}.{kind}"] = s[lp + f"{src}.{kind}"]
                    used.add(lp + f"{src}.{kind}")
        i += 1
    if "visual_projection.weight" in s:
        out["visual.proj"] = s["visual_projection.weight"].T.contiguous()
        used.add("visual_projection.weight")
    elif "visual.proj" in theta0:
        out["visual.proj"] = theta0["visual.proj"]
    ignored = {k for k in s if k.endswith("position_ids")}
    extra = sorted(set(s) - used - ignored)
    if extra:
        raise CmbenchError(f"unexpected keys for a CLIPVisionModel checkpoint: {extra[:5]}")
    return out


def open_clip_to_hf_clip_vision(state: StateDict) -> StateDict:
    """The inverse of :func:`hf_clip_vision_to_open_clip` for a ``CLIPVisionModel`` (no
    projection): how a rehearsal writes its stand-in experts in FusionBench's format."""
    pre = "vision_model."
    simple = {
        "class_embedding": "embeddings.class_embedding",
        "conv1.weight": "embeddings.patch_embedding.weight",
        "positional_embedding": "embeddings.position_embedding.weight",
        "ln_pre.weight": "pre_layrnorm.weight",
        "ln_pre.bias": "pre_layrnorm.bias",
        "ln_post.weight": "post_layernorm.weight",
        "ln_post.bias": "post_layernorm.bias",
    }
    layer = {
        "attn.out_proj": "self_attn.out_proj",
        "ln_1": "layer_norm1",
        "ln_2": "layer_norm2",
        "mlp.c_fc": "mlp.fc1",
        "mlp.c_proj": "mlp.fc2",
    }
    out: StateDict = {}
    for k, v in state.items():
        k = k.removeprefix("visual.")
        if k in simple:
            out[pre + simple[k]] = v
        elif k.startswith("transformer.resblocks."):
            i, rest = k[len("transformer.resblocks.") :].split(".", 1)
            lp = f"{pre}encoder.layers.{i}."
            if rest.startswith("attn.in_proj_"):
                kind = rest.rsplit("_", 1)[1]
                for x, part in zip("qkv", v.chunk(3)):
                    out[lp + f"self_attn.{x}_proj.{kind}"] = part.contiguous()
            else:
                mod, kind = rest.rsplit(".", 1)
                out[lp + f"{layer[mod]}.{kind}"] = v
        elif k != "proj":
            raise CmbenchError(f"open_clip_to_hf_clip_vision: no CLIPVisionModel name for visual.{k}")
    return out


def task_vectors_to_open_clip(state: StateDict) -> StateDict:
    """The task-vectors release's ``ImageEncoder`` (``model.visual.*`` + the text tower)."""
    return {k.removeprefix("model."): v for k, v in state.items() if k.removeprefix("model.").startswith("visual.")}


def load_expert(spec, task: str, theta0: StateDict, where: str) -> tuple[StateDict, dict]:
    """Load, convert and check one expert checkpoint (``suite.ExpertCheckpoint``)."""
    what = f"{where}.{task}"
    if spec.format == "hf_seq2seq":  # a repository (full model or LoRA adapter), not a file
        from .seq2seq import load_expert_file

        state, path = load_expert_file(spec.path.removeprefix("hf://"), theta0)
    else:
        path = resolve(spec.path, what)
    if not path.exists():
        raise CmbenchError(f"{what}: checkpoint {path} not found")
    digest = file_sha256(path)
    if spec.sha256 and digest != spec.sha256:
        raise CmbenchError(
            f"{what}: {path} has sha256 {digest}, the suite pins {spec.sha256}: "
            "a different checkpoint than the suite names"
        )
    if spec.format != "hf_seq2seq":
        state = load_checkpoint(path, trust_pickle=spec.trust_pickle)
    if spec.format == "hf_clip_vision":
        state = hf_clip_vision_to_open_clip(state, theta0)
    elif spec.format == "task_vectors":
        state = task_vectors_to_open_clip(state)
    state = {k: v.to(theta0[k].dtype) if k in theta0 else v for k, v in state.items()}
    check_matches(state, theta0, f"{what} ({path})")
    return state, {"task": task, "source": spec.path, "format": spec.format, "sha256": digest}
