"""
A parsed L{Query} to an SQLite statement suffix with bound parameters.

The suffix follows C{SELECT data FROM "<storage_name>"}.  A field is
addressed as C{json_extract(data, '$.<field>')} exactly, the expression the
storage indexes; every value is a bound parameter.

Semantics:

  - Missing fields and JSON nulls are both null.  A comparison on a null
    field does not match, except C{==null}, C{!=} and C{=out=}: "not
    hardware" includes records with no category.
  - Negation is two-valued: C{!(x)} matches exactly the records C{x} does
    not match (so C{!(price=gt=100)} includes records with no price).
  - C{ct}/C{sw}/C{ew} are case-sensitive and literal (C{instr}/C{substr},
    not C{LIKE}); an empty needle matches every non-null value.
  - C{regex} uses Python's C{re.search} through the C{regexp(pattern,
    value)} function that L{register_functions} installs.
  - On a list field, C{ct} means "has an element equal to the value".
  - Sorting puts nulls last ascending and first descending; C{rowid}
    (insertion order) breaks ties so pages are stable.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any

from yeti.fiql import And, Comparison, Node, Not, Or, Query
from yeti.schema import Field, Table

_NAME = re.compile(r"[_A-Za-z][_0-9A-Za-z]*\Z")
_SIMPLE = {"eq": "=", "gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def compile_query(table: Table, query: Query) -> tuple[str, list[Any]]:
    """
    Return C{(" WHERE ... ORDER BY ... LIMIT ? OFFSET ?", params)} for C{query}.

    @raise ValueError: if the query names a field C{table} does not have
        (the parser already refuses those).
    """
    params: list[Any] = []
    sql = ""
    if query.filter is not None:
        sql += " WHERE " + _node(table, query.filter, params)
    keys = [
        f"{_column(table, name)[0]} {'DESC NULLS FIRST' if desc else 'ASC NULLS LAST'}"
        for name, desc in query.sort
    ]
    sql += " ORDER BY " + ", ".join(keys + ["rowid"])
    if query.limit is not None:
        sql += " LIMIT ?"
        params.append(query.limit)
    elif query.offset:
        sql += " LIMIT -1"
    if query.offset:
        sql += " OFFSET ?"
        params.append(query.offset)
    return sql, params


def select_fields(record: dict[str, Any], select: tuple[str, ...] | None) -> dict[str, Any]:
    """Project C{record} on C{select} (all fields if None); absent fields are omitted."""
    if select is None:
        return dict(record)
    return {name: record[name] for name in select if name in record}


def register_functions(conn: sqlite3.Connection) -> None:
    """Install the SQL functions compiled filters use (C{regexp}) on C{conn}."""
    conn.create_function("regexp", 2, _regexp, deterministic=True)


def _regexp(pattern: Any, value: Any) -> int:
    """C{regexp(pattern, value)}: 1 if C{re.search} matches, 0 for null or non-text."""
    if not isinstance(value, str) or not isinstance(pattern, str):
        return 0
    try:
        return 1 if re.search(pattern, value) else 0
    except re.error:
        return 0


def _column(table: Table, name: str) -> tuple[str, Field]:
    """The SQL expression addressing field C{name}, and the field."""
    if not _NAME.match(name) or name not in table.fields:
        raise ValueError(f"not a field of {table.name}: {name!r}")
    return f"json_extract(data, '$.{name}')", table.fields[name]


def _bind(field: Field, value: Any) -> Any:
    """A Python value as SQLite compares it to C{json_extract}'s result."""
    if field.type == "Boolean":
        return int(bool(value))
    if field.type == "Float":
        return float(value)
    return value


def _node(table: Table, node: Node, params: list[Any]) -> str:
    if isinstance(node, And):
        return "(" + " AND ".join(_node(table, c, params) for c in node.children) + ")"
    if isinstance(node, Or):
        return "(" + " OR ".join(_node(table, c, params) for c in node.children) + ")"
    if isinstance(node, Not):
        return f"(NOT COALESCE({_node(table, node.child, params)}, 0))"
    return _comparison(table, node, params)


def _comparison(table: Table, node: Comparison, params: list[Any]) -> str:
    col, field = _column(table, node.field)
    op, value = node.op, node.value
    if value is None and op in ("eq", "ne"):
        return f"({col} IS {'NOT ' if op == 'ne' else ''}NULL)"
    if field.is_list:
        if op != "ct":
            raise ValueError(f"{op} is not supported on list field {node.field!r}")
        params.append(_bind(field, value))
        return (
            f"(EXISTS (SELECT 1 FROM json_each(data, '$.{node.field}') WHERE json_each.value = ?))"
        )
    if op in _SIMPLE:
        params.append(_bind(field, value))
        return f"({col} {_SIMPLE[op]} ?)"
    if op == "ne":
        params.append(_bind(field, value))
        return f"({col} IS NOT ?)"
    if op in ("in", "out"):
        params.extend(_bind(field, v) for v in value)
        marks = ", ".join("?" * len(value))
        if op == "in":
            return f"({col} IN ({marks}))"
        return f"({col} IS NULL OR {col} NOT IN ({marks}))"
    if op in ("gele", "gtlt"):
        params.extend(_bind(field, v) for v in value)
        low, high = (">=", "<=") if op == "gele" else (">", "<")
        return f"({col} {low} ? AND {col} {high} ?)"
    if op in ("ct", "sw", "ew") and value == "":
        return f"({col} IS NOT NULL)"
    if op == "ct":
        params.append(value)
        return f"(instr({col}, ?) > 0)"
    if op == "sw":
        params.extend([len(value), value])
        return f"(substr({col}, 1, ?) = ?)"
    if op == "ew":
        params.extend([-len(value), value])
        return f"(substr({col}, ?) = ?)"
    if op == "regex":
        params.append(value)
        return f"(regexp(?, {col}))"
    raise ValueError(f"unknown operator {op!r}")
