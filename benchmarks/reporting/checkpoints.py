"""The measurement half of benchmarks/report.py on given weights (``--checkpoint FAMILY=PATH``):
no training; layer-wise Rc / sparsity and the depth verdicts on data that ships offline, attention
overlays for a vision model, a reconstruction grid for an MAE, and for a language model the
top-activating contexts of its most selective codes.

PATH is an official checkpoint in its own layout (crate_core.official.load_official: the CRATE
and CRATE-alpha classifiers, CRATE-MAE, the CRATE-LM nanoGPT layouts via crate_text.load_official)
or a project export directory (config.json + model.safetensors, crate_core.from_pretrained).
Data: the scikit-image sample photos and the shapes test set for images (ImageNet normalisation
for photos, the shapes statistics for shapes); the Shakespeare validation split for text (GPT-2
ids, or characters for a model trained on data/shakespeare-char).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.harness import CHAR_DATA, FAMILIES, ROOT

LAYOUTS = {fam: spec.layout for fam, spec in FAMILIES.items() if spec.layout}  # family -> official layout
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "cat", "hubble_deep_field")
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
EXPECTED_KEYS = {
    "vision": "CRATE: to_patch_embedding.2.weight, cls_token, pos_embedding, transformer.layers.{l}.0.fn.qkv.weight, "
    "transformer.layers.{l}.1.fn.weight, mlp_head.1.weight (CRATE-alpha: conv1.weight, transformer.layers.{l}.1.fn.D "
    "and .D1)",
    "mae": "patch_embed.proj.weight, cls_token, mask_token, blocks.{l}.layers.0.0.fn.qkv.weight, "
    "blocks.{l}.layers.0.1.fn.weight, decoder_blocks.{l}.layers.0.0.fn.weight, norm.weight, decoder_pred.weight",
    "gpt": "transformer.wte.weight, transformer.wpe.weight, transformer.h.{l}.attn.c_attn.weight, "
    "transformer.h.{l}.ista.weight",
}
N_SHAPES, N_WINDOWS = 26, 16


def parse_specs(items: list[str]) -> dict[str, Path]:
    """``["vision=PATH", ...]`` -> {family: path}; unknown families, repeats and missing paths fail."""
    specs: dict[str, Path] = {}
    for item in items:
        fam, sep, path = item.partition("=")
        if not sep or not path:
            raise ValueError(f"--checkpoint {item!r}: expected FAMILY=PATH with FAMILY one of {list(LAYOUTS)}")
        if fam not in LAYOUTS:
            raise ValueError(f"--checkpoint {item!r}: unknown family {fam!r}; choose one of {list(LAYOUTS)}")
        if fam in specs:
            raise ValueError(f"--checkpoint: family {fam!r} given twice")
        p = Path(path).expanduser()
        if not p.exists():
            raise ValueError(f"--checkpoint {fam}={path}: no such file or directory")
        specs[fam] = p
    return specs


def parse_heads(items: list[str], specs: dict) -> dict[str, int]:
    """``["mae=4"]`` -> {"mae": 4}: head counts for official files whose width matches no official preset."""
    heads = {}
    for item in items:
        fam, _, k = item.partition("=")
        if fam not in specs or not k.isdigit() or int(k) <= 0:
            raise ValueError(f"--heads {item!r}: expected FAMILY=K with FAMILY one of the --checkpoint families "
                             f"{list(specs)} and K a positive integer")
        heads[fam] = int(k)
    return heads


def load(family: str, path: Path, heads: int | None = None):
    """(model in eval mode, description of what was loaded); a clear ValueError otherwise."""
    import crate_core
    import crate_mae  # noqa: F401  registers presets and the MAE layout
    import crate_text  # noqa: F401
    import crate_vision  # noqa: F401
    from crate_core.official import load_official

    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"--checkpoint {family}={path}: a directory must be a project export "
                             "(config.json + model.safetensors)")
        model, what = crate_core.from_pretrained(path), "project export"
    else:
        try:
            model = load_official(path, family=LAYOUTS[family], **({"heads": heads} if heads else {}))
        except ValueError as e:
            raise ValueError(f"--checkpoint {family}={path}: not a {family} checkpoint this report knows ({e}). "
                             f"Expected the official keys {EXPECTED_KEYS[family]}, or a project export "
                             "directory") from None
        what = f"official checkpoint ({type(model).__name__})"
    ok = {"vision": lambda m: hasattr(m, "forward_head") or type(m).__name__.endswith("Classifier"),
          "mae": lambda m: hasattr(m, "num_patches") and hasattr(m, "decoder"),
          "gpt": lambda m: hasattr(m.config, "block_size") and hasattr(m, "generate")}[family]
    if not ok(model):
        raise ValueError(f"--checkpoint {family}={path}: holds a {type(model).__name__}, not a {family} model")
    return model.eval(), what


# ---- data ----------------------------------------------------------------------------------------
def photo(name: str, size: int, mean=IMAGENET[0], std=IMAGENET[1]) -> torch.Tensor:
    """A scikit-image sample photo, centre-cropped and resized to (1, 3, size, size), normalised."""
    import skimage.data

    img = getattr(skimage.data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    h, w = img.shape[:2]
    s = min(h, w)
    crop = np.ascontiguousarray(img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s, :3])
    x = torch.from_numpy(crop).permute(2, 0, 1).float()[None] / 255
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def image_batch(size: int, n_shapes: int = N_SHAPES) -> tuple[torch.Tensor, list[str]]:
    from crate_vision.data.datasets import build_dataset

    shapes, _ = build_dataset("shapes", "test", size, size=n_shapes)
    xs = [photo(n, size) for n in PHOTOS] + [shapes[i][0][None] for i in range(n_shapes)]
    return torch.cat(xs), [*PHOTOS, *(f"shapes{i}" for i in range(n_shapes))]


def text_data(model) -> tuple[Path, object]:
    """(prepared Shakespeare directory, tokenizer) matching the model's tokenizer."""
    from crate_text import get_tokenizer
    from crate_text.prepare import ensure_prepared
    from crate_text.prepare import main as prepare

    name = getattr(model.config, "tokenizer", "gpt2")
    if name == "gpt2":
        return ensure_prepared(ROOT / "data/shakespeare-gpt2"), get_tokenizer("gpt2")
    if name.startswith("char-"):
        data = ROOT / CHAR_DATA
        if not (data / "meta.json").is_file():
            prepare(["--tokenizer", "char", "--val-fraction", "0.1", "--out", str(data), "--num-proc", "1"])
        tok = get_tokenizer(data)
        if tok.name == name:
            return data, tok
    raise ValueError(f"the language model was trained with tokenizer {name!r}; the report measures on the "
                     "Shakespeare validation split in GPT-2 ids or the shipped character table only")


