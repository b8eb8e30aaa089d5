"""P&M: Perturb-and-Merge (Qiu et al. 2025, "Train with Perturbation, Infer after Merging",
arXiv:2505.22389), train-then-merge.

**Merge.** With θ_t the model trained on task t (from M_{t−1}) and F_t its diagonal
empirical Fisher on task t's training data,

    M_t = M_{t−1} + α_t (θ_t − M_{t−1}),
    α_t = argmin_α Σ_{i≤t} ½ (M_t − θ_i)ᵀ F_i (M_t − θ_i)
        = Δᵀ (Σ_i F_i ⊙ θ_i − (Σ_i F_i) ⊙ M_{t−1}) / Δᵀ ((Σ_i F_i) ⊙ Δ),   Δ = θ_t − M_{t−1},

computed from the two running sums Σ F_i and Σ F_i ⊙ θ_i (no old model is kept). With
equal Fishers and M_{t−1} the average of θ_1..θ_{t−1}, α_t = 1/t: plain averaging.
``alpha="per_module"`` solves the same problem per parameter tensor.

**Perturbation.** Each training step takes the loss at θ, θ + εΔ or θ − εΔ (probabilities
p0, p+, p−; Δ = θ − θ_start, the current task vector), with the gradient at that point
applied to θ: E[L(θ + sεΔ)] ≈ L(θ) + (ε²/3)·ΔᵀHΔ for p = 1/3 each, a Hessian regulariser
at the cost of no extra forward or backward pass. With LoRA, Δ is the low-rank update
B A of this task, so the perturbation scales it by (1 ± ε). LoRA is set in the suite (the
paper: rank 10 on the attention key and value projections, ``lora: {rank: 10, targets:
[k, v]}``); without it P&M trains every parameter.

Reconstruction choices (the paper leaves them open; kept as hyperparameters):
* ``clamp``: α clamped to [0, 1] (default True): M_t stays on the segment between M_{t−1}
  and θ_t, the interpolation the paper describes; a negative or > 1 α extrapolates.
* ``fisher_on``: the Fisher is taken over the parameters training changed (``trainable``:
  the LoRA-targeted matrices, or every backbone parameter full-parameter) — the others
  have Δ = 0 and do not enter α; ``all`` takes it over every backbone parameter.
* ``perturbation="gaussian"`` (ablation): Gaussian noise with the norm of εΔ per tensor
  (with LoRA: of εB per factor B) instead of ±εΔ; ``"none"``: merge only.
"""

from typing import Literal

import torch

from cmbench.estimates import diagonal_fisher
from cmbench.methods import Method, NonNegative, PositiveInt, Probability, register


