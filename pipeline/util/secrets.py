"""Values that must never be printed, logged or written: a secret-named key's value (a hub
token, a password) and the credentials inside a URI."""

from __future__ import annotations

from typing import Any

SECRET_WORDS = ("token", "password", "passwd", "secret", "key", "credential", "apikey")
REDACTED = "***"


def is_secret_key(key: str) -> bool:
    """Whether a key names a secret: one of its ``_``/``-`` separated words is a secret word
    (``hub_token``, ``api_key``), not merely contains one (``num_virtual_tokens``)."""
    words = key.lower().replace("-", "_").split("_")
    return any(word in SECRET_WORDS for word in words)


def redact(data: Any, key: str = "") -> Any:
    """Replace values whose key looks secret (token, password, key, ...) with ***, and the
    user:password part of URIs."""
    if isinstance(data, dict):
        return {k: redact(v, k) for k, v in data.items()}
    if data is not None and is_secret_key(key):
        return REDACTED
    if isinstance(data, str) and "://" in data and "@" in data.split("://", 1)[1].split("/")[0]:
        scheme, rest = data.split("://", 1)
        return f"{scheme}://{REDACTED}@{rest.split('@', 1)[1]}"
    return data


def secret_values(data: Any, secret: bool = False) -> set[str]:
    """Every text a message could show of a secret-named key's value, whatever its type: the
    value's ``str`` and ``repr`` and those of everything nested in it."""
    found: set[str] = set()
    if isinstance(data, dict):
        for key, value in data.items():
            found |= secret_values(value, secret or is_secret_key(str(key)))
    elif secret and data is not None:
        found |= {str(data), repr(data)}
        for item in data if isinstance(data, list | tuple | set) else ():
            found |= secret_values(item, True)
    return {text for text in found if len(text) >= 4}  # a 1-3 character "secret" would scrub noise


def scrub(message: str, data: Any) -> str:
    """``message`` with every secret value of ``data`` replaced by ***."""
    for text in sorted(secret_values(data), key=len, reverse=True):
        message = message.replace(text, REDACTED)
    return message
