"""
Tests for L{yeti.sqlfilter}, run against a real in-memory SQLite database.
"""

from __future__ import annotations

import json
import re
import sqlite3
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.test_fiql import QUERY_ALPHABET
from yeti.errors import FiqlError
from yeti.fiql import And, Comparison, Node, Not, Or, Query, parse_filter, parse_query
from yeti.schema import InterfaceDefaults, Table, parse_schema
from yeti.sqlfilter import compile_query, register_functions, select_fields

SCHEMA = """
type Product @table(table: "products") @export {
    id: ID! @primaryKey
    name: String!
    price: Float
    category: String @indexed
    inStock: Boolean
    quantity: Int
    tags: [String]
}
"""

RECORDS: list[dict[str, Any]] = [
    {
        "id": "p1",
        "name": "Widget",
        "price": 9.99,
        "category": "hardware",
        "inStock": True,
        "quantity": 5,
        "tags": ["red", "blue"],
    },
    {
        "id": "p2",
        "name": "Ultra Widget Pro",
        "price": 24.5,
        "category": "electronics",
        "inStock": False,
        "quantity": 10,
        "tags": ["blue"],
    },
    {
        "id": "p3",
        "name": "Gadget 100%_off",
        "price": 150,
        "category": None,
        "quantity": -3,
        "tags": None,
    },
    {"id": "p4", "name": "Doohickey", "category": "hardware", "inStock": True},
    {
        "id": "p5",
        "name": "ultra case",
        "price": 14.0,
        "category": "food",
        "inStock": False,
        "quantity": 7,
        "tags": [],
    },
]


def product_table() -> Table:
    """The crud.md C{Product} table plus an Int and a list field."""
    return parse_schema(SCHEMA, "schema.graphql", InterfaceDefaults("data"))[0]


def make_database(table: Table) -> sqlite3.Connection:
    """An in-memory database holding L{RECORDS} in the storage layout."""
    conn = sqlite3.connect(":memory:")
    register_functions(conn)
    conn.execute(f'CREATE TABLE "{table.storage_name}" (key TEXT PRIMARY KEY, data TEXT NOT NULL)')
    conn.execute(
        f'CREATE INDEX "products_category" ON "{table.storage_name}"'
        " (json_extract(data, '$.category'))"
    )
    conn.executemany(
        f'INSERT INTO "{table.storage_name}" (key, data) VALUES (?, ?)',
        [(r["id"], json.dumps(r)) for r in RECORDS],
    )
    return conn


def reference(table: Table, node: Node, record: dict[str, Any]) -> bool:
    """The documented semantics, in Python: does C{record} match C{node}?"""
    if isinstance(node, And):
        return all(reference(table, c, record) for c in node.children)
    if isinstance(node, Or):
        return any(reference(table, c, record) for c in node.children)
    if isinstance(node, Not):
        return not reference(table, node.child, record)
    assert isinstance(node, Comparison)
    v, op, x = record.get(node.field), node.op, node.value
    if x is None:
        return (v is None) == (op == "eq")
    if table.fields[node.field].is_list:
        return isinstance(v, list) and x in v
    if op in ("ne", "out"):
        return v is None or (v != x if op == "ne" else v not in x)
    if v is None:
        return False
    tests = {
        "eq": lambda: v == x,
        "gt": lambda: v > x,
        "ge": lambda: v >= x,
        "lt": lambda: v < x,
        "le": lambda: v <= x,
        "in": lambda: v in x,
        "gele": lambda: x[0] <= v <= x[1],
        "gtlt": lambda: x[0] < v < x[1],
        "ct": lambda: x in v,
        "sw": lambda: v.startswith(x),
        "ew": lambda: v.endswith(x),
        "regex": lambda: re.search(x, v) is not None,
    }
    return bool(tests[op]())


