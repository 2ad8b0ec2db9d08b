"""Layer-wise white-box measurements on any model built from CRATE parts.

``probe(model, *inputs)`` runs one forward pass and measures, for every CRATELayer (and every
ToST block and CBT layer, against its TSSA / CBSA subspaces) found in the model (grouped by the stack that holds it), Rc(Z^{l+1/2}) and the sparsity of Z^{l+1}
(plain definitions and the official protocol; see ``crate_core.rate.measure_layers``). MSSA
modules that are not inside a CRATELayer (e.g. the CRATE-MAE decoder's reverse steps) get
the official Rc of their projected input. It works by forward hooks, so the model's own
forward is used unchanged: vision classifiers, MAE encoder and decoder, GPT and BERT alike.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from .cbsa import CBSALayer
from .layer import CRATELayer
from .mssa import MSSA
from .rate import OFFICIAL_EPS, measure_layers, official_compression
from .tost import ToSTBlock

LAYERS = {CRATELayer: "mssa", ToSTBlock: "tssa", CBSALayer: "cbsa"}  # each layer type's attention


def layer_subspaces(layer: nn.Module) -> torch.Tensor:
    """The (K, d, p) subspaces a CRATE layer (MSSA), a ToST block (TSSA) or a CBT layer (CBSA)
    compresses against."""
    kind = next(k for k in LAYERS if isinstance(layer, k))
    return getattr(layer, LAYERS[kind]).subspaces()


def _group_of(name: str) -> str:
    """'encoder.layers.3' -> 'encoder'; 'decoder.blocks.2.mssa' -> 'decoder.blocks'."""
    parts = name.split(".")
    for i in range(len(parts) - 1, -1, -1):
        if parts[i].isdigit():
            head = parts[:i]
            if head and head[-1] == "layers":
                head = head[:-1]
            return ".".join(head) or "model"
    return name or "model"


class LayerwiseProbe:
    """Context manager collecting per-layer measures during forward passes.

    with LayerwiseProbe(model) as p:
        model(x)
    p.results()  # {group: {"rc", "rc_official", "sparsity", "code_sparsity": (L, B)}}
    """

    def __init__(self, model: nn.Module, eps: float = OFFICIAL_EPS):
        self.model, self.eps = model, eps
        self._handles: list = []
        self._layer_outs: dict[str, list] = defaultdict(list)
        self._mssa_rc: dict[str, list] = defaultdict(list)
        self._busy = False

    def __enter__(self) -> LayerwiseProbe:
        inside = set()
        for name, mod in self.model.named_modules():
            if isinstance(mod, tuple(LAYERS)):
                inside.add(id(getattr(mod, "mssa", None)))
                self._handles.append(mod.register_forward_hook(self._layer_hook(name, mod)))
        for name, mod in self.model.named_modules():
            if isinstance(mod, MSSA) and id(mod) not in inside:
                self._handles.append(mod.register_forward_hook(self._mssa_hook(name, mod)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _layer_hook(self, name: str, layer: nn.Module):
        def hook(mod, args, output):
            if self._busy or not args:
                return
            self._busy = True
            try:
                with torch.no_grad():
                    _, outs = layer(*args, return_intermediates=True)
            finally:
                self._busy = False
            self._layer_outs[name].append((outs, layer_subspaces(layer).detach()))

        return hook

    def _mssa_hook(self, name: str, mssa: MSSA):
        def hook(mod, args, output):
            with torch.no_grad():
                self._mssa_rc[name].append(official_compression(mssa.project(args[0]).detach(), self.eps))

        return hook

    def results(self) -> dict[str, dict[str, torch.Tensor]]:
        """Measures of the LAST forward pass, grouped by stack: {group: {measure: (L, B)}}."""
        groups: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
        for name, calls in self._layer_outs.items():
            outs, U = calls[-1]
            for k, v in measure_layers([outs], [U], self.eps).items():
                groups[_group_of(name)][k].append(v[0])
        for name, calls in self._mssa_rc.items():
            groups[_group_of(name)]["rc_official"].append(calls[-1])
        return {g: {k: torch.stack(v) for k, v in m.items()} for g, m in groups.items()}


@torch.no_grad()
def probe(model: nn.Module, *inputs, eps: float = OFFICIAL_EPS, **kwargs) -> dict[str, dict[str, torch.Tensor]]:
    """One forward pass of ``model(*inputs, **kwargs)`` in eval mode; per-layer measures by stack."""
    was_training = model.training
    model.eval()
    try:
        with LayerwiseProbe(model, eps) as p:
            model(*inputs, **kwargs)
    finally:
        model.train(was_training)
    return p.results()


def flatten(results: dict[str, dict[str, torch.Tensor]], prefix: str = "layerwise") -> dict[str, float]:
    """Batch means as a flat dict for loggers: '{prefix}/{group}/{measure}/L{l}' -> float."""
    flat = {}
    for group, measures in results.items():
        for k, v in measures.items():
            for l in range(v.shape[0]):
                flat[f"{prefix}/{group}/{k}/L{l}"] = float(v[l].mean())
    return flat
