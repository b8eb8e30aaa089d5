"""RegMean++ (Nguyen et al. 2025, "RegMean++: Enhancing Effectiveness and Generalization of
Regression Mean for Model Merging", arXiv:2508.03121), continual form.

RegMean (``regmean.py``) merges every linear map W of a transformer layer l by the regression

    W_l = (Σ_i G̃_i,l)⁻¹ Σ_i G̃_i,l W_i,lᵀ,   G_i,l = X_i,lᵀ X_i,l / n,   G̃ = α G + (1 − α) diag(G),

with X_i,l the inputs of the map on task i's examples. RegMean computes X_i,l in expert i
alone; RegMean++ feeds layer l the output of the *merged* layers before it,

    X_i,0 = E_M(x_i),   X_i,l+1 = f_M,l(X_i,l),   the maps' inputs inside layer l from f_i,l(X_i,l),

so each layer is merged for the inputs the merged model will give it. Layers are merged in
order; the embedding (every entry the first layer's input depends on) is the experts' mean;
other entries of a layer (biases, norms) are the mean; entries after the last layer (the
final norm, a projection) stay θ0's, as the reference leaves them on its pretrained model.
The reference is FusionBench's ``RegMeanAlgorithmForCLIPPlusPlus``
(fusion_bench/method/regmean_plusplus/regmean_plusplus.py ``run``,
clip_regmean_plusplus.py ``merge_embedding_layer`` / ``get_regmean_weights``, at 54c9e8c;
config ``config/method/regmean_plusplus/clip_regmean_plusplus.yaml``: 256 examples in
batches of 32, α = 0.95).

Continual form (no published continual RegMean++; our choice): at step t only task t's data
is at hand, so task t's Grams are computed through the layers merged at step t (its own
layer l from θ_t, the layers before it merged with every expert seen), and the earlier tasks'
Grams are kept as they were computed at their steps, in RegMean's running sums (same
storage as RegMean, no old model kept). At step 1 it is the one-shot reference; from step 2
the earlier tasks' Grams are those of the merged models of their own steps.

What the layers are is read from the module tree: the ModuleList / Sequential with the most
children, all of one type and each holding a linear map (timm's ``blocks``, open_clip's
``resblocks``). Which entries form the embedding is read from the model's behaviour: those
whose change moves the first layer's input.
"""

import torch
from torch import nn

from cmbench import CmbenchError
from cmbench.methods import register
from cmbench_baselines.regmean import RegMean, _linear_inputs


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the layer being merged has run."""


def transformer_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of the model's repeated layers, in order."""
    best: list[tuple[str, nn.Module]] = []
    for name, m in module.named_modules():
        if not isinstance(m, (nn.ModuleList, nn.Sequential)):
            continue
        kids = list(m.named_children())
        if (
            len(kids) > len(best)
            and len({type(c) for _, c in kids}) == 1
            and all(any(isinstance(x, (nn.Linear, nn.MultiheadAttention)) for x in c.modules()) for _, c in kids)
        ):
            best = [(f"{name}.{k}" if name else k, c) for k, c in kids]
    if not best:
        raise CmbenchError("regmean_plusplus: no repeated layers (a ModuleList of blocks with linear maps) found")
    return best


