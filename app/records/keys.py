"""Entity keys' string form (docs/product.md): one field's value as it is; a composite key's values
in key order joined by ``|``, each ``|`` or ``\\`` inside a value escaped with ``\\``. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

SEPARATOR = "|"
ESCAPE = "\\"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)  # an int in decimal


def key_string(values: Sequence[Any]) -> str:
    """The string form of a key from its values (str or int), in key order."""
    if len(values) == 1:
        return _text(values[0])
    return SEPARATOR.join(
        _text(v).replace(ESCAPE, ESCAPE + ESCAPE).replace(SEPARATOR, ESCAPE + SEPARATOR) for v in values
    )


def key_of(fields: Mapping[str, Any], key: tuple[str, ...]) -> str | None:
    """The string form of an event's key ``key`` (field names), None when a value is missing,
    null or empty (the event does not feed that key's groups)."""
    values = []
    for name in key:
        value = fields.get(name)
        if value is None or value == "":
            return None
        values.append(value)
    return key_string(values)


def split_key(text: str, size: int) -> list[str]:
    """The values of a key string of ``size`` fields (as strings); ValueError when it has another
    number of values or ends in an escape."""
    if size == 1:
        return [text]
    values, current, chars = [], [], iter(text)
    for char in chars:
        if char == ESCAPE:
            escaped = next(chars, None)
            if escaped is None:
                raise ValueError(f"key {text!r} ends with an unfinished escape {ESCAPE!r}")
            current.append(escaped)
        elif char == SEPARATOR:
            values.append("".join(current))
            current = []
        else:
            current.append(char)
    values.append("".join(current))
    if len(values) != size:
        raise ValueError(f"key {text!r} has {len(values)} values; the key has {size} fields")
    return values
