"""Neuron tooling (crate_text.interp, tools/neurons.py): streaming top-k against a brute-force pass
with activations recomputed from the layer formulas, statistics against direct formulas, the HTML
viewer's DOM in headless Chromium, and the bad inputs."""

import math
import os
import shutil
import subprocess
from collections import Counter
from html.parser import HTMLParser

import crate_core
import numpy as np
import pytest
import torch
from crate_text.data import write_tokens
from crate_text.interp import LayerRecorder, activation_source, collect
from crate_text.interp.baseline import GPT2Baseline, GPT2BaselineConfig

T, N_WIN, GPT2_IDS = 16, 10, 50259


def tiny(kind: str):
    torch.manual_seed(0)
    if kind == "gpt2":
        return GPT2Baseline(GPT2BaselineConfig(block_size=T, dim=32, depth=2, heads=2)).eval()
    ista = {"lm": "lm", "square": "square"}[kind]
    return crate_core.create("crate-gpt-nano", dim=32, depth=2, heads=2, block_size=T, ista=ista).eval()


@pytest.fixture
def token_file(tmp_path):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 300, size=T * N_WIN + 1)  # a small id range so top tokens repeat
    return write_tokens(tmp_path / "val.bin", ids, "gpt2", GPT2_IDS), ids


def brute_force_acts(model, ids) -> list[np.ndarray]:
    """(N, M) activations per layer, recomputed from the formulas on hooked inputs:
    CRATE-LM a1 = ReLU(eta u D - eta lam), a2 = ReLU(a1 + eta (u D - a1 D^T D) - eta lam);
    square ReLU(u + eta (u D - u D^T D) - eta lam); GPT-2 gelu_new(c_fc x)."""
    x = torch.as_tensor(ids[: T * N_WIN], dtype=torch.long).view(N_WIN, T)
    captured = []
    if isinstance(model, GPT2Baseline):
        mods = [blk.mlp.c_fc for blk in model.gpt2.transformer.h]
    else:
        mods = [layer.norm2 for layer in model.trunk.layers]
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: captured.append(out.detach().double())) for m in mods
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    out = []
    for li, h in enumerate(captured):
        if isinstance(model, GPT2Baseline):
            a = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
        else:
            ista = model.trunk.layers[li].ista
            D, eta, lam = ista.D.detach().double(), ista.step_size, ista.lambd
            if model.config.ista == "lm":
                a = torch.relu(eta * h @ D - eta * lam)
                a = torch.relu(a + eta * (h @ D - a @ D.T @ D) - eta * lam)
            else:
                a = torch.relu(h + eta * (h @ D - h @ D.T @ D) - eta * lam)
        out.append(a.reshape(N_WIN * T, -1).numpy())
    return out


def entropy_bits(tokens) -> float:
    counts = Counter(int(t) for t in tokens)
    n = sum(counts.values())
    return -sum(c / n * math.log2(c / n) for c in counts.values())


@pytest.mark.parametrize("kind", ["lm", "square", "gpt2"])
def test_topk_and_statistics_match_brute_force(kind, token_file):
    path, ids = token_file
    model = tiny(kind)
    k, before, after, thr = 5, 3, 2, 0.0
    rep = collect(model, path, k=k, before=before, after=after, threshold=thr, batch_size=3, progress=False)
    assert rep.source == ("mlp" if kind == "gpt2" else "ista")
    acts = brute_force_acts(model, ids)
    assert len(rep.layers) == len(acts) == 2
    for layer, A in zip(rep.layers, acts):
        n, m = A.shape
        assert m == (32 if kind == "square" else 128) and layer["tokens"] == n == T * N_WIN
        for j in range(m):
            col = A[:, j]
            active = col > thr
            assert layer["count"][j] == active.sum()
            assert layer["frequency"][j] == pytest.approx(active.sum() / n)
            if active.any():
                assert layer["mean_active"][j] == pytest.approx(col[active].mean(), rel=1e-4, abs=1e-6)
            assert layer["max"][j] == pytest.approx(col.max(), rel=1e-4, abs=1e-6)
            order = [p for p in np.argsort(-col, kind="stable") if col[p] > thr][:k]
            assert layer["n_top"][j] == len(order)
            np.testing.assert_allclose(layer["top_val"][: len(order), j], col[order], rtol=1e-4, atol=1e-6)
            assert set(layer["top_pos"][: len(order), j]) == set(order)
            for r in range(len(order)):
                p = int(layer["top_pos"][r, j])
                for w, o in enumerate(range(-before, after + 1)):
                    q = p + o
                    if q // T == p // T and q >= 0:  # same window the model saw
                        assert layer["ctx_ids"][r, j, w] == ids[q]
                        assert layer["ctx_act"][r, j, w] == pytest.approx(col[q], rel=1e-4, abs=1e-6)
                    else:
                        assert layer["ctx_ids"][r, j, w] == -1 and np.isnan(layer["ctx_act"][r, j, w])
            if order:
                assert layer["selectivity"][j] == pytest.approx(entropy_bits(ids[order]))
            else:
                assert np.isnan(layer["selectivity"][j])


