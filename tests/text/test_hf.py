"""The transformers adapter (extra crate-text[hf]): Auto classes, generate, pipeline, tokenizer."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from crate_text import CRATEGPT, CRATEGPTConfig, get_tokenizer  # noqa: E402
from crate_text.hf import CRATEGPTForCausalLM, gpt2_hf_tokenizer  # noqa: E402


def tiny():
    torch.manual_seed(0)
    return CRATEGPT(
        CRATEGPTConfig(vocab_size=128, n_tokens=120, block_size=32, dim=32, depth=2, heads=4)
    ).eval()


def test_generate_matches_and_uses_the_w_cache(tmp_path):
    m = tiny()
    hf = CRATEGPTForCausalLM.from_crate(m).eval()
    lengths = []
    real = hf.crate.forward_cached
    hf.crate.forward_cached = lambda idx, cache: lengths.append(idx.shape[1]) or real(idx, cache)
    idx = torch.randint(0, 120, (2, 5))
    out = hf.generate(idx, max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert torch.equal(out, m.generate(idx, 10, temperature=0))
    assert lengths == [5] + [1] * 9  # one prefill, then one token per step through the cache
    hf.save_pretrained(tmp_path / "hf")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert isinstance(back, CRATEGPTForCausalLM)
    assert back.crate.lm_head.weight is back.crate.wte.weight
    logits = back(idx).logits
    torch.testing.assert_close(logits[..., :120], m(idx)[..., :120])
    assert torch.isinf(logits[..., 120:]).all()  # padding rows of the embedding are never predicted
    labels = torch.randint(0, 120, (2, 5))
    loss = back(idx, labels=labels).loss
    ref = torch.nn.functional.cross_entropy(m(idx)[:, :-1, :120].reshape(-1, 120), labels[:, 1:].reshape(-1))
    torch.testing.assert_close(loss, ref)


def test_pipeline_with_offline_tokenizer():
    tok = gpt2_hf_tokenizer()
    ref = get_tokenizer("gpt2")
    text = "O Romeo, Romeo! wherefore art thou Romeo?\nDeny thy father  and refuse thy name;"
    assert tok.encode(text) == ref.encode(text) and tok("Hello world")["input_ids"] == [15496, 995]
    assert tok.eos_token_id == 50256
    torch.manual_seed(0)
    m = CRATEGPT(CRATEGPTConfig(dim=32, depth=1, heads=2, block_size=32)).eval()
    pipe = transformers.pipeline("text-generation", model=CRATEGPTForCausalLM.from_crate(m), tokenizer=tok)
    out = pipe("ROMEO:", max_new_tokens=6, do_sample=False)[0]["generated_text"]
    expected = ref.decode(m.generate(torch.tensor([ref.encode("ROMEO:")]), 6, temperature=0)[0].tolist())
    assert out == expected


def test_padded_batches_are_refused():
    hf = CRATEGPTForCausalLM.from_crate(tiny())
    with pytest.raises(ValueError, match="padded batches"):
        hf(torch.ones(2, 3, dtype=torch.long), attention_mask=torch.tensor([[1, 1, 1], [0, 1, 1]]))


def test_cache_keyword_of_old_and_new_transformers():
    """transformers >= 5.24 hands the cache between generate steps as ``cache``, older releases as
    ``past_key_values`` (.ci/lowest-direct runs this file under the oldest supported one): the output
    carries it under the installed release's name, and forward and prepare_inputs_for_generation take
    either spelling."""
    from crate_text.hf import CACHE_ARG

    fields = transformers.modeling_outputs.CausalLMOutputWithPast.__dataclass_fields__
    assert CACHE_ARG == ("cache" if "cache" in fields else "past_key_values")
    hf = CRATEGPTForCausalLM.from_crate(tiny()).eval()
    idx = torch.randint(0, 120, (2, 6))
    full = hf(idx).logits
    for spelling in ("cache", "past_key_values"):
        cache = hf(idx[:, :4], use_cache=True)[CACHE_ARG]
        assert cache.length == 4
        step = hf.prepare_inputs_for_generation(idx, **{spelling: cache})
        assert step[CACHE_ARG] is cache and torch.equal(step["input_ids"], idx[:, 4:])
        out = hf(step["input_ids"], **{spelling: cache})
        assert out[CACHE_ARG] is cache and cache.length == 6
        torch.testing.assert_close(out.logits, full[:, 4:])
