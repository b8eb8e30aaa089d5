"""ODE-M: ODE-driven continual merging (Lin & Kang, "Unlocking the Potential of Continual
Model Merging: An ODE Perspective", ICML 2026). Written from the public code (yohbii/ODE-M,
fusion_bench/method/ode_merging/clip_ode_merging.py) and its config; defaults are the
config's.

M_1 = θ_1. Merging the t-th expert θ_new integrates, by Euler steps of size h on the grid
s ∈ {0, h, 2h, …}, from θ(0) = M_{t−1} up to T_end = 1/t (the last grid point ≤ 1/t):

    u(s)   = (θ_new − θ(s)) / (1 − s)                      rectified velocity
    g_M    = Σ_j w_j ∇L_j / ‖∇L_j‖^p  / Σ_j w_j              macro gradient (p = 0.25)
    η      = dv·‖u‖ / ‖g_M‖                                 (dv = 0.24)
    v      = u − η g_M − Σ_{i∈A} λ_i ∇L_i                    QP correction over constraints A
    θ(s+h) = θ(s) + h·σ·v                                   σ from backtracking (×0.7, ≤ 8 tries; 0 if none)

Each task j's probe loss must stay under a ceiling interpolated between the two models'
probe losses plus a barrier budget B(s) = 0.08·(1 − s)²:
L_j ≤ (1 − s)·L_j(M_{t−1}) + s·L_j(θ_new) + B(s). The constraint set A is the two tasks
most above their ceiling plus the two with the most positive ∇L_j·u; λ ≥ 0 solves
min ½λᵀKλ s.t. g_iᵀv ≤ b_i (K = Gram of constraint gradients, b_i the allowed slope to the
next ceiling) by enumerating active sets, as the code does. With the barrier and the
gradient correction off, θ(s) = M_{t−1} + s(θ_new − M_{t−1}) exactly, i.e. the running
average when s reaches 1/t (``land_on_t_end`` adds the last partial step the grid skips).

Calibration data (declared, handed over by the harness, counted as storage): 2048 labelled
train samples in total; at step t every seen task's subset is shrunk, nested, to 2048//t
and the incoming task adds 2048//t. (The code keeps the first task's whole train set until
step 2, where it is subsampled to 1024; here it is 2048 from the start — no step uses more.)

Post-refinement (``refine="end"``, the code's default): once after the stream, 80 AdamW
steps (lr 1e-6) on the mean calibration loss plus an anchor penalty to the ODE solution,
projected into a trust region, keeping the best snapshot whose every task loss stays within
0.02 of the start; it lifts only the final row, and the leaderboard marks it (‡).
``refine="per_step"`` applies it after every merge; ``"none"`` skips it.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from cmbench.methods import Fraction, Method, NonNegative, NonNegativeInt, Positive, PositiveInt, register


def dot(a: dict, b: dict) -> float:
    return sum(float((a[k].double() * b[k].double()).sum()) for k in a)


def solve_qp(K: torch.Tensor, c: torch.Tensor, b: torch.Tensor, reg: float = 1e-6, tol: float = 1e-6):
    """min ½λᵀKλ over λ ≥ 0 with c − Kλ ≤ b, by enumerating active sets (the public code's
    solver; m ≤ 4). Returns λ (zeros when no active set is feasible) and whether one was."""
    m = len(c)
    best, best_obj = torch.zeros(m, dtype=torch.float64), None
    for mask in range(1 << m):
        idx = [k for k in range(m) if (mask >> k) & 1]
        lam = torch.zeros(m, dtype=torch.float64)
        if idx:
            Kss = K[idx][:, idx] + reg * torch.eye(len(idx), dtype=torch.float64)
            try:
                sol = torch.linalg.solve(Kss, c[idx] - b[idx])
            except RuntimeError:
                continue
            if torch.any(sol < -tol):
                continue
            lam[idx] = sol.clamp(min=0.0)
        if torch.any(c - K @ lam > b + tol):
            continue
        obj = 0.5 * float(lam @ (K @ lam))
        if best_obj is None or obj < best_obj:
            best, best_obj = lam, obj
    return best, best_obj is not None


def refresh_calibration(calib: dict, ctx, task: str, num_samples: int) -> None:
    """The calibration subsets at step t, in place: every seen task's shrunk, nested (a prefix
    of the same order), to num_samples // t, and the incoming task's added at that size."""
    budget = num_samples // ctx.step
    for name in list(calib):
        calib[name] = ctx.data.calibration(name, budget)
    calib[task] = ctx.data.calibration(task, budget)


