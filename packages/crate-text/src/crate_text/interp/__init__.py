"""Neuron-level interpretability for causal LMs: streaming collection of per-neuron top-k contexts
and statistics (``neurons``), a static HTML viewer and JSON export (``viewer``), and the same-shape
GPT-2 baseline (``baseline``, needs transformers)."""

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
