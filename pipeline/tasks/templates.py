"""The templates of a task declaration: ``str.format`` strings over a row's fields and the
sandboxed Jinja of derived fields and per-row choices."""

from __future__ import annotations

import functools
import string
from typing import Any

from .readers import DataError, Row


def format_fields(key: str, template: str) -> tuple[str, ...]:
    """The field names a ``str.format`` template uses, in order (ValueError naming ``key`` for
    a syntax error or a positional ``{}`` / ``{0}``, which has no row field to take)."""
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None
    positional = [n for n in names if not n or n.split(".")[0].split("[")[0].isdigit()]
    if positional:
        raise ValueError(
            f"{key}: positional placeholder {{{positional[0]}}} has no field to take: name the "
            "row's field, e.g. {text}"
        )
    return tuple(dict.fromkeys(names))


def row_error(key: str, row: Row, source: str, exc: Exception) -> DataError:
    return DataError(
        f"{source}: line {row.get('_line', '?')}: {key}: failed on this row "
        f"({type(exc).__name__}: {exc})"
    )


@functools.cache
def jinja() -> Any:
    """The sandboxed Jinja environment of derived fields and choice templates: a name the row
    lacks is an error (StrictUndefined), not an empty string."""
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment(undefined=StrictUndefined)
