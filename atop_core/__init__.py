"""atop_core: the AToP method (Lin et al., ICLR 2024), its evaluation, tables and figures."""

from atop_core.config import PROFILES, get_profile, resolve_device, settings
from atop_core.data import DATASETS, eval_indices, load_dataset

__all__ = [
    "DATASETS",
    "PROFILES",
    "eval_indices",
    "get_profile",
    "load_dataset",
    "resolve_device",
    "settings",
]
