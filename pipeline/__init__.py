"""The ADePT pipeline: methods, stages, tracking. ``from pipeline import load_adapter`` loads any
adapter it wrote onto a base model (imported on first use: the CLI starts without torch)."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name in ("load_adapter", "AdapterForCausalLM"):
        from .methods import loader

        return getattr(loader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["AdapterForCausalLM", "load_adapter"]
