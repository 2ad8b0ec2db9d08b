"""crate_text: CRATE-GPT (causal) and CRATE-BERT (masked) language models, offline tokenizers,
token files and generation. Importing it registers the text presets with crate_core
(``crate_core.create("crate-gpt-nano")``)."""

from .bert import (
    CRATEBertConfig,
    CRATEBertEncoder,
    CRATEBertForMaskedLM,
    CRATEBertForSequenceClassification,
    mask_tokens,
)
from .convert import load_official
from .data import TokenDataset, TokenFileWriter, load_tokens, read_header, shakespeare_plays, write_tokens
from .generate import KVCache, filter_logits
from .gpt import CRATEGPT, CRATEGPTConfig
from .interp.baseline import register_bert_baselines
from .tokenizers import Tokenizer, get_tokenizer

register_bert_baselines()  # bert-like-crate-bert-{nano,base}: the standard masked-LM baselines

__all__ = [
    "CRATEGPT",
    "CRATEGPTConfig",
    "load_official",
    "CRATEBertConfig",
    "CRATEBertEncoder",
    "CRATEBertForMaskedLM",
    "CRATEBertForSequenceClassification",
    "mask_tokens",
    "KVCache",
    "filter_logits",
    "Tokenizer",
    "get_tokenizer",
    "TokenDataset",
    "TokenFileWriter",
    "load_tokens",
    "read_header",
    "write_tokens",
    "shakespeare_plays",
]
__version__ = "0.1.0"
