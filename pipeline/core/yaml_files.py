"""Reading config YAML: the strict loader (util/strict_yaml.py: a key given twice is an error
naming both lines), ``--set KEY.PATH=VALUE`` overrides and the ``sweep:`` grid. No pipeline
types: the config model (:mod:`pipeline.core.config`) builds on it."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..util.errors import KeyPathError
from ..util.secrets import REDACTED, is_secret_key
from ..util.strict_yaml import load_yaml

# keys that moved: the error for the old key names the new one
RENAMED_KEYS = {
    "train.lr_prompt": "train.lr.prompt",
    "train.lr_offset": "train.lr.offset (train.lr.lora for LoRA)",
}


class ConfigError(ValueError):
    """A configuration problem; the message names the file and key path."""


def read_yaml(path: Path) -> Any:
    """A YAML file through the strict loader; bad YAML is a ConfigError naming the file."""
    try:
        return load_yaml(path.read_text())
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
    if any(is_secret_key(part) for part in key.split(".")):
        item = f"{key}={REDACTED}"  # what an error below shows of it
    try:
        value = load_yaml(raw) if raw.strip() else None
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


def _names_a_key_of(err: dict[str, Any]) -> bool:
    """A section validator's message that starts with ``field.key:`` (a dict entry's path)."""
    message = err["msg"].removeprefix("Value error, ")
    return message.startswith(f"{err['loc'][-1]}.") and ":" in message.split(" ")[0]


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(top level)"
        cause = err.get("ctx", {}).get("error")
        if isinstance(cause, KeyPathError):  # names its key path
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
        elif err["type"] == "value_error" and err["loc"] and _names_a_key_of(err):
            parent = ".".join(str(p) for p in err["loc"][:-1])  # "train" + "lr.prompt: …"
            lines.append(f"{parent}.{err['msg'].removeprefix('Value error, ')}".lstrip("."))
        elif err["type"] == "value_error" and not err["loc"]:
            lines.append(err["msg"].removeprefix("Value error, "))  # names its own key path
        else:
            lines.append(f"{path}: {err['msg'].removeprefix('Value error, ')}")
    return f"{source}: invalid config\n  " + "\n  ".join(lines)
