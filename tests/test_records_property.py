"""
Property-based tests of L{yeti.records.validate_record}: whatever JSON-like
value a client sends, it either raises L{ValidationError} with a message or
returns a clean record that validates again unchanged.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.test_records import SCHEMA
from yeti.errors import ValidationError
from yeti.records import validate_record
from yeti.schema import InterfaceDefaults, Table, parse_schema

TABLES: dict[str, Table] = {
    t.name: t for t in parse_schema(SCHEMA, "test.graphql", InterfaceDefaults(database="test"))
}
FIELD_NAMES = sorted({name for t in TABLES.values() for name in t.fields})

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**63) - 2, max_value=2**63 + 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
    | st.sampled_from(["", ".", "..", "\x00", "a\x00b", "x" * 600, "\ud800"])
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=20,
)
# objects whose keys are mostly the tables' field names, so values reach the type checks
records = st.dictionaries(
    st.sampled_from(FIELD_NAMES) | st.text(max_size=6) | st.integers(),
    json_values,
    max_size=9,
)


class ValidateRecordPropertyTests(SynchronousTestCase):
    """Only L{ValidationError} escapes L{validate_record}; what it returns is clean."""

    def check(self, table_name: str, value: Any, partial: bool) -> None:
        table = TABLES[table_name]
        try:
            record = validate_record(table, value, partial=partial)
        except ValidationError as e:
            self.assertIsInstance(e.message, str)
            self.assertTrue(e.message)
            self.assertEqual(e.status, 400)
            return
        self.assertIsInstance(record, dict)
        self.assertTrue(set(record) <= set(table.fields))
        self.assertEqual(validate_record(table, record, partial=partial), record)

    @settings(max_examples=400, deadline=None)
    @given(st.sampled_from(sorted(TABLES)), records, st.booleans())
    def test_record_like_objects(self, table_name: str, value: Any, partial: bool) -> None:
        """Objects with field-name keys and arbitrary values validate or raise ValidationError."""
        self.check(table_name, value, partial)

    @settings(max_examples=200, deadline=None)
    @given(st.sampled_from(sorted(TABLES)), json_values, st.booleans())
    def test_arbitrary_values(self, table_name: str, value: Any, partial: bool) -> None:
        """Any JSON-like value validates or raises ValidationError."""
        self.check(table_name, value, partial)
