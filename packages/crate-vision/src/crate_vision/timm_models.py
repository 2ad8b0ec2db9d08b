"""timm registration: ``import crate_vision`` makes ``timm.create_model("crate_small_patch16_224")``
(and every other vision preset, "-" spelled "_") build a CRATEClassifier.

Only timm's public API is used (``register_model``, ``generate_default_cfgs``, ``get_pretrained_cfg``).
Each name has a ``pretrained_cfg`` (input size, mean/std, crop, and the official download URL where
one exists: CRATE-alpha B/16 and L/14 on the Hugging Face Hub). Nothing is downloaded at run time:

    timm.create_model("crate_alpha_base_patch16_224", pretrained=True,
                      pretrained_cfg_overlay=dict(file="crate_alpha_B16.pth"))

loads an official file through the converter (crate_vision.load_official; an export folder or its
model.safetensors works too); another ``num_classes`` gets a fresh classifier, another ``img_size``
resampled positions, as timm does.
"""

from __future__ import annotations

import dataclasses

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs, get_pretrained_cfg, register_model

from .models import CRATEClassifier, preset_configs, resize_pos_embed

# timm keyword -> our config field (timm spells these the same way for every model)
_KWARG_FIELDS = {"num_classes": "num_classes", "img_size": "image_size", "in_chans": "in_channels",
                 "drop_rate": "dropout", "patch_size": "patch_size"}
_POOLS = {"token": "cls", "cls": "cls", "avg": "mean", "mean": "mean"}


def timm_name(name: str) -> str:
    return name.replace("-", "_")


# official torch weights (UCSC-VLAA/CRATE-alpha README); the CRATE ImageNet-1K weights were shared on
# Google Drive (Ma-Lab-Berkeley/CRATE) and that link is dead, so those names carry no URL
OFFICIAL_WEIGHTS = {
    "crate_alpha_base_patch16_224": ("UCSC-VLAA/CRATE-alpha", "torch/crate_alpha_B16.pth"),
    "crate_alpha_large_patch14_224": ("UCSC-VLAA/CRATE-alpha", "torch/crate_alpha_L14.pth"),
}


def _pretrained_cfg(name: str, config, description: str) -> dict:
    """timm's default config: CRATE evaluates resize 256 -> crop 224 (bicubic in timm's convention),
    CBT resize 256 -> crop 224 (torchvision's bilinear), the CRATE-alpha torch port resize 224 -> crop 224
    (bilinear); all with ImageNet mean/std."""
    size = config.image_size
    alpha = config.ista == "alpha"
    bilinear = alpha or config.block == "cbsa"
    repo, filename = OFFICIAL_WEIGHTS.get(name, (None, None))
    return dict(
        url=f"https://huggingface.co/{repo}/resolve/main/{filename}" if repo else "",
        hf_hub_id=repo,
        hf_hub_filename=filename,
        num_classes=config.num_classes,
        input_size=(config.in_channels, size, size),
        pool_size=None,
        crop_pct=1.0 if alpha else 0.875,
        interpolation="bilinear" if bilinear else "bicubic",
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        first_conv="patch_embed.convs.0" if config.patch_embed == "convstem" else "patch_embed.proj",
        classifier="head",
        license="mit",
        description=description,
    )


_PRESETS = {timm_name(n): (n, c, d) for n, (c, d) in preset_configs().items()}
default_cfgs = generate_default_cfgs({t: _pretrained_cfg(t, c, d) for t, (_, c, d) in _PRESETS.items()})


