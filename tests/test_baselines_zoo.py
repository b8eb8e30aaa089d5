"""MagMax, OPCM, DOP, consensus TA, sequential: step by step against plain transcriptions of
their public code (fused q/k/v treated as three matrices, as separate layers are there)."""

import pytest
import torch

from cmbench.layout import describe

from .test_methods import run_stream as _run_stream

D = 4


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.num_heads = 1
        self.qkv = torch.nn.Linear(D, 3 * D)  # fused q/k/v, as timm's Attention holds it
        self.fc1 = torch.nn.Linear(D, 2 * D, bias=False)
        self.norm = torch.nn.LayerNorm(D, bias=False)


class Net(torch.nn.Module):
    """A fused qkv, a non-square linear, biases, a norm, a bare parameter on a module with
    children (as a ViT's pos_embed) and an integer buffer."""

    def __init__(self):
        super().__init__()
        self.blk = Block()
        self.pos_embed = torch.nn.Parameter(torch.zeros(1, 3, D))
        self.register_buffer("count", torch.tensor([3]))


LAYOUT = describe(Net())


def models(n, seed=0):
    """θ0 and n experts of :class:`Net` (random values)."""
    g = torch.Generator().manual_seed(seed)
    theta0 = {
        k: torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()
        for k, v in Net().state_dict().items()
    }
    experts = [
        {
            k: v + 0.3 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()
            for k, v in theta0.items()
        }
        for _ in range(n)
    ]
    return theta0, experts


def run_stream(name, hparams, theta0, experts):
    return _run_stream(name, hparams, theta0, experts, LAYOUT)


def split_qkv(sd):
    """The separate-layer layout of the same model (what FusionBench's HF CLIP has)."""
    out = {k: v for k, v in sd.items() if k != "blk.qkv.weight"}
    q, k, v = sd["blk.qkv.weight"].chunk(3)
    out.update({"blk.q.weight": q, "blk.k.weight": k, "blk.v.weight": v})
    return out


LINEAR = ("blk.q.weight", "blk.k.weight", "blk.v.weight", "blk.fc1.weight")
NON_LEAF = ("pos_embed",)  # owned by a module with children: the reference's leaf loop skips it


def tv(a, b):
    return {k: a[k] - b[k] for k in a if a[k].is_floating_point()}


def vec_norm(sd):
    return torch.linalg.norm(torch.cat([v.flatten() for v in sd.values()]))


def max_delta(ours, refs):
    """The largest |ours − reference| over every step and entry (ours in the separate layout)."""
    split = [split_qkv(o) for o in ours]
    return max(float((o[k] - v).abs().max()) for o, r in zip(split, refs) for k, v in r.items())


def assert_same(ours, ref_split):
    ours = split_qkv(ours)
    for k, v in ref_split.items():
        assert torch.allclose(ours[k], v, atol=1e-6, rtol=1e-5), k


def test_magmax_matches_reference():
    theta0, experts = models(4)
    steps = run_stream("magmax", {"lam": 0.5}, theta0, experts)
    for t in range(1, 5):
        taus = torch.stack(
            [torch.cat([tv(e, theta0)[k].flatten() for k in sorted(tv(e, theta0))]) for e in experts[:t]]
        )
        # reference aggregate("magnitude"); ties cannot occur with random floats
        idx = taus.abs().argmax(0)
        tau_max = taus[idx, torch.arange(taus.shape[1])]
        flat = torch.cat([theta0[k].flatten() for k in sorted(tv(theta0, theta0))]) + 0.5 * tau_max
        ours = torch.cat([steps[t - 1][k].flatten() for k in sorted(tv(theta0, theta0))])
        assert torch.allclose(ours, flat, atol=1e-6)
        assert torch.equal(steps[t - 1]["count"], theta0["count"])


def test_magmax_one_task_is_task_arithmetic():
    theta0, experts = models(1)
    a = run_stream("magmax", {"lam": 0.7}, theta0, experts)[0]
    b = run_stream("task_arithmetic", {"lam": 0.7}, theta0, experts)[0]
    assert all(torch.allclose(a[k], b[k]) for k in a)


