"""crate_core: the CRATE layer (MSSA + ISTA), rate-reduction measures, registry and shared tooling."""

from . import rate
from .cbsa import CBSA, CBSAStack
from .hub import from_pretrained, push_to_hub, save_pretrained
from .ista import ISTA, OvercompleteISTA
from .layer import CRATELayer, CRATEStack, LayerOutputs, WCache
from .mssa import MSSA, PastW
from .official import load_official
from .registry import UnknownModelError, create, get_config, list_models, register
from .stacks import build_stack, register_stack
from .tost import TSSA, ToSTStack
from .trunk import TrunkConfig

__all__ = [
    "MSSA",
    "ISTA",
    "OvercompleteISTA",
    "CRATELayer",
    "CRATEStack",
    "LayerOutputs",
    "WCache",
    "PastW",
    "TrunkConfig",
    "rate",
    "register",
    "create",
    "get_config",
    "list_models",
    "UnknownModelError",
    "save_pretrained",
    "from_pretrained",
    "push_to_hub",
    "load_official",
    "build_stack",
    "register_stack",
    "TSSA",
    "ToSTStack",
    "CBSA",
    "CBSAStack",
]
__version__ = "0.1.0"
