"""P&M: the closed-form α, its reduction to averaging, one pass per step, the quadratic claim."""

import pytest
import torch

from cmbench import methods as M
from cmbench import registry as R
from cmbench.suite import TrainRecipe
from cmbench.train import fit

PM = None


def pm(**hp):
    R.discover()
    return R.create("pm", hp)


def _merge_with_fishers(method, merged, incoming, fisher, step):
    """Run P&M's merge with a given Fisher (monkeypatching the estimator)."""
    import cmbench_baselines.pm as mod

    orig = mod.diagonal_fisher
    mod.diagonal_fisher = lambda ctx, state, n, **kw: fisher
    try:
        ctx = M.Context(theta0=merged, num_tasks=5, seed=0, step=step)
        return method.merge(ctx, merged, incoming, f"t{step}")
    finally:
        mod.diagonal_fisher = orig


def test_closed_form_alpha_minimises_the_quadratic():
    g = torch.Generator().manual_seed(0)
    d = 7
    thetas = [torch.randn(d, generator=g) for _ in range(3)]
    fishers = [torch.rand(d, generator=g) + 0.1 for _ in range(3)]
    method = pm(clamp=False, fisher_on="all")
    merged = {"w": torch.zeros(d)}
    for t, (th, F) in enumerate(zip(thetas, fishers), start=1):
        prev = merged["w"].clone()
        merged = _merge_with_fishers(method, merged, {"w": th}, {"w": F}, t)
        a = method.alphas[-1]
        # numeric minimiser of Σ_i ½ (prev + α Δ − θ_i)ᵀ F_i (…) over α
        alpha = torch.zeros((), requires_grad=True)
        opt = torch.optim.LBFGS([alpha], max_iter=100, line_search_fn="strong_wolfe")
        delta = th - prev

        def closure():
            opt.zero_grad()
            m = prev + alpha * delta
            loss = sum(0.5 * ((m - thetas[i]) * fishers[i] * (m - thetas[i])).sum() for i in range(t))
            loss.backward()
            return loss

        opt.step(closure)
        assert a == pytest.approx(float(alpha), abs=1e-4)
        assert torch.allclose(merged["w"], prev + a * delta, atol=1e-6)


def test_equal_fishers_give_plain_averaging():
    g = torch.Generator().manual_seed(1)
    F = torch.rand(5, generator=g) + 0.5
    method = pm(fisher_on="all")
    merged = {"w": torch.zeros(5)}
    thetas = [torch.randn(5, generator=g) for _ in range(4)]
    for t, th in enumerate(thetas, start=1):
        merged = _merge_with_fishers(method, merged, {"w": th}, {"w": F}, t)
        assert method.alphas[-1] == pytest.approx(1 / t, abs=1e-6)
        assert torch.allclose(merged["w"], torch.stack(thetas[:t]).mean(0), atol=1e-5)


class _Ctx:
    def __init__(self, params, start):
        self.adapters = []
        self.trainable = params
        self.train_start_state = start
        self.generator = torch.Generator().manual_seed(0)


def test_one_forward_and_one_backward_per_step():
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 3)
    start = {n: p.detach().clone() for n, p in lin.named_parameters()}
    with torch.no_grad():
        lin.weight.add_(0.3)  # a non-zero task vector
    method = pm()
    ctx = _Ctx(dict(lin.named_parameters()), start)
    counts = {"fwd": 0, "bwd": 0}
    lin.register_forward_hook(lambda *a: counts.__setitem__("fwd", counts["fwd"] + 1))
    lin.weight.register_hook(lambda g: counts.__setitem__("bwd", counts["bwd"] + 1))

    def loss_fn(x, y):
        return torch.nn.functional.cross_entropy(lin(x.flatten(1)[:, :4]), y)

    wrapped = method.wrap_loss(ctx, loss_fn, lin)
    x = torch.randint(0, 256, (40, 1, 2, 2), dtype=torch.uint8)
    y = torch.randint(0, 3, (40,))
    recipe = TrainRecipe(epochs=1, batch_size=8, lr=1e-3)
    fit(list(lin.parameters()), wrapped, x, y, recipe, seed=0, after_backward=lambda: method.after_backward(ctx))
    assert counts == {"fwd": 5, "bwd": 5}


def test_perturbed_loss_expectation_on_a_quadratic():
    """E_s[L(θ + sεΔ)] = L(θ) + (ε²/3)·ΔᵀHΔ for L(θ) = ½θᵀHθ + gᵀθ and p = 1/3 each."""
    g = torch.Generator().manual_seed(2)
    d, eps = 6, 0.5
    A = torch.randn(d, d, generator=g)
    H = A @ A.T + torch.eye(d)
    gv = torch.randn(d, generator=g)
    theta0 = torch.randn(d, generator=g)
    w = torch.nn.Parameter(theta0 + torch.randn(d, generator=g))
    delta = w.detach() - theta0
    method = pm(eps=eps)
    ctx = _Ctx({"w": w}, {"w": theta0})

    def L(p):
        return 0.5 * p @ H @ p + gv @ p

    wrapped = method.wrap_loss(ctx, lambda xb, yb: L(w), None)
    n = 6000
    vals = []
    for _ in range(n):
        vals.append(float(wrapped(None, None).detach()))
        method.after_backward(ctx)
        assert torch.equal(w.detach(), theta0 + delta)  # restored exactly
    mean = sum(vals) / n
    expect = float(L(w.detach()) + eps**2 / 3 * delta @ H @ delta)
    sd = torch.tensor(vals).std().item() / n**0.5
    assert abs(mean - expect) < 4 * sd, (mean, expect, sd)