def load_pretrained(model: CRATEClassifier, name: str, cfg: dict) -> None:
    """Fill ``model`` with the weights named by ``cfg["file"]`` (an official checkpoint, an export folder
    or its model.safetensors), as timm does: the classifier is kept only when the class counts agree,
    the positions are resampled to the model's grid."""
    from pathlib import Path

    import crate_core

    file = cfg.get("file")
    if not file:
        where = f" (official weights: {cfg['url']})" if cfg.get("url") else ""
        raise ValueError(
            f"no local weights for {name!r}{where}: download or convert a checkpoint (python -m crate_core.convert) "
            "and pass pretrained_cfg_overlay=dict(file=PATH)"
        )
    path = Path(file)
    if path.is_dir() or (path.suffix == ".safetensors" and (path.parent / "config.json").is_file()):
        source = crate_core.from_pretrained(path if path.is_dir() else path.parent)
    else:
        source = _load_file(path, model.config)
    ours, theirs = model.config, source.config
    arch = ("block", "dim", "depth", "heads", "patch_size", "patch_embed", "ista", "in_channels")
    wrong = {f: (getattr(theirs, f), getattr(ours, f)) for f in arch if getattr(theirs, f) != getattr(ours, f)}
    if wrong:
        raise ValueError(f"{file} does not fit {name}: (file, model) differ in {wrong}")
    state = source.state_dict()
    state["pos_embed"] = resize_pos_embed(state["pos_embed"], (theirs.grid,) * 2, (ours.grid,) * 2)
    if theirs.num_classes != ours.num_classes or type(source) is not CRATEClassifier:
        state = {k: v for k, v in state.items() if not k.startswith(("head.", "pre_logits."))}
    if ours.block == "cbsa" and theirs.rep_window != ours.rep_window:  # a released CBT pools its own window
        for layer in model.trunk.layers:
            layer.cbsa.rep_window = theirs.rep_window
        model.config = dataclasses.replace(ours, rep_window=theirs.rep_window)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("head.") for k in missing):
        raise ValueError(f"{file} does not fit {name}: missing {missing}, unexpected {unexpected}")


def _load_file(path, config):
    """An official checkpoint file as our classifier: CBT through its own layout, else CRATE / alpha / demo."""
    from .official import load_official
    from .official_cbt import load_official_cbt

    if config.block == "cbsa":
        return load_official_cbt(path, rep_grid=config.rep_grid)
    return load_official(path, heads=config.heads, variant="alpha" if config.ista == "alpha" else "auto")


def build(name: str, pretrained: bool = False, **kwargs) -> CRATEClassifier:
    """Build timm model ``name`` (a registered vision preset) with timm-style keyword overrides."""
    registry_name, config, _ = _PRESETS[name]
    pretrained_cfg = kwargs.pop("pretrained_cfg", None)
    overlay = kwargs.pop("pretrained_cfg_overlay", None) or {}
    features_only = kwargs.pop("features_only", False)
    feature_args = {k: kwargs.pop(k) for k in ("out_indices", "output_fmt", "feature_cls") if k in kwargs}
    for ignored in ("cache_dir", "pretrained_strict"):
        if kwargs.pop(ignored, None):
            raise ValueError(f"{ignored} is not supported by {name}")
    overrides = {}
    if "global_pool" in kwargs:
        pool = kwargs.pop("global_pool")
        if pool not in _POOLS:
            raise ValueError(f"global_pool must be one of {sorted(_POOLS)}, got global_pool={pool!r}")
        overrides["pool"] = _POOLS[pool]
    fields = {f.name for f in dataclasses.fields(config)}
    for key, value in kwargs.items():
        field = _KWARG_FIELDS.get(key, key)
        if field not in fields:
            raise ValueError(f"{name} got an unknown keyword {key!r}; config fields are {sorted(fields)}")
        overrides[field] = tuple(value)[-1] if field == "image_size" and isinstance(value, (tuple, list)) else value
    model = CRATEClassifier(dataclasses.replace(config, **overrides))
    if hasattr(pretrained_cfg, "to_dict"):  # a timm PretrainedCfg
        pretrained_cfg = pretrained_cfg.to_dict()
    cfg = (pretrained_cfg if isinstance(pretrained_cfg, dict) else get_pretrained_cfg(name).to_dict()).copy()
    cfg.update(overlay)
    if pretrained:
        load_pretrained(model, name, cfg)
    cfg.update(num_classes=model.config.num_classes,
               input_size=(model.config.in_channels, model.config.image_size, model.config.image_size))
    model.pretrained_cfg = model.default_cfg = cfg
    if features_only:  # as timm's ViT: a getter over forward_intermediates, default the last 3 layers (fewer if shallower)
        from timm.models._features import FeatureGetterNet

        if feature_args.get("feature_cls", "getter") != "getter":
            raise ValueError(f"{name} supports feature_cls='getter' only, got {feature_args['feature_cls']!r}")
        return FeatureGetterNet(
            model, out_indices=feature_args.get("out_indices", min(3, model.config.depth)), output_fmt=feature_args.get("output_fmt", "NCHW")
        )
    return model


def _entrypoint(name: str):
    def create(pretrained: bool = False, **kwargs) -> CRATEClassifier:
        return build(name, pretrained=pretrained, **kwargs)

    create.__name__ = create.__qualname__ = name
    create.__module__ = __name__
    create.__doc__ = f"{_PRESETS[name][2]} (crate_core preset {_PRESETS[name][0]!r})"
    return create


for _name in _PRESETS:
    globals()[_name] = register_model(_entrypoint(_name))
