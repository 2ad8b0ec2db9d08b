"""Official checkpoints: one reader, one adapter protocol, one entry point.

Every family converter (crate_vision, crate_mae, crate_text) works the same way:

1. ``read_checkpoint(src)`` opens the file once (safetensors, or a torch pickle loaded with
   ``weights_only=True``), unwraps ``{"model": ...}`` / ``{"state_dict": ...}`` / a bare state dict,
   strips DDP's ``module.`` and torch.compile's ``_orig_mod.`` prefixes and keeps the other
   top-level entries (``model_args``, ``epoch``, ...) as ``extra``.
2. The family reads its config off the tensor shapes and builds its own model.
3. ``KeyRules`` maps every parameter of that model to its official name (``{l}`` = layer index);
   ``load_mapped`` checks the key sets (missing / unexpected official keys are named) and every
   shape, applies per-key transforms (e.g. a transposed dictionary) and loads strictly.

Errors are ``CheckpointError`` (a ``ValueError``) with one line ``SOURCE: problem``.
Families register a ``Layout`` (name, detector, loader) on import; ``load_official(src)``
imports the installed families through the ``crate.models`` entry points, asks every layout's
detector, and hands the checkpoint to the one that recognises it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

PREFIXES = ("module.", "_orig_mod.")
WRAPPERS = ("model", "state_dict")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit a layout; the message names the source."""


@dataclass
class Checkpoint:
    """A bare state dict (prefixes stripped), the file's other top-level entries, and where it came from."""

    state: dict[str, torch.Tensor]
    extra: dict[str, Any] = field(default_factory=dict)
    source: str = "<state dict>"

    def error(self, problem: str) -> CheckpointError:
        return CheckpointError(f"{self.source}: {problem}")


def _safe_globals() -> list:
    """Non-tensor objects the released checkpoints pickle next to the weights (FAIR-MAE's argparse
    namespace, numpy scalars in nanoGPT-style metadata); everything else is refused."""
    import argparse

    allowed: list = [argparse.Namespace]
    try:
        import numpy as np

        allowed += [np.dtype, np.ndarray]
        allowed += [getattr(np, "_core", getattr(np, "core", None)).multiarray.scalar]
        allowed += [type(np.dtype(t)) for t in ("float32", "float64", "int64", "int32", "bool")]
    except (ImportError, AttributeError):
        pass
    return allowed


def _load_file(path: Path) -> Any:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt): {e}") from None
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  torch raises many types for a bad file; name the file, not the advice
        text = str(e)
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if found:
            raise CheckpointError(
                f"{path}: the pickle holds Python objects ({found.group(1)}) besides tensors, so it is not a plain "
                "checkpoint; it was not executed. Save its state_dict (a dict of tensors) and convert that"
            ) from None
        detail = re.search(r"WeightsUnpickler error: \s*(.+)", text)
        first = detail.group(1).strip() if detail else (text.strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (truncated, corrupt or another kind of file): {first[:160]}"
        ) from None


def _describe(obj: Mapping) -> str:
    keys = [str(k) for k in list(obj)[:8]]
    return ", ".join(keys) + (", ..." if len(obj) > 8 else "")


def read_checkpoint(src: str | os.PathLike | Mapping | Checkpoint) -> Checkpoint:
    """Open ``src`` (a path, an already-loaded dict, or a Checkpoint) and return its bare state dict."""
    if isinstance(src, Checkpoint):
        return src
    source = "<state dict>"
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if path.is_dir():
            hint = " (an exported model: load it with crate_core.from_pretrained)" if (path / "config.json").exists() else ""
            raise CheckpointError(f"{path}: is a directory, not a checkpoint file{hint}")
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        source, obj = str(path), _load_file(path)
    else:
        obj = src
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: holds a {type(obj).__name__}, not a state dict (a dict of tensors)")
    extra: dict[str, Any] = {}
    for wrapper in WRAPPERS:
        inner = obj.get(wrapper)
        if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
            extra = {k: v for k, v in obj.items() if k != wrapper}
            obj = inner
            break
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            extra.setdefault(str(key), value)
            continue
        key = str(key)
        while key.startswith(PREFIXES):
            key = key[len(next(p for p in PREFIXES if key.startswith(p))) :]
        if key in state:
            raise CheckpointError(f"{source}: key {key!r} occurs twice once the module./_orig_mod. prefixes are removed")
        state[key] = value
    if not state:
        raise CheckpointError(f"{source}: holds no tensors, so it is not a state dict (top-level keys: {_describe(obj)})")
    return Checkpoint(state, extra, source)