class FilterTests(SynchronousTestCase):
    """Compiled filters select the right records."""

    def setUp(self) -> None:
        self.table = product_table()
        self.conn = make_database(self.table)
        self.addCleanup(self.conn.close)

    def ids(self, raw: str) -> list[str]:
        """Run the list query C{raw} and return the ids, in order."""
        suffix, params = compile_query(self.table, parse_query(self.table, raw))
        rows = self.conn.execute(
            f'SELECT data FROM "{self.table.storage_name}"' + suffix, params
        ).fetchall()
        return [json.loads(data)["id"] for (data,) in rows]

    def test_no_filter(self) -> None:
        """Without a filter or sort, all records come back in insertion order."""
        self.assertEqual(self.ids(""), ["p1", "p2", "p3", "p4", "p5"])

    def test_equality_types(self) -> None:
        """==, typed: strings, floats (matching stored ints), ints and booleans."""
        self.assertEqual(self.ids("category==hardware"), ["p1", "p4"])
        self.assertEqual(self.ids("price==150"), ["p3"])
        self.assertEqual(self.ids("quantity==-3"), ["p3"])
        self.assertEqual(self.ids("inStock==true"), ["p1", "p4"])
        self.assertEqual(self.ids("inStock==false"), ["p2", "p5"])

    def test_not_equal_includes_null(self) -> None:
        """!= and =out= also match null and missing fields."""
        self.assertEqual(self.ids("category!=hardware"), ["p2", "p3", "p5"])
        self.assertEqual(self.ids("inStock!=true"), ["p2", "p3", "p5"])
        self.assertEqual(self.ids("category=out=hardware,food"), ["p2", "p3"])

    def test_null(self) -> None:
        """==null matches JSON null and missing; !=null the rest."""
        self.assertEqual(self.ids("category==null"), ["p3"])
        self.assertEqual(self.ids("price==null"), ["p4"])
        self.assertEqual(self.ids("price!=null"), ["p1", "p2", "p3", "p5"])
        self.assertEqual(self.ids("tags==null"), ["p3", "p4"])

    def test_ordering(self) -> None:
        """Ordering operators skip nulls."""
        self.assertEqual(self.ids("price=gt=14"), ["p2", "p3"])
        self.assertEqual(self.ids("price>=14"), ["p2", "p3", "p5"])
        self.assertEqual(self.ids("quantity<5"), ["p3"])
        self.assertEqual(self.ids("quantity=le=5"), ["p1", "p3"])
        self.assertEqual(self.ids("price=gele=9.99,24.5"), ["p1", "p2", "p5"])
        self.assertEqual(self.ids("price=gtlt=9.99,24.5"), ["p5"])
        self.assertEqual(self.ids("name=gt=U"), ["p1", "p2", "p5"])

    def test_in(self) -> None:
        """=in= matches any listed value."""
        self.assertEqual(self.ids("quantity=in=(5,7,99)"), ["p1", "p5"])

    def test_text_operators(self) -> None:
        """ct/sw/ew/wildcards are case-sensitive; % and _ are literal."""
        self.assertEqual(self.ids("name=ct=Widget"), ["p1", "p2"])
        self.assertEqual(self.ids("name==*Widget*"), ["p1", "p2"])
        self.assertEqual(self.ids("name==Ultra*"), ["p2"])
        self.assertEqual(self.ids("name=sw=ultra"), ["p5"])
        self.assertEqual(self.ids("name==*Pro"), ["p2"])
        self.assertEqual(self.ids("name=ew=case"), ["p5"])
        self.assertEqual(self.ids("name=ct=%25_"), ["p3"])
        self.assertEqual(self.ids("name=sw=%25"), [])
        self.assertEqual(self.ids("name==U*W*o"), ["p2"])
        self.assertEqual(self.ids("id=ew=").__len__(), 5)

    def test_regex(self) -> None:
        """=~= uses Python regular expressions; null fields do not match."""
        self.assertEqual(self.ids("name=~=^[Uu]ltra"), ["p2", "p5"])
        self.assertEqual(self.ids("category=~=.*"), ["p1", "p2", "p4", "p5"])

    def test_list_contains(self) -> None:
        """== on a list field means "has this element"."""
        self.assertEqual(self.ids("tags==blue"), ["p1", "p2"])
        self.assertEqual(self.ids("tags=ct=red"), ["p1"])

    def test_logic(self) -> None:
        """AND binds tighter than OR; parentheses group."""
        self.assertEqual(self.ids("category==food|category==hardware;inStock==false"), ["p5"])
        self.assertEqual(self.ids("category==food|category==hardware&price=lt=10"), ["p1", "p5"])
        self.assertEqual(self.ids("(category==food|category==hardware)&price=lt=10"), ["p1"])

    def test_negation_is_two_valued(self) -> None:
        """!(x) matches exactly what x does not, nulls included."""
        self.assertEqual(self.ids("!(price=gt=100)"), ["p1", "p2", "p4", "p5"])
        self.assertEqual(self.ids("!(category!=hardware)"), ["p1", "p4"])
        self.assertEqual(self.ids("name!=*Widget*"), ["p3", "p4", "p5"])


