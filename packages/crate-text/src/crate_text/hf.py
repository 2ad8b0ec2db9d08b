"""transformers adapter (extra ``crate-text[hf]``): CRATE-GPT as a PreTrainedModel + GenerationMixin,
registered with AutoConfig / AutoModelForCausalLM under model_type "crate-gpt", so
``model.generate(...)`` and ``pipeline("text-generation", model=..., tokenizer=...)`` work.

    from crate_text.hf import CRATEGPTForCausalLM, register
    register()                                              # idempotent; importing this module does it
    hf = CRATEGPTForCausalLM.from_crate(crate_core.from_pretrained("runs/pretrain_gpt/final"))
    hf.save_pretrained("hf-export"); AutoModelForCausalLM.from_pretrained("hf-export")

Generation keeps CRATE's own cache (crate_text.generate.KVCache, one w per layer), passed between
steps as ``cache``; transformers' DynamicCache is not created for this model. ``gpt2_hf_tokenizer()``
builds the matching transformers tokenizer offline from the shipped GPT-2 ranks file:

    pipe = pipeline("text-generation", model=hf, tokenizer=gpt2_hf_tokenizer())
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .generate import KVCache
from .gpt import CRATEGPT, CRATEGPTConfig
from .tokenizers import GPT2_VOCAB, _gpt2_ranks

MODEL_TYPE = "crate-gpt"
_FIELDS = [f.name for f in dataclasses.fields(CRATEGPTConfig)]


class CRATEGPTHFConfig(PreTrainedConfig):
    """The CRATEGPTConfig fields as a transformers config (plus the usual special-token ids)."""

    model_type = MODEL_TYPE
    attribute_map = {
        "hidden_size": "dim",
        "num_hidden_layers": "depth",
        "num_attention_heads": "heads",
        "max_position_embeddings": "block_size",
    }

    def __init__(
        self, bos_token_id: int = 50256, eos_token_id: int = 50256, tie_word_embeddings=True, **kwargs
    ):
        defaults = CRATEGPTConfig()
        for name in _FIELDS:
            setattr(self, name, kwargs.pop(name, getattr(defaults, name)))
        super().__init__(
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    def to_crate(self) -> CRATEGPTConfig:
        return CRATEGPTConfig(**{name: getattr(self, name) for name in _FIELDS})

    @classmethod
    def from_crate(cls, config: CRATEGPTConfig, **kwargs) -> CRATEGPTHFConfig:
        eot = 50256 if config.tokenizer == "gpt2" and config.n_tokens == GPT2_VOCAB else None
        kwargs = {"bos_token_id": eot, "eos_token_id": eot, **kwargs}
        return cls(**dataclasses.asdict(config), **kwargs)


class CRATEGPTForCausalLM(PreTrainedModel, GenerationMixin):
    """Wraps crate_text.CRATEGPT as ``self.crate``; forward(input_ids, cache=None, labels=None)."""

    config_class = CRATEGPTHFConfig
    base_model_prefix = "crate"
    main_input_name = "input_ids"
    _tied_weights_keys = {"crate.lm_head.weight": "crate.wte.weight"}

    def __init__(self, config: CRATEGPTHFConfig):
        super().__init__(config)
        self.crate = CRATEGPT(config.to_crate())
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:  # our cache is the w-only KVCache
        return False

    def _init_weights(self, module):  # CRATEGPT initialises itself (GPT-2 / CRATE-LM scheme)
        pass

    @classmethod
    def from_crate(cls, model: CRATEGPT) -> CRATEGPTForCausalLM:
        hf = cls(CRATEGPTHFConfig.from_crate(model.config))
        hf.crate.load_state_dict(model.state_dict())
        return hf

    def to_crate(self) -> CRATEGPT:
        return self.crate

    def get_input_embeddings(self):
        return self.crate.wte

    def get_output_embeddings(self):
        return self.crate.lm_head

    def forward(
        self,
        input_ids=None,
        cache=None,
        attention_mask=None,
        labels=None,
        use_cache=None,
        past_key_values=None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits for input_ids continuing ``cache`` (a KVCache) when given. attention_mask may
        only mark left padding-free batches (all ones): CRATE-GPT has no padded-batch decoding."""
        cache = cache if cache is not None else past_key_values
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError(
                "CRATEGPTForCausalLM does not support padded batches (attention_mask with zeros)"
            )
        use_cache = use_cache if use_cache is not None else (cache is not None)
        if use_cache and self.crate.supports_cache:
            if cache is None:
                cache = self.crate.new_cache()
            logits = self.crate.forward_cached(input_ids, cache)
        else:
            cache = None
            logits = self.crate(input_ids)
        n = self.config.n_tokens
        if n < logits.shape[-1]:  # embedding rows past the tokenizer's ids are never predicted
            logits = torch.cat([logits[..., :n], torch.full_like(logits[..., n:], float("-inf"))], dim=-1)
        loss = None
        if labels is not None:
            shift = labels[:, 1:].contiguous()
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), shift.flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=cache)

    def prepare_inputs_for_generation(self, input_ids, cache=None, attention_mask=None, **kwargs):
        """Feed only the tokens the cache has not seen; drop the cache when the context is full."""
        if isinstance(cache, KVCache) and cache.length < input_ids.shape[1] <= self.config.block_size:
            input_ids = input_ids[:, cache.length :]
        else:
            cache = None
            input_ids = input_ids[:, -self.config.block_size :]
        return {"input_ids": input_ids, "cache": cache, "use_cache": kwargs.get("use_cache", True)}

    def _reorder_cache(self, cache: KVCache, beam_idx: torch.Tensor) -> KVCache:
        cache.w = [None if t is None else t.index_select(0, beam_idx.to(t.device)) for t in cache.w]
        return cache


def gpt2_hf_tokenizer(model_max_length: int = 1024):
    """A transformers PreTrainedTokenizerFast for GPT-2 BPE built offline from the shipped ranks
    file (sha256-checked), with the same ids as ``get_tokenizer("gpt2")``."""
    from tiktoken_ext.openai_public import r50k_pat_str
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    class _ShippedRanks(TikTokenConverter):
        @staticmethod
        def load_tiktoken_bpe(tiktoken_url: str) -> dict[bytes, int]:
            return _gpt2_ranks()

    eot = "<|endoftext|>"
    converted = _ShippedRanks(
        vocab_file="gpt2", pattern=r50k_pat_str, extra_special_tokens={eot: 50256}
    ).converted()
    return PreTrainedTokenizerFast(
        tokenizer_object=converted, bos_token=eot, eos_token=eot, model_max_length=model_max_length
    )


def register() -> None:
    """Make AutoConfig / AutoModelForCausalLM resolve model_type "crate-gpt" (idempotent)."""
    AutoConfig.register(MODEL_TYPE, CRATEGPTHFConfig, exist_ok=True)
    AutoModelForCausalLM.register(CRATEGPTHFConfig, CRATEGPTForCausalLM, exist_ok=True)


register()
