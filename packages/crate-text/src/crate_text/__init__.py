"""crate_text: CRATE-GPT (causal) and CRATE-BERT (masked) language models, offline tokenizers,
token files, losses and generation. Importing it registers the text presets with crate_core
(``crate_core.create("crate-gpt-nano")``) and their baselines (``gpt2-like-*``, ``bert-like-*``)."""

from .baselines import BertBaseline, GPT2Baseline  # importing registers gpt2-like-* and bert-like-*
from .bert import (
    CRATEBertConfig,
    CRATEBertEncoder,
    CRATEBertForMaskedLM,
    CRATEBertForSequenceClassification,
    mask_tokens,
)
from .corpus import shakespeare_plays
from .data import (
    MLMDataset,
    TokenDataset,
    TokenFileWriter,
    lm_datasets,
    load_tokens,
    read_header,
    vocab_overrides,
    write_tokens,
)
from .generate import KVCache, filter_logits
from .gpt import CRATEGPT, CRATEGPTConfig
from .losses import LOSSES, causal_lm_loss, masked_lm_loss
from .official import load_official
from .tokenizers import Tokenizer, get_tokenizer

__all__ = [
    "CRATEGPT",
    "CRATEGPTConfig",
    "load_official",
    "CRATEBertConfig",
    "CRATEBertEncoder",
    "CRATEBertForMaskedLM",
    "CRATEBertForSequenceClassification",
    "mask_tokens",
    "GPT2Baseline",
    "BertBaseline",
    "KVCache",
    "filter_logits",
    "Tokenizer",
    "get_tokenizer",
    "TokenDataset",
    "MLMDataset",
    "lm_datasets",
    "vocab_overrides",
    "LOSSES",
    "causal_lm_loss",
    "masked_lm_loss",
    "TokenFileWriter",
    "load_tokens",
    "read_header",
    "write_tokens",
    "shakespeare_plays",
]
__version__ = "0.1.0"
