"""TRM (reconstruction): each objective term on a tiny model."""

import torch

from cmbench import methods as M
from cmbench import registry as R
from cmbench.conformance import TINY, _tiny_task
from cmbench.models import create_backbone
from cmbench.protocol import DataAccess


def setup(seed=0):
    R.discover()
    trm_cls = R.get("trm")
    torch.manual_seed(seed)
    model = create_backbone(TINY)
    prev = {k: v.detach().clone() for k, v in model.state_dict().items()}
    task = _tiny_task("new", seed, n=64)
    g = torch.Generator().manual_seed(seed)
    w_old, w_new = (0.3 * torch.randn(3, TINY.embed_dim, generator=g) for _ in range(2))
    head_task = lambda f: f @ w_new.T  # noqa: E731
    head_seen = lambda f: torch.cat([f @ w_old.T, f @ w_new.T], -1)  # noqa: E731
    x = task.train.x.float().div(127.5).sub(1.0)
    y = task.train.y
    # the trained endpoint: a few steps of the task's loss from prev
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(15):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head_task(model(x)), y).backward()
        opt.step()
    endpoint = {k: v.detach().clone() for k, v in model.state_dict().items()}
    buffers = dict(model.named_buffers())
    return trm_cls, model, buffers, head_task, head_seen, prev, endpoint, x, y, task


def test_consistency_is_zero_at_the_previous_model():
    trm, model, buffers, ht, hs, prev, _, x, y, _ = setup()
    params = {k: v for k, v in prev.items() if v.is_floating_point()}
    terms = trm.terms(model, buffers, ht, hs, params, params, x, y)
    assert abs(float(terms["cons"])) < 1e-6


def test_alignment_decreases_toward_the_trained_endpoint():
    trm, model, buffers, ht, hs, prev, end, x, y, _ = setup()
    keys = [k for k in prev if prev[k].is_floating_point()]
    dirs = [{k: end[k] - prev[k] for k in keys}]
    groups = {k: 0 for k in keys}
    previous = {k: prev[k] for k in keys}
    align = [
        float(
            trm.terms(model, buffers, ht, hs, previous, trm.combine(prev, dirs, groups, torch.tensor([[c]])), x, y)[
                "align"
            ]
        )
        for c in (0.0, 0.5, 1.0)
    ]
    assert align[0] > align[1] > align[2], align
    cons_end = trm.terms(model, buffers, ht, hs, previous, trm.combine(prev, dirs, groups, torch.tensor([[1.0]])), x, y)
    assert float(cons_end["cons"]) > 0


def _merge(w_resp, seed=0):
    trm_cls, model, buffers, ht, hs, prev, end, x, y, task = setup(seed)
    method = trm_cls(**M.validate_hparams(trm_cls, {"w_resp": w_resp, "w_cons": 0.0, "steps": 80, "lr": 0.1}))
    data = DataAccess("trm", "current_task", {"new": task}, 0)
    ctx = M.Context(
        theta0=prev,
        num_tasks=2,
        seed=0,
        setting="train_then_merge",
        step=2,
        task="new",
        seen_tasks=["old", "new"],
        data=data,
    )
    data.ctx = ctx

    def network(state, classes="task"):
        model.load_state_dict(state)
        return model, ht if classes == "task" else hs

    ctx.network = network
    merged = method.merge(ctx, prev, end, "new")
    # the gradient a new task's training would start with: CE on fresh rows, at the merged model
    model.load_state_dict(merged)
    g = torch.Generator().manual_seed(9)
    w_next = torch.randn(3, TINY.embed_dim, generator=g)
    nxt = _tiny_task("next", 99, n=64)
    loss = torch.nn.functional.cross_entropy(model(nxt.train.x.float().div(127.5).sub(1.0)) @ w_next.T, nxt.train.y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return None, float(torch.sqrt(sum((gr**2).sum() for gr in grads)))


def test_responsiveness_raises_the_next_tasks_start_gradient():
    ent0, grad0 = _merge(0.0)
    ent1, grad1 = _merge(2.0)
    assert grad1 > grad0  # the next task starts with a larger gradient