class SortAndPageTests(SynchronousTestCase):
    """ORDER BY, LIMIT and OFFSET."""

    def setUp(self) -> None:
        self.table = product_table()
        self.conn = make_database(self.table)
        self.addCleanup(self.conn.close)

    def ids(self, raw: str) -> list[str]:
        suffix, params = compile_query(self.table, parse_query(self.table, raw))
        rows = self.conn.execute('SELECT data FROM "products"' + suffix, params)
        return [json.loads(data)["id"] for (data,) in rows]

    def test_nulls_last_ascending(self) -> None:
        """Ascending sort puts nulls and missing values last."""
        self.assertEqual(self.ids("sort=price"), ["p1", "p5", "p2", "p3", "p4"])

    def test_nulls_first_descending(self) -> None:
        """Descending sort puts nulls first."""
        self.assertEqual(self.ids("sort=-price"), ["p4", "p3", "p2", "p5", "p1"])

    def test_multi_key_and_ties(self) -> None:
        """Later keys order ties; insertion order breaks the rest."""
        self.assertEqual(self.ids("sort=category,-price"), ["p2", "p5", "p4", "p1", "p3"])
        self.assertEqual(self.ids("sort=-inStock"), ["p3", "p1", "p4", "p2", "p5"])

    def test_limit_offset(self) -> None:
        """limit and offset page through the sorted result."""
        self.assertEqual(self.ids("sort=name&limit=2"), ["p4", "p3"])
        self.assertEqual(self.ids("sort=name&limit=2&offset=2"), ["p2", "p1"])
        self.assertEqual(self.ids("offset=3"), ["p4", "p5"])
        self.assertEqual(self.ids("limit(1,2)"), ["p2", "p3"])
        self.assertEqual(self.ids("limit=0"), [])

    def test_sql_shape(self) -> None:
        """The suffix has the documented parts, with values bound."""
        table = self.table
        self.assertEqual(compile_query(table, Query()), (" ORDER BY rowid", []))
        self.assertEqual(
            compile_query(table, Query(offset=4)),
            (" ORDER BY rowid LIMIT -1 OFFSET ?", [4]),
        )
        sql, params = compile_query(
            table,
            Query(filter=Comparison("category", "eq", "x'y"), sort=(("price", True),), limit=3),
        )
        self.assertEqual(
            sql,
            " WHERE (json_extract(data, '$.category') = ?)"
            " ORDER BY json_extract(data, '$.price') DESC NULLS FIRST, rowid LIMIT ?",
        )
        self.assertEqual(params, ["x'y", 3])

    def test_uses_index(self) -> None:
        """Equality on an indexed field uses its expression index."""
        suffix, params = compile_query(self.table, parse_query(self.table, "category==hardware"))
        plan = self.conn.execute(
            'EXPLAIN QUERY PLAN SELECT data FROM "products"' + suffix, params
        ).fetchall()
        self.assertIn("products_category", " ".join(str(row) for row in plan))


class InjectionTests(SynchronousTestCase):
    """Client text never becomes SQL."""

    def setUp(self) -> None:
        self.table = product_table()
        self.conn = make_database(self.table)
        self.addCleanup(self.conn.close)

    def run_query(self, raw: str) -> list[Any]:
        suffix, params = compile_query(self.table, parse_query(self.table, raw))
        return self.conn.execute('SELECT data FROM "products"' + suffix, params).fetchall()

    def test_values_are_bound(self) -> None:
        """Quotes and SQL in values match nothing and change nothing."""
        for raw in (
            "name==x'%20OR%20'1'='1",
            "name==x'%29%3BDROP%20TABLE%20products%3B--",
            "name=ct='%29%20OR%201=1--",
            "name=~=x'%20OR%201=1",
            "category=in=(a'%29,b%22%29)",
            "sort=name&select=id&name==%22%3B--",
        ):
            self.assertEqual(self.run_query(raw), [], raw)
        count = self.conn.execute('SELECT count(*) FROM "products"').fetchone()[0]
        self.assertEqual(count, 5)

    def test_field_names_rejected(self) -> None:
        """Field names that are not schema fields are refused by the parser."""
        for raw in (
            "name')%20OR%201=1--==x",
            "sort=name')%20--",
            "select=data",
            "n%27ame==x",
            "rowid==1",
        ):
            self.assertRaises(FiqlError, parse_query, self.table, raw)

    def test_compile_refuses_bad_names(self) -> None:
        """compile_query itself refuses names that are not schema fields."""
        for name in ("price') OR 1=1 --", "bogus"):
            self.assertRaises(
                ValueError, compile_query, self.table, Query(filter=Comparison(name, "eq", 1))
            )
            self.assertRaises(ValueError, compile_query, self.table, Query(sort=((name, False),)))


