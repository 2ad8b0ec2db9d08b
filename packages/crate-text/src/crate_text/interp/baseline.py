"""Moved to ``crate_text.baselines``; this name stays so that older exports (config.json records
``crate_text.interp.baseline:GPT2Baseline``) and imports keep working."""

from ..baselines import (  # noqa: F401
    BertBaseline,
    BertBaselineConfig,
    GPT2Baseline,
    GPT2BaselineConfig,
    baseline_config_like,
    bert_config_like,
)
