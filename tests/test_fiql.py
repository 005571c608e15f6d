"""
Tests for L{yeti.fiql}.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from yeti.errors import BadRequest, FiqlError
from yeti.fiql import (
    MAX_COMPARISONS,
    MAX_DEPTH,
    And,
    Comparison,
    Not,
    Or,
    Query,
    parse_filter,
    parse_query,
)
from yeti.schema import InterfaceDefaults, Table, parse_schema

SCHEMA = """
type Product @table @export {
    id: ID! @primaryKey
    name: String!
    price: Float
    category: String @indexed
    inStock: Boolean
    quantity: Int
    tags: [String]
}
"""


def product_table() -> Table:
    """The crud.md C{Product} table plus an Int and a list field."""
    return parse_schema(SCHEMA, "schema.graphql", InterfaceDefaults("data"))[0]


class ParameterTests(SynchronousTestCase):
    """Query parameters mixed with FIQL terms."""

    def setUp(self) -> None:
        self.table = product_table()

    def test_empty(self) -> None:
        """An empty query string is the default L{Query}."""
        self.assertEqual(parse_query(self.table, ""), Query())

    def test_mixed(self) -> None:
        """Parameters are taken out; FIQL parts are ANDed."""
        query = parse_query(
            self.table,
            "price=gt=10&category==hardware&limit=5&sort=-price,name&select=id,name&offset=2",
        )
        self.assertEqual(
            query,
            Query(
                filter=And(
                    (Comparison("price", "gt", 10.0), Comparison("category", "eq", "hardware"))
                ),
                sort=(("price", True), ("name", False)),
                limit=5,
                offset=2,
                select=("id", "name"),
            ),
        )

    def test_filter_parameter(self) -> None:
        """C{filter=} holds a FIQL expression using C{;} for AND."""
        query = parse_query(self.table, "filter=price=gt=10;price=lt=50&sort=-price&limit=5")
        self.assertEqual(
            query.filter,
            And((Comparison("price", "gt", 10.0), Comparison("price", "lt", 50.0))),
        )
        self.assertEqual(query.sort, (("price", True),))
        self.assertEqual(query.limit, 5)

    def test_filter_parameter_anded_with_terms(self) -> None:
        """C{filter=} is ANDed with the bare FIQL terms."""
        query = parse_query(self.table, "name==a|name==b&filter=price=lt=5")
        self.assertEqual(
            query.filter,
            And(
                (
                    Or((Comparison("name", "eq", "a"), Comparison("name", "eq", "b"))),
                    Comparison("price", "lt", 5.0),
                )
            ),
        )

    def test_function_style(self) -> None:
        """C{limit(offset,count)}, C{select(...)} and C{sort(...)} work like parameters."""
        query = parse_query(self.table, "limit(10,20)&select(id,name)&sort(-price)")
        self.assertEqual(
            query,
            Query(sort=(("price", True),), limit=20, offset=10, select=("id", "name")),
        )

    def test_function_limit_count(self) -> None:
        """C{limit(n)} is a count alone."""
        self.assertEqual(parse_query(self.table, "limit(7)"), Query(limit=7))

    def test_stream(self) -> None:
        """C{stream=} is passed through undecoded-checked."""
        self.assertEqual(parse_query(self.table, "stream=sse").stream, "sse")

    def test_limit_bounds(self) -> None:
        """limit is 0..2**63-1; negative, fractional or larger is an error."""
        self.assertEqual(parse_query(self.table, "limit=0").limit, 0)
        self.assertEqual(parse_query(self.table, f"limit={2**63 - 1}").limit, 2**63 - 1)
        for bad in (
            "limit=-1",
            "limit=1.5",
            f"limit={2**63}",
            "limit=",
            "limit=x",
            "limit=%EF%BC%91",
            "limit=1_0",
            "offset=-3",
            "offset=a",
            "limit(1,2,3)",
            "limit(a)",
        ):
            self.assertRaises(FiqlError, parse_query, self.table, bad)

    def test_duplicate_parameter(self) -> None:
        """A parameter given twice is an error."""
        for bad in (
            "limit=1&limit=2",
            "limit(1,2)&offset=3",
            "offset=3&limit(1,2)",
            "sort=name&sort(name)",
        ):
            self.assertRaises(FiqlError, parse_query, self.table, bad)

    def test_sort_and_select(self) -> None:
        """Sort takes -/+ prefixes; select keeps order and drops repeats."""
        query = parse_query(self.table, "sort=+name,-quantity&select=name,id,name")
        self.assertEqual(query.sort, (("name", False), ("quantity", True)))
        self.assertEqual(query.select, ("name", "id"))

    def test_unknown_fields_named(self) -> None:
        """Unknown sort, select or filter fields are errors naming the field."""
        for raw in ("sort=-bogus", "select=id,bogus", "bogus==1", "filter=bogus==1"):
            error = self.assertRaises(FiqlError, parse_query, self.table, raw)
            self.assertIn("bogus", error.message)

    def test_parameter_needs_single_equals(self) -> None:
        """C{limit==5} is a FIQL term on a field named limit, so unknown here."""
        error = self.assertRaises(FiqlError, parse_query, self.table, "limit==5")
        self.assertIn("limit", error.message)

    def test_fiql_error_is_bad_request(self) -> None:
        """Errors are 400s."""
        error = self.assertRaises(FiqlError, parse_query, self.table, "sort=x")
        self.assertIsInstance(error, BadRequest)
        self.assertEqual(error.status, 400)


class FilterSyntaxTests(SynchronousTestCase):
    """The FIQL grammar."""

    def setUp(self) -> None:
        self.table = product_table()

    def parse(self, text: str) -> object:
        return parse_filter(self.table, text)

    def test_operators(self) -> None:
        """Each operator spelling maps to its op name."""
        cases = {
            "price==1": ("eq", 1.0),
            "price===1": ("eq", 1.0),
            "price!=1": ("ne", 1.0),
            "price=gt=1": ("gt", 1.0),
            "price>1": ("gt", 1.0),
            "price=ge=1": ("ge", 1.0),
            "price>=1": ("ge", 1.0),
            "price=lt=1": ("lt", 1.0),
            "price<1": ("lt", 1.0),
            "price=le=1": ("le", 1.0),
            "price<=1": ("le", 1.0),
            "name=ct=Wid": ("ct", "Wid"),
            "name=sw=Ul": ("sw", "Ul"),
            "name=ew=Pro": ("ew", "Pro"),
            "name=~=^Ultra.*": ("regex", "^Ultra.*"),
            "price=in=1,2": ("in", (1.0, 2.0)),
            "price=out=(1,2)": ("out", (1.0, 2.0)),
            "price=gele=1,2": ("gele", (1.0, 2.0)),
            "price=gtlt=1,2": ("gtlt", (1.0, 2.0)),
        }
        for text, (op, value) in cases.items():
            node = self.parse(text)
            field = "name" if text.startswith("name") else "price"
            self.assertEqual(node, Comparison(field, op, value), text)

    def test_unknown_and_unsupported_operators(self) -> None:
        """Unknown operators and =ft= are clear errors."""
        error = self.assertRaises(FiqlError, self.parse, "name=ft=ultra")
        self.assertIn("not supported", error.message)
        error = self.assertRaises(FiqlError, self.parse, "name=xx=1")
        self.assertIn("=xx=", error.message)
        self.assertRaises(FiqlError, self.parse, "name=>1")
        self.assertRaises(FiqlError, self.parse, "name")

    def test_and_binds_tighter(self) -> None:
        """C{a|b;c} is C{a OR (b AND c)}, with both spellings."""
        a, b, c = (Comparison("name", "eq", x) for x in "abc")
        expected = Or((a, And((b, c))))
        self.assertEqual(self.parse("name==a|name==b;name==c"), expected)
        self.assertEqual(self.parse("name==a,name==b&name==c"), expected)
        self.assertEqual(parse_query(self.table, "name==a|name==b&name==c").filter, expected)

    def test_parentheses_and_negation(self) -> None:
        """Parentheses group; C{!(...)} negates."""
        node = parse_query(self.table, "!(price=gt=100)&(name==a|name==b)").filter
        self.assertEqual(
            node,
            And(
                (
                    Not(Comparison("price", "gt", 100.0)),
                    Or((Comparison("name", "eq", "a"), Comparison("name", "eq", "b"))),
                )
            ),
        )

    def test_unbalanced(self) -> None:
        """Missing or extra parentheses and dangling operators are errors."""
        for bad in (
            "(name==a",
            "name==a)",
            "name==a|",
            "&name==a",
            "()",
            "!name==a",
            "name==a&&name==b",
            "price=in=(1,2",
        ):
            self.assertRaises(FiqlError, self.parse, bad)

    def test_in_list_ends_at_next_term(self) -> None:
        """An unparenthesised =in= list stops at an item that is a comparison."""
        self.assertEqual(
            self.parse("category=in=a,b,price=gt=5"),
            Or((Comparison("category", "in", ("a", "b")), Comparison("price", "gt", 5.0))),
        )
        self.assertEqual(
            self.parse("price=gele=1,2,name==x"),
            Or((Comparison("price", "gele", (1.0, 2.0)), Comparison("name", "eq", "x"))),
        )

    def test_range_needs_two_values(self) -> None:
        """=gele= and =gtlt= take exactly two values."""
        self.assertRaises(FiqlError, self.parse, "price=gele=1")
        self.assertRaises(FiqlError, self.parse, "price=gtlt=(1,2,3)")

    def test_wildcards(self) -> None:
        """C{*} at the ends maps to sw/ew/ct, elsewhere to an anchored regex."""
        self.assertEqual(self.parse("name==Ultra*"), Comparison("name", "sw", "Ultra"))
        self.assertEqual(self.parse("name==*Pro"), Comparison("name", "ew", "Pro"))
        self.assertEqual(self.parse("name==*Widget*"), Comparison("name", "ct", "Widget"))
        self.assertEqual(
            self.parse("name==a*b.c"), Comparison("name", "regex", "(?s)\\Aa.*b\\.c\\Z")
        )
        self.assertEqual(self.parse("name!=Ultra*"), Not(Comparison("name", "sw", "Ultra")))
        self.assertEqual(self.parse("name===Ultra*"), Comparison("name", "eq", "Ultra*"))
        self.assertEqual(self.parse("name==Ultra%2A"), Comparison("name", "eq", "Ultra*"))
        self.assertRaises(FiqlError, self.parse, "price==1*")

    def test_null(self) -> None:
        """C{==null}/C{!=null} test for null; C{===null} is the string."""
        self.assertEqual(self.parse("price==null"), Comparison("price", "eq", None))
        self.assertEqual(self.parse("name!=null"), Comparison("name", "ne", None))
        self.assertEqual(self.parse("name===null"), Comparison("name", "eq", "null"))

    def test_percent_decoding(self) -> None:
        """Values and names decode after tokenising; + stays a plus."""
        self.assertEqual(self.parse("name==a%26b%20c+d%2Ce"), Comparison("name", "eq", "a&b c+d,e"))
        self.assertEqual(self.parse("n%61me==%C3%A9"), Comparison("name", "eq", "\u00e9"))
        self.assertRaises(FiqlError, self.parse, "name==%FF")
        self.assertEqual(
            parse_query(self.table, "name==a%26limit=5"),
            Query(filter=Comparison("name", "eq", "a&limit=5")),
        )

    def test_empty_value_is_empty_string(self) -> None:
        """C{name==} compares with the empty string."""
        self.assertEqual(self.parse("name=="), Comparison("name", "eq", ""))


class CoercionTests(SynchronousTestCase):
    """Values take the field's schema type."""

    def setUp(self) -> None:
        self.table = product_table()

    def parse(self, text: str) -> object:
        return parse_filter(self.table, text)

    def test_int(self) -> None:
        """Int fields take signed 64-bit integers only."""
        self.assertEqual(self.parse("quantity==-5"), Comparison("quantity", "eq", -5))
        self.assertEqual(self.parse(f"quantity=le={2**63 - 1}").value, 2**63 - 1)
        for bad in (
            "1.5",
            "x",
            f"{2**63}",
            f"{-(2**63) - 1}",
            "1e3",
            "",
            "%D9%A1",
            "1_0",
            "9" * 5000,
        ):
            self.assertRaises(FiqlError, self.parse, f"quantity=={bad}")

    def test_float(self) -> None:
        """Float fields take finite numbers."""
        self.assertEqual(self.parse("price=ge=1e2").value, 100.0)
        self.assertEqual(self.parse("price==-.5").value, -0.5)
        for bad in ("inf", "nan", "1e999", "x", "", "0x10", "1" * 500):
            self.assertRaises(FiqlError, self.parse, f"price=={bad}")

    def test_boolean(self) -> None:
        """Boolean fields take true/false and refuse ordering."""
        self.assertEqual(self.parse("inStock==true").value, True)
        self.assertEqual(self.parse("inStock=out=false").value, (False,))
        self.assertRaises(FiqlError, self.parse, "inStock==1")
        self.assertRaises(FiqlError, self.parse, "inStock=gt=true")

    def test_text_operators_need_text_fields(self) -> None:
        """ct/sw/ew/regex on a non-text field are errors."""
        for bad in ("price=ct=1", "quantity=sw=1", "inStock=ew=true", "price=~=1"):
            self.assertRaises(FiqlError, self.parse, bad)
        self.assertEqual(self.parse("id=sw=prod"), Comparison("id", "sw", "prod"))

    def test_regex_checked(self) -> None:
        """Regex values must compile and be at most 256 characters."""
        self.assertRaises(FiqlError, self.parse, "name=~=%5B")
        self.assertRaises(FiqlError, self.parse, "name=~=" + "a" * 257)
        self.assertRaises(FiqlError, self.parse, "name=~=a%7B99999999999%7D")
        self.assertEqual(self.parse("name=~=" + "a" * 256).value, "a" * 256)

    def test_list_fields(self) -> None:
        """List fields accept == and =ct= meaning contains; other ops are errors."""
        self.assertEqual(self.parse("tags==red"), Comparison("tags", "ct", "red"))
        self.assertEqual(self.parse("tags=ct=red"), Comparison("tags", "ct", "red"))
        self.assertEqual(self.parse("tags==null"), Comparison("tags", "eq", None))
        for bad in ("tags!=red", "tags=gt=a", "tags=in=a,b", "tags==re*", "tags=~=r"):
            self.assertRaises(FiqlError, self.parse, bad)