COMPARISONS = st.sampled_from(
    [
        "price=gt=14",
        "price<=24.5",
        "price==null",
        "price!=9.99",
        "price=gele=9.99,24.5",
        "category==hardware",
        "category!=hardware",
        "category==null",
        "category=out=food,x",
        "category=in=(hardware,food)",
        "name==*Widget*",
        "name==Ultra*",
        "name=ew=case",
        "name=~=^[Uu]",
        "name==G*0*f",
        "quantity=in=5,7",
        "quantity>0",
        "quantity!=null",
        "inStock==true",
        "inStock!=false",
        "tags==blue",
        "tags==null",
        "id=out=(p1,p2)",
    ]
)
FILTERS = st.recursive(
    COMPARISONS,
    lambda inner: st.one_of(
        st.builds("!({})".format, inner),
        st.builds("({})".format, inner),
        st.builds("{}{}{}".format, inner, st.sampled_from("&;|,"), inner),
    ),
    max_leaves=8,
)


class ReferenceTests(SynchronousTestCase):
    """SQL results agree with a Python statement of the semantics."""

    def setUp(self) -> None:
        self.table = product_table()
        self.conn = make_database(self.table)
        self.addCleanup(self.conn.close)

    @settings(max_examples=400, deadline=None)
    @given(FILTERS)
    def test_matches_reference(self, text: str) -> None:
        """For generated filters, SQLite returns exactly the records the reference accepts."""
        node = parse_filter(self.table, text)
        suffix, params = compile_query(self.table, Query(filter=node))
        rows = self.conn.execute('SELECT data FROM "products"' + suffix, params)
        got = [json.loads(data)["id"] for (data,) in rows]
        expected = [r["id"] for r in RECORDS if reference(self.table, node, r)]
        self.assertEqual(got, expected, text)


class FunctionTests(SynchronousTestCase):
    """register_functions and select_fields."""

    def test_regexp(self) -> None:
        """regexp(pattern, value) is 1 on a search match, 0 otherwise or for NULL."""
        conn = sqlite3.connect(":memory:")
        self.addCleanup(conn.close)
        register_functions(conn)
        row = conn.execute(
            "SELECT regexp('b+', 'abbc'), regexp('^b', 'abc'), regexp('a', NULL)"
        ).fetchone()
        self.assertEqual(row, (1, 0, 0))

    def test_select_fields(self) -> None:
        """Selection keeps the listed fields present in the record, in order."""
        record = {"id": "p1", "name": "Widget", "price": None}
        self.assertEqual(
            select_fields(record, ("price", "id", "category")), {"price": None, "id": "p1"}
        )
        self.assertEqual(select_fields(record, None), record)
        self.assertIsNot(select_fields(record, None), record)


class CompileFuzzTests(SynchronousTestCase):
    """Whatever parses compiles to SQL that SQLite runs."""

    def setUp(self) -> None:
        self.table = product_table()
        self.conn = make_database(self.table)
        self.addCleanup(self.conn.close)

    @settings(max_examples=1500, deadline=None)
    @given(st.lists(QUERY_ALPHABET, max_size=20).map("".join))
    def test_parsed_queries_run(self, raw: str) -> None:
        """Parsed queries execute without SQLite errors."""
        try:
            query = parse_query(self.table, raw)
        except FiqlError:
            return
        suffix, params = compile_query(self.table, query)
        self.conn.execute('SELECT data FROM "products"' + suffix, params).fetchall()
