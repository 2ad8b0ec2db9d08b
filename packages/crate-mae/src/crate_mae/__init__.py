"""crate_mae: CRATE-MAE masked autoencoders (CRATE encoder + structured-diffusion decoder),
masking, 2-D sin-cos positions, the official-weight converter, a ViT-MAE baseline and a linear probe.

Importing the package registers the presets (family and task "mae"): crate-mae-{tiny,small,base,large},
crate-mae-nano (CPU), crate-mae-tiny-test, tost-mae-tiny-test, and the ViT-MAE baselines
vit-mae-{tiny,small,base,large,nano,tiny-test} of the same width and depth. Both models share the
skeleton ``MaskedAutoencoder`` (mask, encode, decode, masked MSE, features).
"""

from .baseline import ViTMAE, ViTMAEConfig
from .common import MAEOutput, MaskedAutoencoder
from .decoder import CRATEDecoder, CRATEDecoderLayer, DecoderLayerOutputs
from .masking import Masking, patchify, random_masking, unpatchify
from .model import CRATEMAE, CRATEMAEConfig
from .official import convert_official_state_dict, load_official
from .pos_embed import sincos_2d

__all__ = [
    "CRATEMAE",
    "CRATEMAEConfig",
    "ViTMAE",
    "ViTMAEConfig",
    "MAEOutput",
    "MaskedAutoencoder",
    "CRATEDecoder",
    "CRATEDecoderLayer",
    "DecoderLayerOutputs",
    "Masking",
    "random_masking",
    "patchify",
    "unpatchify",
    "sincos_2d",
    "convert_official_state_dict",
    "load_official",
]
