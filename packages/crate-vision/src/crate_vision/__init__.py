"""crate_vision: CRATE and CRATE-alpha image classifiers, timm registration, image data,
official-checkpoint converters and attention-map segmentation.

Importing it registers every vision preset in the crate_core registry (task "classify"; the CRATE
presets in ``models``, the ViT baselines in ``baselines``), so ``crate_core.create("crate-small-patch16-224")``
works, and in timm (``timm.create_model("crate_small_patch16_224", num_classes=10)``). timm takes
about two seconds to import, so it is not imported here: the timm names are registered now if timm is
already loaded, else right after the first ``import timm`` (a one-shot post-import hook).
"""

import importlib.abc
import importlib.util
import sys

from .baselines import ViTClassifier, ViTClassifierConfig
from .models import CRATEClassifier, CRATEClassifierConfig, resize_pos_embed
from .official import load_official
from .official_cbt import load_official_cbt


def _register_timm_names() -> None:
    from . import timm_models  # noqa: F401  registers the timm names


class _RegisterAfterTimmImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when timm is imported it lets the real loader run, then registers and
    leaves ``sys.meta_path``. A bare ``importlib.util.find_spec("timm")`` (an availability check that
    imports nothing) leaves it in place."""

    _looking = False

    def find_spec(self, name, path=None, target=None):
        if name != "timm" or self._looking:
            return None
        self._looking = True
        try:
            spec = importlib.util.find_spec("timm")
        finally:
            self._looking = False
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            run_timm = spec.loader.exec_module

            def exec_module(module):
                run_timm(module)
                if self in sys.meta_path:
                    sys.meta_path.remove(self)
                _register_timm_names()

            spec.loader.exec_module = exec_module
        return spec


if "timm" in sys.modules:
    _register_timm_names()
elif not any(isinstance(f, _RegisterAfterTimmImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterTimmImport())

__all__ = [
    "CRATEClassifier",
    "CRATEClassifierConfig",
    "ViTClassifier",
    "ViTClassifierConfig",
    "load_official",
    "load_official_cbt",
    "resize_pos_embed",
]
__version__ = "0.1.0"
