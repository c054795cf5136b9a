"""YAML as the pipeline reads it: the safe loader, refusing a key given twice in one mapping
(plain YAML keeps the last one silently: a second ``train:`` block would replace the first)."""

from __future__ import annotations

from typing import Any

import yaml


class UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader; a key that appears twice is an error naming both lines."""

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


def load_yaml(text: str) -> Any:
    """Parse ``text`` (yaml.YAMLError for bad YAML and for a key given twice)."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader subclass
