"""ADePT: config and rank rule in :mod:`.config` (no torch), the model in :mod:`.model`."""

from ..registry import register_method
from .config import ADePTConfig, adept_params, adept_rank


def _model() -> type:
    """The model class, imported on first use (it loads torch)."""
    from .model import ADePT

    return ADePT


register_method(ADePTConfig, _model, label="ADePT")

__all__ = ["ADePTConfig", "adept_params", "adept_rank"]
