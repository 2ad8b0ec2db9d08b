"""CRATE-LM checkpoints (crate-lm repository, nanoGPT layout): parity of the converted CRATEGPT with an
independent, formula-level forward of both official models, written here with plain tensor ops on
random weights in the official key layout."""

import math

import crate_core
import pytest
import torch
import torch.nn.functional as F
from crate_text import load_official
from crate_text.convert import main as convert_main

V, T_MAX, D, L, K = 97, 16, 32, 2, 4


def official_state(kind: str, seed: int = 0, dim=D, depth=L, vocab=V, block=T_MAX) -> dict:
    """Random weights under the crate-lm key names; kind 'overcomplete' (W: 4d x d, ln_f) or 'square'."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=None):
        return torch.randn(*shape, generator=g) * (scale if scale is not None else 1 / math.sqrt(shape[-1]))

    wte = r(vocab, dim, scale=0.5)
    sd = {"transformer.wte.weight": wte, "transformer.wpe.weight": r(block, dim, scale=0.5), "lm_head.weight": wte}
    for l in range(depth):
        p = f"transformer.h.{l}."
        for ln in ("prenorm_1", "prenorm_2"):
            sd[p + ln + ".weight"] = 1 + r(dim, scale=0.1)
            sd[p + ln + ".bias"] = r(dim, scale=0.1)
        sd[p + "attn.c_attn.weight"] = r(dim, dim)
        sd[p + "attn.c_proj.weight"] = r(dim, dim)
        sd[p + "attn.c_proj.bias"] = r(dim, scale=0.1)
        sd[p + "ista.weight"] = r(4 * dim if kind == "overcomplete" else dim, dim, scale=0.5)
        if kind == "square":  # crate.py keeps its causal mask as a persistent buffer
            sd[p + "attn.bias"] = torch.tril(torch.ones(block, block)).view(1, 1, block, block)
    if kind == "overcomplete":
        sd["transformer.ln_f.weight"] = 1 + r(dim, scale=0.1)
        sd["transformer.ln_f.bias"] = r(dim, scale=0.1)
    return sd


def official_forward(sd: dict, idx: torch.Tensor, heads: int, kind: str, eta=0.1, lam=0.1) -> torch.Tensor:
    """Logits at every position, from the crate-lm equations (tokens are rows, W = ista.weight):
    attention: w = x C^T split into heads, softmax(w w^T / sqrt(p) + causal) w, then c_proj;
    overcomplete ISTA: a0 = ReLU(eta x W^T - eta lam), a1 = ReLU(a0 + eta (x W^T - a0 W W^T) - eta lam), out a1 W;
    square ISTA: ReLU(x + eta (x W - x W^T W) - eta lam)."""
    b, t = idx.shape
    dim = sd["transformer.wte.weight"].shape[1]
    p = dim // heads
    x = sd["transformer.wte.weight"][idx] + sd["transformer.wpe.weight"][:t]
    depth = len({k.split(".")[2] for k in sd if k.startswith("transformer.h.")})
    causal = torch.ones(t, t).tril().bool()
    for l in range(depth):
        pre = f"transformer.h.{l}."
        y = F.layer_norm(x, (dim,), sd[pre + "prenorm_1.weight"], sd[pre + "prenorm_1.bias"], 1e-5)
        w = (y @ sd[pre + "attn.c_attn.weight"].t()).view(b, t, heads, p).transpose(1, 2)
        att = (w @ w.transpose(-1, -2)) / math.sqrt(p)
        att = att.masked_fill(~causal, float("-inf")).softmax(-1)
        o = (att @ w).transpose(1, 2).reshape(b, t, dim)
        x = x + o @ sd[pre + "attn.c_proj.weight"].t() + sd[pre + "attn.c_proj.bias"]
        u = F.layer_norm(x, (dim,), sd[pre + "prenorm_2.weight"], sd[pre + "prenorm_2.bias"], 1e-5)
        W = sd[pre + "ista.weight"]
        if kind == "overcomplete":
            a0 = torch.relu(eta * u @ W.t() - eta * lam)
            a1 = torch.relu(a0 + eta * (u @ W.t() - (a0 @ W) @ W.t()) - eta * lam)
            x = a1 @ W
        else:
            x = torch.relu(u + eta * (u @ W - (u @ W.t()) @ W) - eta * lam)
    if kind == "overcomplete":
        x = F.layer_norm(x, (dim,), sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"], 1e-5)
    return x @ sd["lm_head.weight"].t()


def nanogpt_file(sd: dict, path, heads=K, compiled=True):
    """A checkpoint as crate-lm's train.py saves it (torch.compile prefix on every key)."""
    dim, vocab = sd["transformer.wte.weight"].shape[1], sd["transformer.wte.weight"].shape[0]
    args = dict(n_layer=L, n_head=heads, n_embd=dim, block_size=T_MAX, bias=True, vocab_size=vocab, dropout=0.0)
    model = {("_orig_mod." if compiled else "") + k: v for k, v in sd.items()}
    torch.save({"model": model, "model_args": args, "iter_num": 600000, "best_val_loss": torch.tensor(3.3),
                "config": {"learning_rate": 6e-4}}, path)
    return path