def test_recorder_statistics_direct_formulas():
    g = torch.Generator().manual_seed(1)
    m, k, thr = 7, 4, 0.3
    batches = []
    for _ in range(5):
        a = torch.relu(torch.randn(2, 6, m, generator=g) - 0.8)
        a[..., 3] = 0.0  # a dead neuron
        batches.append((a, torch.randint(0, 4, (2, 6), generator=g)))
    rec = LayerRecorder(m, k=k, before=1, after=1, threshold=thr)
    for i, (a, ids) in enumerate(batches):
        rec.update(a, ids, i * 12 + torch.arange(12).view(2, 6))
    res = rec.result()
    A = torch.cat([a.reshape(12, m) for a, _ in batches]).numpy()
    I = torch.cat([ids.reshape(12) for _, ids in batches]).numpy()
    for j in range(m):
        vals = [float(v) for v in A[:, j]]
        on = [v for v in vals if v > thr]
        assert res["count"][j] == len(on)
        assert res["frequency"][j] == pytest.approx(len(on) / 60)
        if on:
            assert res["mean_active"][j] == pytest.approx(sum(on) / len(on), rel=1e-6)
        else:
            assert np.isnan(res["mean_active"][j]) and np.isnan(res["selectivity"][j])
        top = sorted((p for p in range(60) if vals[p] > thr), key=lambda p: -vals[p])[:k]
        if top:
            assert res["selectivity"][j] == pytest.approx(entropy_bits(I[top]))
            assert 0.0 <= res["selectivity"][j] <= math.log2(k) + 1e-9
    assert res["count"][3] == 0


def test_bad_inputs(tmp_path, token_file, tool):
    path, ids = token_file
    other = write_tokens(tmp_path / "sp.bin", ids, "sp-0123456789abcdef", 400)
    with pytest.raises(ValueError, match="tokenized with 'sp-0123456789abcdef'"):
        collect(tiny("lm"), other, progress=False)
    with pytest.raises(ValueError, match="ISTA sparse codes"):
        activation_source(tiny("gpt2"), "ista")
    tost = crate_core.create("tost-gpt-nano", dim=32, depth=1, heads=2, block_size=T)
    with pytest.raises(ValueError, match="neither ISTA"):
        activation_source(tost, "auto")
    out = tmp_path / "out"
    out.mkdir()
    neurons = tool("neurons")
    with pytest.raises(ValueError, match="exists; pass --overwrite"):
        neurons.main(["--model", "crate-lm-gpt-nano", "--data", str(path), "--out", str(out)])
    with pytest.raises(ValueError, match="tokenized with"):
        neurons.main(["--model", "crate-lm-gpt-nano", "--data", str(other), "--out", str(tmp_path / "x")])


class NeuronCounter(HTMLParser):
    """Neuron entries (div.neuron, in page order) and summary-table links of a dumped DOM."""

    def __init__(self):
        super().__init__()
        self.neurons, self.selectivity, self.links = [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "div" and "neuron" in (a.get("class") or "").split():
            self.neurons.append(a["id"])
            self.selectivity.append(
                float(a["data-selectivity"]) if a["data-selectivity"] != "None" else math.inf
            )
        if tag == "a" and a.get("href", "").endswith(".html"):
            self.links.append(a["href"])


def chromium_dom(url: str, tmp_path) -> NeuronCounter:
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if binary is None:
        pytest.skip("no chromium binary found (Debian: apt-get install chromium); cannot render the viewer")
    profile = tmp_path / f"profile-{len(os.listdir(tmp_path))}"
    cmd = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--dump-dom",
        url,
    ]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    parser = NeuronCounter()
    parser.feed(dom)
    return parser


