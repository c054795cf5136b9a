"""The base of every config section: unknown keys are errors, booleans are not numbers."""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

NUMBER_TYPES = (int, float, int | None, float | None)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _plain_finite_numbers(cls, value: Any, info) -> Any:
        """``steps: true`` is a mistake, not 1 (pydantic's lax mode would take it); NaN and
        infinity pass ``> 0`` checks and break a run minutes later."""
        if isinstance(value, bool) and cls.model_fields[info.field_name].annotation in NUMBER_TYPES:
            raise ValueError(f"expected a number, got {str(value).lower()}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"must be a finite number, got {value}")
        for key, item in value.items() if isinstance(value, dict) else ():
            if isinstance(item, float) and not math.isfinite(item):
                raise ValueError(f"{info.field_name}.{key}: must be a finite number, got {item}")
        return value