def ref_opcm(theta0, experts, alpha):
    """FusionBench OPCMForCLIP.run, transcribed on split layers with full SVDs."""
    theta0, experts = split_qkv(theta0), [split_qkv(e) for e in experts]
    merged = dict(experts[0])
    norms = [vec_norm(tv(experts[0], theta0))]
    prev_lambda = 1.0
    out = [dict(merged)]
    for e in experts[1:]:
        norms.append(vec_norm(tv(e, theta0)))
        avg = torch.stack(norms).mean()
        new = {}
        for k, w in merged.items():
            if not w.is_floating_point():
                new[k] = w
                continue
            prev_tv, task_tv = w - theta0[k], e[k] - theta0[k]
            if k in NON_LEAF:  # not visited: only the rescaling below touches it
                new[k] = w
                continue
            if k in LINEAR:
                # (in float64: float32 SVDs of near-degenerate spectra differ in the 6th digit)
                u, s, vh = torch.linalg.svd(prev_tv.double(), full_matrices=True)
                v = vh.T
                split = (s.cumsum(0) / s.sum() > alpha).float().argmax().item()
                p = u.T @ task_tv.double() @ v
                p.diagonal().fill_(0)
                p[:split, :split] = 0
                task_tv = (u @ p @ v.T).float()
            new[k] = theta0[k] + prev_lambda * prev_tv + task_tv
        tv_norm = vec_norm(tv(new, theta0))
        lam = tv_norm / avg
        merged = {
            k: theta0[k] + (w - theta0[k]) * (avg / tv_norm) if w.is_floating_point() else w for k, w in new.items()
        }
        prev_lambda = lam
        out.append(dict(merged))
    return out


@pytest.mark.parametrize("alpha", [0.5, 0.8])
def test_opcm_matches_reference(alpha):
    theta0, experts = models(5, seed=1)
    ours = run_stream("opcm", {"alpha": alpha}, theta0, experts)
    for o, r in zip(ours, ref_opcm(theta0, experts, alpha)):
        assert_same(o, r)


def ref_dop(theta0, experts, steps, alpha=0.8, beta=0.999, eps=0.99999, lr=1e-4):
    """FusionBench ContinualDOPForCLIP, transcribed (MGDA + EMA, 'uv' space)."""
    theta0, experts = split_qkv(theta0), [split_qkv(e) for e in experts]
    merged = dict(experts[0])
    out = [dict(merged)]

    def loss_i(delta, u, s, v):
        return (
            torch.linalg.matrix_norm(torch.diag(s) @ u.T @ delta) ** 2
            + torch.linalg.matrix_norm(delta @ v @ torch.diag(s)) ** 2
        )

    for e in experts[1:]:
        new = {}
        for k, w in merged.items():
            if not w.is_floating_point():
                new[k] = w
            elif k in NON_LEAF:  # merged models start as copies of θ0; the leaf loop skips it
                new[k] = theta0[k]
            elif k not in LINEAR:
                new[k] = (w + e[k]) / 2
            else:
                fts = [w, e[k]]
                subs = []
                for ft in fts:
                    u, s, vh = torch.linalg.svd(ft - theta0[k], full_matrices=True)
                    r = torch.searchsorted(s.cumsum(0) / s.sum(), eps).item()
                    subs.append((u[:, :r], s[:r], vh.T[:, :r]))
                W = torch.nn.Parameter((w + e[k]) / 2)
                opt = torch.optim.Adam([W], lr=lr)
                ema = [alpha, 1 - alpha]
                for _ in range(steps):
                    grads = []
                    for ft, sub in zip(fts, subs):
                        li = loss_i(W - ft, *sub)
                        opt.zero_grad()
                        li.backward()
                        grads.append(W.grad.detach().clone().flatten() / float(li))
                    v11, v12, v22 = grads[0] @ grads[0], grads[0] @ grads[1], grads[1] @ grads[1]
                    if v12 >= v11:
                        gamma = 0.999
                    elif v12 >= v22:
                        gamma = 0.001
                    else:
                        gamma = float(-((v12 - v22) / (v11 + v22 - 2 * v12)))
                    ema = [beta * ema[0] + (1 - beta) * gamma, beta * ema[1] + (1 - beta) * (1 - gamma)]
                    loss = sum(ema[i] * loss_i(W - fts[i], *subs[i]) for i in range(2))
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                new[k] = W.detach()
        merged = new
        out.append(dict(merged))
    return out


