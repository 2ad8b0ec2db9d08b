"""transformers adapter (extra ``crate-text[hf]``): CRATE-GPT as a PreTrainedModel + GenerationMixin,
registered with AutoConfig / AutoModelForCausalLM under model_type "crate-gpt", so
``model.generate(...)`` and ``pipeline("text-generation", model=..., tokenizer=...)`` work.

    from crate_text.hf import CRATEGPTForCausalLM, register
    register()                                              # idempotent; importing this module does it
    hf = CRATEGPTForCausalLM.from_crate(crate_core.from_pretrained("runs/pretrain_gpt/final"))
    hf.save_pretrained("hf-export"); AutoModelForCausalLM.from_pretrained("hf-export")

Generation keeps CRATE's own cache (crate_text.generate.KVCache, one w per layer), passed between
steps under the name the installed transformers uses (``cache`` from 5.24, ``past_key_values`` before:
``CACHE_ARG``); transformers' DynamicCache is not created for this model. Supported: transformers >= 4.45
(the ``crate-text[hf]`` bound, tested by ``.ci/lowest-direct``). ``gpt2_hf_tokenizer()``
builds the matching transformers tokenizer offline from the shipped GPT-2 ranks file:

    pipe = pipeline("text-generation", model=hf, tokenizer=gpt2_hf_tokenizer())
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

try:  # transformers >= 5.0; 4.x spells it PretrainedConfig (5.x keeps that alias for now)
    from transformers import PreTrainedConfig
except ImportError:
    from transformers import PretrainedConfig as PreTrainedConfig

from .generate import KVCache
from .gpt import CRATEGPT, CRATEGPTConfig
from .tokenizers import GPT2_VOCAB, _gpt2_ranks

MODEL_TYPE = "crate-gpt"
_FIELDS = [f.name for f in dataclasses.fields(CRATEGPTConfig)]
# The keyword under which generate() hands the cache from one step to the next: model outputs carry it as
# ``cache`` from transformers 5.24 on, as ``past_key_values`` before.
CACHE_ARG = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


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
    """Wraps crate_text.CRATEGPT as ``self.crate``; forward(input_ids, cache=None, labels=None)
    (``past_key_values=`` is the same argument as ``cache=``, for transformers before 5.24)."""

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
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_ARG: cache})

    def prepare_inputs_for_generation(
        self, input_ids, cache=None, attention_mask=None, past_key_values=None, **kwargs
    ):
        """Feed only the tokens the cache has not seen; drop the cache when the context is full."""
        cache = cache if cache is not None else past_key_values
        if isinstance(cache, KVCache) and cache.length < input_ids.shape[1] <= self.config.block_size:
            input_ids = input_ids[:, cache.length :]
        else:
            cache = None
            input_ids = input_ids[:, -self.config.block_size :]
        return {"input_ids": input_ids, CACHE_ARG: cache, "use_cache": kwargs.get("use_cache", True)}

    def _reorder_cache(self, cache: KVCache, beam_idx: torch.Tensor) -> KVCache:
        cache.w = [None if t is None else t.index_select(0, beam_idx.to(t.device)) for t in cache.w]
        return cache


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (the ByteLevel alphabet of ``tokenizers``)."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]  # printable bytes map to themselves
    shifted = (b for b in range(256) if b not in keep)
    table = {b: chr(b) for b in keep}
    table.update({b: chr(256 + n) for n, b in enumerate(shifted)})
    return table


def gpt2_hf_tokenizer(model_max_length: int = 1024):
    """A transformers PreTrainedTokenizerFast for GPT-2 BPE built offline from the shipped ranks
    file (sha256-checked), with the same ids as ``get_tokenizer("gpt2")``.

    The BPE merges are read off the ranks as tiktoken applies them (every split of a token into two
    ranked parts, in rank order), and the pipeline is built with ``tokenizers`` directly, so it does
    not depend on the transformers release's converter classes."""
    from tiktoken_ext.openai_public import r50k_pat_str
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    ranks = _gpt2_ranks()
    table = _byte_to_unicode()

    def text(b: bytes) -> str:
        return "".join(table[x] for x in b)

    merges = []
    for token, rank in ranks.items():
        splits = [
            (token[:k], token[k:]) for k in range(1, len(token)) if token[:k] in ranks and token[k:] in ranks
        ]
        splits.sort(key=lambda lr: (ranks[lr[0]], ranks[lr[1]]))
        merges.extend((left, right, rank) for left, right in splits)
    merges.sort(key=lambda m: m[2])
    bpe = Tokenizer(
        BPE(
            {text(t): r for t, r in ranks.items()}, [(text(a), text(b)) for a, b, _ in merges], fuse_unk=False
        )
    )
    if hasattr(bpe.model, "ignore_merges"):  # a whole-token rank wins over merging, as in tiktoken
        bpe.model.ignore_merges = True
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r50k_pat_str), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    eot = "<|endoftext|>"
    bpe.add_special_tokens([AddedToken(eot, normalized=False, special=True)])
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    if bpe.token_to_id(eot) != 50256:
        raise ValueError(f"GPT-2 ranks file: {eot} got id {bpe.token_to_id(eot)}, expected 50256")
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=eot, eos_token=eot, model_max_length=model_max_length
    )


def register() -> None:
    """Make AutoConfig / AutoModelForCausalLM resolve model_type "crate-gpt" (idempotent)."""
    AutoConfig.register(MODEL_TYPE, CRATEGPTHFConfig, exist_ok=True)
    AutoModelForCausalLM.register(CRATEGPTHFConfig, CRATEGPTForCausalLM, exist_ok=True)


register()