class ComplexityTests(SynchronousTestCase):
    """Filters are bounded in size."""

    def setUp(self) -> None:
        self.table = product_table()

    def test_comparisons(self) -> None:
        """More than MAX_COMPARISONS comparisons is too complex, across parts."""
        ok = "&".join(["price==1"] * MAX_COMPARISONS)
        parse_query(self.table, ok)
        error = self.assertRaises(FiqlError, parse_query, self.table, ok + "&filter=price==1")
        self.assertIn("too complex", error.message)

    def test_depth(self) -> None:
        """Nesting deeper than MAX_DEPTH is too complex, without recursion errors."""
        parse_filter(self.table, "(" * MAX_DEPTH + "price==1" + ")" * MAX_DEPTH)
        for depth in (MAX_DEPTH + 1, 100_000):
            error = self.assertRaises(
                FiqlError, parse_filter, self.table, "!(" * depth + "price==1" + ")" * depth
            )
            self.assertIn("too complex", error.message)

    def test_values(self) -> None:
        """Huge =in= lists are too complex."""
        values = ",".join(str(i) for i in range(2000))
        self.assertRaises(FiqlError, parse_filter, self.table, f"quantity=in=({values})")


QUERY_ALPHABET = st.sampled_from(
    [
        "price",
        "name",
        "quantity",
        "tags",
        "inStock",
        "bogus",
        "==",
        "===",
        "!=",
        "=gt=",
        "=in=",
        "=gele=",
        "=~=",
        "=ct=",
        "=x=",
        ">",
        "<=",
        "&",
        ";",
        "|",
        ",",
        "(",
        ")",
        "!",
        "*",
        "null",
        "true",
        "1",
        "-2.5",
        "a",
        "%",
        "%2",
        "%FF",
        "%26",
        "+",
        "=",
        "limit=",
        "offset=",
        "sort=-",
        "select=",
        "filter=",
        "stream=",
        "limit(",
        "\x00",
        "\u00e9",
        "[",
    ]
)


class FuzzTests(SynchronousTestCase):
    """Only L{FiqlError} escapes, whatever the input."""

    def setUp(self) -> None:
        self.table = product_table()

    def check(self, text: str) -> None:
        for parse in (parse_query, parse_filter):
            try:
                parse(self.table, text)
            except FiqlError as e:
                self.assertTrue(e.message)

    @settings(max_examples=500, deadline=None)
    @given(st.text())
    def test_arbitrary_text(self, text: str) -> None:
        """Arbitrary text parses or raises FiqlError."""
        self.check(text)

    @settings(max_examples=1500, deadline=None)
    @given(st.lists(QUERY_ALPHABET, max_size=25).map("".join))
    def test_query_like_text(self, text: str) -> None:
        """Text built from query tokens parses or raises FiqlError."""
        self.check(text)
