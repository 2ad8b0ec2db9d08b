"""Neuron-level interpretability for causal LMs: streaming collection of per-neuron top-k contexts
and statistics (``neurons``) and a static HTML viewer and JSON export (``viewer``). The same-shape
GPT-2 baseline they compare against is ``crate_text.baselines.GPT2Baseline`` (needs transformers)."""

from .neurons import (
    LayerRecorder,
    NeuronReport,
    activation_source,
    collect,
    selectivity_entropy,
)
from .viewer import write_viewer

__all__ = [
    "LayerRecorder",
    "NeuronReport",
    "activation_source",
    "collect",
    "selectivity_entropy",
    "write_viewer",
]
