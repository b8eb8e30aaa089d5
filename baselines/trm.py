"""TRM — Trajectory Regularized Merging: a RECONSTRUCTION from the abstract of "Revitalizing
the Beginning: Avoiding Storage Dependency for Model Merging in Continual Learning"
(arXiv:2605.08311). No code is public; every choice below is ours and is a hyperparameter.

What the abstract says: merging is an optimisation inside an *augmented trajectory
subspace* (checkpoints along the current task's training trajectory plus the previous
merged model) with three objectives — task alignment, prediction consistency with the
previous model, gradient responsiveness (the merged model must not start the next task
with vanishing gradients) — and no storage of old models or data.

Reconstruction:

* Subspace. While task t trains (from M_{t−1}), K checkpoints θ^(1..K) are taken at evenly
  spaced steps (the last is the trained endpoint θ_t). With directions d_k = θ^(k) − M_{t−1},

      M_t(c) = M_{t−1} + Σ_k c_k ⊙ d_k

  c_k is one scalar per checkpoint (``coefficients="global"``) or one per transformer
  block and checkpoint (``"per_layer"``; embeddings/final norm form one more group).
  c starts at the endpoint (c_K = 1, others 0): M_t(c) = θ_t, sequential fine-tuning.
* Objectives, on the current task's training inputs only (mini-batches, Adam on c):
    - task alignment  L_align = CE(M_t(c); current task, logits over its classes);
    - prediction consistency  L_cons = KL(p_{M_{t−1}} ‖ p_{M_t(c)}) over the classes
      learned before t, on current-task inputs (the previous model's predictions are
      computed on the fly from M_{t−1}, which the harness keeps anyway: no old data);
    - gradient responsiveness (``responsiveness="jacobian"``, default)
      L_resp = −log ‖∇_θ vᵀ f(x)‖² for a random unit direction v: the next task starts
      with fresh, random classifier rows W, and its first gradient is Wᵀ(p − y)·∂f/∂θ, so
      its size is set by how strongly the features respond to the weights along random
      directions; the term keeps that response from collapsing (it needs second-order
      gradients, affordable because only the K coefficients are optimised).
      ``"entropy"``: L_resp = −H(p) over the seen classes (∂CE/∂logits = p − y vanishes as
      predictions saturate). The harness records the start-of-task gradient norm for every
      method, so the claim is measured, not assumed.
  L = w_align·L_align + w_cons·L_cons + w_resp·L_resp; a weight of 0 drops a term (ablation).
* Storage: the checkpoints live only while task t trains and merges; between steps TRM
  keeps nothing but the merged model the harness holds (storage 0).
"""

from typing import Literal

import re

import torch
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from cmbench.methods import Method, NonNegative, NonNegativeInt, Positive, PositiveInt, register
from cmbench.lora import current_weights


