"""Load official CRATE / CRATE-alpha checkpoints into CRATEClassifier (the command line converter
to safetensors + config.json is crate_vision.convert).

Accepted inputs: the official CRATE training checkpoint (a dict with ``state_dict`` whose keys
carry ``module.``), a bare state_dict (``module.`` / ``_orig_mod.`` prefixes stripped, a
``{"model": ...}`` wrapper unwrapped), CRATE-alpha torch weights, or a .safetensors file.
Width, depth, patch size, image size and classes are read from the tensor shapes; the number
of heads is not visible in the shapes and comes from the preset of the same width and depth,
else from ``heads=``.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import torch

from .models import ALPHA_OPTIONS, ALPHA_SIZES, CRATE_SIZES, CRATEClassifier, CRATEClassifierConfig

VARIANTS = ("auto", "crate", "alpha")
PREFIXES = ("module.", "_orig_mod.")

# (our parameter name, official parameter name); "{l}" is the layer index
_SHARED = [
    ("cls_token", "cls_token"),
    ("pos_embed", "pos_embedding"),
    ("trunk.layers.{l}.norm1.weight", "transformer.layers.{l}.0.norm.weight"),
    ("trunk.layers.{l}.norm1.bias", "transformer.layers.{l}.0.norm.bias"),
    ("trunk.layers.{l}.mssa.U.weight", "transformer.layers.{l}.0.fn.qkv.weight"),
    ("trunk.layers.{l}.mssa.out.weight", "transformer.layers.{l}.0.fn.to_out.0.weight"),
    ("trunk.layers.{l}.mssa.out.bias", "transformer.layers.{l}.0.fn.to_out.0.bias"),
    ("trunk.layers.{l}.norm2.weight", "transformer.layers.{l}.1.norm.weight"),
    ("trunk.layers.{l}.norm2.bias", "transformer.layers.{l}.1.norm.bias"),
    ("head_norm.weight", "mlp_head.0.weight"),
    ("head_norm.bias", "mlp_head.0.bias"),
    ("head.weight", "mlp_head.1.weight"),
    ("head.bias", "mlp_head.1.bias"),
]
KEY_MAPS = {
    "crate": _SHARED
    + [
        ("patch_embed.norm_in.weight", "to_patch_embedding.1.weight"),
        ("patch_embed.norm_in.bias", "to_patch_embedding.1.bias"),
        ("patch_embed.proj.weight", "to_patch_embedding.2.weight"),
        ("patch_embed.proj.bias", "to_patch_embedding.2.bias"),
        ("patch_embed.norm_out.weight", "to_patch_embedding.3.weight"),
        ("patch_embed.norm_out.bias", "to_patch_embedding.3.bias"),
        ("trunk.layers.{l}.ista.D", "transformer.layers.{l}.1.fn.weight"),
    ],
    "alpha": _SHARED
    + [
        ("patch_embed.proj.weight", "conv1.weight"),
        ("patch_embed.proj.bias", "conv1.bias"),
        ("trunk.layers.{l}.ista.D", "transformer.layers.{l}.1.fn.D"),
        ("trunk.layers.{l}.ista.D1", "transformer.layers.{l}.1.fn.D1"),
    ],
}


def _official_name(ours: str, variant: str) -> str:
    for src, dst in KEY_MAPS[variant]:
        m = re.fullmatch(re.escape(src).replace(r"\{l\}", r"(\d+)"), ours)
        if m:
            return dst.replace("{l}", m.group(1)) if m.groups() else dst
    raise KeyError(f"no official name for parameter {ours!r} ({variant})")


def read_state_dict(src: str | os.PathLike | dict) -> dict[str, torch.Tensor]:
    """The bare state_dict of ``src`` (a path or an already-loaded object), prefixes stripped."""
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {str(path)!r}")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001  pickles with arbitrary objects, or not a torch file
                raise ValueError(f"{str(path)!r} is not a torch checkpoint that loads safely: {e}") from e
    else:
        obj = src
    if not isinstance(obj, dict):
        raise ValueError(f"a checkpoint must be a dict of tensors, got {type(obj).__name__}")
    for wrapper in ("state_dict", "model"):
        if wrapper in obj and isinstance(obj[wrapper], dict):
            obj = obj[wrapper]
            break
    state = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        for prefix in PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix) :]
        state[key] = value
    if not state:
        raise ValueError("the checkpoint holds no tensors")
    return state


def detect_variant(state: dict) -> str:
    if "conv1.weight" in state:
        return "alpha"
    if "to_patch_embedding.2.weight" in state:
        return "crate"
    raise ValueError(layout_error(state, "crate"))


def layout_error(state: dict, variant: str, expected: set[str] | None = None) -> str:
    """Message listing what the official ``variant`` layout expects and does not find, and vice versa."""
    if expected is None:
        expected = {  # the layout's keys for a one-layer model (CRATE-alpha has no output-projection bias)
            dst.replace("{l}", "0")
            for ours, dst in KEY_MAPS[variant]
            if not (variant == "alpha" and ours.endswith("mssa.out.bias"))
        }
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)

    def short(keys: list[str]) -> str:
        return ", ".join(keys[:12]) + (f", ... ({len(keys)} in all)" if len(keys) > 12 else "")

    return (
        f"the state_dict does not fit the official {variant!r} layout (not a CRATE checkpoint, or another "
        f"variant): missing keys [{short(missing)}]; unexpected keys [{short(unexpected)}]"
    )


def infer_config(
    state: dict, variant: str, heads: int | None = None, in_channels: int = 3
) -> CRATEClassifierConfig:
    """Read width, depth, patch, image size and classes off the shapes; heads from a preset or ``heads``."""
    try:
        dim = state["cls_token"].shape[-1]
        tokens = state["pos_embedding"].shape[1]
        layers = {int(m.group(1)) for k in state if (m := re.match(r"transformer\.layers\.(\d+)\.", k))}
        depth = max(layers) + 1
        classes = state["mlp_head.1.weight"].shape[0]
        if variant == "alpha":
            _, in_channels, patch, _ = state["conv1.weight"].shape
        else:
            patch_dim = state["to_patch_embedding.2.weight"].shape[1]
            patch = math.isqrt(patch_dim // in_channels)
            if patch * patch * in_channels != patch_dim:
                raise ValueError(f"patch vector length {patch_dim} is not P*P*{in_channels}")
    except (KeyError, ValueError) as e:
        raise ValueError(f"{layout_error(state, variant)} ({e})") from e
    grid = math.isqrt(tokens - 1)
    if grid * grid != tokens - 1:
        raise ValueError(f"pos_embedding has {tokens} rows, not 1 + a square grid")
    sizes = ALPHA_SIZES if variant == "alpha" else CRATE_SIZES
    preset_heads = {(d, L): K for d, L, K in sizes.values()}
    if heads is None:
        if (dim, depth) not in preset_heads:
            raise ValueError(
                f"no {variant} preset has width {dim} and depth {depth}: pass heads= (--heads) explicitly"
            )
        heads = preset_heads[(dim, depth)]
    inner = state["transformer.layers.0.0.fn.qkv.weight"].shape[0]
    if heads <= 0 or inner % heads:
        raise ValueError(f"heads={heads} does not divide the projection width {inner}")
    options = dict(ALPHA_OPTIONS) if variant == "alpha" else {}
    return CRATEClassifierConfig(
        image_size=grid * patch,
        patch_size=patch,
        in_channels=in_channels,
        num_classes=classes,
        dim=dim,
        depth=depth,
        heads=heads,
        dim_head=inner // heads,
        **options,
    )


def load_official(
    src: str | os.PathLike | dict,
    heads: int | None = None,
    variant: str = "auto",
    in_channels: int = 3,
) -> CRATEClassifier:
    """A CRATEClassifier (eval mode) holding the weights of an official CRATE / CRATE-alpha checkpoint."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got variant={variant!r}")
    state = read_state_dict(src)
    if variant == "auto":
        variant = detect_variant(state)
    config = infer_config(state, variant, heads=heads, in_channels=in_channels)
    model = CRATEClassifier(config)
    names = {ours: _official_name(ours, variant) for ours in model.state_dict()}
    expected = set(names.values())
    if expected != set(state):
        raise ValueError(layout_error(state, variant, expected))
    for ours, official in names.items():
        want = model.state_dict()[ours].shape
        if state[official].shape != want:
            raise ValueError(f"{official} has shape {tuple(state[official].shape)}, expected {tuple(want)}")
    model.load_state_dict({ours: state[official] for ours, official in names.items()}, strict=True)
    return model.eval()
