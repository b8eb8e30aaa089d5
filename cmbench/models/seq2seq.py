"""Text-to-text backbones (issue #43): a Hugging Face sequence-to-sequence language model of
the T5 family (Flan-T5), as FusionBench's ``Seq2SeqLMPool`` merges it.

* Loading: ``AutoModelForSeq2SeqLM`` and its tokenizer from the local hub cache, offline
  unless ``CMBENCH_ALLOW_DOWNLOAD=1`` (the CLIP path's rule); the weight file read is pinned
  (sha256 and snapshot revision, ``cmbench.pins``); a missing cache is one line naming the
  repository and the fix.
* The merged object is the whole model's state dict under transformers' names (embeddings,
  encoder and decoder blocks, the LM head): FusionBench merges the whole
  ``T5ForConditionalGeneration``. Its layout (``models.layout_of``) is read from the
  modules: ``nn.Linear`` matrices (q, k, v, o, wi_0, wi_1, wo, lm_head), ``nn.Embedding``
  tables (the shared token embedding under each of its tied names; each stack's relative
  position bias), and T5's RMS norms, which are not a torch norm class
  (``models.rms_norm_roles``).
* Experts: full fine-tuned models (a model repository), or LoRA adapters folded into the base
  weights (:func:`fold_lora`, what FusionBench's ``load_lora_model(..., merge_and_unload=
  True)`` does through peft): W + (lora_alpha / r)·B A for every adapted linear layer.
* Scoring (FusionBench's ``flan_t5_glue_text_generation`` task pool and
  ``tasks/flan_t5_text_generation``): greedy generation up to 10 tokens, decoded without
  special tokens, compared with the decoded target: exact match, or for STS-B Spearman's ρ
  between the numbers (an unparsable string counts as 0.0, as the reference's ``parse_flost``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from .. import CmbenchError
from ..config import current

WEIGHT_FILE = "model.safetensors"  # safetensors only: a pickled checkpoint is never loaded
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
MAX_GENERATED = 10  # the reference's ``model.generate(input_ids, max_length=10)``

# google/flan-t5-base's config.json: the architecture of the stand-in weights (bench, rehearsal)
FLAN_T5_BASE = {
    "model_type": "t5",
    "vocab_size": 32128,
    "d_model": 768,
    "d_kv": 64,
    "d_ff": 2048,
    "num_layers": 12,
    "num_decoder_layers": 12,
    "num_heads": 12,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "tie_word_embeddings": False,
    "layer_norm_epsilon": 1e-6,
    "dropout_rate": 0.1,
    "decoder_start_token_id": 0,
    "pad_token_id": 0,
    "eos_token_id": 1,
}

# FusionBench's prompts and label words (fusion_bench/tasks/flan_t5_text_generation/
# glue_prompt_templates.py, 0.2.33), and the dataset fields each fills in
GLUE_TEMPLATES: dict[str, dict] = {
    "cola": {
        "fields": ("sentence",),
        "input_text": 'Indicate if the following sentence is grammatically correct or not: "{sentence}". '
        "Answere 'acceptable' or 'unacceptable'.",
        "target_text": {0: "unacceptable", 1: "acceptable"},
    },
    "mnli": {
        "fields": ("premise", "hypothesis"),
        "input_text": "Does the premise: '{premise}' logically imply, contradict, or is neutral to the "
        "hypothesis: '{hypothesis}'? Answere with 'entailment', 'contradiction', or 'neutral'.",
        "target_text": {0: "entailment", 1: "neutral", 2: "contradiction"},
    },
    "mrpc": {
        "fields": ("sentence1", "sentence2"),
        "input_text": "Are the following sentences '{sentence1}' and '{sentence2}' conveying the same meaning? "
        "Answere with 'yes' or 'no'.",
        "target_text": {0: "no", 1: "yes"},
    },
    "qnli": {
        "fields": ("sentence", "question"),
        "input_text": "Given the context: '{sentence}', does the question '{question}' have an answer based on "
        "the information provided? Answer with 'yes' or 'no'.",
        "target_text": {0: "yes", 1: "no"},
    },
    "qqp": {
        "fields": ("question1", "question2"),
        "input_text": "Do the questions '{question1}' and '{question2}' have the same intent? "
        "Answere with 'yes' or 'no'.",
        "target_text": {0: "no", 1: "yes"},
    },
    "rte": {
        "fields": ("sentence1", "sentence2"),
        "input_text": "Does the text: '{sentence1}' entail that '{sentence2}' is true? Provide 'yes' or 'no'.",
        "target_text": {0: "yes", 1: "no"},
    },
    "sst2": {
        "fields": ("sentence",),
        "input_text": "Given the sentence '{sentence}', determine the sentiment. Is it positive or negative?",
        "target_text": {0: "negative", 1: "positive"},
    },
    "stsb": {
        "fields": ("sentence1", "sentence2"),
        "input_text": "Consider the sentences '{sentence1}' and '{sentence2}'. On a scale from 1 (completely "
        "different) to 5 (completely similar), rate the similarity.",
        "target_text": "{:.1f}",
    },
}
# the reference's split of each task's evaluation (config/taskpool/flan-t5_glue_text_generation.yaml)
GLUE_EVAL_SPLIT = {t: "validation_matched" if t == "mnli" else "validation" for t in GLUE_TEMPLATES}
REGRESSION = ("stsb",)  # scored by Spearman's ρ, the rest by exact match


def glue_pair(task: str, example: dict) -> tuple[str, str]:
    """One GLUE example as the reference's preprocessor writes it: (prompt, target text).
    A label outside the label words (GLUE's test splits hold -1) gives an empty target."""
    t = GLUE_TEMPLATES[task]
    prompt = t["input_text"].format(**{f: example[f] for f in t["fields"]})
    words = t["target_text"]
    if isinstance(words, str):
        return prompt, words.format(example["label"])
    return prompt, words.get(int(example["label"]), "")


# -- loading ----------------------------------------------------------------------------------


def _hub_cache() -> str:
    import huggingface_hub.constants

    return huggingface_hub.constants.HF_HUB_CACHE


def _resolve(repo: str, filenames: Sequence[str], revision: str | None) -> dict[str, Path]:
    """The files of ``repo`` present locally: a directory, or the hub cache's snapshot."""
    if Path(repo).is_dir():
        return {n: Path(repo) / n for n in filenames if (Path(repo) / n).is_file()}
    from huggingface_hub import try_to_load_from_cache

    out = {}
    for name in filenames:
        path = try_to_load_from_cache(repo, name, cache_dir=_hub_cache(), revision=revision)
        if isinstance(path, str):
            out[name] = Path(path)
    return out


def _pin(kind: str, repo: str, files: list[Path]) -> None:
    from .. import pins

    pins.check(kind, f"hf://{repo}", files, pins.hub_revision(files[0]) if files else None)


def _missing(what: str, repo: str, e: Exception) -> CmbenchError:
    return CmbenchError(
        f"{what}: cannot load {repo!r} from the hub cache ({str(e).splitlines()[0][:200]}); put the repository "
        "in the Hugging Face cache (HF_HUB_CACHE) or rerun with --allow-download"
    )


def load_model(repo: str, revision: str | None = None, kind: str = "backbone weights") -> nn.Module:
    """A seq2seq language model (θ0 or a full expert) from a local directory or the hub cache,
    in float32, in evaluation mode; its weight file pinned (as ``kind`` in the lock)."""
    from transformers import AutoModelForSeq2SeqLM
    from transformers.utils import logging as hf_logging

    # Flan-T5's config says tie_word_embeddings: false, which transformers 5 reads as tied and
    # then unties on seeing two different tensors, warning about it on every load: expected
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = AutoModelForSeq2SeqLM.from_pretrained(
            repo,
            revision=revision,
            cache_dir=_hub_cache(),
            local_files_only=not current().allow_download,
            dtype=torch.float32,
            use_safetensors=True,  # never unpickle a checkpoint (untrusted input)
        )
    except Exception as e:  # noqa: BLE001 - missing cache, no network, not a seq2seq model
        raise _missing("text backbone", repo, e) from None
    finally:
        hf_logging.set_verbosity(level)
    _pin(kind, repo, list(_resolve(repo, (WEIGHT_FILE,), revision).values()))
    return model.eval()


def load_tokenizer(repo: str, revision: str | None = None):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            repo, revision=revision, cache_dir=_hub_cache(), local_files_only=not current().allow_download
        )
    except Exception as e:  # noqa: BLE001
        raise _missing("tokenizer", repo, e) from None


