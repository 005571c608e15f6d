"""
REST list query strings to a L{Query}: FIQL filter, sort, limit, offset, select.

The raw query string (undecoded, after C{?}) is split at top-level C{&}
(outside parentheses) into parts.  A part C{limit=}, C{offset=}, C{sort=},
C{select=}, C{filter=} or C{stream=} (the name then one C{=} not followed by
another C{=}), or a function-style C{limit(...)}, C{sort(...)},
C{select(...)}, is a parameter; all other parts, re-joined with C{&}, form one
FIQL expression, ANDed with the value of C{filter=}.

Decisions where the reference documentation is silent:

  - Structure is found on the raw text; field names and values are then
    percent-decoded as UTF-8 (invalid UTF-8 is an error).  C{+} is a literal
    plus, not a space.  Reserved characters inside a value (C{& ; | , ( )})
    must be percent-encoded; an encoded C{%2A} is a literal C{*}.
  - C{==} wildcards: C{a*} is C{sw}, C{*a} C{ew}, C{*a*} C{ct}; any other
    placement of C{*} becomes an anchored C{regex} where C{*} matches any
    run of characters.  Wildcards need a String or ID field.  C{!=} with a
    wildcard is the negation of the same match.  C{===} never treats C{*}
    or C{null} specially.
  - C{==null} / C{!=null} mean "is null" / "is not null" (missing counts as
    null); C{===null} on a String field matches the string C{"null"}.
  - Values of C{=in=}/C{=out=} are comma separated, optionally in
    parentheses.  Without parentheses the list ends at the first item that
    itself looks like a comparison (C{a=in=x,y,b==1} is C{a in (x,y) OR
    b==1}).  C{=gele=}/C{=gtlt=} take exactly two values.
  - List fields accept only C{==}/C{=ct=} ("contains element", op C{ct})
    and C{==null}/C{!=null}; anything else is an error.
  - Ordering operators are refused on Boolean fields.
  - C{=ft=} (full-text search) is refused as not supported.
  - C{limit(n)} is a count; C{limit(offset,count)} as in the docs.
  - Unknown select fields are an error (the reference ignores them).
  - Each parameter may be given once.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

from yeti.errors import FiqlError
from yeti.schema import Field, Table

MAX_COMPARISONS = 100
MAX_VALUES = 1000
MAX_DEPTH = 32
MAX_REGEX = 256
INT_MIN = -(2**63)
INT_MAX = 2**63 - 1

_INT = re.compile(r"[+-]?[0-9]{1,19}\Z")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")
_PARAM = re.compile(r"(limit|offset|sort|select|filter|stream)=(?!=)(.*)\Z", re.S)
_FUNCTION = re.compile(r"(limit|sort|select)\(([^()]*)\)\Z", re.S)
_SELECTOR = re.compile(r"[^=!<>()&;|,]+")
_VALUE = re.compile(r"[^&;|,()]*")
_NAMED_OP = re.compile(r"=([A-Za-z~]*)=")
_LOOKS_LIKE_TERM = re.compile(r"!?\(|[^=!<>()&;|,]+(?:=[A-Za-z~]*=|!=|[<>])")

_SYMBOL_OPS = (
    ("===", "strict"),
    ("==", "eq"),
    ("!=", "ne"),
    (">=", "ge"),
    ("<=", "le"),
    (">", "gt"),
    ("<", "lt"),
)
_NAMED_OPS = {
    "gt": "gt",
    "ge": "ge",
    "lt": "lt",
    "le": "le",
    "in": "in",
    "out": "out",
    "ct": "ct",
    "sw": "sw",
    "ew": "ew",
    "~": "regex",
    "gele": "gele",
    "gtlt": "gtlt",
}
_MULTI = frozenset({"in", "out", "gele", "gtlt"})
_TEXT_OPS = frozenset({"ct", "sw", "ew", "regex"})
_ORDER_OPS = frozenset({"gt", "ge", "lt", "le", "gele", "gtlt"})


@dataclass(frozen=True)
class Comparison:
    """C{field op value}; C{value} is coerced, a tuple for in/out/gele/gtlt."""

    field: str
    op: str
    value: Any


@dataclass(frozen=True)
class And:
    """All children match."""

    children: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    """Any child matches."""

    children: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    """The child does not match (a comparison on a null field does not match)."""

    child: Node


Node = Comparison | And | Or | Not


@dataclass(frozen=True)
class Query:
    """A parsed list request."""

    filter: Node | None = None
    sort: tuple[tuple[str, bool], ...] = ()
    limit: int | None = None
    offset: int = 0
    select: tuple[str, ...] | None = None
    stream: str | None = None


def parse_query(table: Table, raw_query: str) -> Query:
    """
    Parse the undecoded query string of a list request on C{table}.

    @raise FiqlError: for anything that is not a valid query.
    """
    if not isinstance(raw_query, str):
        raise FiqlError("query string must be text")
    budget = _Budget()
    params: dict[str, Any] = {}
    fiql_parts: list[str] = []
    filter_node: Node | None = None
    for part in _split_top_level(raw_query):
        if not part:
            continue
        param = _PARAM.match(part)
        function = None if param else _FUNCTION.match(part)
        if param is None and function is None:
            fiql_parts.append(part)
            continue
        name, text = (param or function).group(1, 2)  # type: ignore[union-attr]
        if name in params:
            raise FiqlError(f"parameter {name!r} given more than once")
        if name == "limit" and function is not None and "," in text:
            if "offset" in params:
                raise FiqlError("parameter 'offset' given more than once")
            first, _, count = text.partition(",")
            params["offset"] = _integer("limit() offset", first, 0)
            params[name] = _integer("limit() count", count, 0)
        elif name == "limit":
            params[name] = _integer(name, text, 0)
        elif name == "offset":
            params[name] = _integer(name, text, 0)
        elif name == "sort":
            params[name] = _sort(table, text)
        elif name == "select":
            params[name] = _select(table, text)
        elif name == "filter":
            params[name] = True
            filter_node = _Parser(table, text, budget).parse()
        else:
            params[name] = _decode(text)
    node: Node | None = None
    if fiql_parts:
        node = _Parser(table, "&".join(fiql_parts), budget).parse()
    if node is not None and filter_node is not None:
        node = _and([node, filter_node])
    elif filter_node is not None:
        node = filter_node
    return Query(
        filter=node,
        sort=params.get("sort", ()),
        limit=params.get("limit"),
        offset=params.get("offset", 0),
        select=params.get("select"),
        stream=params.get("stream"),
    )


def parse_filter(table: Table, text: str) -> Node:
    """
    Parse a FIQL expression alone (no parameters) against C{table}.

    @raise FiqlError: for anything that is not a valid filter.
    """
    if not isinstance(text, str):
        raise FiqlError("filter must be text")
    return _Parser(table, text, _Budget()).parse()


def _split_top_level(raw: str) -> list[str]:
    """Split at C{&} outside parentheses."""
    parts: list[str] = []
    depth = 0
    start = 0
    for i, char in enumerate(raw):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "&" and depth == 0:
            parts.append(raw[start:i])
            start = i + 1
    parts.append(raw[start:])
    return parts


def _decode(text: str) -> str:
    """Percent-decode C{text} as UTF-8; C{+} stays a plus."""
    try:
        return unquote_to_bytes(text).decode("utf-8")
    except UnicodeError:
        raise FiqlError("query is not valid UTF-8 after percent-decoding") from None


def _show(text: str) -> str:
    """A short, quoted excerpt of client text for an error message."""
    return repr(text if len(text) <= 40 else text[:40] + "...")


def _integer(what: str, text: str, minimum: int) -> int:
    value = _decode(text)
    if not _INT.match(value):
        raise FiqlError(f"{what} must be an integer, got {_show(value)}")
    number = int(value)
    if not minimum <= number <= INT_MAX:
        raise FiqlError(f"{what} must be between {minimum} and {INT_MAX}")
    return number


def _field(table: Table, raw: str, what: str) -> Field:
    name = _decode(raw)
    field = table.fields.get(name)
    if field is None:
        raise FiqlError(f"unknown {what} field {_show(name)} in table {table.name}")
    return field


def _sort(table: Table, text: str) -> tuple[tuple[str, bool], ...]:
    keys: list[tuple[str, bool]] = []
    for item in text.split(","):
        descending = item.startswith("-")
        if item[:1] in ("-", "+"):
            item = item[1:]
        if not item:
            raise FiqlError("sort needs field names, e.g. sort=-price,name")
        field = _field(table, item, "sort")
        if field.is_list:
            raise FiqlError(f"cannot sort by list field {field.name!r}")
        keys.append((field.name, descending))
    return tuple(keys)


def _select(table: Table, text: str) -> tuple[str, ...]:
    names: list[str] = []
    for item in text.split(","):
        if not item:
            raise FiqlError("select needs field names, e.g. select=id,name")
        name = _field(table, item, "select").name
        if name not in names:
            names.append(name)
    return tuple(names)


def _and(nodes: list[Node]) -> Node:
    children: list[Node] = []
    for node in nodes:
        children.extend(node.children if isinstance(node, And) else (node,))
    return And(tuple(children))


@dataclass
class _Budget:
    """Complexity spent so far by one query."""

    comparisons: int = 0
    values: int = 0

    def spend(self, values: int) -> None:
        self.comparisons += 1
        self.values += values
        if self.comparisons > MAX_COMPARISONS or self.values > MAX_VALUES:
            raise FiqlError(
                f"filter too complex (at most {MAX_COMPARISONS} comparisons"
                f" and {MAX_VALUES} values)"
            )


class _Parser:
    """
    Recursive descent over the raw FIQL text::

        or         := and (('|' | ',') and)*
        and        := unary (('&' | ';') unary)*
        unary      := '!' '(' or ')' | '(' or ')' | comparison
        comparison := selector operator values
    """

    def __init__(self, table: Table, text: str, budget: _Budget) -> None:
        self.table = table
        self.text = text
        self.pos = 0
        self.depth = 0
        self.budget = budget

    def parse(self) -> Node:
        if not self.text:
            raise FiqlError("empty filter")
        node = self.parse_or()
        if self.pos < len(self.text):
            self.fail("unexpected character")
        return node

    def fail(self, what: str) -> None:
        rest = self.text[self.pos :]
        at = f" at {_show(rest)}" if rest else " at end of filter"
        raise FiqlError(f"invalid filter: {what}{at} (position {self.pos})")

    def peek(self) -> str:
        return self.text[self.pos : self.pos + 1]

    def parse_or(self) -> Node:
        children = [self.parse_and()]
        while self.peek() in ("|", ","):
            self.pos += 1
            children.append(self.parse_and())
        if len(children) == 1:
            return children[0]
        flat: list[Node] = []
        for child in children:
            flat.extend(child.children if isinstance(child, Or) else (child,))
        return Or(tuple(flat))

    def parse_and(self) -> Node:
        children = [self.parse_unary()]
        while self.peek() in ("&", ";"):
            self.pos += 1
            children.append(self.parse_unary())
        return children[0] if len(children) == 1 else _and(children)

    def parse_unary(self) -> Node:
        negate = self.text.startswith("!(", self.pos)
        if negate or self.peek() == "(":
            self.pos += 2 if negate else 1
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise FiqlError(f"filter too complex (nesting deeper than {MAX_DEPTH})")
            node = self.parse_or()
            if self.peek() != ")":
                self.fail("expected ')'")
            self.pos += 1
            self.depth -= 1
            return Not(node) if negate else node
        return self.parse_comparison()

    def parse_comparison(self) -> Node:
        selector = _SELECTOR.match(self.text, self.pos)
        if selector is None:
            self.fail("expected a field name")
        assert selector is not None
        self.pos = selector.end()
        field = _field(self.table, selector.group(), "filter")
        op = self.parse_operator(field.name)
        if op in _MULTI:
            raws = self.parse_list(op)
        else:
            value = _VALUE.match(self.text, self.pos)
            assert value is not None  # the pattern matches the empty string
            self.pos = value.end()
            raws = [value.group()]
        self.budget.spend(len(raws))
        return _comparison(field, op, raws)

    def parse_operator(self, field: str) -> str:
        for symbol, op in _SYMBOL_OPS:
            if self.text.startswith(symbol, self.pos):
                self.pos += len(symbol)
                return op
        named = _NAMED_OP.match(self.text, self.pos)
        if named is None:
            self.fail(f"expected an operator after {field!r}")
        assert named is not None
        name = named.group(1)
        if name == "ft":
            raise FiqlError("full-text search (=ft=) is not supported")
        if name not in _NAMED_OPS:
            raise FiqlError(f"unknown operator ={name}= in filter")
        self.pos = named.end()
        return _NAMED_OPS[name]

    def parse_list(self, op: str) -> list[str]:
        most = 2 if op in ("gele", "gtlt") else None
        if self.peek() == "(":
            end = self.text.find(")", self.pos)
            inner = self.text[self.pos + 1 : end] if end >= 0 else ""
            if end < 0 or re.search(r"[&;|(]", inner):
                self.fail("expected a ')' closing the value list")
            self.pos = end + 1
            return inner.split(",")
        raws: list[str] = []
        while True:
            value = _VALUE.match(self.text, self.pos)
            assert value is not None
            self.pos = value.end()
            raws.append(value.group())
            if self.peek() != "," or (most is not None and len(raws) >= most):
                return raws
            if _LOOKS_LIKE_TERM.match(self.text, self.pos + 1):
                return raws
            self.pos += 1


def _comparison(field: Field, op: str, raws: list[str]) -> Node:
    """Check C{op} against C{field} and coerce the raw values."""
    name = field.name
    if op in _MULTI:
        if op in ("gele", "gtlt") and len(raws) != 2:
            raise FiqlError(f"={op}= on {name!r} takes exactly two values")
        if field.is_list:
            raise FiqlError(f"={op}= is not supported on list field {name!r}")
        if op in _ORDER_OPS and field.type == "Boolean":
            raise FiqlError(f"={op}= is not supported on Boolean field {name!r}")
        return Comparison(name, op, tuple(_coerce(field, _decode(r)) for r in raws))
    raw = raws[0]
    if op == "strict":
        op = "eq"
    elif op in ("eq", "ne"):
        if raw == "null":
            return Comparison(name, op, None)
        if "*" in raw and field.is_list:
            raise FiqlError(f"wildcards are not supported on list field {name!r}")
        if op == "eq" and field.is_list:
            op = "ct"
        elif "*" in raw:
            node = _wildcard(field, raw)
            return Not(node) if op == "ne" else node
    if field.is_list:
        if op != "ct":
            raise FiqlError(f"only == and =ct= (contains) are supported on list field {name!r}")
        return Comparison(name, op, _coerce(field, _decode(raw)))
    if op in _TEXT_OPS and field.type not in ("String", "ID"):
        raise FiqlError(f"{op} needs a String or ID field; {name!r} is {field.type}")
    if op in _ORDER_OPS and field.type == "Boolean":
        raise FiqlError(f"ordering is not supported on Boolean field {name!r}")
    value = _decode(raw)
    if op == "regex":
        _check_regex(value)
        return Comparison(name, op, value)
    return Comparison(name, op, _coerce(field, value))


def _wildcard(field: Field, raw: str) -> Comparison:
    """C{==} with C{*}: sw, ew, ct, or an anchored regex."""
    if field.type not in ("String", "ID"):
        raise FiqlError(f"wildcards need a String or ID field; {field.name!r} is {field.type}")
    pieces = [_decode(p) for p in raw.split("*")]
    if len(pieces) == 2 and not pieces[0]:
        return Comparison(field.name, "ew", pieces[1])
    if len(pieces) == 2 and not pieces[1]:
        return Comparison(field.name, "sw", pieces[0])
    if len(pieces) == 3 and not pieces[0] and not pieces[2]:
        return Comparison(field.name, "ct", pieces[1])
    pattern = "(?s)\\A" + ".*".join(re.escape(p) for p in pieces) + "\\Z"
    _check_regex(pattern)
    return Comparison(field.name, "regex", pattern)


def _check_regex(pattern: str) -> None:
    if len(pattern) > MAX_REGEX:
        raise FiqlError(f"regular expression longer than {MAX_REGEX} characters")
    try:
        re.compile(pattern)
    except (re.error, OverflowError, RecursionError, ValueError) as e:
        raise FiqlError(f"invalid regular expression: {e}") from None


def _coerce(field: Field, value: str) -> Any:
    """Convert a decoded value to C{field}'s scalar type."""
    kind = field.type
    if kind == "Int":
        if not _INT.match(value) or not INT_MIN <= int(value) <= INT_MAX:
            raise FiqlError(f"{field.name!r} needs a 64-bit integer, got {_show(value)}")
        return int(value)
    if kind == "Float":
        number = float(value) if _FLOAT.match(value) and len(value) <= 400 else math.nan
        if not math.isfinite(number):
            raise FiqlError(f"{field.name!r} needs a finite number, got {_show(value)}")
        return number
    if kind == "Boolean":
        if value not in ("true", "false"):
            raise FiqlError(f"{field.name!r} needs true or false, got {_show(value)}")
        return value == "true"
    return value