@register
class TRM(Method):
    name = "trm"
    paper = "reconstruction of arXiv:2605.08311 (abstract only)"
    settings = ("train_then_merge",)
    data_access = "current_task"
    reconstruction = True

    def __init__(
        self,
        *,
        checkpoints: PositiveInt = 4,
        coefficients: Literal["global", "per_layer"] = "global",
        w_align: NonNegative = 1.0,
        w_cons: NonNegative = 1.0,
        w_resp: NonNegative = 0.1,
        responsiveness: Literal["jacobian", "entropy"] = "jacobian",
        steps: NonNegativeInt = 60,
        lr: Positive = 0.05,
        batch_size: PositiveInt = 64,
    ):
        self.k, self.granularity = checkpoints, coefficients
        self.w = {"align": w_align, "cons": w_cons, "resp": w_resp}
        self.responsiveness = responsiveness
        self.steps, self.lr, self.batch_size = steps, lr, batch_size
        self._trajectory = []  # current task only; cleared by merge
        self.history = []

    # -- collect the trajectory while the harness trains ------------------------------------
    def on_train_step(self, ctx, step, loss):
        total = max(1, ctx.train_total_steps)
        marks = {round(total * (i + 1) / self.k) for i in range(self.k)}
        if step in marks:
            self._trajectory.append(current_weights(ctx.train_model))  # LoRA folded in

    # -- merge: optimise the coefficients ----------------------------------------------------
    def _group(self, name: str) -> int:
        if self.granularity == "global":
            return 0
        m = re.search(r"(?:^|\.)(?:blocks|resblocks)\.(\d+)\.", name)  # timm / open_clip block index
        return int(m.group(1)) + 1 if m else 0

    @staticmethod
    def combine(merged, dirs, groups, c):
        """M_{t−1} + Σ_k c[k, group] ⊙ d_k over the floating-point entries."""
        return {k: merged[k] + sum(c[i, g] * d[k] for i, d in enumerate(dirs)) for k, g in groups.items()}

    @staticmethod
    def terms(module, buffers, head_task, head_seen, previous, params, x, y, responsiveness="jacobian", probe_gen=None):
        """The three objective terms at ``params`` on a batch of current-task inputs."""
        if responsiveness == "jacobian":  # needs ∂/∂θ of the features (second order)
            params = {k: v if v.requires_grad else v.detach().requires_grad_(True) for k, v in params.items()}
        with sdpa_kernel(SDPBackend.MATH):  # the math attention has double backward
            feats = functional_call(module, (params, buffers), (x,))
        logits_task, logits_seen = head_task(feats), head_seen(feats)
        old = logits_seen.shape[-1] - logits_task.shape[-1]  # earlier tasks' rows come first
        align = torch.nn.functional.cross_entropy(logits_task, y)
        if old:
            with torch.no_grad():
                prev = head_seen(functional_call(module, (previous, buffers), (x,)))[:, :old]
            cons = torch.nn.functional.kl_div(
                torch.log_softmax(logits_seen[:, :old], -1),
                torch.log_softmax(prev, -1),
                log_target=True,
                reduction="batchmean",
            )
        else:
            cons = torch.zeros(())
        if responsiveness == "entropy":
            p = torch.softmax(logits_seen, -1)
            resp = (p * torch.log(p.clamp_min(1e-12))).sum(-1).mean()  # −entropy: high when saturated
        else:  # "jacobian": −log ‖∇_θ vᵀ f(x)‖² for a random unit v (a fresh head's view)
            v = torch.nn.functional.normalize(torch.randn(feats.shape[-1], generator=probe_gen), dim=0).to(feats.device)
            with sdpa_kernel(SDPBackend.MATH):
                grads = torch.autograd.grad((feats @ v).mean(), list(params.values()), create_graph=True)
            resp = -torch.log(sum((g**2).sum() for g in grads) + 1e-12)
        return {"align": align, "cons": cons, "resp": resp}

    def merge(self, ctx, merged, incoming, task):
        traj = self._trajectory or [incoming]
        traj[-1] = incoming  # the endpoint is the trained model (LoRA folded)
        self._trajectory = []
        keys = [k for k, v in merged.items() if v.is_floating_point()]
        dirs = [{k: ck[k] - merged[k] for k in keys} for ck in traj]
        groups = {k: self._group(k) for k in keys}
        c = torch.zeros(len(dirs), max(groups.values()) + 1)
        c[-1] = 1.0
        c.requires_grad_(True)

        split = ctx.data.current("train")
        module, head_task = ctx.network(merged, "task")
        _, head_seen = ctx.network(merged, "seen")
        buffers = dict(module.named_buffers())
        previous = {k: merged[k] for k in keys}
        opt = torch.optim.Adam([c], lr=self.lr)
        gen = torch.Generator().manual_seed(ctx.seed * 7919 + ctx.step)
        terms = {}
        for _ in range(self.steps):
            idx = torch.randint(0, len(split), (min(self.batch_size, len(split)),), generator=gen)
            x = split.x[idx].float().div(127.5).sub(1.0)
            terms = self.terms(
                module,
                buffers,
                head_task,
                head_seen,
                previous,
                self.combine(merged, dirs, groups, c),
                x,
                split.y[idx],
                self.responsiveness if self.w["resp"] else "entropy",
                gen,
            )
            loss = sum(self.w[name] * value for name, value in terms.items() if self.w[name])
            if not torch.is_tensor(loss) or not loss.requires_grad:
                break  # every objective switched off: keep the endpoint
            opt.zero_grad()
            loss.backward()
            opt.step()
        c = c.detach()
        self.history.append(c[:, 0].tolist())
        # the coefficients found (checkpoint by checkpoint; per layer: first group) and each
        # objective term at the last optimisation step
        ctx.record("coefficients", c[:, 0])
        if c.shape[1] > 1:
            ctx.record("coefficients_mean_over_layers", c.mean(1))
        for name, value in terms.items():
            ctx.record(f"loss_{name}", float(value.detach()))
        out = {k: v.clone() for k, v in merged.items()}
        out.update(self.combine(merged, dirs, groups, c))
        return out