def test_dop_matches_reference():
    theta0, experts = models(3, seed=2)
    ours = run_stream("dop", {"num_steps": 15, "lr": 1e-2}, theta0, experts)
    for o, r in zip(ours, ref_dop(theta0, experts, steps=15, lr=1e-2)):
        assert_same(o, r)


def test_consensus_ta_reference_and_reductions():
    theta0, experts = models(4, seed=3)
    lam, k, tl = 0.3, 2, 0.6
    steps = run_stream("consensus_ta", {"lam": lam, "k": k, "tall_lambda": tl}, theta0, experts)
    keys = [k_ for k_ in theta0 if theta0[k_].is_floating_point()]
    for t in range(2, 5):
        taus = {key: torch.stack([e[key] - theta0[key] for e in experts[:t]]) for key in keys}
        for key in keys:
            mtl = taus[key].sum(0)
            masks = (theta0[key] - torch.stack([e[key] for e in experts[:t]])).abs() > tl * (
                (theta0[key] + mtl) - torch.stack([e[key] for e in experts[:t]])
            ).abs()
            cons = masks.sum(0) >= k
            assert torch.allclose(steps[t - 1][key], theta0[key] + lam * cons * mtl, atol=1e-6)
    # all tasks agree (identical experts): every entry kept, consensus TA = TA
    same = [experts[0]] * 3
    a = run_stream("consensus_ta", {"lam": lam, "tall_lambda": 0.4}, theta0, same)[-1]
    b = run_stream("task_arithmetic", {"lam": lam}, theta0, same)[-1]
    assert all(torch.allclose(a[key], b[key], atol=1e-6) for key in keys)


def test_sequential_keeps_newest():
    theta0, experts = models(3)
    steps = run_stream("sequential", {}, theta0, experts)
    assert all(torch.equal(s[k], e[k]) for s, e in zip(steps, experts) for k in e)


def test_opcm_merging_the_same_expert_twice_changes_nothing():
    """S_1 = τ is its own singular basis: Uᵀ τ V is diagonal, so the projection removes all
    of it, S_2 = S_1 and the rescaling is 1 (a model of linear weights only: other
    parameters are added unprojected)."""
    theta0, experts = models(1, seed=4)
    keep = ("blk.qkv.weight", "blk.fc1.weight")
    theta0 = {k: theta0[k] for k in keep}
    e = {k: experts[0][k] for k in keep}
    out = run_stream("opcm", {"alpha": 0.5}, theta0, [e, e])
    assert all(torch.allclose(out[1][k], e[k], atol=1e-5) for k in keep)


def test_dop_identical_models_stay_put():
    """Merging a model with itself changes no entry of a leaf module; an entry owned by a
    module with children is θ0's, as in the reference (or the average: the model's own)."""
    theta0, experts = models(1, seed=5)
    e = experts[0]
    out = run_stream("dop", {"num_steps": 5}, theta0, [e, e])
    assert all(torch.allclose(out[1][k], e[k], atol=1e-6) for k in e if e[k].is_floating_point() and k not in NON_LEAF)
    assert torch.equal(out[1]["pos_embed"], theta0["pos_embed"])
    out = run_stream("dop", {"num_steps": 5, "non_leaf": "average"}, theta0, [e, e])
    assert torch.equal(out[1]["pos_embed"], e["pos_embed"])


def test_fisher_average_with_equal_fishers_is_plain_averaging(monkeypatch):
    from cmbench import registry as R

    R.discover()
    import cmbench_baselines.fisher_average as fa

    theta0, experts = models(3, seed=6)
    keys = [k for k in theta0 if theta0[k].is_floating_point()]
    monkeypatch.setattr(
        fa, "diagonal_fisher", lambda ctx, state, n, **kw: {k: torch.full_like(state[k], 0.7) for k in keys}
    )
    out = run_stream("fisher_average", {}, theta0, experts)
    for t in range(1, 4):
        for k in keys:
            assert torch.allclose(out[t - 1][k], torch.stack([e[k] for e in experts[:t]]).mean(0), atol=1e-5)


