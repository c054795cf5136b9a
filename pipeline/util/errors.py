"""Errors shared by the layers that check a config (its methods, its tasks, the schema)."""

from __future__ import annotations


class KeyPathError(ValueError):
    """A mistake whose message already starts with the config key path it is about (e.g.
    ``method.rank: must be ≥ 1``); the config error lists it as it is."""
