"""atop_core: the AToP method (Lin et al., ICLR 2024), its evaluation, tables and figures."""

from atop_core.config import PROFILES, TransformConfig, get_profile, resolve_device, settings
from atop_core.data import DATASETS, eval_indices, load_dataset
from atop_core.defense import DefendedModel, load_defense
from atop_core.pipeline import train_chain
from atop_core.transforms import RandomTransform
from atop_core.user_defense import ModuleDefense, evaluate

__all__ = [
    "DATASETS",
    "PROFILES",
    "DefendedModel",
    "ModuleDefense",
    "RandomTransform",
    "TransformConfig",
    "eval_indices",
    "evaluate",
    "get_profile",
    "load_dataset",
    "load_defense",
    "resolve_device",
    "settings",
    "train_chain",
]
