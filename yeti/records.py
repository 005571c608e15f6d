"""
Records against their table's schema.

L{validate_record} checks a client's JSON object field by field and returns a
clean copy; L{stamp} fills C{@createdTime}/C{@updatedTime} fields. Messages
are safe to send to clients and name the field at fault.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from yeti.errors import ValidationError
from yeti.schema import Field, Table

_INT_MIN = -(2**63)
_INT_MAX = 2**63 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)
_INT_TEXT = re.compile(r"-?[0-9]{1,19}")
_ARTICLE = {"ID": "an", "Int": "an"}

MAX_KEY_BYTES = 512
"""The longest primary key, in UTF-8 bytes: it must fit in a URL."""
_DOT_KEYS = frozenset({".", ".."})


class _Invalid(Exception):
    """A value does not fit its type; the caller names the field."""


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _expected(type_name: str, value: Any) -> _Invalid:
    article = _ARTICLE.get(type_name, "a")
    return _Invalid(f"must be {article} {type_name}, got {_json_type(value)}")


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise _expected("String", value)
    if "\x00" in value:
        raise _Invalid("must not contain a NUL character")
    return value


def _id(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise _expected("ID", value)
    return _string(value)


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _expected("Int", value)
    if not _INT_MIN <= value <= _INT_MAX:
        raise _Invalid("is out of range for Int (signed 64-bit)")
    return value


def _float(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _expected("Float", value)
    if isinstance(value, float) and not math.isfinite(value):
        raise _Invalid("must be a finite Float")
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _expected("Boolean", value)
    return value


_SCALARS: dict[str, Callable[[Any], Any]] = {
    "ID": _id,
    "String": _string,
    "Int": _int,
    "Float": _float,
    "Boolean": _boolean,
}


def _value(field: Field, value: Any) -> Any:
    """Check one field's value, returning it converted (ID ints become strings)."""
    name = field.name
    if value is None:
        if field.required or field.primary_key:
            raise ValidationError(f"field '{name}' may not be null")
        return None
    check = _SCALARS[field.type]
    if not field.is_list:
        try:
            checked = check(value)
        except _Invalid as e:
            raise ValidationError(f"field '{name}' {e}") from None
        if field.primary_key:
            problem = _key_problem(str(checked))
            if problem is not None:
                raise ValidationError(f"field '{name}' (the primary key) {problem}")
        return checked
    if not isinstance(value, list):
        raise ValidationError(
            f"field '{name}' must be a list of {field.type}, got {_json_type(value)}"
        )
    items: list[Any] = []
    for i, item in enumerate(value):
        if item is None:
            if field.item_required:
                raise ValidationError(f"field '{name}[{i}]' may not be null")
            items.append(None)
            continue
        try:
            items.append(check(item))
        except _Invalid as e:
            raise ValidationError(f"field '{name}[{i}]' {e}") from None
    return items


def validate_record(table: Table, value: Any, *, partial: bool = False) -> dict:
    """
    Check C{value} against C{table}'s fields and return a new, clean dict.

    Unknown fields are rejected. Missing required fields are rejected unless
    C{partial} (a PATCH), except the primary key (the caller assigns one) and
    timestamp fields (L{stamp} fills them). The caller checks that a PATCH
    does not change the primary key.

    @raise ValidationError: naming the first field at fault.
    """
    if not isinstance(value, dict):
        raise ValidationError("record must be a JSON object")
    record: dict[str, Any] = {}
    for name, item in value.items():
        field = table.fields.get(name) if isinstance(name, str) else None
        if field is None:
            raise ValidationError(f"unknown field {_quoted(name)}")
        record[name] = _value(field, item)
    if not partial:
        for field in table.fields.values():
            if (
                field.required
                and field.name not in record
                and not (field.primary_key or field.created_time or field.updated_time)
            ):
                raise ValidationError(f"missing required field '{field.name}'")
    return record


def _quoted(name: Any) -> str:
    text = repr(str(name))
    return text if len(text) <= 66 else text[:63] + "...'"


def _timestamp(field: Field, now: datetime) -> str | int | float:
    elapsed = now - _EPOCH
    if field.type == "Int":
        return elapsed // _MILLISECOND
    if field.type == "Float":
        return elapsed / _MILLISECOND
    utc = now.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def stamp(table: Table, record: dict, now: datetime, *, created: bool) -> dict:
    """
    Return a copy of C{record} with its timestamp fields set to C{now}.

    C{@updatedTime} fields are always set, C{@createdTime} fields only when
    C{created}. String fields get ISO 8601 UTC with milliseconds
    (C{2025-01-15T10:30:00.123Z}), Int fields epoch milliseconds, Float fields
    fractional epoch milliseconds.

    @param now: a timezone-aware time.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("stamp() needs a timezone-aware datetime")
    stamped = dict(record)
    for field in table.fields.values():
        if field.updated_time or (created and field.created_time):
            stamped[field.name] = _timestamp(field, now)
    return stamped


def new_key() -> str:
    """A fresh primary key: a random UUID string."""
    return str(uuid.uuid4())


def _key_problem(text: str) -> str | None:
    """
    Why C{text} cannot be a primary key, or None.

    A key must be addressable as one URL path segment: not empty, not C{.}
    or C{..} (clients normalise those away), at most L{MAX_KEY_BYTES}.
    """
    if text == "":
        return "may not be empty"
    if text in _DOT_KEYS:
        return f"may not be {text!r}"
    if len(text.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        return f"is longer than {MAX_KEY_BYTES} bytes"
    return None


def key_from_path(table: Table, text: str) -> str | int:
    """
    Convert an id taken from a URL to the table's primary key type.

    @raise ValidationError: for an empty id, C{.} or C{..}, an id longer than
        L{MAX_KEY_BYTES}, an id with a NUL character, or a non-integer id of an
        C{Int} primary key.
    """
    if "\x00" in text:
        raise ValidationError("the record id must not contain a NUL character")
    problem = _key_problem(text)
    if problem is not None:
        raise ValidationError(f"the record id {problem}")
    if table.fields[table.primary_key].type != "Int":
        return text
    if _INT_TEXT.fullmatch(text):
        key = int(text)
        if _INT_MIN <= key <= _INT_MAX:
            return key
    raise ValidationError(f"record id {_quoted(text)} is not a valid Int")
