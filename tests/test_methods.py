"""Each baseline against an independent transcription of its reference, step by step."""

import pytest
import numpy as np
import torch

from cmbench import CmbenchError
from cmbench import methods as M
from cmbench import registry as R
from cmbench.tensors import task_vector


def rand_models(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = {"a.weight": (6, 5), "a.bias": (6,), "b.weight": (4, 6)}
    theta0 = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    theta0["steps"] = torch.tensor([7])  # integer buffer: never merged
    experts = []
    for _ in range(n):
        e = {
            k: v + 0.1 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()
            for k, v in theta0.items()
        }
        experts.append(e)
    return theta0, experts


def run_stream(name, hparams, theta0, experts, layout=None):
    method = R.create(name, hparams)
    ctx = M.Context(theta0=theta0, num_tasks=len(experts), seed=0, layout=layout)
    method.start(ctx)
    merged, out = theta0, []
    for t, e in enumerate(experts, start=1):
        ctx.step = t
        before = {k: v.clone() for k, v in e.items()}
        merged = method.merge(ctx, merged, e, f"task{t}")
        assert all(torch.equal(before[k], e[k]) for k in e), "incoming expert mutated"
        out.append(merged)
    return out


# -- references (FusionBench's continual forms, written out plainly) ------------------------


def ref_flat(sd):
    return torch.cat([sd[k].reshape(-1) for k in sorted(sd) if sd[k].is_floating_point()])


def ref_ties(flat, k, merge_func):
    d = flat.shape[1]
    kk = d - int(d * k)
    kth = flat.abs().kthvalue(kk, dim=1, keepdim=True).values
    trimmed = flat * (flat.abs() >= kth)
    sign = torch.sign(trimmed.sum(0))
    sign[sign == 0] = torch.sign(sign.sum())
    keep = torch.where(sign.unsqueeze(0) > 0, trimmed > 0, trimmed < 0)
    sel = trimmed * keep
    if merge_func == "sum":
        return sel.sum(0)
    return sel.sum(0) / (sel != 0).sum(0).float().clamp(min=1)


def test_weight_average_is_running_mean():
    theta0, experts = rand_models(5)
    steps = run_stream("weight_average", {}, theta0, experts)
    for t, m in enumerate(steps, start=1):
        for k in ("a.weight", "a.bias", "b.weight"):
            expect = torch.stack([e[k] for e in experts[:t]]).mean(0)
            assert torch.allclose(m[k], expect, atol=1e-6)
        assert torch.equal(m["steps"], theta0["steps"])
    assert torch.allclose(steps[0]["a.weight"], experts[0]["a.weight"])  # M_1 = θ1


@pytest.mark.parametrize("lam", [0.3, 1.0])
def test_task_arithmetic_steps(lam):
    theta0, experts = rand_models(4, seed=1)
    steps = run_stream("task_arithmetic", {"lam": lam}, theta0, experts)
    for t, m in enumerate(steps, start=1):
        for k in ("a.weight", "a.bias", "b.weight"):
            expect = theta0[k] + lam * sum(e[k] - theta0[k] for e in experts[:t])
            assert torch.allclose(m[k], expect, atol=1e-6)


@pytest.mark.parametrize("merge_func", ["sum", "mean"])
@pytest.mark.parametrize("k", [0.2, 0.5])
def test_ties_matches_reference_step_by_step(merge_func, k):
    theta0, experts = rand_models(5, seed=2)
    lam = 0.5
    steps = run_stream("ties", {"k": k, "lam": lam, "merge_func": merge_func}, theta0, experts)
    keys = sorted(k_ for k_ in theta0 if theta0[k_].is_floating_point())
    ref = dict(theta0)
    for t, e in enumerate(experts, start=1):
        tau = ref_flat(task_vector(e, theta0))
        if t == 1:
            delta = tau
        else:
            prev = ref_flat(task_vector(ref, theta0))
            delta = ref_ties(torch.stack([prev, tau]), k, merge_func)
        flat_new = ref_flat(ref) + lam * delta
        i, new = 0, {}
        for key in keys:
            n = ref[key].numel()
            new[key] = flat_new[i : i + n].view_as(ref[key])
            i += n
        new["steps"] = ref["steps"]
        ref = new
        for key in keys:
            assert torch.allclose(steps[t - 1][key], ref[key], atol=1e-6), (t, key)
        assert torch.equal(steps[t - 1]["steps"], theta0["steps"])


def test_ties_hand_example():
    from cmbench_baselines.ties import ties  # discovered module

    v = torch.tensor([[1.0, -2.0, 0.5, 3.0], [-1.5, 1.0, 0.25, 2.0]])
    # k=0.5 keeps the top 2 |v| per row: row0 → [0,-2,0,3], row1 → [-1.5,0,0,2]
    # signs of the sum: [-, -, 0→majority, +]; majority = sign(-1-1+0+1) = -1
    out = ties(v, 0.5, "sum")
    assert torch.allclose(out, torch.tensor([-1.5, -2.0, 0.0, 5.0]))
    out = ties(v, 0.5, "mean")
    assert torch.allclose(out, torch.tensor([-1.5, -2.0, 0.0, 2.5]))


def test_ties_k1_and_anchor_variant():
    theta0, experts = rand_models(3, seed=3)
    a = run_stream("ties", {"k": 1.0, "lam": 0.5, "anchor": "theta0"}, theta0, experts)
    b = run_stream("ties", {"k": 1.0, "lam": 0.5, "anchor": "merged"}, theta0, experts)
    assert not torch.allclose(a[-1]["a.weight"], b[-1]["a.weight"])


def test_registry_and_hparam_validation():
    methods = R.discover()
    assert {"weight_average", "task_arithmetic", "ties"} <= set(methods)
    with pytest.raises(M.HparamError, match="lam"):
        M.validate_hparams(R.get("task_arithmetic"), {"lam": "big"})
    with pytest.raises(M.HparamError, match="unknown hyperparameter"):
        M.validate_hparams(R.get("task_arithmetic"), {"lambda": 0.3})
    with pytest.raises(M.HparamError, match="merge_func"):
        M.validate_hparams(R.get("ties"), {"merge_func": "max"})
    assert M.validate_hparams(R.get("ties"), {}) == {"k": 0.2, "lam": 0.5, "merge_func": "sum", "anchor": "merged"}
    with pytest.raises(CmbenchError, match="unknown method 'nope'"):
        R.get("nope")


def test_user_method_file_is_discovered(tmp_path):
    (tmp_path / "halfway.py").write_text(
        "from cmbench.methods import merge_function\n"
        "from cmbench.tensors import combine\n"
        "@merge_function('halfway_test', paper='none')\n"
        "def halfway(ctx, merged, incoming, *, w: float = 0.5):\n"
        "    return combine([merged, incoming], lambda m, x: (1 - w) * m + w * x, like=merged)\n"
    )
    methods = R.discover([tmp_path])
    assert "halfway_test" in methods
    theta0, experts = rand_models(1)
    out = run_stream("halfway_test", {"w": 0.25}, theta0, experts)[0]
    assert torch.allclose(out["a.bias"], 0.75 * theta0["a.bias"] + 0.25 * experts[0]["a.bias"])


def test_ties_state_equals_plain_ties_with_exact_ties_and_cancellations():
    """The tensor-by-tensor TIES (two-vector fast path and general path) equals the plain
    flattened form exactly, on integer-valued vectors full of equal magnitudes, exact
    cancellations (a = −b) and zero majority signs, and on random floats."""
    from cmbench_baselines.ties import ties, ties_state

    torch.manual_seed(0)
    for trial in range(300):
        n = int(torch.randint(2, 60, (1,)))
        vecs = [torch.randint(-3, 4, (n,)).float() for _ in range(2 + trial % 2)]
        if trial % 4 == 1:
            vecs = [torch.randn(n) for _ in vecs]
        if trial % 4 == 3:  # products of such entries underflow to 0: opposite signs seen by sign
            vecs = [v * 1e-25 for v in vecs]
        for merge_func in ("sum", "mean"):
            for k in (0.2, 0.5, 1.0):
                ref = ties(torch.stack(vecs), k, merge_func)
                got = ties_state([{"w": v[: n // 2], "b": v[n // 2 :]} for v in vecs], k, merge_func)
                assert torch.equal(torch.cat([got["w"], got["b"]]), ref), (trial, merge_func, k)


def test_topk_threshold_is_exact():
    """The sampled-bracket threshold (and TIES's GPU top-k routine, run here on CPU
    tensors) equals the sorted |v| value, ties included."""
    from cmbench.tensors import topk_threshold
    from cmbench_baselines.ties import _abs_kth_largest_gpu

    torch.manual_seed(1)
    for trial in range(40):
        vs = [
            torch.randn(int(torch.randint(1, 40000, (1,)))) * 10.0 ** int(torch.randint(-3, 3, (1,))) for _ in range(6)
        ]
        if trial % 3 == 0:
            vs[0][:500] = vs[1][0]  # many equal magnitudes at the threshold
        flat = torch.cat([v.abs() for v in vs]).sort(descending=True).values
        rank = int(torch.randint(1, len(flat) + 1, (1,)))
        assert topk_threshold(vs, rank, sample=1 << 10) == flat[rank - 1], trial
        assert _abs_kth_largest_gpu(vs, rank) == flat[rank - 1], trial


@pytest.fixture
def kernels_everywhere(monkeypatch):
    """Route every model, however small, through the numba kernels of large models."""
    from cmbench import kernels

    monkeypatch.setattr(kernels, "LARGE", 0)
    return kernels


def test_kernel_kth_largest_is_exact(kernels_everywhere, monkeypatch):
    """The sampled-bracket select and its radix fallback equal the sorted |v| value: ties,
    zeros, −0.0, subnormals; small samples make the bracket miss, so both paths run."""
    kernels = kernels_everywhere
    radix_calls = []
    radix = kernels._radix_kth
    monkeypatch.setattr(kernels, "_radix_kth", lambda bits, rank: radix_calls.append(rank) or radix(bits, rank))
    torch.manual_seed(2)
    n_selects = 0
    for trial in range(40):
        vs = [
            torch.randn(int(torch.randint(1, 5000, (1,)))) * 10.0 ** int(torch.randint(-40, 3, (1,))) for _ in range(4)
        ]
        if trial % 3 == 0:
            vs[0][:300] = vs[1][0]
            vs[2][:50] = -0.0
        flat = torch.cat([v.abs() for v in vs]).sort(descending=True).values
        bits = [kernels._np(v).view(np.int32) for v in vs]
        for rank in (1, len(flat), int(torch.randint(1, len(flat) + 1, (1,)))):
            assert radix(bits, rank) == kernels._np(flat[rank - 1 : rank]).view(np.int32)[0], (trial, rank)
            for sample, z in ((1 << 18, 6.0), (16, 0.5)):
                assert kernels.abs_kth_largest(vs, rank, sample=sample, z=z) == flat[rank - 1], (trial, rank)
                n_selects += 1
    assert 0 < len(radix_calls) < n_selects  # some brackets missed, not all


@pytest.mark.slow  # every kernel against its torch form on large tensors (about 18 s): make test-slow
def test_ties_and_magmax_kernels_equal_the_torch_forms(kernels_everywhere):
    """Large-model kernels give bitwise the torch forms' outputs (TIES: exact ties, a = −b
    cancellations, zero majorities, tiny entries; MagMax: a whole stream)."""
    R.discover()
    from cmbench_baselines.ties import ties, ties_state

    torch.manual_seed(0)
    for trial in range(200):
        n = int(torch.randint(2, 60, (1,)))
        vecs = [torch.randint(-3, 4, (n,)).float() for _ in range(2)]
        if trial % 4 == 1:
            vecs = [torch.randn(n) for _ in vecs]
        if trial % 4 == 3:
            vecs = [v * 1e-25 for v in vecs]
        for merge_func in ("sum", "mean"):
            for k in (0.2, 0.5, 1.0):
                got = ties_state([{"w": v[: n // 2], "b": v[n // 2 :]} for v in vecs], k, merge_func)
                ref = ties(torch.stack(vecs), k, merge_func)
                assert torch.equal(torch.cat([got["w"], got["b"]]), ref), (trial, merge_func, k)
    theta0, experts = rand_models(5)
    fast = run_stream("magmax", {"lam": 0.5}, theta0, experts)
    kernels_everywhere.LARGE = 1 << 62
    plain = run_stream("magmax", {"lam": 0.5}, theta0, experts)
    assert all(torch.equal(f[k], p[k]) for f, p in zip(fast, plain) for k in f)