def ref_iso_c(theta0, experts, scaling_factor):
    """FusionBench's iso_c (isotropic_merging/iso_utils.py at 54c9e8c) on the separate-layer
    layout, one-shot over the first t experts: 2-D entries get U·mean(σ)·Vᵀ of the summed task
    vectors, the rest their mean."""
    theta0, experts = split_qkv(theta0), [split_qkv(e) for e in experts]
    out = []
    for t in range(1, len(experts) + 1):
        tvs = [tv(e, theta0) for e in experts[:t]]
        merged = {}
        for key in tvs[0]:
            new = sum(v[key] for v in tvs) / len(tvs)
            if len(tvs[0][key].shape) == 2:
                new = new * len(tvs)
                U, S, V = torch.linalg.svd(new.double(), full_matrices=False)  # float64: see OPCM's
                new = torch.linalg.multi_dot((U, torch.diag(torch.ones_like(S) * S.mean()), V)).float()
            merged[key] = theta0[key] + scaling_factor * new
        out.append(merged)
    return out


@pytest.mark.parametrize("alpha", [1.0, 1.5])
def test_iso_c_matches_reference(alpha):
    theta0, experts = models(4, seed=3)
    ours = run_stream("iso_c", {"alpha": alpha}, theta0, experts)
    for o, r in zip(ours, ref_iso_c(theta0, experts, alpha)):
        assert_same(o, r)


def test_iso_c_treats_an_embedding_table_as_a_matrix_and_averages_the_rest():
    net = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.LayerNorm(3))
    layout = describe(net)
    g = torch.Generator().manual_seed(0)
    theta0 = {k: torch.randn(v.shape, generator=g) for k, v in net.state_dict().items()}
    experts = [{k: v + torch.randn(v.shape, generator=g) for k, v in theta0.items()} for _ in range(2)]
    merged = _run_stream("iso_c", {}, theta0, experts, layout)[-1]
    s = sum(e["0.weight"] - theta0["0.weight"] for e in experts)
    sv = torch.linalg.svdvals(merged["0.weight"] - theta0["0.weight"])
    assert torch.allclose(sv, torch.full_like(sv, float(torch.linalg.svdvals(s).mean())), atol=1e-5)
    mean_norm = sum(e["1.weight"] - theta0["1.weight"] for e in experts) / 2
    assert torch.allclose(merged["1.weight"], theta0["1.weight"] + mean_norm, atol=1e-6)


def ref_wudi(theta0, experts, iter_num, lr):
    """FusionBench's wudi_merging (wudi/wudi.py at 54c9e8c) on the separate-layer layout,
    one-shot over the first t experts: Adam on Σ‖(τ − τ_i)τ_iᵀ‖²/‖τ_i‖² for 2-D entries, from
    the sum; the mean elsewhere."""
    theta0, experts = split_qkv(theta0), [split_qkv(e) for e in experts]
    out = []
    for t in range(1, len(experts) + 1):
        tvs_all = [tv(e, theta0) for e in experts[:t]]
        merged = {}
        for key in tvs_all[0]:
            tvs = torch.stack([v[key] for v in tvs_all])
            new = torch.nn.Parameter(torch.sum(tvs, dim=0))
            if len(tvs_all[0][key].shape) == 2:
                optimizer = torch.optim.Adam([new], lr=lr, weight_decay=0)
                l2 = torch.square(torch.norm(tvs.reshape(tvs.shape[0], -1), p=2, dim=-1))
                for _ in range(iter_num):
                    product = torch.matmul(new.unsqueeze(0) - tvs, tvs.transpose(1, 2))
                    loss = torch.sum(torch.square(product) / l2.unsqueeze(-1).unsqueeze(-1))
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                value = new.detach()
            else:
                value = new.detach() / len(tvs)
            merged[key] = theta0[key] + value
        out.append(merged)
    return out


# the default, in float32 as the reference runs; and large Adam steps, which amplify rounding
# (Adam divides by the gradient's magnitude), in float64 to compare the arithmetic alone
@pytest.mark.parametrize("iter_num,lr,dtype,tol", [(400, 1e-5, torch.float32, 1e-5), (60, 1e-2, torch.float64, 1e-9)])
def test_wudi_matches_reference(iter_num, lr, dtype, tol):
    theta0, experts = models(3, seed=4)
    theta0, experts = (
        {k: v.to(dtype) if v.is_floating_point() else v for k, v in theta0.items()},
        [{k: v.to(dtype) if v.is_floating_point() else v for k, v in e.items()} for e in experts],
    )
    ours = run_stream("wudi", {"iter_num": iter_num, "lr": lr}, theta0, experts)
    worst = max_delta(ours, ref_wudi(theta0, experts, iter_num, lr))
    print(f"wudi iter_num={iter_num} lr={lr} {dtype}: max |Δ| against FusionBench's transcription {worst:.1e}")
    assert worst < tol