def calibration_loss(nets: dict, module, calib: dict, tasks: list, batch_size: int, gen) -> torch.Tensor:
    """Mean over ``tasks`` of the cross-entropy on ``batch_size`` samples drawn (``gen``) from
    each task's calibration subset, through that task's frozen head (the refinement's loss)."""
    loss = 0.0
    for tk in tasks:
        split = calib[tk]
        idx = torch.randperm(len(split), generator=gen)[:batch_size]
        x = split.x[idx].float().div(127.5).sub(1.0)
        loss = loss + torch.nn.functional.cross_entropy(nets[tk][1](module(x)), split.y[idx])
    return loss / len(tasks)


@register
class ODEM(Method):
    name = "ode_m"
    paper = "Lin & Kang, ICML 2026 (An ODE Perspective on continual model merging); public code yohbii/ODE-M"
    settings = ("merge_stream",)
    data_access = "calibration"
    storage_kinds = {"calib": "samples"}

    def __init__(
        self,
        *,
        num_samples: PositiveInt = 2048,
        step_size: Positive = 0.01,
        batch_size: PositiveInt = 128,
        barrier: bool = True,
        barrier_budget: NonNegative = 0.08,
        barrier_tight_power: Positive = 2.0,
        barrier_probe_batches: PositiveInt = 8,
        protect_old_only: bool = False,
        qp_num_constraints: NonNegativeInt = 2,
        qp_sens_constraints: NonNegativeInt = 2,
        qp_reg: NonNegative = 1e-6,
        qp_tol: Positive = 1e-6,
        dv_over_u_target: NonNegative = 0.24,
        eta_max: Positive = 1e6,
        eta_min: NonNegative = 0.0,
        macro_grad_batches: PositiveInt = 8,
        sens_grad_batches: PositiveInt = 1,
        constraint_grad_batches: PositiveInt = 1,
        allowed_inc_per_step: NonNegative = 0.0,
        step_backtrack_steps: NonNegativeInt = 8,
        step_shrink: Fraction = 0.7,
        step_min: NonNegative = 1e-4,
        macro_w_old: NonNegative = 1.0,
        macro_w_new: NonNegative = 1.0,
        macro_grad_norm_power: NonNegative = 0.25,
        land_on_t_end: bool = False,
        refine: Literal["end", "per_step", "none"] = "end",
        post_refine_steps: NonNegativeInt = 80,
        post_refine_lr: NonNegative = 1e-6,
        post_refine_anchor: NonNegative = 1e-3,
        post_refine_radius: NonNegative = 1e-3,
        post_refine_task_tol: NonNegative = 0.02,
        post_refine_grad_clip: Positive = 1.0,
        post_refine_probe_batches: PositiveInt = 4,
    ):
        self.hp = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.calib = {}  # task -> Split: the nested calibration subsets (counted as samples)
        self.step_log = []  # diagnostics per Euler step: (σ, worst probe-loss excess over the ceiling)

    # -- model access -------------------------------------------------------------------------
    @staticmethod
    def _net(ctx, task, state):
        """The backbone loaded with ``state`` and task ``task``'s frozen head."""
        return ctx.network(state, task=task)

    def _batches(self, task, n_batches):
        s = self.calib[task]
        bs = self.hp["batch_size"]
        out = []
        for i in range(0, len(s), bs):
            if n_batches is not None and len(out) >= n_batches:
                break
            out.append((s.x[i : i + bs].float().div(127.5).sub(1.0), s.y[i : i + bs]))
        return out

    # -- the merge ----------------------------------------------------------------------------
    def merge(self, ctx, merged, incoming, task):
        t = ctx.step
        refresh_calibration(self.calib, ctx, task, self.hp["num_samples"])
        if t == 1:
            out = {k: v.clone() for k, v in incoming.items()}
        else:
            out = self._euler(ctx, merged, incoming, task)
        if self.hp["refine"] == "per_step" and t > 1:
            out = self._refine(ctx, out)
        return out

    def finish(self, ctx, merged):
        if self.hp["refine"] != "end" or ctx.num_tasks < 2:
            return merged
        return self._refine(ctx, merged)

    def _euler(self, ctx, merged, incoming, new_task):
        hp, eps = self.hp, 1e-12
        tasks = list(ctx.seen_tasks)
        nets = {tk: self._net(ctx, tk, merged) for tk in tasks}
        module = nets[tasks[0]][0]
        module.eval()
        params = {n: p for n, p in module.named_parameters()}
        target = {n: incoming[n] for n in params}
        probe = {tk: self._batches(tk, hp["barrier_probe_batches"]) for tk in tasks}

        def loss_on(tk, x, y):
            return torch.nn.functional.cross_entropy(nets[tk][1](module(x)), y)

        # Probe losses and gradients are functions of the current parameters only, and the
        # code asks for the same ones several times per Euler step (the accepted trial point
        # is probed again as the step's check and as the next step's L_cur; the sensitivity
        # and constraint gradients are prefixes of the macro gradient's batch sum). They are
        # memoised until the parameters next change (``moved``): same values, fewer passes.
        memo_loss, memo_grad = {}, {}

        def moved():
            memo_loss.clear()
            memo_grad.clear()

        @torch.no_grad()
        def probe_loss(tk):
            if tk not in memo_loss:
                b = probe[tk]
                memo_loss[tk] = sum(float(loss_on(tk, x, y)) for x, y in b) / len(b) if b else 0.0
            return memo_loss[tk]

        def grad(tk, n_batches):
            """Σ over the first n batches of ∇(batch-mean loss), as the code accumulates; a
            longer prefix continues the accumulation of a shorter one (same additions)."""
            batches = self._batches(tk, n_batches)
            done = memo_grad.setdefault(tk, {})  # number of batches accumulated -> their Σ
            if len(batches) not in done:
                have = max((k for k in done if k < len(batches)), default=0)
                for n, p in params.items():
                    p.grad = done[have][n].clone() if have else None
                for x, y in batches[have:]:
                    loss_on(tk, x, y).backward()
                done[len(batches)] = {
                    n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
                    for n, p in params.items()
                }
            return done[len(batches)]

        T_end = 1.0 / ctx.step
        n_full = math.ceil(1.0 / hp["step_size"])
        grid = torch.linspace(0.0, 1.0, n_full + 1, dtype=torch.float64).tolist()
        i_max = max(
            int(torch.searchsorted(torch.tensor(grid), torch.tensor(T_end, dtype=torch.float64), right=True)) - 1, 0
        )
        steps = [(grid[i], grid[i + 1] - grid[i]) for i in range(i_max)]
        if hp["land_on_t_end"] and grid[i_max] < T_end - 1e-12:
            steps.append((grid[i_max], T_end - grid[i_max]))

        protect = [tk for tk in tasks if tk != new_task] if (hp["protect_old_only"] and len(tasks) > 1) else tasks
        with torch.no_grad():
            L0 = {tk: probe_loss(tk) for tk in tasks}
            self._net(ctx, new_task, incoming)
            moved()
            L1 = {tk: probe_loss(tk) for tk in tasks}
            self._net(ctx, new_task, merged)
            moved()
            memo_loss.update(L0)

        log_from, barrier_active = len(self.step_log), 0
        for s, h in steps:
            rem = max(1.0 - s, 1e-8)
            with torch.no_grad():
                u = {n: (target[n] - p.detach()) / rem for n, p in params.items()}
                u_norm = math.sqrt(max(dot(u, u), eps))
            v = {n: x.clone() for n, x in u.items()}
            ceiling_next = {}
            if hp["barrier"]:
                B_t = hp["barrier_budget"] * max(1.0 - s, 0.0) ** hp["barrier_tight_power"]
                B_n = hp["barrier_budget"] * max(1.0 - s - h, 0.0) ** hp["barrier_tight_power"]
                L_cur = {tk: probe_loss(tk) for tk in protect}
                ceiling, ceiling_next = {}, {}
                for tk in protect:
                    if hp["protect_old_only"] and tk != new_task:
                        ref_t = ref_n = L0[tk]
                    else:
                        ref_t, ref_n = (1 - s) * L0[tk] + s * L1[tk], (1 - s - h) * L0[tk] + (s + h) * L1[tk]
                    ceiling[tk], ceiling_next[tk] = ref_t + B_t, ref_n + B_n
                excess = sorted(protect, key=lambda tk: L_cur[tk] - ceiling[tk], reverse=True)
                constraint = excess[: max(1, min(hp["qp_num_constraints"], len(excess)))]
                if hp["qp_sens_constraints"] > 0:
                    sens = sorted(
                        ((tk, dot(grad(tk, hp["sens_grad_batches"]), u)) for tk in protect),
                        key=lambda x: x[1],
                        reverse=True,
                    )
                    constraint += [tk for tk, d in sens if d > 0.0][: hp["qp_sens_constraints"]]
                constraint = list(dict.fromkeys(constraint))
            if hp["dv_over_u_target"] > 0:
                g_macro = {n: torch.zeros_like(p) for n, p in params.items()}
                total_w = 0.0
                for tk in tasks:
                    g = grad(tk, hp["macro_grad_batches"])
                    scale = (math.sqrt(max(dot(g, g), eps)) + eps) ** hp["macro_grad_norm_power"]
                    w = hp["macro_w_new"] if tk == new_task else hp["macro_w_old"]
                    total_w += w
                    for n in g_macro:
                        g_macro[n].add_(g[n], alpha=w / scale)
                for n in g_macro:
                    g_macro[n].mul_(1.0 / max(total_w, eps))
                eta = hp["dv_over_u_target"] * u_norm / (math.sqrt(max(dot(g_macro, g_macro), eps)) + eps)
                eta = max(hp["eta_min"], min(hp["eta_max"], eta))
                for n in v:
                    v[n].add_(g_macro[n], alpha=-eta)
            if hp["barrier"] and constraint:
                gs = [grad(tk, hp["constraint_grad_batches"]) for tk in constraint]
                m = len(gs)
                K = torch.tensor([[dot(gs[i], gs[j]) for j in range(m)] for i in range(m)], dtype=torch.float64)
                c = torch.tensor([dot(g, v) for g in gs], dtype=torch.float64)
                inc = hp["allowed_inc_per_step"] / max(h, eps)
                b = torch.tensor(
                    [min((ceiling_next[tk] - L_cur[tk]) / max(h, eps), inc) for tk in constraint], dtype=torch.float64
                )
                lam, _ = solve_qp(K, c, b, hp["qp_reg"], hp["qp_tol"])
                barrier_active += any(float(x) != 0.0 for x in lam)
                for i, g in enumerate(gs):
                    if float(lam[i]) != 0.0:
                        for n in v:
                            v[n].add_(g[n], alpha=-float(lam[i]))
            # backtracking line search on the ceilings at s + h
            with torch.no_grad():
                backup = {n: p.detach().clone() for n, p in params.items()}

                def place(scale):
                    for n, p in params.items():
                        p.copy_(backup[n]).add_(v[n], alpha=h * scale)
                    moved()

                scale = 1.0
                if hp["barrier"]:
                    accepted = False
                    for _ in range(hp["step_backtrack_steps"]):
                        place(scale)
                        if all(probe_loss(tk) <= ceiling_next[tk] for tk in protect):
                            accepted = True
                            break
                        scale *= hp["step_shrink"]
                        if scale < hp["step_min"]:
                            break
                    scale = scale if accepted else 0.0
                if not (hp["barrier"] and accepted):  # an accepted trial point is already in place
                    place(scale)
                worst = (
                    max((probe_loss(tk) - ceiling_next[tk] for tk in protect), default=float("-inf"))
                    if hp["barrier"]
                    else float("-inf")
                )
                self.step_log.append((scale, worst))
        # the integration as it went: Euler steps, steps whose line search shrank the step
        # (backtracked) or gave up (rejected: no move), steps the QP's barrier changed
        scales = [sc for sc, _ in self.step_log[log_from:]]
        ctx.record("euler_steps", len(scales))
        ctx.record("backtracked", sum(0.0 < sc < 1.0 for sc in scales))
        ctx.record("rejected", sum(sc == 0.0 for sc in scales))
        ctx.record("barrier_active", barrier_active)
        out = {k: v.clone() for k, v in merged.items()}
        out.update({n: p.detach().clone() for n, p in params.items()})
        return out

    def _refine(self, ctx, state):
        """Short trust-region refinement on the calibration subsets (the code's post_refine)."""
        hp, tasks = self.hp, list(ctx.seen_tasks)
        nets = {tk: self._net(ctx, tk, state) for tk in tasks}
        module = nets[tasks[0]][0]
        params = {n: p for n, p in module.named_parameters()}
        probe = {tk: self._batches(tk, hp["post_refine_probe_batches"]) for tk in tasks}

        @torch.no_grad()
        def probe_losses():
            return {
                tk: sum(float(torch.nn.functional.cross_entropy(nets[tk][1](module(x)), y)) for x, y in probe[tk])
                / max(1, len(probe[tk]))
                for tk in tasks
            }

        base = probe_losses()
        best_loss = sum(base.values()) / len(tasks)
        anchor = {n: p.detach().clone() for n, p in params.items()}
        best = {n: p.detach().clone() for n, p in params.items()}
        anchor_norm = math.sqrt(max(dot(anchor, anchor), 1e-12))
        radius = hp["post_refine_radius"] * anchor_norm
        gen = torch.Generator().manual_seed(ctx.seed * 7919 + ctx.step)
        opt = torch.optim.AdamW(list(params.values()), lr=hp["post_refine_lr"], weight_decay=0.0)
        bs = hp["batch_size"]
        for _ in range(hp["post_refine_steps"]):
            opt.zero_grad()
            loss = calibration_loss(nets, module, self.calib, tasks, bs, gen)
            anchor_sq = sum(((p - anchor[n]) ** 2).sum() for n, p in params.items())
            (loss + hp["post_refine_anchor"] * anchor_sq / max(anchor_norm**2, 1e-12)).backward()
            if hp["post_refine_grad_clip"] > 0:
                torch.nn.utils.clip_grad_norm_(list(params.values()), hp["post_refine_grad_clip"])
            opt.step()
            with torch.no_grad():
                delta = {n: p - anchor[n] for n, p in params.items()}
                dn = math.sqrt(max(dot(delta, delta), 0.0))
                if dn > radius and dn > 1e-12:
                    for n, p in params.items():
                        p.copy_(anchor[n] + delta[n] * (radius / dn))
                cur = probe_losses()
                avg = sum(cur.values()) / len(tasks)
                if all(cur[tk] <= base[tk] + hp["post_refine_task_tol"] for tk in tasks) and avg < best_loss:
                    best_loss, best = avg, {n: p.detach().clone() for n, p in params.items()}
        ctx.record("refine_loss_start", sum(base.values()) / len(tasks))
        ctx.record("refine_loss", best_loss)  # the best accepted mean probe loss
        out = {k: v.clone() for k, v in state.items()}
        out.update(best)
        return out
