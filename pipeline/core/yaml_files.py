"""Reading config YAML: a strict loader (a key given twice is an error naming both lines),
``--set KEY.PATH=VALUE`` overrides and the ``sweep:`` grid. No pipeline types: the config
model (:mod:`pipeline.core.config`) builds on it."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..methods import MethodConfigError
from ..tasks import TaskDeclarationError

# keys that moved: the error for the old key names the new one
RENAMED_KEYS = {
    "train.lr_prompt": "train.lr.prompt",
    "train.lr_offset": "train.lr.offset (train.lr.lora for LoRA)",
}


class ConfigError(ValueError):
    """A configuration problem; the message names the file and key path."""


class UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader, refusing a key that appears twice in one mapping (plain YAML keeps the
    last silently: a second ``train:`` block would replace the first)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (lines {seen[key]} and {line})"
                )
            seen[key] = line
        return super().construct_mapping(node, deep)


def read_yaml(path: Path) -> Any:
    """A YAML file through :class:`UniqueKeyLoader`; bad YAML is a ConfigError naming the file."""
    try:
        return yaml.load(path.read_text(), Loader=UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b=value`` → (['a', 'b'], YAML-parsed value)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY.PATH=VALUE")
    key, raw = item.split("=", 1)
    if not key.strip():
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = yaml.load(raw, Loader=UniqueKeyLoader) if raw.strip() else None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"--set {item!r}: the value is not valid YAML ({problem})") from None
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a section")
        node[path[-1]] = value
    return data


def sweep_variants(sweep: dict[str, list[Any]] | None) -> list[list[str]]:
    """The grid of a ``sweep:`` section as ``--set`` override lists, in YAML key order."""
    if not sweep:
        return [[]]
    for key, values in sweep.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep.{key}: expected a non-empty list of values")
    keys = list(sweep)
    return [
        [f"{k}={json.dumps(v)}" for k, v in zip(keys, combo, strict=True)]
        for combo in itertools.product(*(sweep[k] for k in keys))
    ]


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(top level)"
        cause = err.get("ctx", {}).get("error")
        if isinstance(cause, MethodConfigError | TaskDeclarationError):  # names its key path
            lines.append(str(cause))
        elif err["type"] == "extra_forbidden" and path in RENAMED_KEYS:
            lines.append(f"{path}: renamed to {RENAMED_KEYS[path]}")
        elif err["type"] == "extra_forbidden":
            lines.append(f"{path}: unknown key")
        elif err["type"] in (
            "float_parsing",
            "int_parsing",
            "bool_parsing",
            "float_type",
            "int_type",
            "bool_type",
            "string_type",
        ):
            expected = err["type"].split("_")[0].replace("string", "str")
            lines.append(f"{path}: expected {expected}, got {err.get('input')!r}")
        elif err["type"] == "value_error" and not err["loc"]:
            lines.append(err["msg"].removeprefix("Value error, "))  # names its own key path
        else:
            lines.append(f"{path}: {err['msg'].removeprefix('Value error, ')}")
    return f"{source}: invalid config\n  " + "\n  ".join(lines)
