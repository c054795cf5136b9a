"""The method registry: one entry per method, added by the method's own config module.

Adding a method = a config class and a model class and one :func:`register_method` call (HF
PEFT's ``register_peft_method`` is the model); each built-in method's package ``__init__``
registers its torch-free ``config.py`` class and names its ``model.py`` class through a function,
so validating a config imports no torch. The pipeline finds a
method only through here: the YAML ``method:`` section is validated against the chosen method's
config class (a key the method does not have is an error naming it), adapters are loaded back by
the method name they record, and reports take the method's label from here. Methods outside this
package are imported through the config's ``plugins:`` list.
"""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError

from ..util.errors import KeyPathError
from .base import MethodConfig


class MethodConfigError(KeyPathError):
    """A YAML ``method:`` section does not fit the chosen method; names the key."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key, self.reason = key, reason


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config_class: type[MethodConfig]
    load_model_class: Callable[[], type]
    label: str
    module: str
    """The module that registers the method (imported again to load an adapter of a plugin)."""

    @property
    def model_class(self) -> type:
        """The method's module class (its file imports torch: loaded on first use)."""
        model_class = self.load_model_class()
        model_class.config_class = self.config_class
        return model_class


_METHODS: dict[str, MethodSpec] = {}


def register_method(
    config_class: type[MethodConfig], model_class: type | Callable[[], type], label: str
) -> MethodSpec:
    """Make ``config_class.method`` a method name the pipeline knows (call it at import time).
    ``model_class``: the module class, or a function returning it, so that a config file can
    register its method without importing torch."""
    name = config_class.method
    if not name:
        raise ValueError(f"{config_class.__name__}.method must name the method")
    known = _METHODS.get(name)
    if known is not None and known.config_class is not config_class:
        raise ValueError(f"method {name!r} is already registered by {known.module}")
    if isinstance(model_class, type):  # a plugin module that defines both classes
        spec = MethodSpec(name, config_class, lambda: model_class, label, model_class.__module__)
    else:
        spec = MethodSpec(name, config_class, model_class, label, config_class.__module__)
    _METHODS[name] = spec
    return spec


def method_names() -> list[str]:
    return list(_METHODS)


def get_method(name: str, module: str | None = None) -> MethodSpec:
    """The registered method ``name``; ``module`` (recorded in adapters) is imported first when
    the method is not registered yet."""
    if name not in _METHODS and module:
        importlib.import_module(module)
    if name not in _METHODS:
        raise MethodConfigError(
            "method.name", f"unknown method {name!r}; known: {', '.join(method_names())}"
        )
    return _METHODS[name]


@functools.cache
def _adapter(config_class: type[MethodConfig]) -> TypeAdapter:
    return TypeAdapter(config_class)


def config_from_section(section: dict[str, Any], seed: int = 42) -> MethodConfig:
    """Validate a YAML ``method:`` section (``name`` plus the method's options)."""
    values = dict(section)
    spec = get_method(values.pop("name", "adept"))
    allowed = spec.config_class.option_names()
    for key, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise MethodConfigError(f"method.{key}", f"must be a finite number, got {value}")
        if key in spec.config_class.renamed_options:
            new = spec.config_class.renamed_options[key]
            raise MethodConfigError(f"method.{key}", f"renamed to method.{new}")
        if key not in allowed:
            raise MethodConfigError(
                f"method.{key}",
                f"method {spec.name!r} has no option {key!r} (its options: {', '.join(allowed)})",
            )
    try:
        return _adapter(spec.config_class).validate_python({**values, "seed": seed})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in ("method", *err["loc"]))
        raise MethodConfigError(where, err["msg"].removeprefix("Value error, ")) from None


def section_from_config(config: MethodConfig) -> dict[str, Any]:
    """The YAML ``method:`` section of a config (the inverse of :func:`config_from_section`)."""
    data = config.to_dict()
    return {"name": config.method, **{k: data[k] for k in config.option_names()}}


def config_from_dict(data: dict[str, Any], module: str | None = None) -> MethodConfig:
    """Rebuild a method config from :meth:`MethodConfig.to_dict` output (adapter files)."""
    data = dict(data)
    spec = get_method(data.pop("method", None), module)
    return spec.config_class(**data)


def wrap(
    base: Any,
    config: MethodConfig,
    tokenizer: Any = None,
    register_base: bool = True,
    shared_prefix: bool = True,
):
    """Wrap ``base`` with the method named by ``config``.

    ``register_base=False`` keeps the base out of ``parameters()``/``state_dict()``, so an engine
    wrapping this module (DeepSpeed with an 8-bit base) owns only the adapter.
    ``shared_prefix``: compute the prompt's keys/values once per batch where that is exact.
    """
    return get_method(config.method).model_class(
        base,
        config,
        tokenizer=tokenizer,
        register_base=register_base,
        shared_prefix=shared_prefix,
    )
