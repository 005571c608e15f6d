"""
GraphQL SDL to table definitions.

A schema file holds object types; those marked C{@table} become L{Table}s.
The directives understood are those of C{schema-directives.md}: C{@table},
C{@export}, C{@primaryKey}, C{@indexed}, C{@createdTime}, C{@updatedTime}.
Anything else is a L{ConfigError} naming the file, line and problem.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from graphql import GraphQLError, parse
from graphql.language import (
    BooleanValueNode,
    DirectiveNode,
    IntValueNode,
    ListTypeNode,
    NamedTypeNode,
    NonNullTypeNode,
    ObjectTypeDefinitionNode,
    StringValueNode,
    TypeNode,
)

from yeti.errors import ConfigError

SCALARS = frozenset({"ID", "String", "Int", "Float", "Boolean"})

_TYPE_DIRECTIVES: dict[str, dict[str, type]] = {
    "table": {"database": str, "table": str, "expiration": int, "storage": str},
    "export": {"name": str, "rest": bool, "ws": bool, "sse": bool, "graphql": bool},
}
_FIELD_DIRECTIVES: dict[str, dict[str, type]] = {
    "primaryKey": {},
    "indexed": {"type": str},
    "createdTime": {},
    "updatedTime": {},
}


@dataclass(frozen=True)
class Field:
    """One field of a table."""

    name: str
    type: str
    required: bool = False
    is_list: bool = False
    item_required: bool = False
    primary_key: bool = False
    indexed: bool = False
    created_time: bool = False
    updated_time: bool = False


@dataclass(frozen=True)
class Table:
    """
    A table defined by a C{@table} type.

    @ivar name: the GraphQL type name, used for PubSub topics.
    @ivar path: the URL segment (C{@export(name:)} or the type name).
    @ivar database: the database the table is stored in.
    @ivar storage_name: the table's name inside its database.
    """

    name: str
    database: str
    storage_name: str
    path: str
    fields: dict[str, Field]
    primary_key: str
    exported: bool = False
    rest: bool = False
    ws: bool = False
    sse: bool = False
    graphql: bool = False
    expiration: int | None = None
    source: str = ""

    @property
    def indexed_fields(self) -> list[Field]:
        return [f for f in self.fields.values() if f.indexed and not f.primary_key]


@dataclass(frozen=True)
class InterfaceDefaults:
    """An application's default interface flags (C{rest}, C{ws}, ...)."""

    database: str
    rest: bool = True
    ws: bool = False
    sse: bool = False
    graphql: bool = False


@dataclass
class _Where:
    filename: str

    def error(self, node: Any, what: str) -> ConfigError:
        line = ""
        if node is not None and node.loc is not None:
            loc = node.loc.source.get_location(node.loc.start)
            line = f":{loc.line}"
        return ConfigError(f"{self.filename}{line}: {what}")


def parse_schema(text: str, filename: str, defaults: InterfaceDefaults) -> list[Table]:
    """
    Parse SDL C{text} into the tables it defines.

    @param filename: named in errors.
    @param defaults: the app's interface flags, overridden by C{@export}.
    @raise ConfigError: on a syntax error or a schema that cannot be served.
    """
    where = _Where(filename)
    try:
        document = parse(text)
    except GraphQLError as e:
        loc = f":{e.locations[0].line}" if e.locations else ""
        raise ConfigError(f"{filename}{loc}: {e.message}") from None
    tables: list[Table] = []
    seen: set[str] = set()
    for definition in document.definitions:
        if not isinstance(definition, ObjectTypeDefinitionNode):
            raise where.error(
                definition,
                f"unsupported definition ({definition.kind}); only object types are allowed",
            )
        name = definition.name.value
        if name in seen:
            raise where.error(definition, f"type {name} is defined twice")
        seen.add(name)
        table = _table(definition, where, defaults)
        if table is not None:
            tables.append(table)
    return tables


