"""Expensive artefacts, content-addressed and cached: task data, θ0, heads, experts.

An artefact's key is a hash of what determines its numbers: the recipe fields that
produce it, the seed, the keys of the artefacts it is built from, the device type and
precision it is computed with, and the versions of the harness components that compute
it (each ``*_VERSION`` constant says when to bump it). Files are safetensors (tensors)
plus a JSON sidecar, written atomically under a file lock, so concurrent jobs build each
artefact once and a killed job never leaves a file a rerun would trust.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import torch

from . import CmbenchError, data as data_mod, published
from .models import Head, create_backbone, device_for, device_type, features, models_version
from .suite import HFSeq2Seq, Job, Suite, Task, TinyViT, keyed_backbone
from .store import Store
from .tensors import StateDict
from .train import TRAIN_VERSION, fit

# Bump one when a change alters any number that artefact holds (its tensors, or the test
# accuracy recorded with an expert): it is rebuilt, and every job consuming it recomputed.
THETA0_VERSION = 1  # make_theta0 / pretrain_theta0: pretraining recipes, loading pretrained weights
HEADS_VERSION = 1  # make_heads: template, prototype, linear-probe and zero-shot heads
EXPERTS_VERSION = 1  # make_expert, load_expert_checkpoint, and load_tasks' test cap (E is measured there)


def build_numerics(suite: Suite) -> dict[str, str]:
    """θ0, the heads and the experts are built on the suite's device in float32 whatever the
    evaluation precision (their key part; a CPU suite's keys are what they were when every
    suite built them on the CPU)."""
    return {"device": device_type(suite), "precision": "fp32"}


def artefact_key(kind: str, components: dict, on: dict, *parts) -> str:
    """The key of a cached artefact: what it is, the component versions and numerics that
    compute it, and the recipe parts that determine it."""
    blob = json.dumps([kind, components, on, *parts], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def data_versions(tasks: list[Task]) -> dict:
    """The version of the code (and data files) that builds each dataset ``tasks`` read."""
    return {t.dataset: data_mod.DATASET_VERSIONS[t.dataset] for t in tasks}


# -- the artefacts of a micro suite ---------------------------------------------------------


@lru_cache(maxsize=64)
def task_data(dataset: str, task: str, data_seed: int, img_size: int, params_json: str) -> data_mod.TaskData:
    return data_mod.build(dataset, task, data_seed, img_size, json.loads(params_json))


def load_tasks(suite: Suite, seed: int, pretraining: bool = False) -> dict[str, data_mod.TaskData]:
    """The tasks of ``seed``'s jobs (their data seed: ``Suite.data_seed_for``), or with
    ``pretraining`` the data θ0 is pretrained on; test splits capped at
    ``evaluation.max_test_per_task`` (a fixed, data-seeded subset)."""
    specs = (suite.pretrain.tasks or suite.tasks) if pretraining else suite.tasks
    data_seed = suite.data_seed_for(seed)
    out = {
        t.name: task_data(t.dataset, t.name, data_seed, suite.backbone.image_size, json.dumps(t.params, sort_keys=True))
        for t in specs
    }
    cap = suite.evaluation.max_test_per_task
    if cap and not pretraining:
        out = {n: _cap_test(td, cap, data_seed) for n, td in out.items()}
    return out


def _cap_test(td: data_mod.TaskData, cap: int, data_seed: int) -> data_mod.TaskData:
    # a change here alters E and R: bump EXPERTS_VERSION and keys.EVALUATION_VERSION
    if len(td.test) <= cap:
        return td
    keep = torch.randperm(len(td.test), generator=torch.Generator().manual_seed(data_seed))[:cap].sort().values
    return dataclasses.replace(td, test=td.test.take(keep))


_MEMO: dict[int, tuple[Suite, dict]] = {}


def _memo(suite: Suite) -> dict:
    """Parts of one suite object's artefact keys that cost O(T) to form (they hash the task
    list), formed once: a job's inputs name T experts, whose keys would otherwise cost O(T²)
    (5,000 tasks took minutes to plan). Keyed by the object, which the memo holds."""
    hit = _MEMO.get(id(suite))
    if hit is None or hit[0] is not suite:
        if len(_MEMO) >= 16:
            _MEMO.clear()
        hit = _MEMO[id(suite)] = (suite, {})
    return hit[1]


def theta0_key(suite: Suite, seed: int) -> str:
    memo = _memo(suite)
    if ("theta0", seed, THETA0_VERSION) not in memo:
        memo["theta0", seed, THETA0_VERSION] = _theta0_key(suite, seed)
    return memo["theta0", seed, THETA0_VERSION]


def _theta0_key(suite: Suite, seed: int) -> str:
    components: dict[str, Any] = {"theta0": THETA0_VERSION, "models": models_version(suite.backbone)}
    if isinstance(suite.backbone, TinyViT) or isinstance(suite.backbone, HFSeq2Seq) and suite.backbone.config:
        # pretrained by the harness, on these tasks (a micro ViT or a micro text model)
        components.update(train=TRAIN_VERSION, data=data_versions([*suite.tasks, *(suite.pretrain.tasks or [])]))
    tasks = [t.model_dump() for t in suite.tasks]
    # a rehearsal's θ0 is random weights (from its seed) read from where the real ones would be
    stand_in = [{"rehearsal_seed": suite.rehearsal.seed}] if suite.rehearsal else []
    return artefact_key(
        "theta0",
        components,
        build_numerics(suite),
        keyed_backbone(suite.backbone),
        suite.pretrain.keyed(),
        tasks,
        suite.data_seed_for(seed),
        seed,
        *stand_in,
    )


def heads_key(suite: Suite, seed: int) -> str:
    components = {"heads": HEADS_VERSION, "models": models_version(suite.backbone), "data": data_versions(suite.tasks)}
    return artefact_key(
        "heads",
        components,
        build_numerics(suite),
        theta0_key(suite, seed),
        suite.heads.model_dump(),
        suite.evaluation.batch_size,
    )


def chain_of(suite: Suite, after: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """``after`` as an expert's key sees it: the tasks a sequential expert is fine-tuned after
    (in order), or None for an expert fine-tuned from θ0 by the suite's own source. A chain's
    first expert is fine-tuned from θ0 too: with ``source: finetune`` it *is* the independent
    expert (one artefact); with hub checkpoints the harness fine-tunes it (``()``)."""
    if after is not None and not after and suite.experts.source == "finetune":
        return None
    return None if after is None else tuple(after)


def expert_key(suite: Suite, seed: int, task: str, after: tuple[str, ...] | None = None) -> str:
    """The key of ``task``'s expert: fine-tuned from θ0 (``after`` None), or sequentially,
    from the expert of ``after[-1]`` (itself after ``after[:-1]``; see ``chain_of``)."""
    after = chain_of(suite, after)
    memo = _memo(suite)
    if ("experts", EXPERTS_VERSION) not in memo:
        memo["experts", EXPERTS_VERSION] = (
            {**suite.experts.model_dump(exclude={"epochs_per_task"}), "finetune": suite.experts.finetune.keyed()},
            {t.name: t for t in suite.tasks},
        )
    experts, by_name = memo["experts", EXPERTS_VERSION]
    if after is not None:
        hit = memo.get(("chain", seed, task, after, EXPERTS_VERSION))
        if hit is None:
            # the previous expert's key carries the whole chain (and θ0 through the heads)
            start = expert_key(suite, seed, after[-1], after[:-1]) if after else "theta0"
            experts = {"finetune": suite.experts.recipe_for(task).keyed(), "sequential_after": start}
            hit = memo["chain", seed, task, after, EXPERTS_VERSION] = _expert_key(
                suite, seed, task, experts, {"train": TRAIN_VERSION}, by_name
            )
        return hit
    if suite.experts.source == "checkpoints":  # only this task's checkpoint names this expert
        from .models.checkpoint import CHECKPOINT_VERSION

        return _expert_key(
            suite,
            seed,
            task,
            {"checkpoint": experts["checkpoints"][task]},
            {"checkpoint": CHECKPOINT_VERSION},
            by_name,
        )
    if task in suite.experts.epochs_per_task:
        experts = {**experts, "finetune": suite.experts.recipe_for(task).keyed()}
    return _expert_key(suite, seed, task, experts, {"train": TRAIN_VERSION}, by_name)


def _expert_key(suite: Suite, seed: int, task: str, experts: dict, trained: dict, by_name: dict) -> str:
    components = {
        "experts": EXPERTS_VERSION,
        "models": models_version(suite.backbone),
        "data": data_versions([by_name[task]]),
        **trained,
    }
    # a rehearsal's expert is its perturbation, measured (E) on its generated test split
    stand_in = [suite.rehearsal.model_dump(exclude={"caps"})] if suite.rehearsal else []
    # trained (and E measured) in fp32 whatever the evaluation precision: a job in another
    # precision measures E itself (protocol.Evaluator.expert_accuracy)
    return artefact_key(
        "expert",
        components,
        build_numerics(suite),
        heads_key(suite, seed),
        task,
        experts,
        suite.evaluation.model_dump(exclude={"precision"}),
        *stand_in,
    )


def _rotate_batch(x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    r = torch.randint(0, 4, (len(x),), generator=gen).to(x.device)  # drawn on the CPU: same on any device
    out = x.clone()
    for k in range(1, 4):
        sel = r == k
        out[sel] = torch.rot90(x[sel], k, dims=(-2, -1))
    return out, r


def make_theta0(suite: Suite, seed: int) -> tuple[StateDict, dict]:
    """θ0: a real-scale backbone's published weights, or (tiny ViT) pretrain it."""
    if suite.backbone.kind == "hf_seq2seq" and suite.backbone.config is not None:
        return pretrain_text_theta0(suite, seed)
    if suite.backbone.kind == "hf_seq2seq":
        from .models.seq2seq import pretrained_state as text_state

        return text_state(suite.backbone), {"pretrained": suite.backbone.model}
    if suite.backbone.kind != "tiny_vit":
        from .models.clip import pretrained_state

        return pretrained_state(suite.backbone, seed), {"pretrained": getattr(suite.backbone, "pretrained", None)}
    return pretrain_theta0(suite, seed)