def ref_tsv_m(theta0, experts, alpha):
    """FusionBench's compute_and_sum_svd_mem_reduction (task_singular_vector/utils/TSVM_utils.py
    at 54c9e8c) on the separate-layer layout, one-shot over the first t experts, then ×α."""
    theta0, experts = split_qkv(theta0), [split_qkv(e) for e in experts]
    out = []
    for t in range(1, len(experts) + 1):
        tvs = [tv(e, theta0) for e in experts[:t]]
        sv_reduction = 1 / len(tvs)
        merged = {}
        for key in tvs[0]:
            if len(tvs[0][key].shape) == 2:
                for i, task_vector in enumerate(tvs):
                    u, s, vh = torch.linalg.svd(task_vector[key].double(), full_matrices=False)
                    if i == 0:
                        sum_u, sum_s, sum_vh = torch.zeros_like(u), torch.zeros_like(s), torch.zeros_like(vh)
                    k = int(s.shape[0] * sv_reduction)
                    sum_u[:, i * k : (i + 1) * k] = u[:, :k]
                    sum_s[i * k : (i + 1) * k] = s[:k]
                    sum_vh[i * k : (i + 1) * k, :] = vh[:k, :]
                u_u, _, vh_u = torch.linalg.svd(sum_u, full_matrices=False)
                u_vh, _, vh_vh = torch.linalg.svd(sum_vh, full_matrices=False)
                new = torch.linalg.multi_dot((u_u, vh_u, torch.diag(sum_s), u_vh, vh_vh)).float()
            else:
                new = tvs[0][key].clone()
                for i, task_vector in enumerate(tvs[1:], start=1):
                    new += (task_vector[key] - new) / (i + 1)
            merged[key] = theta0[key] + alpha * new
        out.append(merged)
    return out


@pytest.mark.parametrize("alpha", [1.0, 0.7])
def test_tsv_m_matches_reference(alpha):
    theta0, experts = models(4, seed=5)
    ours = run_stream("tsv_m", {"alpha": alpha}, theta0, experts)
    for o, r in zip(ours, ref_tsv_m(theta0, experts, alpha)):
        assert_same(o, r)


def ref_iso_cts(theta0, experts, scaling_factor, common_space_fraction):
    """FusionBench's iso_cts (isotropic_merging/iso_utils.py at 54c9e8c) on the separate-layer
    layout, one-shot over the first t experts (its loop transcribed, float64 SVDs)."""
    theta0, experts = split_qkv(theta0), [split_qkv(e) for e in experts]
    out = []
    for t in range(1, len(experts) + 1):
        tvs = [tv(e, theta0) for e in experts[:t]]
        merged = {}
        for key in tvs[0]:
            shape_ = tvs[0][key].shape
            if len(shape_) != 2:
                new = tvs[0][key].clone()
                for i, task_vector in enumerate(tvs[1:], start=1):
                    new += (task_vector[key] - new) / (i + 1)
                merged[key] = theta0[key] + scaling_factor * new
                continue
            combined_w = sum(v[key].double() for v in tvs)
            common_space_index_s = int(min(shape_) * common_space_fraction)
            total = round((min(shape_) - common_space_index_s) / len(tvs)) * len(tvs)
            common_space_index_s = min(shape_) - total
            u, s, v = torch.linalg.svd(combined_w, full_matrices=False)
            cu, cs, cv = u[:, :common_space_index_s], s[:common_space_index_s], v[:common_space_index_s, :]
            n = int((min(shape_) - common_space_index_s) / len(tvs))
            for i, task_vector in enumerate(tvs):
                w = task_vector[key].double()
                u_ts, s_ts, v_ts = torch.linalg.svd(w - cu @ cu.T @ w, full_matrices=False)
                if i == 0:
                    su, ss, sv = torch.zeros_like(u_ts), torch.zeros_like(s_ts), torch.zeros_like(v_ts)
                su[:, i * n : (i + 1) * n] = u_ts[:, :n]
                ss[i * n : (i + 1) * n] = s_ts[:n]
                sv[i * n : (i + 1) * n, :] = v_ts[:n, :]
            su[:, len(tvs) * n : len(tvs) * n + common_space_index_s] = cu
            ss[len(tvs) * n : len(tvs) * n + common_space_index_s] = cs
            sv[len(tvs) * n : len(tvs) * n + common_space_index_s, :] = cv
            a, _, b = torch.linalg.svd(su, full_matrices=False)
            c, _, d = torch.linalg.svd(sv, full_matrices=False)
            new = torch.linalg.multi_dot((a @ b, torch.diag(torch.ones_like(ss) * ss.mean()), c @ d)).float()
            merged[key] = theta0[key] + scaling_factor * new
        out.append(merged)
    return out