def _directive_args(
    directive: DirectiveNode, known: dict[str, dict[str, type]], where: _Where
) -> dict[str, Any]:
    name = directive.name.value
    if name not in known:
        raise where.error(directive, f"unknown directive @{name}")
    spec = known[name]
    args: dict[str, Any] = {}
    for arg in directive.arguments or ():
        key = arg.name.value
        if key not in spec:
            raise where.error(arg, f"unknown argument {key!r} of @{name}")
        want = spec[key]
        node = arg.value
        if want is str and isinstance(node, StringValueNode):
            args[key] = node.value
        elif want is bool and isinstance(node, BooleanValueNode):
            args[key] = node.value
        elif want is int and isinstance(node, IntValueNode):
            args[key] = int(node.value)
        else:
            raise where.error(arg, f"argument {key!r} of @{name} must be {want.__name__}")
    return args


def _table(
    node: ObjectTypeDefinitionNode, where: _Where, defaults: InterfaceDefaults
) -> Table | None:
    name = node.name.value
    directives: dict[str, dict[str, Any]] = {}
    for d in node.directives or ():
        if d.name.value in directives:
            raise where.error(d, f"@{d.name.value} given twice on {name}")
        directives[d.name.value] = _directive_args(d, _TYPE_DIRECTIVES, where)
    fields: dict[str, Field] = {}
    for f in node.fields or ():
        if f.name.value in fields:
            raise where.error(f, f"field {name}.{f.name.value} is defined twice")
        fields[f.name.value] = _field(f, name, where)
    if "table" not in directives:
        if "export" in directives:
            raise where.error(node, f"type {name} has @export but no @table")
        return None
    keys = [f for f in fields.values() if f.primary_key]
    if len(keys) != 1:
        raise where.error(
            node,
            f"table {name} needs exactly one @primaryKey field, found {len(keys)}",
        )
    key = keys[0]
    if key.is_list or key.type not in ("ID", "String", "Int"):
        raise where.error(node, f"primary key {name}.{key.name} must be ID, String or Int")
    for f in fields.values():
        if (f.created_time or f.updated_time) and (
            f.is_list or f.type not in ("String", "Int", "Float")
        ):
            raise where.error(
                node, f"timestamp field {name}.{f.name} must be String, Int or Float"
            )
    table_args = directives["table"]
    export = directives.get("export")
    exported = export is not None
    export = export or {}

    def flag(key: str) -> bool:
        return exported and bool(export.get(key, getattr(defaults, key)))

    return Table(
        name=name,
        database=table_args.get("database", defaults.database),
        storage_name=table_args.get("table", name),
        path=export.get("name", name),
        fields=fields,
        primary_key=key.name,
        exported=exported,
        rest=flag("rest"),
        ws=flag("ws"),
        sse=flag("sse"),
        graphql=flag("graphql"),
        expiration=table_args.get("expiration"),
        source=where.filename,
    )


def _field(node: Any, type_name: str, where: _Where) -> Field:
    fname = node.name.value
    required, is_list, item_required, scalar = _unwrap(node.type)
    if scalar not in SCALARS:
        raise where.error(node, f"field {type_name}.{fname} has unknown type {scalar}")
    flags: dict[str, Any] = {}
    for d in node.directives or ():
        _directive_args(d, _FIELD_DIRECTIVES, where)
        flags[d.name.value] = True
    return Field(
        name=fname,
        type=scalar,
        required=required,
        is_list=is_list,
        item_required=item_required,
        primary_key="primaryKey" in flags,
        indexed="indexed" in flags,
        created_time="createdTime" in flags,
        updated_time="updatedTime" in flags,
    )


def _unwrap(node: TypeNode) -> tuple[bool, bool, bool, str]:
    """Return (required, is_list, item_required, scalar name) of a field type."""
    required = isinstance(node, NonNullTypeNode)
    if isinstance(node, NonNullTypeNode):
        node = node.type
    if isinstance(node, ListTypeNode):
        inner = node.type
        item_required = isinstance(inner, NonNullTypeNode)
        if isinstance(inner, NonNullTypeNode):
            inner = inner.type
        if not isinstance(inner, NamedTypeNode):
            return required, True, item_required, "nested list"
        return required, True, item_required, inner.name.value
    assert isinstance(node, NamedTypeNode)
    return required, False, False, node.name.value