# ---- measurements ------------------------------------------------------------------------------
def record_of(results: dict) -> dict:
    """probe() output {group: {measure: (L, B)}} -> a layer-wise record ([mean, std] per layer)."""
    return {"step": "checkpoint", "layers": {
        g: {k: [[float(v[l].mean()), float(v[l].std(unbiased=False))] for l in range(v.shape[0])]
            for k, v in m.items()} for g, m in results.items()}}


@torch.no_grad()
def measure(family: str, model, out: Path, work: Path) -> dict:
    """Layer-wise record, batch size and family extras (figures written under ``out``)."""
    from crate_core.probes import probe

    torch.manual_seed(0)
    entry: dict = {"figures": []}
    if family in ("vision", "mae"):
        x, names = image_batch(model.config.image_size)
        entry["data"] = f"{len(PHOTOS)} scikit-image photos + {len(names) - len(PHOTOS)} shapes test images"
        res = probe(model, x)
        if family == "mae":
            entry["figures"].append(mae_grid(model, x[:8], out / "checkpoint-mae-recon.png"))
    else:
        data, tok = text_data(model)
        from crate_text import TokenDataset

        T = min(model.config.block_size, 256)
        val = TokenDataset(data / "val.bin", T, tokenizer=tok)
        x = torch.stack([val[i][0] for i in range(min(N_WINDOWS, len(val)))])
        entry["data"] = f"{x.shape[0]} windows of {T} tokens of {data.relative_to(ROOT).as_posix()}/val.bin"
        res = probe(model, x)
        entry["contexts"] = top_contexts(model, data / "val.bin", tok, T)
    entry["record"] = record_of(res)
    entry["batch"] = int(x.shape[0])
    return entry


def mae_grid(model, x: torch.Tensor, path: Path) -> str:
    from crate_mae.viz import reconstruction_views, save_grid

    out = model(x)
    masked, recon = reconstruction_views(x, out, model.config.patch_size, model.config.norm_pix_loss)
    save_grid(x, masked, recon, path, *IMAGENET)
    return path.name


def top_contexts(model, val_file: Path, tok, T: int, n_codes: int = 5, k: int = 8, per_code: int = 3) -> dict:
    """The most selective codes of the last layer: the fewest distinct tokens among their top-k
    activations (crate_text.interp selectivity entropy, bits), among codes active on >= k tokens."""
    from crate_text.interp import collect

    rep = collect(model, val_file, k=k, before=24 if tok.name.startswith("char-") else 8, after=0,
                  max_tokens=T * 32, block_size=T, progress=False)
    layer = rep.layers[-1]
    live = np.flatnonzero(layer["n_top"] >= k)
    order = live[np.lexsort((-layer["mean_active"][live], layer["selectivity"][live]))][:n_codes]
    codes = []
    for j in order:
        ctx = []
        for r in range(min(per_code, int(layer["n_top"][j]))):
            ids = [int(i) for i in layer["ctx_ids"][r, j] if i >= 0]
            ctx.append({"before": tok.decode(ids[:-1]), "token": tok.decode(ids[-1:]),
                        "activation": float(layer["top_val"][r, j])})
        codes.append({"code": int(j), "selectivity_bits": float(layer["selectivity"][j]),
                      "frequency": float(layer["frequency"][j]), "contexts": ctx})
    return {"layer": len(rep.layers), "source": rep.source, "tokens": rep.data["tokens"], "codes": codes}


def context_lines(ctx: dict) -> list[str]:
    if not ctx or not ctx["codes"]:
        return ["No code was active often enough to rank."]
    lines = [f"Most selective codes of layer {ctx['layer']} ({ctx['source']} activations over {ctx['tokens']:,} "
             "validation tokens; selectivity = entropy in bits of the activating tokens among the top 8):", "",
             "| code | selectivity (bits) | active on | top contexts (activating token in [brackets]) |",
             "|---|---|---|---|"]
    for c in ctx["codes"]:
        shown = " / ".join(f"`{x['before'][-24:]}[{x['token']}]` ({x['activation']:.2f})".replace("\n", "⏎")
                           .replace("|", "¦") for x in c["contexts"])
        lines.append(f"| {c['code']} | {c['selectivity_bits']:.2f} | {100 * c['frequency']:.1f}% | {shown} |")
    return lines