IDX = torch.randint(0, V, (3, T_MAX), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("kind", ["overcomplete", "square"])
def test_parity_with_the_official_formulas(kind, tmp_path):
    sd = official_state(kind)
    model = load_official(nanogpt_file(sd, tmp_path / "ckpt.pt"))
    c = model.config
    assert (c.dim, c.depth, c.heads, c.vocab_size, c.block_size) == (D, L, K, V, T_MAX)
    assert c.ista == ("lm" if kind == "overcomplete" else "square") and c.final_norm == (kind == "overcomplete")
    with torch.no_grad():
        ours = model(IDX)
    ref = official_forward(sd, IDX, K, kind)
    err = (ours - ref).abs().max().item()
    print(f"crate-lm-{kind}: max |logit difference| = {err:.2e}")
    assert err < 1e-4
    assert model.lm_head.weight.data_ptr() == model.wte.weight.data_ptr()  # still tied


@pytest.mark.parametrize("kind", ["overcomplete", "square"])
def test_generation_with_the_half_size_cache(kind):
    sd = official_state(kind, seed=1)
    model = load_official(sd, heads=K)
    prompt = IDX[:2, :5]
    cache = model.new_cache()
    with torch.no_grad():
        steps = [model.forward_cached(prompt, cache)[:, -1]]
        seq = prompt
        for _ in range(4):  # greedy continuation, one token at a time through the cache
            nxt = steps[-1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
            steps.append(model.forward_cached(nxt, cache)[:, -1])
    ref = official_forward(sd, seq, K, kind)
    for i, logits in enumerate(steps):
        assert (logits - ref[:, 4 + i]).abs().max() < 1e-4
    out = model.generate(prompt, max_new_tokens=4, top_k=1)  # top-1 sampling is greedy: same tokens
    assert torch.equal(out, seq)


def test_identified_by_the_one_entry_point(tmp_path):
    for kind in ("overcomplete", "square"):
        path = nanogpt_file(official_state(kind), tmp_path / f"{kind}.pt")
        layout, _ = crate_core.official.detect_layout(path)
        assert layout.name == f"crate-lm-{kind}" and layout.family == "text"
        model = crate_core.load_official(path)
        with torch.no_grad():
            assert (model(IDX) - official_forward(official_state(kind), IDX, K, kind)).abs().max() < 1e-4


def test_missing_extra_and_inconsistent_keys_are_named(tmp_path):
    sd = official_state("overcomplete")
    missing = {k: v for k, v in sd.items() if k != "transformer.h.1.attn.c_proj.bias"}
    with pytest.raises(ValueError, match=r"missing keys \[transformer\.h\.1\.attn\.c_proj\.bias\]"):
        load_official(missing, heads=K)
    extra = dict(sd, **{"transformer.h.0.mlp.c_fc.weight": torch.zeros(4 * D, D)})
    with pytest.raises(ValueError, match=r"unexpected keys \[transformer\.h\.0\.mlp\.c_fc\.weight\]"):
        load_official(extra, heads=K)
    wrong = dict(sd, **{"transformer.h.1.attn.c_attn.weight": torch.zeros(D, D + 1)})
    with pytest.raises(ValueError, match=r"transformer\.h\.1\.attn\.c_attn\.weight has shape \(32, 33\)"):
        load_official(wrong, heads=K)
    with pytest.raises(ValueError, match="head count 5 does not divide the width 32"):
        load_official(sd, heads=5)
    with pytest.raises(ValueError, match="pass heads="):  # width 32 is no crate-lm preset, no model_args
        load_official(sd)
    path = nanogpt_file(sd, tmp_path / "c.pt", heads=3)
    with pytest.raises(ValueError, match=r"c\.pt: head count 3 does not divide the width 32"):
        load_official(path)


def test_other_families_and_bad_files_are_one_line_errors(tmp_path):
    vision = {"cls_token": torch.zeros(1, 1, 8), "transformer.layers.0.1.fn.weight": torch.zeros(8, 8)}
    with pytest.raises(ValueError, match="not an official CRATE-LM checkpoint"):
        load_official(vision)
    bad = tmp_path / "truncated.pt"
    nanogpt_file(official_state("square"), bad)
    bad.write_bytes(bad.read_bytes()[:300])
    with pytest.raises(ValueError, match=r"truncated\.pt: not a readable PyTorch checkpoint") as info:
        load_official(bad)
    assert "\n" not in str(info.value) and "weights_only" not in str(info.value)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_official(tmp_path / "nope.pt")


def test_command_line(tmp_path, capsys):
    src = nanogpt_file(official_state("overcomplete"), tmp_path / "ckpt.pt")
    assert convert_main([str(src), str(tmp_path / "out")]) == 0
    model = crate_core.from_pretrained(tmp_path / "out")
    with torch.no_grad():
        assert (model(IDX) - official_forward(official_state("overcomplete"), IDX, K, "overcomplete")).abs().max() < 1e-4
    assert "crate-lm-overcomplete" in (tmp_path / "out" / "README.md").read_text()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert exit_code(convert_main, [str(src), str(tmp_path / "busy")]) == 2
    assert "crate_text.convert: error:" in capsys.readouterr().err and not (tmp_path / "busy" / "config.json").exists()
    assert convert_main([str(src), str(tmp_path / "busy"), "--overwrite"]) == 0
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine" and (tmp_path / "busy" / "config.json").exists()
    capsys.readouterr()
    assert convert_main([str(src), str(tmp_path / "busy"), "--overwrite"]) == 0  # again: its own files replaced
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == [
        "README.md", "config.json", "model.safetensors", "notes.txt"]
    mine = tmp_path / "mine"  # the user's own config.json: --overwrite refuses it by name and leaves it as it was
    mine.mkdir()
    (mine / "config.json").write_text('{"lr": 0.1}')
    assert exit_code(convert_main, [str(src), str(mine), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"crate_text.convert: error: {mine}: config.json is not from a crate export") and err.count("\n") == 1
    assert [p.name for p in mine.iterdir()] == ["config.json"] and (mine / "config.json").read_text() == '{"lr": 0.1}'
    with pytest.raises(SystemExit) as e:
        convert_main(["--help"])
    assert e.value.code == 0 and "CRATE-LM" in capsys.readouterr().out


def test_eval_lm_reads_an_official_file(tmp_path, tool):
    from crate_text import get_tokenizer, write_tokens

    sd = official_state("overcomplete", vocab=50304)  # GPT-2 vocabulary padded, as crate-lm trains it
    src = nanogpt_file(sd, tmp_path / "ckpt.pt")
    ids = torch.randint(0, 50257, (33,), generator=torch.Generator().manual_seed(3))
    tok = get_tokenizer("gpt2")
    write_tokens(tmp_path / "val.bin", ids.numpy().astype("uint16"), tok.name, tok.n_ids)
    res = tool("eval_lm").main(["--model", str(src), "--data", str(tmp_path / "val.bin"), "--device", "cpu"])
    windows = ids[:32].view(2, 16), ids[1:33].view(2, 16)  # two windows of 16 predictions each
    logits = official_forward(sd, windows[0], K, "overcomplete")
    ref = F.cross_entropy(logits.flatten(0, 1), windows[1].flatten()).item()
    assert res["tokens"] == 32 and abs(res["loss"] - ref) < 1e-4


def exit_code(main, argv) -> int:
    """The exit status of a converter's command line that fails (crate_core.cli: SystemExit(2))."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code


@pytest.mark.parametrize("package", ["crate_text", "crate_mae"])
def test_python_m_convert_runs_without_runpy_warning(package):
    """The package does not import its command-line module, so ``python -m PKG.convert`` runs it once (runpy warns
    when a package's __init__ has already imported the module it is asked to run)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", f"{package}.convert", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stderr == "" and f"python -m {package}.convert" in out.stdout