# D = 4: at t = 2 and 3 the task-specific share rounds to zero (Python's round, as the
# reference) and Iso-CTS is Iso-C; fraction 0.5 keeps task directions at every step
@pytest.mark.parametrize("alpha,fraction", [(1.0, 0.8), (1.5, 0.5), (1.0, 0.25)])
def test_iso_cts_matches_reference(alpha, fraction):
    theta0, experts = models(4, seed=6)
    ours = run_stream("iso_cts", {"alpha": alpha, "common_space_fraction": fraction}, theta0, experts)
    worst = max_delta(ours, ref_iso_cts(theta0, experts, alpha, fraction))
    print(f"iso_cts alpha={alpha} fraction={fraction}: max |Δ| against FusionBench's transcription {worst:.1e}")
    assert worst < 1e-6


@pytest.mark.parametrize("shape", [(12, 12), (40, 8), (8, 40)])
@pytest.mark.parametrize("space", ["uv", "u", "v"])
def test_dop_closed_form_loss_and_gradient_are_autograds(shape, space):
    """DOP's loss and gradient in closed form (Gram matrix or factor per side, whichever is
    cheaper) against autograd through the reference's loss, on tall, wide and square matrices
    and ε below 1 (a truncated subspace)."""
    import sys

    from cmbench import registry as R

    R.get("dop")  # loads the baselines: the file is the package's module
    dop = sys.modules["cmbench_baselines.dop"]
    g = torch.Generator().manual_seed(7)
    tv, delta = (torch.randn(*shape, generator=g, dtype=torch.float64) for _ in range(2))
    for eps in (0.99999, 0.6):
        u, s, vh = torch.linalg.svd(tv, full_matrices=True)
        r = torch.searchsorted(s.cumsum(0) / s.sum(), eps).item()
        u, s, v = u[:, :r], s[:r], vh.T[:, :r]
        d = delta.clone().requires_grad_(True)
        lu = torch.linalg.matrix_norm(torch.diag(s) @ u.T @ d) ** 2
        lv = torch.linalg.matrix_norm(d @ v @ torch.diag(s)) ** 2
        want = {"uv": lu + lv, "u": lu, "v": lv}[space]
        (want_grad,) = torch.autograd.grad(want, d)
        loss, grad = dop.loss_and_grad(delta, *dop._subspace(tv, eps, space))
        assert torch.allclose(loss, want.detach(), rtol=1e-10)
        assert torch.allclose(grad, want_grad, rtol=1e-10, atol=1e-12)


def test_svd_falls_back_to_qr_iteration_where_divide_and_conquer_fails(monkeypatch):
    """TSV-M's and Iso-CTS's SVD: when torch's driver (gesdd on the CPU) raises, LAPACK's
    gesvd gives the same factorisation (seen on Flan-T5-base: Iso-CTS's first step)."""
    import sys

    from cmbench import registry

    registry.get("tsv_m")
    tsv = sys.modules["cmbench_baselines.tsv_m"]
    A = torch.randn(40, 24, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    U0, s0, Vh0 = torch.linalg.svd(A, full_matrices=False)
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "svd", failing)
    U, s, Vh = tsv.svd(A)
    assert calls  # the fallback ran
    torch.testing.assert_close(s, s0, rtol=0, atol=1e-12)
    torch.testing.assert_close(U @ torch.diag(s) @ Vh, A, rtol=0, atol=1e-12)
    torch.testing.assert_close(tsv.polar(A), U0 @ Vh0, rtol=0, atol=1e-12)  # unique: A has full rank
