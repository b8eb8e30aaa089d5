"""Fisher averaging (deviation 2): the three Fisher forms against closed forms on a linear
model, and the per-model normalisation FusionBench applies by default."""

import pytest
import torch
from torch import nn

from cmbench import methods as M
from cmbench import registry as R
from cmbench.data import Split, TaskData
from cmbench.estimates import diagonal_fisher
from cmbench.protocol import DataAccess

C, D = 3, 4


def setup(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, 2, 2), generator=g, dtype=torch.uint8)
    y = torch.randint(0, C, (n,), generator=g)
    task = TaskData("t", ["a", "b", "c"], Split(x=x, y=y), Split(x=x[:2], y=y[:2]), Split(x=x[:2], y=y[:2]))
    H = torch.randn(C, 5, generator=g)
    model = nn.Sequential(nn.Flatten(), nn.Linear(D, 5, bias=False))
    data = DataAccess("fisher_average", "current_task", {"t": task}, 0)
    ctx = M.Context(theta0={}, num_tasks=1, seed=0, step=1, task="t", seen_tasks=["t"], data=data)
    data.ctx = ctx

    def network(state, classes="task", task=None):
        model.load_state_dict(state)
        return model, lambda f: f @ H.T

    ctx.network = network
    return ctx, task, H


def closed_forms(state, task, H, batch=32):
    """∇_W log p(y|x) = Hᵀ (e_y − p) xᵀ for logits = H W x."""
    perm = torch.randperm(len(task.train.y), generator=torch.Generator().manual_seed(0))
    X = task.train.x[perm].float().div(127.5).sub(1.0).flatten(1)
    Y = task.train.y[perm]
    W = state["1.weight"]
    P = torch.softmax(X @ W.T @ H.T, -1)
    grads = torch.stack(
        [torch.stack([torch.outer(H.T @ (torch.eye(C)[c] - p), x) for c in range(C)]) for x, p in zip(X, P)]
    )  # (n, C, 5, D)
    model = (P[:, :, None, None] * grads**2).sum(1).mean(0)
    empirical = (grads[torch.arange(len(Y)), Y] ** 2).mean(0)
    batched = sum(
        ((P[i : i + batch].sqrt()[:, :, None, None] * grads[i : i + batch]).sum((0, 1))) ** 2
        for i in range(0, len(Y), batch)
    ) / len(Y)
    return {"model": model, "empirical": empirical, "model_batch": batched}


@pytest.mark.parametrize("kind", ["model", "empirical", "model_batch"])
def test_fisher_forms_match_closed_forms(kind):
    ctx, task, H = setup()
    state = {"1.weight": torch.randn(5, D, generator=torch.Generator().manual_seed(1))}
    want = closed_forms(state, task, H, batch=5)[kind]
    got = diagonal_fisher(ctx, state, n_samples=100, kind=kind, batch_size=5)["1.weight"]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


def test_fisher_average_defaults_are_the_papers_fisher_normalised_per_model(monkeypatch):
    """The default is the model's own predictive Fisher (not the true-label one), and each
    model's Fisher is divided by its norm: scaling one expert's Fisher by 100 changes nothing."""
    R.discover()
    import cmbench_baselines.fisher_average as fa

    cls = R.get("fisher_average")
    assert cls.defaults()["fisher"] == "model" and cls.defaults()["normalize"] is True
    ctx, _, _ = setup()
    state = {"1.weight": torch.randn(5, D, generator=torch.Generator().manual_seed(1))}
    seen = []
    real = fa.diagonal_fisher
    monkeypatch.setattr(fa, "diagonal_fisher", lambda *a, **kw: seen.append(kw["kind"]) or real(*a, **kw))
    R.create("fisher_average", {}).merge(ctx, state, state, "t")
    assert seen == ["model"]

    g = torch.Generator().manual_seed(2)
    F1, F2 = torch.rand(5, D, generator=g), torch.rand(5, D, generator=g)
    e1, e2 = torch.randn(5, D, generator=g), torch.randn(5, D, generator=g)
    fishers = iter([{"1.weight": F1}, {"1.weight": 100 * F2}])
    monkeypatch.setattr(fa, "diagonal_fisher", lambda *a, **kw: next(fishers))
    m = R.create("fisher_average", {"eps": 0.0})
    m.merge(ctx, {}, {"1.weight": e1}, "a")
    out = m.merge(ctx, {}, {"1.weight": e2}, "b")["1.weight"]
    n1, n2 = F1.norm(), F2.norm()
    want = (F1 / n1 * e1 + F2 / n2 * e2) / (F1 / n1 + F2 / n2)
    torch.testing.assert_close(out, want)


def test_a_confident_experts_absolute_floor_takes_over_and_the_relative_floor_does_not(monkeypatch):
    """FusionBench's floor: (F + ε)/‖F‖. An expert with a tiny Fisher (confident) gets weight
    ε/‖F‖ on every entry, which outweighs a normal expert where its Fisher is small, so the
    merge copies the confident expert there. With floor=relative (ε_i = ε‖F_i‖) it does not."""
    R.discover()
    import cmbench_baselines.fisher_average as fa

    ctx, _, _ = setup()
    g = torch.Generator().manual_seed(3)
    normal = torch.rand(5, D, generator=g)
    normal[0] = 1e-9  # a row no task is sensitive to under the normal expert
    confident = torch.full((5, D), 1e-9)  # tiny everywhere: ‖F‖ ~ 1e-8
    e1, e2 = torch.zeros(5, D), torch.ones(5, D)
    out = {}
    for floor in ("absolute", "relative"):
        fishers = iter([{"1.weight": normal}, {"1.weight": confident}])
        monkeypatch.setattr(fa, "diagonal_fisher", lambda *a, **kw: next(fishers))
        m = R.create("fisher_average", {"eps": 1e-6, "floor": floor})
        m.merge(ctx, {}, {"1.weight": e1}, "a")
        out[floor] = m.merge(ctx, {}, {"1.weight": e2}, "b")["1.weight"]
    # absolute: the confident expert's weight c(F + ε) ≈ ε/(‖F‖ + ε) ≈ 1 per entry outweighs the
    # normal expert's F/‖F‖ (~0.2) everywhere: the merge leans to it on every entry
    assert out["absolute"].min() > 0.5
    # relative: its floor weighs ~1e-6 after normalisation; the normal expert decides where it is sensitive
    assert out["relative"][1:].max() < 0.05 and out["relative"][0].min() > 0.3
    assert ctx.diagnostics  # the floor's share is recorded for the reader
