"""ADePT: config and rank rule in :mod:`.config` (no torch), the model in :mod:`.model`."""

from .config import ADePTConfig, adept_params, adept_rank

__all__ = ["ADePTConfig", "adept_params", "adept_rank"]