def test_viewer_renders_in_chromium(tmp_path, token_file, tool):
    path, _ = token_file
    crate_core.save_pretrained(tiny("lm"), tmp_path / "crate" / "final")
    crate_core.save_pretrained(tiny("gpt2"), tmp_path / "gpt2" / "final")
    out = tmp_path / "viewer"
    written = tool("neurons").main(
        [
            "--model",
            str(tmp_path / "crate" / "final"),
            "--baseline",
            str(tmp_path / "gpt2" / "final"),
            "--data",
            str(path),
            "--out",
            str(out),
            "--top-k",
            "4",
            "--no-progress",
            "--html-contexts",
            "2",
        ]
    )
    assert {p.relative_to(out).as_posix() for p in written["pages"]} == {
        f"{m}/layer_{i}.html" for m in ("crate", "gpt2") for i in range(2)
    }
    index = chromium_dom(written["index"].as_uri(), tmp_path)
    assert sorted(index.links) == sorted(p.relative_to(out).as_posix() for p in written["pages"])
    page = chromium_dom(f"{(out / 'crate' / 'layer_1.html').as_uri()}#sort=selectivity", tmp_path)
    assert len(page.neurons) == 128 and set(page.neurons) == {f"n{j}" for j in range(128)}  # each once
    assert page.selectivity == sorted(page.selectivity)  # the inline script re-sorted the DOM
    page = chromium_dom((out / "gpt2" / "layer_0.html").as_uri(), tmp_path)
    assert len(page.neurons) == 128
    data = __import__("json").loads(written["json"].read_text())
    assert [m["name"] for m in data["models"]] == ["crate", "gpt2"]
    assert [len(layer["neurons"]) for m in data["models"] for layer in m["layers"]] == [128] * 4


@pytest.mark.slow
def test_gpt2_baseline_trained_like_crate(tool, token_file, tmp_path, monkeypatch):
    """pretrain_gpt.py --model gpt2-like-P trains P's GPT-2 baseline with only the model swapped: the
    trainer and DeepSpeed configs of the two runs are equal, and the export loads back as a GPT2Baseline."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    path, _ = token_file
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train.bin", "val.bin"):
        shutil.copy(path, data / split)
    common = [
        "--data",
        str(data),
        "--steps",
        "3",
        "--micro-batch",
        "2",
        "--block-size",
        str(T),
        "--eval-batches",
        "1",
    ]
    common += ["--wandb", "disabled", "--progress", "off", "--sample-tokens", "2", "--seed", "3"]
    tool("pretrain_gpt").main([*common, "--model", "crate-lm-gpt-nano", "--out-dir", str(tmp_path / "crate")])
    res = tool("pretrain_gpt").main(
        [*common, "--model", "gpt2-like-crate-lm-gpt-nano", "--out-dir", str(tmp_path / "g")]
    )
    assert res["steps"] == 3
    runs = [__import__("json").loads((tmp_path / d / "run_config.json").read_text()) for d in ("crate", "g")]
    for r in runs:
        r["train_config"].pop("out_dir")
    assert runs[0]["train_config"] == runs[1]["train_config"] and runs[0]["ds_config"] == runs[1]["ds_config"]
    model = crate_core.from_pretrained(tmp_path / "g" / "final")
    assert isinstance(model, GPT2Baseline)
    c, g = runs[0]["model"]["config"], model.config
    assert (g.dim, g.depth, g.heads, g.block_size, g.vocab_size) == (
        c["dim"],
        c["depth"],
        c["heads"],
        c["block_size"],
        c["vocab_size"],
    )
    with pytest.raises(ValueError, match="'bert-like-crate-bert-nano' has task 'masked-lm'"):
        tool("pretrain_gpt").main(["--model", "bert-like-crate-bert-nano"])
