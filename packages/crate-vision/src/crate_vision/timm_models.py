"""timm registration: ``import crate_vision`` makes ``timm.create_model("crate_small_patch16_224")``
(and every other vision preset, "-" spelled "_") build a CRATEClassifier.

Only timm's public API is used (``register_model``, ``generate_default_cfgs``, ``get_pretrained_cfg``).
There are no hub weights: convert an official checkpoint with ``python -m crate_vision.convert`` and
pass ``checkpoint_path=OUT/model.safetensors`` to ``timm.create_model``.
"""

from __future__ import annotations

import dataclasses

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs, get_pretrained_cfg, register_model

from .models import CRATEClassifier, preset_configs

# timm keyword -> our config field (timm spells these the same way for every model)
_KWARG_FIELDS = {"num_classes": "num_classes", "img_size": "image_size", "in_chans": "in_channels",
                 "drop_rate": "dropout", "patch_size": "patch_size"}
_POOLS = {"token": "cls", "cls": "cls", "avg": "mean", "mean": "mean"}


def timm_name(name: str) -> str:
    return name.replace("-", "_")


def _pretrained_cfg(config, description: str) -> dict:
    size = config.image_size
    return dict(
        url="",
        num_classes=config.num_classes,
        input_size=(config.in_channels, size, size),
        pool_size=None,
        crop_pct=0.875,  # resize 256 -> center crop 224
        interpolation="bicubic",
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        first_conv="patch_embed.proj",
        classifier="head",
        license="mit",
        description=description,
    )


_PRESETS = {timm_name(n): (n, c, d) for n, (c, d) in preset_configs().items()}
default_cfgs = generate_default_cfgs({t: _pretrained_cfg(c, d) for t, (_, c, d) in _PRESETS.items()})


def build(name: str, pretrained: bool = False, **kwargs) -> CRATEClassifier:
    """Build timm model ``name`` (a registered vision preset) with timm-style keyword overrides."""
    registry_name, config, _ = _PRESETS[name]
    if pretrained:
        raise ValueError(
            f"no downloadable weights for {name!r}: convert an official checkpoint with "
            "`python -m crate_vision.convert SRC OUT` and pass checkpoint_path='OUT/model.safetensors'"
        )
    pretrained_cfg = kwargs.pop("pretrained_cfg", None)
    overlay = kwargs.pop("pretrained_cfg_overlay", None) or {}
    for ignored in ("cache_dir", "pretrained_strict", "features_only"):
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
    cfg = (pretrained_cfg if isinstance(pretrained_cfg, dict) else get_pretrained_cfg(name).to_dict()).copy()
    cfg.update(overlay)
    cfg.update(num_classes=model.config.num_classes,
               input_size=(model.config.in_channels, model.config.image_size, model.config.image_size))
    model.pretrained_cfg = model.default_cfg = cfg
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
