"""crate_vision: CRATE and CRATE-alpha image classifiers, timm registration, image data,
official-checkpoint converters and attention-map segmentation.

Importing it registers every vision preset in the crate_core registry (task "classify"; the CRATE
presets in ``models``, the ViT baselines in ``baselines``), so ``crate_core.create("crate-small-patch16-224")``
works, and in timm (``timm.create_model("crate_small_patch16_224", num_classes=10)``).
"""

from . import timm_models  # noqa: F401  registers the timm names
from .baselines import ViTClassifier, ViTClassifierConfig
from .models import CRATEClassifier, CRATEClassifierConfig, resize_pos_embed
from .official import load_official

__all__ = [
    "CRATEClassifier",
    "CRATEClassifierConfig",
    "ViTClassifier",
    "ViTClassifierConfig",
    "load_official",
    "resize_pos_embed",
]
__version__ = "0.1.0"
