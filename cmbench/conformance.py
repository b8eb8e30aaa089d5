"""The conformance kit: the same checks for every method, present and future.

``check(name)`` runs a method through a short stream on a tiny random ViT and returns the
problems found (an empty list means it conforms):

* inputs are not modified in place (θ0, the merged model, the incoming model);
* the merged model keeps every key, shape and dtype; integer tensors are untouched;
* seeded determinism: two runs give identical models;
* data access: a method that declared ``none`` gets no data, others only what they declared,
  never a test split (the harness's DataAccess enforces it; a violation is a problem);
* storage is measurable (the bytes it keeps between steps are counted).

Run it from the command line with ``cmbench check METHOD`` or through pytest
(``tests/test_conformance.py`` parametrises every discovered method).
"""

from __future__ import annotations

import traceback

import torch

from . import CmbenchError
from . import methods as methods_mod
from . import registry
from .data import Split, TaskData
from .models import Head, create_backbone, layout_of
from .suite import Backbone
from .tensors import StateDict, clone, nbytes

TINY = Backbone(img_size=8, patch_size=4, in_chans=1, embed_dim=16, depth=1, num_heads=2, mlp_ratio=2)
N_TASKS = 3


def _tiny_task(name: str, seed: int, n: int = 48, n_cls: int = 3) -> TaskData:
    g = torch.Generator().manual_seed(seed)

    def split(m):
        return Split(
            x=torch.randint(0, 256, (m, 1, 8, 8), generator=g, dtype=torch.uint8),
            y=torch.randint(0, n_cls, (m,), generator=g),
        )

    return TaskData(name, [str(c) for c in range(n_cls)], split(n), split(n // 2), split(n // 2))


def _models(seed: int) -> tuple[StateDict, list[StateDict]]:
    torch.manual_seed(seed)
    theta0 = create_backbone(TINY).state_dict()
    theta0["conformance_counter"] = torch.tensor([5], dtype=torch.int64)  # an integer buffer
    g = torch.Generator().manual_seed(seed + 1)
    experts = []
    for _ in range(N_TASKS):
        e = {
            k: (v + 0.05 * torch.randn(v.shape, generator=g)) if v.is_floating_point() else v.clone()
            for k, v in theta0.items()
        }
        experts.append(e)
    return theta0, experts


def _stream(name: str, setting: str, seed: int = 0):
    """Run the method's steps as the harness would; return merged models and kept bytes."""
    from .protocol import DataAccess

    cls = registry.get(name)
    method = cls(**methods_mod.validate_hparams(cls, {}))
    theta0, experts = _models(seed)
    names = [f"t{i}" for i in range(N_TASKS)]
    tasks = {n: _tiny_task(n, seed + i) for i, n in enumerate(names)}
    heads = {n: Head(torch.nn.functional.normalize(torch.randn(3, TINY.embed_dim), dim=-1) * 10) for n in names}
    data = DataAccess(name, cls.data_access, tasks, seed)
    ctx = methods_mod.Context(
        theta0=theta0,
        num_tasks=N_TASKS,
        seed=seed,
        setting=setting,
        generator=torch.Generator().manual_seed(seed),
        data=data,
    )
    data.ctx = ctx
    model = create_backbone(TINY)
    ctx.layout = layout_of(model)

    def network(state, classes="task", task=None):
        model.load_state_dict({k: v for k, v in state.items() if k != "conformance_counter"})
        if classes == "task":
            return model, heads[task or ctx.task]
        return model, lambda f: torch.cat([heads[n](f) for n in ctx.seen_tasks], -1)

    ctx.network = network
    snapshot0 = clone(theta0)
    method.start(ctx)
    merged, outs, kept, problems = theta0, [], [], []
    for t, (task, incoming) in enumerate(zip(names, experts), start=1):
        ctx.step, ctx.task, ctx.seen_tasks = t, task, names[:t]
        if setting == "train_then_merge":
            start = method.train_start(ctx, merged)
            if set(start) != set(theta0):
                problems.append(f"step {t}: train_start returned a model with different keys")
            if not set(method.train_tasks(ctx)) <= set(names[:t]):
                problems.append(f"step {t}: train_tasks names a task that has not arrived")
        before_merged, before_incoming = clone(merged), clone(incoming)
        out = method.merge(ctx, merged, incoming, task)
        for label, ref, now in (("merged", before_merged, merged), ("incoming", before_incoming, incoming)):
            if any(not torch.equal(ref[k], now[k]) for k in ref):
                problems.append(f"step {t}: the {label} model was modified in place")
        outs.append(clone(out))
        kept.append(nbytes(method.kept))
        merged = out
    final = method.finish(ctx, merged)
    if any(not torch.equal(snapshot0[k], theta0[k]) for k in theta0):
        problems.append("θ0 was modified in place")
    return outs + ([clone(final)] if final is not merged else []), kept, theta0, problems


def check(name: str, settings: tuple[str, ...] | None = None) -> list[str]:
    """Problems found in method ``name`` (empty: it conforms)."""
    cls = registry.get(name)
    problems: list[str] = []
    for setting in settings or cls.settings:
        where = f"[{setting}] "
        try:
            outs, kept, theta0, found = _stream(name, setting)
            again, _, _, _ = _stream(name, setting)
        except CmbenchError as e:
            problems.append(where + str(e))
            continue
        except Exception:  # noqa: BLE001 - a crash is a finding
            problems.append(where + "crashed:\n" + traceback.format_exc(limit=3))
            continue
        problems += [where + p for p in found]
        for t, out in enumerate(outs, start=1):
            if set(out) != set(theta0):
                problems.append(where + f"step {t}: keys changed: {sorted(set(out) ^ set(theta0))}")
                continue
            for k, v in out.items():
                if v.shape != theta0[k].shape or v.dtype != theta0[k].dtype:
                    problems.append(
                        where + f"step {t}: {k} is {tuple(v.shape)} {v.dtype}, "
                        f"expected {tuple(theta0[k].shape)} {theta0[k].dtype}"
                    )
                elif not v.is_floating_point() and not torch.equal(v, theta0[k]):
                    problems.append(where + f"step {t}: integer tensor {k} was changed")
                elif v.is_floating_point() and not torch.isfinite(v).all():
                    problems.append(where + f"step {t}: {k} has NaN/Inf")
        if len(again) != len(outs) or any(not torch.equal(a[k], b[k]) for a, b in zip(outs, again) for k in a):
            problems.append(where + "not deterministic: two seeded runs differ")
        if not all(isinstance(b, int) and b >= 0 for b in kept):
            problems.append(where + "storage could not be measured")
    return problems
