"""DePT: config and rank rule in :mod:`.config` (no torch), the model in :mod:`.model`."""

from .config import DePTConfig, dept_params, dept_rank

__all__ = ["DePTConfig", "dept_params", "dept_rank"]