def random_model(config: dict, seed: int = 0) -> nn.Module:
    """A model of the given transformers config with weights from ``seed`` (tests and
    rehearsals; the config's ``model_type`` names the family, ``t5`` by default)."""
    from transformers import AutoConfig

    cfg = dict(config)
    untie = config.get("tie_word_embeddings") is False
    return _from_config(AutoConfig.for_model(cfg.pop("model_type", "t5"), **cfg), seed, untie)


def _from_config(cfg_obj, seed: int, untie: bool) -> nn.Module:
    """The model of ``cfg_obj`` with weights from ``seed``; ``untie``: the config file says
    ``tie_word_embeddings: false`` (transformers 5's T5 config object reads it as true)."""
    from transformers import AutoModelForSeq2SeqLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForSeq2SeqLM.from_config(cfg_obj).eval()
        head, emb = model.get_output_embeddings(), model.get_input_embeddings()
        if untie and head is not None and head.weight is emb.weight:
            # T5 v1.1 / Flan-T5: the LM head is its own matrix (transformers ties T5's at
            # construction and unties it when a checkpoint holds two different tensors)
            head.weight = nn.Parameter(torch.randn_like(emb.weight) * getattr(model.config, "initializer_factor", 1.0))
        return model


def create(cfg, theta0: dict[str, Tensor] | None = None) -> nn.Module:
    """The architecture of a suite's text backbone (``suite.HFSeq2Seq``) with random weights,
    for ``theta0`` (or another state dict of it) to be loaded into: the config read from the
    hub cache, as the weights. The LM head is its own matrix where θ0 holds a head that
    differs from the token embedding (Flan-T5), as transformers unties it on loading such a
    checkpoint: read from θ0, since transformers 5 writes and reads T5 configs as tied."""
    from transformers import AutoConfig

    if cfg.config is not None:  # a micro model: built from the suite's config
        config = micro_config(cfg)
        return random_model(config, 0) if theta0 is None else _untied_as(random_model(config, 0), theta0)
    try:
        cfg_obj = AutoConfig.from_pretrained(
            cfg.model, revision=cfg.revision, cache_dir=_hub_cache(), local_files_only=not current().allow_download
        )
    except Exception as e:  # noqa: BLE001 - missing cache, no network
        raise _missing("text backbone", cfg.model, e) from None
    model = _from_config(cfg_obj, 0, untie=False)
    return model if theta0 is None else _untied_as(model, theta0)