# -- the adapter protocol ----------------------------------------------------------------------
def _pattern(template: str) -> re.Pattern:
    """``{p}`` matches "weight" or "bias", any other ``{name}`` an index."""
    def group(m: re.Match) -> str:
        name = m.group(1)
        return f"(?P<{name}>weight|bias)" if name == "p" else f"(?P<{name}>\\d+)"

    return re.compile(re.sub(r"\\\{(\w+)\\\}", group, re.escape(template)))


class KeyRules:
    """Ordered (our name, official name) templates; ``{p}`` stands for weight/bias, any other ``{name}``
    (e.g. ``{l}``) for an index.

    ``official(ours)`` gives the official key of one of our parameters; ``ignore`` lists official
    keys (regexes) that are read and dropped (non-persistent buffers, weights the forward never uses)."""

    def __init__(self, pairs: list[tuple[str, str]], ignore: tuple[str, ...] = ()):
        self.pairs = [(_pattern(ours), official) for ours, official in pairs]
        self.ignore = [re.compile(p) for p in ignore]

    def official(self, ours: str) -> str | None:
        for pattern, official in self.pairs:
            m = pattern.fullmatch(ours)
            if m:
                return official.format(**m.groupdict())
        return None

    def ignored(self, key: str) -> bool:
        return any(p.fullmatch(key) for p in self.ignore)


def _short(keys: list[str], n: int = 12) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


TITLES = {  # how messages name the layouts
    "crate": "CRATE",
    "crate-demo-21k": "CRATE demo/21k",
    "crate-alpha": "CRATE-alpha",
    "crate-mae": "CRATE-MAE",
    "crate-lm-overcomplete": "CRATE-LM overcomplete",
    "crate-lm-square": "CRATE-LM square",
    "cbt": "CBT",
}


def layout_mismatch(ckpt: Checkpoint, layout: str, missing: list[str], unexpected: list[str]) -> CheckpointError:
    """The one message for a state dict that does not fit ``layout``: both key lists, plus the layout it fits, if any."""
    others = [lay.name for lay in identify(ckpt.state) if lay.name != layout]
    hint = f"; it looks like the {others[0]!r} layout (convert it with crate_core.load_official)" if others else ""
    return ckpt.error(
        f"not an official {TITLES.get(layout, layout)} checkpoint: missing keys [{_short(sorted(missing))}]; "
        f"unexpected keys [{_short(sorted(unexpected))}]{hint}"
    )


def load_mapped(
    model: nn.Module,
    ckpt: Checkpoint,
    rules: KeyRules,
    layout: str,
    transforms: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
) -> nn.Module:
    """Load ``ckpt`` into ``model`` through ``rules``: the official key sets must match exactly (apart from
    ignored keys) and every tensor must have our parameter's shape after its transform. ``transforms``
    maps a regex over our names to a function applied to the official tensor. Returns model.eval()."""
    ours = model.state_dict()
    names = {}
    for name in ours:
        official = rules.official(name)
        if official is None:
            raise RuntimeError(f"KeyRules of {layout!r} give no official name for our parameter {name!r}")
        names[name] = official
    expected = set(names.values())
    present = {k for k in ckpt.state if not rules.ignored(k)}
    if expected != present:
        raise layout_mismatch(ckpt, layout, list(expected - present), list(present - expected))
    compiled = [(re.compile(p), f) for p, f in (transforms or {}).items()]
    new = {}
    for name, official in names.items():
        value = ckpt.state[official]
        for pattern, fn in compiled:
            if pattern.fullmatch(name):
                value = fn(value)
        if tuple(value.shape) != tuple(ours[name].shape):
            raise ckpt.error(
                f"{official} has shape {tuple(ckpt.state[official].shape)}, the {layout} layout needs "
                f"{tuple(ours[name].shape)} here"
            )
        new[name] = value.to(ours[name].dtype)
    model.load_state_dict(new, strict=True)
    model._official_layout = layout  # read by the converters' command line for the export's config.json
    return model.eval()


