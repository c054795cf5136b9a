"""DePT: config and rank rule in :mod:`.config` (no torch), the model in :mod:`.model`."""

from ..registry import register_method
from .config import DePTConfig, dept_params, dept_rank


def _model() -> type:
    """The model class, imported on first use (it loads torch)."""
    from .model import DePT

    return DePT


register_method(DePTConfig, _model, label="DePT")

__all__ = ["DePTConfig", "dept_params", "dept_rank"]