def pretrain_theta0(suite: Suite, seed: int) -> tuple[StateDict, dict]:
    """Pretrain θ0 on the train splits of the suite's tasks (never val/test).

    ``family_rotation``: label-free; predict which task an image comes from and its
    rotation (0/90/180/270°). ``multitask``: supervised on every task's labels, merged
    into coarser classes (y // coarse) when ``coarse`` > 1, through throw-away heads (the
    analogue of a CLIP that has seen the concepts); the suite's own heads are built afterwards
    from θ0's features and never see these.
    """
    torch.manual_seed(seed)
    tasks = load_tasks(suite, seed, pretraining=True)
    device = device_for(suite)
    backbone = create_backbone(suite.backbone)  # initialised on the CPU (same θ on any device), then moved
    d = cast(TinyViT, suite.backbone).embed_dim  # pretrained by the harness: the tiny ViT only
    ce = torch.nn.functional.cross_entropy
    x = torch.cat([data_mod.images(td.train).x for td in tasks.values()])
    fam = torch.cat([torch.full((len(td.train),), i) for i, td in enumerate(tasks.values())])
    if suite.pretrain.recipe == "family_rotation":
        fam_head, rot_head = torch.nn.Linear(d, len(tasks)), torch.nn.Linear(d, 4)
        heads = [fam_head, rot_head]
        gen = torch.Generator().manual_seed(seed + 1)
        y = fam

        def loss_fn(xb, yb):
            xr, rot = _rotate_batch(xb, gen)
            f = backbone(xr)
            return ce(fam_head(f), yb) + ce(rot_head(f), rot)
    else:  # multitask: (coarsened) labels offset per task, logits masked to the sample's task
        if suite.pretrain.label_tasks is not None:
            tasks = {n: td for n, td in tasks.items() if n in suite.pretrain.label_tasks}
            x = torch.cat([data_mod.images(td.train).x for td in tasks.values()])
        c = suite.pretrain.coarse
        sizes = torch.tensor([-(-len(td.classes) // c) for td in tasks.values()])
        offsets = torch.cumsum(sizes, 0) - sizes
        head = torch.nn.Linear(d, int(sizes.sum()))
        heads = [head]
        y = torch.cat([data_mod.images(td.train).y // c + offsets[i] for i, td in enumerate(tasks.values())])
        task_of = torch.repeat_interleave(torch.arange(len(tasks)), sizes).to(device)

        def loss_fn(xb, yb):
            logits = head(backbone(xb))
            own = task_of[None, :] == task_of[yb][:, None]
            return ce(logits.masked_fill(~own, float("-inf")), yb)

    for m in (backbone, *heads):
        m.to(device)
    params = [*backbone.parameters(), *(p for h in heads for p in h.parameters())]
    losses = fit(params, loss_fn, x, y, suite.pretrain, seed, what="θ0 pretraining")
    return {k: v.cpu() for k, v in backbone.state_dict().items()}, {"recipe": suite.pretrain.recipe, "losses": losses}


def _fit_text(suite: Suite, model: torch.nn.Module, splits: list, recipe, seed: int, what: str) -> list[float]:
    """Train a text model on (prompt, target) pairs of ``splits`` with the LM loss."""
    from .models import seq2seq

    tok = seq2seq.tokenizer_for(suite.backbone)
    x, y = seq2seq.encode(tok, [p for s in splits for p in s.prompts], [t for s in splits for t in s.targets])
    model.to(device_for(suite)).train()
    loss_fn = seq2seq.lm_loss(model, tok.pad_token_id)
    losses = fit(list(model.parameters()), loss_fn, x, y, recipe, seed, what=what, images=False)
    model.eval()
    return losses


def pretrain_text_theta0(suite: Suite, seed: int) -> tuple[StateDict, dict]:
    """A micro text model's θ0: random weights from the seed, trained on the train splits of
    the pretraining tasks (``pretrain.tasks``: other questions than the suite's tasks) with
    the LM loss on their answers, ``pretrain``'s recipe."""
    from .models.seq2seq import micro_config, random_model

    model = random_model(micro_config(suite.backbone), seed)
    tasks = load_tasks(suite, seed, pretraining=True)
    losses = _fit_text(suite, model, [td.train for td in tasks.values()], suite.pretrain, seed, "θ0 pretraining")
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, {"recipe": "text", "losses": losses}


def make_text_expert(suite: Suite, seed: int, task: str, theta0: StateDict) -> tuple[StateDict, dict]:
    """A micro text model fine-tuned from θ0 on one task's train split (``experts.finetune``);
    its own test score E recorded."""
    from .models import split_score

    idx = suite.task_names().index(task)
    torch.manual_seed(seed * 1000 + idx)
    model = create_backbone(suite.backbone, theta0)
    model.load_state_dict(theta0)
    td = load_tasks(suite, seed)[task]
    losses = _fit_text(suite, model, [td.train], suite.experts.recipe_for(task), seed * 1000 + idx, f"expert {task}")
    acc = split_score(suite.backbone, model, None, td.test, suite.evaluation.batch_size)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return state, {"task": task, "losses": losses, "test_accuracy": acc}


def make_heads(suite: Suite, seed: int, theta0: StateDict) -> tuple[StateDict, dict]:
    """One head per task from θ0's features on its train split (never val/test); none for a
    generative (text) backbone."""
    if suite.heads.kind == "generative":
        return {}, {"kind": "generative"}
    device = device_for(suite)
    backbone = create_backbone(suite.backbone)
    backbone.load_state_dict(theta0)
    backbone.to(device)
    gen = torch.Generator().manual_seed(seed + 2)
    out = {}
    if suite.heads.kind == "zero_shot":
        from .data.vision import clip_tasks
        from .models.clip import build_open_clip, zero_shot_weights

        clip = build_open_clip(suite.backbone, pretrained=True, seed=seed).to(device).eval()  # once for every task
        for t in suite.tasks:
            meta = clip_tasks().get(t.dataset)
            if meta is None:
                raise CmbenchError(f"heads.kind: zero_shot needs class names and templates; {t.dataset} has none")
            out[f"{t.name}.weight"] = zero_shot_weights(
                suite.backbone, meta["classnames"], meta["templates"], seed, device=str(device), model=clip
            )
        return out, {"kind": "zero_shot"}
    for name, td in load_tasks(suite, seed).items():
        train = data_mod.images(td.train)
        feats = torch.nn.functional.normalize(features(backbone, train.x, suite.evaluation.batch_size), dim=-1)
        y = train.y
        n_cls = len(td.classes)
        if suite.heads.kind == "template":
            # one canonical "description" per class: θ0's embedding of the class-mean image
            # of the train split (the analogue of a zero-shot text prompt; no sampling)
            means = torch.stack([train.x[y == c].float().mean(0) for c in range(n_cls)])
            f = features(backbone, means.round().to(torch.uint8), suite.evaluation.batch_size)
            out[f"{name}.weight"] = torch.nn.functional.normalize(f, dim=-1) * suite.heads.scale
        elif suite.heads.kind == "prototype":
            protos = []
            for c in range(n_cls):
                idx = torch.nonzero(y == c).flatten()
                pick = idx[torch.randperm(len(idx), generator=gen)[: suite.heads.shots]]
                protos.append(feats[pick].mean(0))
            w = torch.nn.functional.normalize(torch.stack(protos), dim=-1) * suite.heads.scale
            out[f"{name}.weight"] = w
        else:  # linear probe: multinomial logistic regression, full batch L-BFGS
            w = torch.zeros(n_cls, feats.shape[1], requires_grad=True)
            b = torch.zeros(n_cls, requires_grad=True)
            opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

            def closure():
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(feats @ w.T + b, y) + 1e-4 * (w**2).sum()
                loss.backward()
                return loss

            opt.step(closure)
            out[f"{name}.weight"], out[f"{name}.bias"] = w.detach(), b.detach()
    return out, {"kind": suite.heads.kind}


def split_heads(tensors: StateDict, task_names: list[str]) -> dict[str, Head]:
    """The heads by task (none where the backbone answers in text: ``heads.kind: generative``)."""
    return {n: Head(tensors[f"{n}.weight"], tensors.get(f"{n}.bias")) for n in task_names if f"{n}.weight" in tensors}


def make_expert(
    suite: Suite, seed: int, task: str, theta0: StateDict, head: Head | None, start: StateDict | None = None
) -> tuple[StateDict, dict]:
    """Fine-tune θ0 (or ``start``: the previous expert of a sequential chain) on one task with
    its head frozen; record its own test accuracy E."""
    import copy

    if head is None:  # a micro text model: no head, the LM loss
        return make_text_expert(suite, seed, task, theta0)

    from .models import accuracy

    idx = suite.task_names().index(task)
    torch.manual_seed(seed * 1000 + idx)
    backbone = create_backbone(suite.backbone, theta0)  # a linearised model stays linear at θ0
    backbone.load_state_dict(theta0 if start is None else start)
    device = device_for(suite)
    backbone.to(device).train()
    train_head = copy.deepcopy(head).to(device)
    td = load_tasks(suite, seed)[task]
    train, test = data_mod.images(td.train), data_mod.images(td.test)
    recipe = suite.experts.recipe_for(task)
    ce = torch.nn.functional.cross_entropy

    def loss_fn(xb, yb):
        return ce(train_head(backbone(xb)), yb, label_smoothing=recipe.label_smoothing)

    pattern = re.compile(recipe.trainable)
    params = [p for n, p in backbone.named_parameters() if pattern.search(n)]
    if not params:
        raise CmbenchError(f"experts.finetune.trainable: {recipe.trainable!r} matches no parameter of the backbone")
    losses = fit(params, loss_fn, train.x, train.y, recipe, seed * 1000 + idx, what=f"expert {task}")
    acc = accuracy(backbone, head, test.x, test.y, suite.evaluation.batch_size)
    return (
        {k: v.cpu() for k, v in backbone.state_dict().items()},
        {"task": task, "test_accuracy": acc, "losses": losses, "device": str(device)},
    )


# an expert to build: (seed, task, the tasks of its sequential chain before it or None)
ExpertSpec = tuple[int, str, "tuple[str, ...] | None"]


@dataclasses.dataclass(frozen=True)
class ToBuild:
    """What the store does not hold yet for some jobs: θ0 (and its heads) per seed, and the
    experts a merge stream fine-tunes: per (seed, task), and the sequential chains' experts."""

    theta0: list[int]
    experts: list[ExpertSpec]

    def chain_ends(self) -> list[ExpertSpec]:
        """The sequential experts no other one to build continues: building one builds its chain."""
        seq = [e for e in self.experts if e[2] is not None]
        inner = {(s, a[-1], a[:-1]) for s, _, a in seq if a}
        return [e for e in seq if e not in inner]


def to_build(suite: Suite, jobs: list[Job], store: Store) -> ToBuild:
    finetuned = suite.setting == "merge_stream" and suite.experts.source == "finetune"
    shipped = Store(suite.shipped) if suite.shipped else None
    seeds = sorted({j.seed for j in jobs})

    def missing(kind: str, key: str) -> bool:
        return not store.has(kind, key) and not (shipped and shipped.has(kind, key))

    wanted: dict[str, ExpertSpec] = {}  # by key: a chain's first expert may be the independent one
    for s in seeds if finetuned else []:
        for t in suite.task_names():
            wanted.setdefault(expert_key(suite, s, t), (s, t, None))
    for j in jobs if suite.setting == "merge_stream" else []:
        for step, t in enumerate(j.order, start=1):
            after = chain_of(suite, j.expert_chain(step))
            if after is not None:
                wanted.setdefault(expert_key(suite, j.seed, t, after), (j.seed, t, after))
    return ToBuild(
        theta0=[s for s in seeds if missing("theta0", theta0_key(suite, s))],
        experts=[e for k, e in wanted.items() if missing("experts", k)],
    )


SHIPPABLE = ("theta0", "heads", "experts")


def shipped_keys(suite: Suite, kinds: tuple[str, ...] = SHIPPABLE) -> list[tuple[str, str]]:
    """What a suite ships (``tools/ship_artefacts.py``), as (kind, key): θ0, heads and the
    independent experts of every seed, or only those of ``kinds`` (a suite may ship its θ0
    alone: the others are rebuilt where it runs). A sequential expert is one per (seed,
    order, step): the chains are fine-tuned where they run; pinned checkpoints are the
    user's files."""
    out: list[tuple[str, str]] = []
    for seed in suite.seeds:
        out.append(("theta0", theta0_key(suite, seed)))
        if suite.setting == "merge_stream":
            out.append(("heads", heads_key(suite, seed)))
            if suite.experts.source == "finetune":
                out += [("experts", expert_key(suite, seed, t)) for t in suite.task_names()]
    return [(kind, key) for kind, key in out if kind in kinds]


def shipped_kinds(suite: Suite) -> tuple[str, ...]:
    """The kinds of artefact the suite's shipped folder holds (each of them for every seed:
    ``shipped_keys``); none without ``shipped``."""
    root = Path(suite.shipped) if suite.shipped else None
    return tuple(k for k in SHIPPABLE if root is not None and (root / k).is_dir())


def shipped_or(suite: Suite, kind: str, key: str, build):
    """What makes an artefact: reading the suite's shipped copy (checked against its content
    hash; a damaged one is an error, never silently rebuilt), else ``build``."""
    if not suite.shipped:
        return build
    from .store import CorruptArtefact

    def make() -> tuple[StateDict, dict]:
        try:
            got = Store(cast(str, suite.shipped)).read(kind, key)
        except CorruptArtefact as e:
            raise CmbenchError(f"shipped artefact {e}: restore it (git checkout) or remove `shipped` from the suite")
        if got is None:
            return build()
        tensors, meta = got
        return tensors, {k: v for k, v in meta.items() if k not in ("key", "content_hash", "build")} | {"shipped": True}

    return make


class SuiteArtefacts:
    """θ0, heads and experts of one suite and seed, built on first use and cached."""

    def __init__(self, suite: Suite, seed: int, store: Store):
        self.suite, self.seed, self.store = suite, seed, store

    def _get(self, kind: str, key: str, build) -> tuple[StateDict, dict]:
        return self.store.get_or_make(kind, key, shipped_or(self.suite, kind, key, build))

    def theta0(self) -> StateDict:
        key = theta0_key(self.suite, self.seed)
        return self._get("theta0", key, lambda: make_theta0(self.suite, self.seed))[0]

    def heads(self) -> dict[str, Head]:
        key = heads_key(self.suite, self.seed)
        t, _ = self._get("heads", key, lambda: make_heads(self.suite, self.seed, self.theta0()))
        return split_heads(t, self.suite.task_names())

    def expert(self, task: str, after: tuple[str, ...] | None = None) -> tuple[StateDict, dict]:
        """``task``'s expert; ``after``: the tasks of its sequential chain before it (None:
        fine-tuned from θ0 or the task's checkpoint)."""
        after = chain_of(self.suite, after)
        key = expert_key(self.suite, self.seed, task, after)
        if after is not None:

            def make_next() -> tuple[StateDict, dict]:
                start = self.expert(after[-1], after[:-1])[0] if after else None
                out, meta = make_expert(self.suite, self.seed, task, self.theta0(), self.heads().get(task), start)
                return out, {**meta, "sequential_after": list(after)}

            return self._get("experts", key, make_next)
        if self.suite.experts.source == "checkpoints":  # the user's checkpoint is the copy: not stored twice
            from .models.checkpoint import load_expert

            def make():
                return load_expert_checkpoint(self.suite, self.seed, task, self.theta0(), self.heads().get(task))

            def reload():
                return load_expert(self.suite.experts.checkpoints[task], task, self.theta0(), "experts.checkpoints")[0]

            return self.store.get_or_make("experts", key, make, reload=reload)
        return self._get(
            "experts", key, lambda: make_expert(self.suite, self.seed, task, self.theta0(), self.heads().get(task))
        )


def load_expert_checkpoint(
    suite: Suite, seed: int, task: str, theta0: StateDict, head: Head | None
) -> tuple[StateDict, dict]:
    """A pinned checkpoint, converted to the backbone's names and checked against θ0; its own
    test accuracy measured once here (cached with it)."""
    from .models import split_score
    from .models.checkpoint import load_expert

    state, meta = load_expert(suite.experts.checkpoints[task], task, theta0, "experts.checkpoints")
    backbone = create_backbone(suite.backbone, theta0).to(device_for(suite))
    backbone.load_state_dict(state)
    td = load_tasks(suite, seed)[task]
    meta["test_accuracy"] = split_score(suite.backbone, backbone, head, td.test, suite.evaluation.batch_size)
    if not suite.rehearsal:  # against the published accuracy of this hub expert, as soon as known
        checks = published.setup_check(suite, "expert", {task: meta["test_accuracy"]}, {task: len(td.test)})
        for line in published.warnings(checks):
            print(line, file=sys.stderr, flush=True)
    return state, meta