def _untied_as(model: nn.Module, theta0: dict[str, Tensor]) -> nn.Module:
    """``model`` with its LM head its own matrix where ``theta0``'s head differs from its token
    embedding (as transformers unties it on loading such a checkpoint)."""
    lm = cast(Any, model)  # a transformers PreTrainedModel: its accessors are not nn.Module's
    head, emb = lm.get_output_embeddings(), lm.get_input_embeddings()
    if head is not None and head.weight is emb.weight:
        named = dict(model.named_modules(remove_duplicate=False))
        heads = [f"{n}.weight" for n, m in named.items() if m is head]
        embs = [f"{n}.weight" for n, m in named.items() if m is emb]
        if any(not torch.equal(theta0[h], theta0[e]) for h in heads for e in embs if h in theta0 and e in theta0):
            head.weight = nn.Parameter(theta0[heads[0]].detach().clone())
    return model


def cached_config(cfg) -> dict:
    """A suite's model config: a micro model's own, else the one in the hub cache where it is
    there, else Flan-T5-base's (a dry run's estimate before anything is downloaded)."""
    if cfg.config is not None:
        return micro_config(cfg)
    found = _resolve(cfg.model, ("config.json",), cfg.revision)
    return json.loads(found["config.json"].read_text()) if "config.json" in found else dict(FLAN_T5_BASE)


def pretrained_state(cfg) -> dict[str, Tensor]:
    """θ0 of a suite's text backbone: its published weights, one tensor per state-dict name
    (the tied token embedding copied under each of its names, so it can be stored)."""
    state = load_model(cfg.model, cfg.revision).state_dict()
    seen: dict[int, Tensor] = {}
    out = {}
    for k, v in state.items():
        out[k] = v.clone() if v.data_ptr() in seen else v
        seen[v.data_ptr()] = v
    return out


def load_expert(repo: str, base: dict[str, Tensor], revision: str | None = None) -> dict[str, Tensor]:
    """An expert's state dict: a full model repository, or a LoRA adapter repository (an
    ``adapter_config.json`` beside ``adapter_model.safetensors``) folded into ``base``."""
    return load_expert_file(repo, base, revision)[0]