def require(ckpt: Checkpoint, layout: str, *keys: str) -> None:
    """Fail with the layout-mismatch message if any of ``keys`` is absent (before shapes are read)."""
    missing = [k for k in keys if k not in ckpt.state]
    if missing:
        raise layout_mismatch(ckpt, layout, missing, [])


def layer_count(state: Mapping[str, Any], prefix: str) -> int:
    """1 + the largest index ``i`` among keys ``{prefix}.{i}.*`` (0 when there are none)."""
    idx = {int(m.group(1)) for k in state if (m := re.match(rf"{re.escape(prefix)}\.(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def resolve_heads(
    ckpt: Checkpoint, layout: str, width: int, heads: int | None, presets: Mapping[Any, int], key: Any
) -> int:
    """The head count: ``heads`` if given, else the official preset at ``key`` (e.g. (width, depth));
    it must divide ``width`` (the projection width)."""
    if heads is None:
        if key not in presets:
            raise ckpt.error(
                f"no official {layout} preset matches {key} (width, depth), and the head count is not stored "
                "in the weights: pass heads= (--heads)"
            )
        heads = presets[key]
    if not isinstance(heads, int) or heads <= 0 or width % heads:
        raise ckpt.error(f"head count {heads} does not divide the width {width}")
    return heads


# -- the layout registry and the one entry point ------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """One released checkpoint layout: ``detect(state)`` recognises it, ``load(ckpt, **options)`` converts it."""

    name: str
    family: str
    description: str
    detect: Callable[[Mapping[str, torch.Tensor]], bool]
    load: Callable[..., nn.Module]


_LAYOUTS: dict[str, Layout] = {}


def register_layout(layout: Layout) -> Layout:
    _LAYOUTS[layout.name] = layout
    return layout


def known_layouts() -> list[Layout]:
    """Every registered layout (the installed families are imported first)."""
    from .registry import _load_plugins

    _load_plugins()
    return list(_LAYOUTS.values())


def identify(state: Mapping[str, torch.Tensor]) -> list[Layout]:
    """The registered layouts whose detector recognises ``state`` (normally exactly one)."""
    found = []
    for layout in list(_LAYOUTS.values()):
        try:
            if layout.detect(state):
                found.append(layout)
        except Exception:  # noqa: BLE001  a detector must not turn a clear error into a traceback
            continue
    return found


def detect_layout(src: str | os.PathLike | Mapping | Checkpoint, family: str = "auto") -> tuple[Layout, Checkpoint]:
    """(layout, checkpoint) for ``src``; ``family`` ("auto", a family or a layout name) narrows the choice."""
    ckpt = read_checkpoint(src)
    layouts = known_layouts()
    names = sorted(lay.name for lay in layouts)
    families = sorted({lay.family for lay in layouts})
    if family != "auto" and family not in names and family not in families:
        raise ValueError(f"family must be 'auto', a family {families} or a layout {names}, got family={family!r}")
    found = [lay for lay in identify(ckpt.state) if family in ("auto", lay.name, lay.family)]
    if not found:
        seen = _short(sorted(ckpt.state), 8)
        narrowed = "" if family == "auto" else f" of {family!r}"
        raise ckpt.error(f"fits no known layout{narrowed} (known: {', '.join(names)}); first keys: {seen}")
    if len(found) > 1:
        raise ckpt.error(f"fits several layouts {[lay.name for lay in found]}: pass family= (--family)")
    return found[0], ckpt


def load_official(src: str | os.PathLike | Mapping, family: str = "auto", **options) -> nn.Module:
    """Convert any released CRATE-family checkpoint (layout detected from its keys) into our model, eval mode.
    ``options`` go to the family converter (e.g. ``heads=``)."""
    layout, ckpt = detect_layout(src, family)
    return layout.load(ckpt, **options)
