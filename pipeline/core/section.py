"""The base of every config section: unknown keys are errors, booleans are not numbers."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

NUMBER_TYPES = (int, float, int | None, float | None)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info) -> Any:
        """``steps: true`` is a mistake, not 1 (pydantic's lax mode would take it)."""
        if isinstance(value, bool) and cls.model_fields[info.field_name].annotation in NUMBER_TYPES:
            raise ValueError(f"expected a number, got {str(value).lower()}")
        return value
