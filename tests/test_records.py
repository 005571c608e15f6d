"""
Tests for L{yeti.records}.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

from twisted.trial.unittest import TestCase

from yeti.errors import ValidationError
from yeti.records import key_from_path, new_key, stamp, validate_record
from yeti.schema import InterfaceDefaults, Table, parse_schema

SCHEMA = """
type Product @table @export {
    id: ID! @primaryKey
    title: String!
    price: Float
    stock: Int
    active: Boolean
    tags: [String]
    sizes: [Int!]
    createdAt: String! @createdTime
    updatedAt: String @updatedTime
}

type Counter @table @export {
    n: Int! @primaryKey
    createdMs: Int @createdTime
    updatedMs: Float @updatedTime
}

type Note @table @export {
    slug: String @primaryKey
    body: String
}
"""


def _tables() -> dict[str, Table]:
    tables = parse_schema(SCHEMA, "test.graphql", InterfaceDefaults(database="test"))
    return {t.name: t for t in tables}


class ValidateRecordTests(TestCase):
    """
    Tests for L{validate_record}.
    """

    def setUp(self) -> None:
        self.tables = _tables()
        self.product = self.tables["Product"]

    def assertInvalid(self, value: object, message: str, partial: bool = False) -> None:
        error = self.assertRaises(
            ValidationError, validate_record, self.product, value, partial=partial
        )
        self.assertEqual(error.message, message)
        self.assertEqual(error.status, 400)

    def test_valid(self) -> None:
        """
        A valid record comes back equal, as a new dict.
        """
        record = {
            "id": "p1",
            "title": "Lamp",
            "price": 9.5,
            "stock": 3,
            "active": True,
            "tags": ["a", None],
            "sizes": [1, 2],
        }
        result = validate_record(self.product, record)
        self.assertEqual(result, record)
        self.assertIsNot(result, record)

    def test_not_object(self) -> None:
        """
        Anything but a JSON object is refused.
        """
        for value in ([], "x", 1, None, True):
            self.assertInvalid(value, "record must be a JSON object")

    def test_unknown_field(self) -> None:
        """
        A field the schema does not define is refused, by name.
        """
        self.assertInvalid({"title": "x", "colour": "red"}, "unknown field 'colour'")

    def test_missing_required(self) -> None:
        """
        A missing required field is named.
        """
        self.assertInvalid({"price": 1.0}, "missing required field 'title'")

    def test_missing_key_and_timestamps_allowed(self) -> None:
        """
        The primary key and timestamp fields may be missing even when required:
        the caller and L{stamp} fill them.
        """
        self.assertEqual(validate_record(self.product, {"title": "x"}), {"title": "x"})

    def test_null_required(self) -> None:
        """
        Null is refused for a required field, accepted for an optional one.
        """
        self.assertInvalid({"title": None}, "field 'title' may not be null")
        self.assertEqual(
            validate_record(self.product, {"title": "x", "price": None}),
            {"title": "x", "price": None},
        )

    def test_null_primary_key(self) -> None:
        """
        The primary key is never null, even when its type is nullable.
        """
        error = self.assertRaises(
            ValidationError, validate_record, self.tables["Note"], {"slug": None}
        )
        self.assertEqual(error.message, "field 'slug' may not be null")

    def test_empty_primary_key(self) -> None:
        """
        An empty string primary key cannot be addressed by URL and is refused.
        """
        self.assertInvalid(
            {"id": "", "title": "x"}, "field 'id' (the primary key) may not be empty"
        )

    def test_type_errors(self) -> None:
        """
        Each scalar type refuses values of other JSON types, naming field,
        type and the JSON type given.
        """
        cases = [
            ({"title": 5}, "field 'title' must be a String, got integer"),
            ({"title": "x", "price": "cheap"}, "field 'price' must be a Float, got string"),
            ({"title": "x", "price": True}, "field 'price' must be a Float, got boolean"),
            ({"title": "x", "stock": 1.5}, "field 'stock' must be an Int, got float"),
            ({"title": "x", "stock": False}, "field 'stock' must be an Int, got boolean"),
            ({"title": "x", "active": 1}, "field 'active' must be a Boolean, got integer"),
            ({"title": "x", "active": "true"}, "field 'active' must be a Boolean, got string"),
            ({"id": 1.5, "title": "x"}, "field 'id' must be an ID, got float"),
            ({"id": {}, "title": "x"}, "field 'id' must be an ID, got object"),
        ]
        for value, message in cases:
            self.assertInvalid(value, message)

    def test_int_range(self) -> None:
        """
        Int accepts exactly the signed 64-bit range.
        """
        for n in (-(2**63), 2**63 - 1):
            self.assertEqual(validate_record(self.product, {"title": "x", "stock": n})["stock"], n)
        for n in (-(2**63) - 1, 2**63):
            self.assertInvalid(
                {"title": "x", "stock": n}, "field 'stock' is out of range for Int (signed 64-bit)"
            )

    def test_float_finite(self) -> None:
        """
        Float accepts integers and finite floats, not NaN or infinities.
        """
        self.assertEqual(validate_record(self.product, {"title": "x", "price": 3})["price"], 3)
        for bad in (float("nan"), float("inf"), float("-inf")):
            self.assertInvalid({"title": "x", "price": bad}, "field 'price' must be a finite Float")

    def test_id_from_int(self) -> None:
        """
        An integer ID becomes its decimal string.
        """
        result = validate_record(self.product, {"id": 42, "title": "x"})
        self.assertEqual(result["id"], "42")

    def test_nul(self) -> None:
        """
        Strings containing NUL are refused, in plain fields, IDs and lists.
        """
        self.assertInvalid({"title": "a\x00b"}, "field 'title' must not contain a NUL character")
        self.assertInvalid(
            {"id": "\x00", "title": "x"}, "field 'id' must not contain a NUL character"
        )
        self.assertInvalid(
            {"title": "x", "tags": ["ok", "\x00"]},
            "field 'tags[1]' must not contain a NUL character",
        )

    def test_lists(self) -> None:
        """
        A list field needs a list of its item type; null items only when the
        item type is nullable.
        """
        self.assertInvalid(
            {"title": "x", "tags": "a"}, "field 'tags' must be a list of String, got string"
        )
        self.assertInvalid(
            {"title": "x", "sizes": [1, "2"]}, "field 'sizes[1]' must be an Int, got string"
        )
        self.assertInvalid({"title": "x", "sizes": [1, None]}, "field 'sizes[1]' may not be null")
        self.assertEqual(
            validate_record(self.product, {"title": "x", "tags": [None, "b"], "sizes": []}),
            {"title": "x", "tags": [None, "b"], "sizes": []},
        )

    def test_partial(self) -> None:
        """
        A partial (PATCH) record may omit required fields but may not null them.
        """
        self.assertEqual(
            validate_record(self.product, {"price": 2.0}, partial=True), {"price": 2.0}
        )
        self.assertInvalid({"title": None}, "field 'title' may not be null", partial=True)
        self.assertInvalid(
            {"price": "x"}, "field 'price' must be a Float, got string", partial=True
        )
        self.assertInvalid({"nope": 1}, "unknown field 'nope'", partial=True)


class StampTests(TestCase):
    """
    Tests for L{stamp}.
    """

    def setUp(self) -> None:
        self.tables = _tables()
        self.now = datetime(2025, 1, 15, 10, 30, 0, 123456, tzinfo=UTC)

    def test_created_string(self) -> None:
        """
        On creation both timestamp fields get ISO 8601 UTC with milliseconds
        and Z; the input dict is not changed.
        """
        record = {"title": "x"}
        stamped = stamp(self.tables["Product"], record, self.now, created=True)
        self.assertEqual(
            stamped,
            {
                "title": "x",
                "createdAt": "2025-01-15T10:30:00.123Z",
                "updatedAt": "2025-01-15T10:30:00.123Z",
            },
        )
        self.assertEqual(record, {"title": "x"})

    def test_updated_only(self) -> None:
        """
        On update only @updatedTime fields change; @createdTime is kept.
        """
        record = {"title": "x", "createdAt": "2024-01-01T00:00:00.000Z"}
        stamped = stamp(self.tables["Product"], record, self.now, created=False)
        self.assertEqual(stamped["createdAt"], "2024-01-01T00:00:00.000Z")
        self.assertEqual(stamped["updatedAt"], "2025-01-15T10:30:00.123Z")

    def test_numeric(self) -> None:
        """
        Int fields get integer epoch milliseconds, Float fields fractional ones.
        """
        stamped = stamp(self.tables["Counter"], {"n": 1}, self.now, created=True)
        self.assertEqual(stamped["createdMs"], 1736937000123)
        self.assertIsInstance(stamped["createdMs"], int)
        self.assertAlmostEqual(stamped["updatedMs"], 1736937000123.456, places=2)
        self.assertIsInstance(stamped["updatedMs"], float)

    def test_other_timezone(self) -> None:
        """
        An aware time in another zone is written as UTC.
        """
        plus_two = self.now.astimezone(timezone(timedelta(hours=2)))
        stamped = stamp(self.tables["Product"], {}, plus_two, created=True)
        self.assertEqual(stamped["createdAt"], "2025-01-15T10:30:00.123Z")

    def test_naive_refused(self) -> None:
        """
        A naive time is a programming error.
        """
        self.assertRaises(
            ValueError,
            stamp,
            self.tables["Product"],
            {},
            self.now.replace(tzinfo=None),
            created=True,
        )


class KeyTests(TestCase):
    """
    Tests for L{new_key} and L{key_from_path}.
    """

    def setUp(self) -> None:
        self.tables = _tables()

    def test_new_key(self) -> None:
        """
        New keys are distinct random (version 4) UUID strings.
        """
        a, b = new_key(), new_key()
        self.assertNotEqual(a, b)
        self.assertEqual(uuid.UUID(a).version, 4)
        self.assertEqual(str(uuid.UUID(a)), a)

    def test_string_keys(self) -> None:
        """
        ID and String keys are the text itself.
        """
        self.assertEqual(key_from_path(self.tables["Product"], "42"), "42")
        self.assertEqual(key_from_path(self.tables["Note"], "hello world"), "hello world")

    def test_int_keys(self) -> None:
        """
        Int keys are parsed, including negatives and the 64-bit bounds.
        """
        counter = self.tables["Counter"]
        self.assertEqual(key_from_path(counter, "42"), 42)
        self.assertEqual(key_from_path(counter, "-7"), -7)
        self.assertEqual(key_from_path(counter, str(2**63 - 1)), 2**63 - 1)
        self.assertEqual(key_from_path(counter, str(-(2**63))), -(2**63))

    def test_bad_int_keys(self) -> None:
        """
        Non-integers and out-of-range integers are refused for Int keys.
        """
        counter = self.tables["Counter"]
        for text in ("abc", "1.5", " 1", "+1", "1e3", "٣", str(2**63), "9" * 50):
            error = self.assertRaises(ValidationError, key_from_path, counter, text)
            self.assertIn("is not a valid Int", error.message)

    def test_empty_and_nul(self) -> None:
        """
        Empty ids and ids with NUL are refused for every key type.
        """
        for table in self.tables.values():
            self.assertRaises(ValidationError, key_from_path, table, "")
            self.assertRaises(ValidationError, key_from_path, table, "a\x00")
