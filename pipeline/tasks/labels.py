"""A classification task's label: which field holds it and how its values map to choices."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from .sources import Strict

FieldNames = str | list[str]  # a field's name, or names of which the first present is used


def label_key(value: Any) -> str:
    """Label values compare as text: JSON ``true``, TSV ``"True"`` and YAML ``True`` agree."""
    return str(value).strip()


class Label(Strict):
    field: FieldNames = Field(description="The label's field (the first of a list present).")
    map: dict[str, int] | None = Field(
        None, description="Raw value (as text) → choice index; absent: the value is the index."
    )
    round: bool = Field(False, description="Round a numeric value to the nearest index.")

    @model_validator(mode="before")
    @classmethod
    def _text_keys(cls, data: Any) -> Any:
        """Keys become the text a row's label is compared as; two keys that become the same
        text, a null key and a yes/no value are mistakes, not a silent last-one-wins."""
        if not (isinstance(data, dict) and isinstance(data.get("map"), dict)):
            return data
        keys: dict[str, Any] = {}
        for raw, index in data["map"].items():
            if raw is None:
                raise ValueError("label.map: a null key is not a label value (quote it: 'null')")
            if isinstance(index, bool):
                raise ValueError(f"label.map: {raw!r}: {index} is not a choice index (0, 1, …)")
            key = label_key(raw)
            if key in keys:
                raise ValueError(
                    f"label.map: keys {keys[key]!r} and {raw!r} are the same label once "
                    f"compared as text ({key!r}): give each label once"
                )
            keys[key] = raw
        return {**data, "map": {label_key(k): v for k, v in data["map"].items()}}