def load_expert_file(repo: str, base: dict[str, Tensor], revision: str | None = None) -> tuple[dict[str, Tensor], Path]:
    """:func:`load_expert` and the file it read (the weights, or the adapter): what a suite pins."""
    adapter = _resolve(repo, ADAPTER_FILES, revision)
    if "adapter_config.json" in adapter:
        if "adapter_model.safetensors" not in adapter:
            raise CmbenchError(
                f"expert {repo}: adapter_config.json without adapter_model.safetensors (a pickled adapter "
                "is never loaded); convert it to safetensors"
            )
        _pin("expert adapter", repo, [adapter["adapter_model.safetensors"]])
        folded = fold_lora(base, adapter["adapter_config.json"], adapter["adapter_model.safetensors"])
        return folded, adapter["adapter_model.safetensors"]
    state = load_model(repo, revision, kind="expert checkpoint").state_dict()
    missing = set(base) - set(state)
    if missing:
        raise CmbenchError(
            f"expert {repo}: {len(missing)} entries of θ0 are missing (e.g. {sorted(missing)[0]!r}); "
            "an expert must have θ0's architecture"
        )
    return {k: state[k] for k in base}, _resolve(repo, (WEIGHT_FILE,), revision)[WEIGHT_FILE]


def fold_lora(base: dict[str, Tensor], config_file: Path, weights_file: Path) -> dict[str, Tensor]:
    """W + s·B A for every adapted matrix (s = lora_alpha / r, or / √r with rsLoRA), as
    peft's ``merge_and_unload``; every other entry is θ0's. Only plain LoRA on linear layers
    is folded; anything else is refused in one line."""
    from safetensors.torch import load_file

    where = config_file.parent
    try:
        cfg = json.loads(config_file.read_text())
        r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    except (ValueError, KeyError, TypeError) as e:
        raise CmbenchError(f"{config_file}: not a LoRA adapter config ({e}); expected r and lora_alpha") from None
    if cfg.get("peft_type", "LORA") != "LORA" or cfg.get("use_dora") or cfg.get("modules_to_save"):
        raise CmbenchError(
            f"{config_file}: peft_type {cfg.get('peft_type')!r}, use_dora {cfg.get('use_dora')}, modules_to_save "
            f"{cfg.get('modules_to_save')}: only plain LoRA adapters are folded"
        )
    scale = alpha / (r**0.5 if cfg.get("use_rslora") else r)
    tensors = load_file(str(weights_file))
    out = dict(base)
    pairs: dict[str, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        for part in ("lora_A", "lora_B"):
            if f".{part}." in key:
                # base_model.model.<module>.lora_A[.<adapter>].weight -> <module>.weight
                module = key.split(f".{part}")[0].removeprefix("base_model.model.")
                pairs.setdefault(module + ".weight", {})[part] = value
                break
        else:
            raise CmbenchError(f"{where}: adapter entry {key!r} is not a LoRA factor; only plain LoRA is folded")
    for name, ab in pairs.items():
        if name not in base or set(ab) != {"lora_A", "lora_B"}:
            raise CmbenchError(
                f"{where}: adapter for {name!r}, which is not a matrix of the base model (or lacks A or B)"
            )
        delta = ab["lora_B"].double() @ ab["lora_A"].double() * scale
        if cfg.get("fan_in_fan_out"):
            delta = delta.T
        if delta.shape != base[name].shape:
            raise CmbenchError(
                f"{where}: adapter for {name!r} has shape {tuple(delta.shape)}, the base {tuple(base[name].shape)}"
            )
        out[name] = (base[name].double() + delta).to(base[name].dtype)
    return out


# -- generation and scoring ------------------------------------------------------------------


@torch.no_grad()
def generate(model: nn.Module, tokenizer, prompts: Sequence[str], batch_size: int = 32) -> list[str]:
    """Greedy answers to ``prompts`` (at most 10 tokens, the reference's ``max_length=10``),
    decoded without special tokens; batches padded to their longest prompt with the attention
    mask (the reference pads to 512 and lets ``generate`` infer the same mask), on the model's
    device."""
    model.eval()
    device = next(model.parameters()).device
    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        enc = tokenizer(list(prompts[i : i + batch_size]), padding=True, truncation=True, return_tensors="pt")
        ids = model.generate(  # type: ignore[operator]  # a transformers generation model
            input_ids=enc["input_ids"].to(device),
            attention_mask=enc["attention_mask"].to(device),
            max_length=MAX_GENERATED,
            do_sample=False,
            num_beams=1,
        )
        out.extend(tokenizer.batch_decode(ids, skip_special_tokens=True))
    return out


@lru_cache(maxsize=4)
def _tokenizer(repo: str, revision: str | None):
    return load_tokenizer(repo, revision)


def tokenizer_for(cfg):
    """A suite's tokenizer (``tokenizer``, else the model's repository), loaded once; a micro
    model's (``config``) is the generated tasks' word-level tokenizer."""
    if cfg.config is not None:
        return _micro_tokenizer()
    return _tokenizer(cfg.tokenizer or cfg.model, cfg.revision if cfg.tokenizer is None else None)


@lru_cache(maxsize=1)
def _micro_tokenizer():
    from ..data.text_micro import tokenizer

    return tokenizer()


def micro_config(cfg) -> dict:
    """A micro text model's full config: the suite's, over the generated vocabulary."""
    from ..data.text_micro import vocab

    return {"model_type": "t5", **cfg.config, "vocab_size": len(vocab())}


# -- training (micro text models: θ0's pretraining, the experts' fine-tuning) ----------------


def encode(tokenizer, prompts: Sequence[str], targets: Sequence[str]) -> tuple[Tensor, Tensor]:
    """Prompt ids (padded with the pad id) and target ids (padded with -100, which the loss
    ignores): what ``lm_loss`` trains on, as tensors ``train.fit`` batches."""
    x = tokenizer(list(prompts), padding=True, return_tensors="pt")["input_ids"]
    y = tokenizer(list(targets), padding=True, return_tensors="pt")["input_ids"]
    y[y == tokenizer.pad_token_id] = -100
    return x, y


def lm_loss(model: nn.Module, pad_id: int):
    """Teacher-forced cross-entropy of the target tokens (T5's ``labels`` loss)."""

    def loss_fn(xb: Tensor, yb: Tensor) -> Tensor:
        return model(input_ids=xb, attention_mask=(xb != pad_id).long(), labels=yb).loss

    return loss_fn


def split_score(cfg, model: nn.Module, split, batch_size: int, precision: str = "fp32") -> float:
    """A text split's score (``data.TextSplit``): the model's greedy answers to its prompts,
    in the evaluation ``precision``, against its targets by the task's metric. Spearman's ρ
    of a model that gives every pair the same number is undefined (scipy: nan, which the
    reference reports); it counts 0 here, no correlation, since a NaN cell of R means "not
    evaluated" to the metrics."""
    import math

    from . import arithmetic

    tok = tokenizer_for(cfg)
    with arithmetic(next(model.parameters()).device, precision):
        answers = generate(model, tok, split.prompts, batch_size)
    value = score_metric(split.metric, answers, decoded_targets(tok, split.targets))
    return 0.0 if math.isnan(value) else value


def decoded_targets(tokenizer, targets: Sequence[str]) -> list[str]:
    """Targets as the reference compares them: tokenised, then decoded without special tokens."""
    ids = tokenizer(list(targets))["input_ids"]
    return tokenizer.batch_decode(ids, skip_special_tokens=True)


def _number(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        return 0.0


def score(task: str, predictions: Sequence[str], targets: Sequence[str]) -> float:
    """A GLUE task's metric in [0, 1] (the leaderboard shows ×100): exact match, or Spearman's
    ρ of the parsed numbers for STS-B (nan when either side is constant, as scipy says)."""
    return score_metric("spearman" if task in REGRESSION else "exact_match", predictions, targets)


def score_metric(metric: str, predictions: Sequence[str], targets: Sequence[str]) -> float:
    """Exact match, or (``spearman``) Spearman's ρ of the parsed numbers (an unparsable
    answer counts 0.0, as the reference's ``parse_flost``)."""
    if len(predictions) != len(targets) or not targets:
        raise CmbenchError(f"text task: {len(predictions)} answers for {len(targets)} targets")
    if metric == "spearman":
        import warnings

        from scipy.stats import spearmanr

        with warnings.catch_warnings():  # a constant side gives nan, said in the docstring
            warnings.simplefilter("ignore")
            return float(spearmanr([_number(p) for p in predictions], [_number(t) for t in targets])[0])
    return sum(p == t for p, t in zip(predictions, targets)) / len(targets)