@register
class PerturbAndMerge(Method):
    name = "pm"
    paper = "Qiu et al. 2025, arXiv:2505.22389"
    settings = ("train_then_merge",)
    data_access = "current_task"

    def __init__(
        self,
        *,
        eps: NonNegative = 0.5,
        p0: Probability = 1 / 3,
        p_plus: Probability = 1 / 3,
        p_minus: Probability = 1 / 3,
        perturbation: Literal["task_vector", "gaussian", "none"] = "task_vector",
        alpha: Literal["global", "per_module"] = "global",
        clamp: bool = True,
        fisher_on: Literal["trainable", "all"] = "trainable",
        fisher_samples: PositiveInt = 256,
    ):
        total = p0 + p_plus + p_minus
        self.probs = torch.tensor([p0, p_plus, p_minus]) / total
        self.eps, self.perturbation, self.alpha_mode, self.clamp = eps, perturbation, alpha, clamp
        self.fisher_on, self.fisher_samples = fisher_on, fisher_samples
        self.fisher_sum = None  # Σ F_i
        self.weighted_sum = None  # Σ F_i ⊙ θ_i
        self.alphas = []
        self._undo = None

    # -- training: the perturbation ----------------------------------------------------------
    def wrap_loss(self, ctx, loss_fn, model):
        if self.perturbation == "none":
            return loss_fn

        def perturbed(xb, yb):
            s = (0.0, 1.0, -1.0)[int(torch.multinomial(self.probs, 1, generator=ctx.generator))]
            if s:
                self._perturb(ctx, s)
            return loss_fn(xb, yb)

        return perturbed

    @torch.no_grad()
    def _perturb(self, ctx, s):
        if ctx.adapters:  # LoRA: scale (or jitter) this task's low-rank update
            if self.perturbation == "task_vector":
                for a in ctx.adapters:
                    a.gain = 1.0 + s * self.eps
                self._undo = ("gain", None)
            else:
                saved = [(B, B.data.clone()) for a in ctx.adapters for B in a.B]
                for B, _ in saved:
                    B.add_(self._matched_noise(ctx, B.data, s * self.eps))
                self._undo = ("restore", saved)
            return
        start = ctx.train_start_state
        saved = []
        for name, p in ctx.trainable.items():
            delta = p.data - start[name].to(p.device)
            d = (
                s * self.eps * delta
                if self.perturbation == "task_vector"
                else self._matched_noise(ctx, delta, s * self.eps)
            )
            saved.append((p, p.data.clone()))
            p.add_(d)
        self._undo = ("restore", saved)

    def _matched_noise(self, ctx, like, scale):
        n = torch.randn(like.shape, generator=ctx.generator).to(like.device)
        return n * (abs(scale) * like.norm() / n.norm().clamp_min(1e-12))

    @torch.no_grad()
    def after_backward(self, ctx):
        if self._undo is None:
            return
        kind, moves = self._undo
        if kind == "gain":
            for a in ctx.adapters:
                a.gain = 1.0
        else:  # put back the exact pre-perturbation values; the gradient stays
            for p, value in moves:
                p.copy_(value)
        self._undo = None

    # -- merge: closed-form α from running Fisher sums --------------------------------------
    def merge(self, ctx, merged, incoming, task):
        F = diagonal_fisher(ctx, incoming, self.fisher_samples, kind="empirical")
        if self.fisher_on == "trainable":
            F = {k: f for k, f in F.items() if not torch.equal(incoming[k], merged[k])}
        if self.fisher_sum is None:
            self.fisher_sum = {k: torch.zeros_like(v) for k, v in F.items()}
            self.weighted_sum = {k: torch.zeros_like(v) for k, v in F.items()}
        for k, f in F.items():
            if k not in self.fisher_sum:  # a tensor first changed now
                self.fisher_sum[k] = torch.zeros_like(f)
                self.weighted_sum[k] = torch.zeros_like(f)
            self.fisher_sum[k] = self.fisher_sum[k] + f
            self.weighted_sum[k] = self.weighted_sum[k] + f * incoming[k]
        delta = {k: incoming[k] - merged[k] for k in self.fisher_sum}

        def alpha_of(keys):
            num = sum(float((delta[k] * (self.weighted_sum[k] - self.fisher_sum[k] * merged[k])).sum()) for k in keys)
            den = sum(float((delta[k] * self.fisher_sum[k] * delta[k]).sum()) for k in keys)
            a = num / den if den > 0 else 1.0 / ctx.step
            return min(1.0, max(0.0, a)) if self.clamp else a

        if self.alpha_mode == "global":
            a = alpha_of(list(delta))
            alphas = {k: a for k in delta}
        else:
            alphas = {k: alpha_of([k]) for k in delta}
        self.alphas.append(sum(alphas.values()) / max(1, len(alphas)))
        ctx.record("alpha", self.alphas[-1])  # averaging would be 1/t
        ctx.record("one_over_t", 1.0 / ctx.step)
        if self.alpha_mode == "per_module":
            ctx.record("alpha_min", min(alphas.values(), default=0.0))
            ctx.record("alpha_max", max(alphas.values(), default=0.0))
        # the task vector the perturbation scaled (θ±εΔ): its norm and ε times it
        step_norm = sum(float((incoming[k] - merged[k]).double().pow(2).sum()) for k in delta) ** 0.5
        ctx.record("task_vector_norm", step_norm)
        ctx.record("perturbation_norm", self.eps * step_norm if self.perturbation != "none" else 0.0)
        return {
            k: (v + alphas[k] * (incoming[k] - v)) if k in alphas else incoming[k].clone() for k, v in merged.items()
        }