@register
class RegMeanPlusPlus(RegMean):
    name = "regmean_plusplus"
    paper = "Nguyen et al. 2025, arXiv:2508.03121"
    data_access = "current_task"

    def merge(self, ctx, merged, incoming, task):
        from cmbench.models import Linearized

        module, head = ctx.network(incoming)
        if isinstance(module, Linearized):
            raise CmbenchError("regmean_plusplus: a linearised backbone does not compute W·x of its weights")
        module.eval()
        split = ctx.data.current("train")
        perm = torch.randperm(len(split), generator=torch.Generator().manual_seed(ctx.seed))[: self.n_samples]
        batches = [split.x[perm[i : i + self.batch_size]].float().div(127.5).sub(1.0) for i in
                   range(0, len(perm), self.batch_size)]  # fmt: skip
        layers = transformer_layers(module)
        in_layer = [[k for k in incoming if k.startswith(f"{name}.")] for name, _ in layers]
        outside = [k for k in incoming if incoming[k].is_floating_point() and not any(k in ks for ks in in_layer)]
        embedding = self._embedding(ctx, incoming, layers[0][0], outside, batches[0])

        # the running means (over the experts seen) of the embedding and of the layers' entries
        # other than their linear maps; the linear maps' regression sums
        rest = {k: incoming[k] for k in embedding}
        for ks in in_layer:
            rest.update({k: incoming[k] for k in ks if incoming[k].is_floating_point()})
        first = self.count == 0
        self.count += 1
        state = dict(incoming)
        state.update({k: ctx.theta0[k] for k in outside if k not in embedding})  # after the layers: θ0
        self._accumulate(first, {}, {}, {}, {k: rest[k] for k in embedding}, state)  # before the first layer's inputs
        for (name, _), keys in zip(layers, in_layer):
            G = self._grams(ctx, state, name, set(keys), batches)
            G = {k: self.alpha * g + (1 - self.alpha) * torch.diag_embed(g.diagonal()) for k, g in G.items()}
            GW = {k: g @ incoming[k].double().T for k, g in G.items()}
            W = {k: incoming[k].double() for k in G}
            self._accumulate(first, G, GW, W, {k: v for k, v in rest.items() if k in keys and k not in G}, state)
            for k in G:
                state[k] = self.solve(k).to(incoming[k].dtype)
        return state

    def _accumulate(self, first, G, GW, W, rest, state):
        """Add one expert's Grams and entries to the running sums; the means into ``state``."""
        if first:
            self.gram_sum = {**(self.gram_sum or {}), **G}
            self.weighted_sum = {**(self.weighted_sum or {}), **GW}
            self.weight_sum = {**(self.weight_sum or {}), **W}
            self.param_sum = {**(self.param_sum or {}), **{k: v.clone() for k, v in rest.items()}}
        else:
            self.gram_sum.update({k: self.gram_sum[k] + G[k] for k in G})
            self.weighted_sum.update({k: self.weighted_sum[k] + GW[k] for k in GW})
            self.weight_sum.update({k: self.weight_sum[k] + W[k] for k in W})
            self.param_sum.update({k: self.param_sum[k] + v for k, v in rest.items()})
        state.update({k: self.param_sum[k] / self.count for k in rest})

    def _grams(self, ctx, state, layer_name, names, batches) -> dict[str, torch.Tensor]:
        """G = XᵀX / n of the inputs of ``layer``'s linear maps in the model holding ``state``
        (the layers before it merged, it and the ones after it the incoming expert's)."""
        module, _ = ctx.network(state)
        layer = module.get_submodule(layer_name)
        grams: dict[str, torch.Tensor] = {}
        rows: dict[str, int] = {}

        def record(inputs):
            def hook(mod, args, kwargs):
                for name, input_of in inputs.items():
                    x = input_of(mod, args, kwargs).detach()
                    x = x.reshape(-1, x.shape[-1]).double()
                    grams[name] = grams.get(name, 0) + x.T @ x
                    rows[name] = rows.get(name, 0) + x.shape[0]

            return hook

        def stop(mod, args, out):
            raise _Stop

        handles = [
            m.register_forward_pre_hook(record(ins), with_kwargs=True) for m, ins in _linear_inputs(module, names)
        ]
        handles.append(layer.register_forward_hook(stop))
        try:
            with torch.no_grad():
                for x in batches:
                    try:
                        module(x)
                    except _Stop:
                        pass
        finally:
            for h in handles:
                h.remove()
        return {k: g / rows[k] for k, g in grams.items()}

    @staticmethod
    def _embedding(ctx, state, first_layer, candidates, x) -> list[str]:
        """The entries outside the layers that the first layer's input depends on."""
        module, _ = ctx.network(state)
        seen = []

        def grab(mod, args, kwargs):
            seen.append((args[0] if args else next(iter(kwargs.values()))).detach().clone())
            raise _Stop

        h = module.get_submodule(first_layer).register_forward_pre_hook(grab, with_kwargs=True)
        out = []
        try:
            with torch.no_grad():
                for i, k in enumerate([None, *candidates]):
                    probe = dict(state)
                    if k is not None:
                        probe[k] = state[k] + 0.1 * (1 + state[k].abs())
                    module, _ = ctx.network(probe)
                    try:
                        module(x[:2])
                    except _Stop:
                        pass
                    if len(seen) != i + 1:
                        raise CmbenchError("regmean_plusplus: the network must load each state into the same model")
                    if k is not None and not torch.equal(seen[-1], seen[0]):
                        out.append(k)
        finally:
            h.remove()
        return out
