"""
The REST API over real HTTPS: listing, CRUD, validation, errors, CORS.

Every test starts the real daemon (L{DaemonTestCase}) with real TLS on a
free loopback port and speaks HTTP to it with Twisted's Agent.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from io import BytesIO
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.web.client import FileBodyProducer, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from tests.harness import ETC, DaemonTestCase, write_app
from yeti.records import MAX_KEY_BYTES

PRODUCT_SCHEMA = """
type Product @table(database: "shop") @export {
    id: ID! @primaryKey
    name: String!
    price: Float
    quantity: Int
    category: String @indexed
    inStock: Boolean
    createdAt: String @createdTime
    updatedAt: String @updatedTime
}

type Secret @table(database: "shop") @export(rest: false, ws: true) {
    id: ID! @primaryKey
    value: String
}

type Internal @table(database: "shop") {
    id: ID! @primaryKey
    value: String
}
"""

PRODUCTS: list[dict[str, Any]] = [
    {"id": "p1", "name": "Widget", "price": 9.99, "quantity": 10,
     "category": "hardware", "inStock": True},
    {"id": "p2", "name": "Gadget", "price": 24.5, "quantity": 0,
     "category": "hardware", "inStock": False},
    {"id": "p3", "name": "Gizmo", "price": 99.0, "quantity": 3,
     "category": "electronics", "inStock": True},
    {"id": "p4", "name": "Doohickey", "price": 29.99, "quantity": 7,
     "category": "tools", "inStock": True},
    {"id": "p5", "name": "Thingamajig", "price": 5, "quantity": 100},
]

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")
JSON = {"content-type": "application/json"}


class ProductTestCase(DaemonTestCase):
    """A daemon serving C{shop} with the L{PRODUCT_SCHEMA} tables."""

    def apps(self, root: str) -> list[str]:
        return [write_app(root, "shop", PRODUCT_SCHEMA, {"ws": False, "sse": False})]

    async def seed(self) -> None:
        status, body, _ = await self.daemon.request("POST", "/shop/Product", PRODUCTS)
        self.assertEqual(status, 201, body)

    async def ids(self, query: str = "") -> list[str]:
        """The ids a list request returns, in order."""
        status, body, _ = await self.daemon.request("GET", "/shop/Product" + query)
        self.assertEqual(status, 200, body)
        return [r["id"] for r in body]

    async def snapshot(self) -> list[dict[str, Any]]:
        status, body, _ = await self.daemon.request("GET", "/shop/Product?sort=id")
        self.assertEqual(status, 200, body)
        return body

    async def assertError(self, expected: int, method: str, path: str, body: Any = None,
                          **kwargs: Any) -> tuple[str, Any]:
        """
        Make a request that must fail with C{expected} and a JSON error, and
        leave the table as it was; return the error message and headers.
        """
        before = await self.snapshot()
        status, answer, headers = await self.daemon.request(method, path, body, **kwargs)
        self.assertEqual(status, expected, answer)
        self.assertIsInstance(answer, dict, answer)
        self.assertEqual(list(answer), ["error"])
        self.assertIsInstance(answer["error"], str)
        self.assertNotIn("Traceback", answer["error"])
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertEqual(await self.snapshot(), before)
        return answer["error"], headers


class ListTests(ProductTestCase):
    """
    C{GET /{app}/{Table}}: limit, offset, sort, select, filter and bare FIQL.
    """

    async def test_list_all(self) -> None:
        """Without parameters every record is returned, in insertion order."""
        await self.seed()
        self.assertEqual(await self.ids(), ["p1", "p2", "p3", "p4", "p5"])

    async def test_empty(self) -> None:
        """An empty table lists as an empty array."""
        status, body, _ = await self.request("GET", "/shop/Product")
        self.assertEqual((status, body), (200, []))

    async def test_limit_offset(self) -> None:
        """C{limit} and C{offset} page through the records; both styles work."""
        await self.seed()
        self.assertEqual(await self.ids("?limit=2"), ["p1", "p2"])
        self.assertEqual(await self.ids("?limit=2&offset=2"), ["p3", "p4"])
        self.assertEqual(await self.ids("?offset=4"), ["p5"])
        self.assertEqual(await self.ids("?limit=2&offset=10"), [])
        self.assertEqual(await self.ids("?limit=0"), [])
        self.assertEqual(await self.ids("?limit(1,2)"), ["p2", "p3"])

    async def test_sort(self) -> None:
        """C{sort} orders ascending, C{-} descending, nulls last ascending."""
        await self.seed()
        self.assertEqual(await self.ids("?sort=price"), ["p5", "p1", "p2", "p4", "p3"])
        self.assertEqual(await self.ids("?sort=-price"), ["p3", "p4", "p2", "p1", "p5"])
        self.assertEqual(await self.ids("?sort=name"), ["p4", "p2", "p3", "p5", "p1"])
        self.assertEqual(await self.ids("?sort=category"), ["p3", "p1", "p2", "p4", "p5"])

    async def test_sort_multi(self) -> None:
        """Several sort fields apply in order, each with its own direction."""
        await self.seed()
        self.assertEqual(
            await self.ids("?sort=category,-price"), ["p3", "p2", "p1", "p4", "p5"]
        )
        self.assertEqual(
            await self.ids("?sort=-inStock,quantity"), ["p5", "p3", "p4", "p1", "p2"]
        )

    async def test_select(self) -> None:
        """C{select} returns only the named fields; absent ones are omitted."""
        await self.seed()
        status, body, _ = await self.request("GET", "/shop/Product?select=id,category&sort=-id")
        self.assertEqual(status, 200)
        self.assertEqual(body, [
            {"id": "p5"},
            {"id": "p4", "category": "tools"},
            {"id": "p3", "category": "electronics"},
            {"id": "p2", "category": "hardware"},
            {"id": "p1", "category": "hardware"},
        ])

    async def test_select_one_record(self) -> None:
        """C{select} applies to a single record too."""
        await self.seed()
        status, body, _ = await self.request("GET", "/shop/Product/p1?select=name,price")
        self.assertEqual((status, body), (200, {"name": "Widget", "price": 9.99}))

    async def test_filter_parameter(self) -> None:
        """C{filter=} takes a FIQL expression with C{;} (and) and C{,} (or)."""
        await self.seed()
        self.assertEqual(await self.ids("?filter=price=gt=10;price=lt=50"), ["p2", "p4"])
        self.assertEqual(
            await self.ids("?filter=category==tools,category==electronics"), ["p3", "p4"]
        )
        self.assertEqual(
            await self.ids("?filter=price=gt=10;price=lt=50&sort=-price&limit=1"), ["p4"]
        )

    async def test_bare_fiql(self) -> None:
        """FIQL terms right in the query string are ANDed with C{&}."""
        await self.seed()
        self.assertEqual(await self.ids("?category==hardware"), ["p1", "p2"])
        self.assertEqual(await self.ids("?price=gt=10&category==hardware"), ["p2"])
        self.assertEqual(await self.ids("?category==hardware|category==tools"), ["p1", "p2", "p4"])

    async def test_operators(self) -> None:
        """Each comparison operator compares with the field's schema type."""
        await self.seed()
        cases = {
            "?quantity==0": ["p2"],
            "?quantity!=0": ["p1", "p3", "p4", "p5"],
            "?quantity=ge=7": ["p1", "p4", "p5"],
            "?quantity=le=7": ["p2", "p3", "p4"],
            "?quantity=lt=10": ["p2", "p3", "p4"],
            "?price=ge=99": ["p3"],
            "?price=le=5": ["p5"],
            "?price==5": ["p5"],
            "?inStock==true": ["p1", "p3", "p4"],
            "?inStock==false": ["p2"],
            "?category=in=(tools,electronics)": ["p3", "p4"],
            "?category=out=(hardware)": ["p3", "p4", "p5"],
            "?name=ct=dg": ["p1", "p2"],
            "?name=sw=G": ["p2", "p3"],
            "?name=ew=et": ["p1", "p2"],
            "?name==*g*": ["p1", "p2", "p5"],
            "?name==Wid*": ["p1"],
            "?name==*o": ["p3"],
            "?category==null": ["p5"],
            "?id=gt=p3": ["p4", "p5"],
        }
        for query, expected in cases.items():
            self.assertEqual(await self.ids(query), expected, query)

    async def test_grouping_and_negation(self) -> None:
        """Parentheses group, C{!()} negates, and C{,}/C{;} nest."""
        await self.seed()
        self.assertEqual(
            await self.ids("?(category==hardware,category==tools);price=gt=20"), ["p2", "p4"]
        )
        self.assertEqual(await self.ids("?!(category==hardware)"), ["p3", "p4", "p5"])
        self.assertEqual(
            await self.ids("?filter=!(price=lt=10),quantity==100"), ["p2", "p3", "p4", "p5"]
        )

    async def test_encoded_values(self) -> None:
        """Percent-encoded values are decoded, so reserved characters can be matched."""
        await self.request("POST", "/shop/Product", {"id": "odd", "name": "a,b & (c)"})
        self.assertEqual(await self.ids("?name==a%2Cb%20%26%20%28c%29"), ["odd"])
        await self.assertError(400, "GET", "/shop/Product?name==a,b")  # "," is OR

    async def test_indexed_filter_uses_index(self) -> None:
        """
        A filter on an C{@indexed} field gives the same answer as on any
        other field, with many records (the index is what SQLite uses).
        """
        batch = [{"id": f"r{i:03d}", "name": f"n{i}", "category": f"c{i % 10}"}
                 for i in range(200)]
        status, _, _ = await self.request("POST", "/shop/Product", batch)
        self.assertEqual(status, 201)
        ids = await self.ids("?category==c3&limit=5")
        self.assertEqual(ids, ["r003", "r013", "r023", "r033", "r043"])


class CreateTests(ProductTestCase):
    """C{POST}: one record, generated ids, batches, conflicts."""

    async def test_create(self) -> None:
        """POST answers 201, the documented body and a Location; the record is stored."""
        record = {"id": "prod-1", "name": "Widget", "price": 9.99, "quantity": 2,
                  "category": "hardware", "inStock": True}
        status, body, headers = await self.request("POST", "/shop/Product", record)
        self.assertEqual((status, body), (201, {"message": "Record created", "id": "prod-1"}))
        self.assertEqual(headers.getRawHeaders(b"location"), [b"/shop/Product/prod-1"])
        status, stored, _ = await self.request("GET", "/shop/Product/prod-1")
        self.assertEqual(status, 200)
        self.assertTrue(ISO_UTC.match(stored.pop("createdAt")))
        self.assertTrue(ISO_UTC.match(stored.pop("updatedAt")))
        self.assertEqual(stored, record)

    async def test_generated_id(self) -> None:
        """Without an id the record gets a random UUID, named in body and Location."""
        status, body, headers = await self.request("POST", "/shop/Product", {"name": "x"})
        self.assertEqual(status, 201)
        key = body["id"]
        self.assertEqual(str(uuid.UUID(key)), key)
        self.assertEqual(headers.getRawHeaders(b"location"), [f"/shop/Product/{key}".encode()])
        status, stored, _ = await self.request("GET", f"/shop/Product/{key}")
        self.assertEqual((status, stored["name"]), (200, "x"))

    async def test_location_is_encoded(self) -> None:
        """The Location header percent-encodes an id with reserved characters."""
        status, _, headers = await self.request("POST", "/shop/Product",
                                                {"id": "a/b c?", "name": "x"})
        self.assertEqual(status, 201)
        location = headers.getRawHeaders(b"location")[0]
        self.assertEqual(location, b"/shop/Product/a%2Fb%20c%3F")
        status, stored, _ = await self.request("GET", location.decode())
        self.assertEqual((status, stored["id"]), (200, "a/b c?"))

    async def test_batch(self) -> None:
        """POST of an array creates every record and lists their ids in order."""
        status, body, _ = await self.request(
            "POST", "/shop/Product", [{"id": "b1", "name": "one"}, {"name": "two"}]
        )
        self.assertEqual(status, 201)
        self.assertEqual(body["message"], "Records created")
        self.assertEqual(body["ids"][0], "b1")
        self.assertEqual(len(body["ids"]), 2)
        self.assertEqual(sorted(await self.ids()), sorted(body["ids"]))

    async def test_batch_atomic_bad_record(self) -> None:
        """One invalid record in a batch stores nothing and names the field."""
        await self.seed()
        batch = [{"id": "ok1", "name": "fine"}, {"id": "bad", "name": "x", "price": "cheap"}]
        error, _ = await self.assertError(400, "POST", "/shop/Product", batch)
        self.assertIn("price", error)
        self.assertEqual((await self.request("GET", "/shop/Product/ok1"))[0], 404)

    async def test_batch_atomic_existing_id(self) -> None:
        """A batch with an id that exists already stores nothing: 409."""
        await self.seed()
        batch = [{"id": "new1", "name": "fine"}, {"id": "p3", "name": "clash"}]
        error, _ = await self.assertError(409, "POST", "/shop/Product", batch)
        self.assertIn("p3", error)
        self.assertEqual((await self.request("GET", "/shop/Product/new1"))[0], 404)

    async def test_batch_duplicate_ids(self) -> None:
        """A batch holding the same id twice stores nothing: 400."""
        batch = [{"id": "d", "name": "one"}, {"id": "d", "name": "two"}]
        await self.assertError(400, "POST", "/shop/Product", batch)

    async def test_empty_batch(self) -> None:
        """An empty array is a bad request."""
        await self.assertError(400, "POST", "/shop/Product", [])

    async def test_conflict(self) -> None:
        """POST of an existing id is 409 and leaves the record as it was."""
        await self.seed()
        error, _ = await self.assertError(409, "POST", "/shop/Product",
                                          {"id": "p1", "name": "Other"})
        self.assertIn("p1", error)

    async def test_deeply_nested(self) -> None:
        """
        Deeply nested JSON is 400, whether the schema (a list for a String)
        or the JSON parser (past its depth limit) refuses it.
        """
        await self.seed()
        for depth in (100, 5000):
            raw = b'{"id": "n", "name": ' + b"[" * depth + b"]" * depth + b"}"
            await self.assertError(400, "POST", "/shop/Product", raw=raw, headers=JSON)

    async def test_id_as_integer(self) -> None:
        """An integer id of an C{ID} field is stored as its string."""
        status, body, _ = await self.request("POST", "/shop/Product", {"id": 42, "name": "n"})
        self.assertEqual((status, body["id"]), (201, "42"))
        status, stored, _ = await self.request("GET", "/shop/Product/42")
        self.assertEqual((status, stored["id"]), (200, "42"))


class RecordTests(ProductTestCase):
    """C{GET}, C{PUT}, C{PATCH} and C{DELETE} on C{/{app}/{Table}/{id}}."""

    async def test_get(self) -> None:
        """GET of a record is 200 with the record; of an unknown id 404."""
        await self.seed()
        status, body, _ = await self.request("GET", "/shop/Product/p3")
        self.assertEqual((status, body["name"], body["price"]), (200, "Gizmo", 99.0))
        error, _ = await self.assertError(404, "GET", "/shop/Product/nope")
        self.assertIn("nope", error)

    async def test_head(self) -> None:
        """HEAD answers like GET, without a body."""
        await self.seed()
        status, body, _ = await self.request("HEAD", "/shop/Product/p3")
        self.assertEqual((status, body), (200, None))

    async def test_put_replaces(self) -> None:
        """
        PUT replaces the whole record: omitted fields are gone, C{createdAt}
        is kept and C{updatedAt} changes.
        """
        await self.seed()
        _, before, _ = await self.request("GET", "/shop/Product/p1")
        await deferLater(reactor, 0.01, lambda: None)
        status, body, _ = await self.request("PUT", "/shop/Product/p1",
                                             {"id": "p1", "name": "Widget Pro", "price": 14.99})
        self.assertEqual(status, 200, body)
        _, after, _ = await self.request("GET", "/shop/Product/p1")
        self.assertEqual(after, body)
        self.assertEqual(after["createdAt"], before["createdAt"])
        self.assertGreater(after["updatedAt"], before["updatedAt"])
        for gone in ("quantity", "category", "inStock"):
            self.assertIsNone(after.get(gone), gone)
        self.assertEqual((after["name"], after["price"]), ("Widget Pro", 14.99))
        self.assertEqual(await self.ids("?category==hardware"), ["p2"])

    async def test_put_without_id_in_body(self) -> None:
        """The id in the URL is used when the body has none."""
        await self.seed()
        status, body, _ = await self.request("PUT", "/shop/Product/p2", {"name": "G2"})
        self.assertEqual((status, body["id"], body["name"]), (200, "p2", "G2"))

    async def test_put_creates(self) -> None:
        """PUT of an unknown id creates it: 201 with the record and its Location."""
        status, body, headers = await self.request("PUT", "/shop/Product/fresh",
                                                   {"name": "Fresh"})
        self.assertEqual(status, 201, body)
        self.assertEqual((body["id"], body["name"]), ("fresh", "Fresh"))
        self.assertEqual(body["createdAt"], body["updatedAt"])
        self.assertEqual(headers.getRawHeaders(b"location"), [b"/shop/Product/fresh"])
        self.assertEqual(await self.ids(), ["fresh"])

    async def test_put_missing_required(self) -> None:
        """PUT without a required field is 400 naming it, and changes nothing."""
        await self.seed()
        error, _ = await self.assertError(400, "PUT", "/shop/Product/p1", {"price": 1.0})
        self.assertIn("'name'", error)
        error, _ = await self.assertError(400, "PUT", "/shop/Product/newone", {"price": 1.0})
        self.assertIn("'name'", error)

    async def test_put_id_mismatch(self) -> None:
        """PUT whose body id differs from the URL id is refused."""
        await self.seed()
        error, _ = await self.assertError(400, "PUT", "/shop/Product/p1",
                                          {"id": "p2", "name": "x"})
        self.assertIn("id", error)

    async def test_patch_merges(self) -> None:
        """PATCH changes only the given fields and refreshes C{updatedAt}."""
        await self.seed()
        _, before, _ = await self.request("GET", "/shop/Product/p1")
        await deferLater(reactor, 0.01, lambda: None)
        status, body, _ = await self.request("PATCH", "/shop/Product/p1",
                                             {"price": 12.99, "inStock": False})
        self.assertEqual(status, 200, body)
        _, after, _ = await self.request("GET", "/shop/Product/p1")
        self.assertEqual(after, body)
        self.assertEqual((after["price"], after["inStock"]), (12.99, False))
        for kept in ("name", "quantity", "category", "createdAt"):
            self.assertEqual(after[kept], before[kept], kept)
        self.assertGreater(after["updatedAt"], before["updatedAt"])

    async def test_patch_null_clears(self) -> None:
        """PATCH with null clears an optional field; on a required field it is 400."""
        await self.seed()
        status, body, _ = await self.request("PATCH", "/shop/Product/p1", {"category": None})
        self.assertEqual((status, body["category"]), (200, None))
        error, _ = await self.assertError(400, "PATCH", "/shop/Product/p1", {"name": None})
        self.assertIn("'name'", error)

    async def test_patch_errors(self) -> None:
        """PATCH of an unknown id is 404; changing the id or a wrong type is 400."""
        await self.seed()
        await self.assertError(404, "PATCH", "/shop/Product/nope", {"price": 1.0})
        await self.assertError(400, "PATCH", "/shop/Product/p1", {"id": "p9"})
        error, _ = await self.assertError(400, "PATCH", "/shop/Product/p1", {"quantity": 1.5})
        self.assertIn("quantity", error)

    async def test_delete(self) -> None:
        """DELETE answers 204 with no body; the record is gone; again 404."""
        await self.seed()
        status, body, _ = await self.request("DELETE", "/shop/Product/p2")
        self.assertEqual((status, body), (204, None))
        self.assertEqual((await self.request("GET", "/shop/Product/p2"))[0], 404)
        self.assertEqual(await self.ids(), ["p1", "p3", "p4", "p5"])
        await self.assertError(404, "DELETE", "/shop/Product/p2")


class RoutingTests(ProductTestCase):
    """Unknown paths are 404; methods a URL does not take are 405 with C{Allow}."""

    async def test_unknown_paths(self) -> None:
        """Unknown app, table, internal table and nested paths are 404 JSON errors."""
        await self.seed()
        for path in ("/nope/Product", "/shop/Nope", "/shop/Internal", "/shop/Product/p1/x",
                     "/shop/Product/p1/x/y", "/", "/shop"):
            await self.assertError(404, "GET", path)

    async def test_trailing_slash(self) -> None:
        """C{/{app}/{Table}/} is the table's URL."""
        await self.seed()
        self.assertEqual(await self.ids("/?limit=1"), ["p1"])

    async def test_method_not_allowed(self) -> None:
        """POST on a record, PUT/PATCH/DELETE on a table: 405 with an Allow header."""
        await self.seed()
        _, headers = await self.assertError(405, "POST", "/shop/Product/p1", {"name": "x"})
        allowed = set(headers.getRawHeaders(b"allow")[0].decode().split(", "))
        self.assertEqual(allowed, {"GET", "PUT", "PATCH", "DELETE", "OPTIONS"})
        for method in ("DELETE", "PUT", "PATCH"):
            _, headers = await self.assertError(405, method, "/shop/Product", {"name": "x"})
            allowed = set(headers.getRawHeaders(b"allow")[0].decode().split(", "))
            self.assertEqual(allowed, {"GET", "POST", "OPTIONS"})
        _, headers = await self.assertError(405, "TRACE", "/shop/Product/p1")
        self.assertIn(b"GET", headers.getRawHeaders(b"allow")[0])

    async def test_rest_disabled(self) -> None:
        """A table exported with C{rest: false} refuses every REST verb."""
        for method, path, body in (("GET", "/shop/Secret", None),
                                   ("POST", "/shop/Secret", {"id": "s", "value": "v"}),
                                   ("GET", "/shop/Secret/s", None),
                                   ("PUT", "/shop/Secret/s", {"value": "v"}),
                                   ("DELETE", "/shop/Secret/s", None)):
            error, _ = await self.assertError(405, method, path, body)
            self.assertIn("REST is not enabled", error)


class BodyErrorTests(ProductTestCase):
    """Bad request bodies: each is a JSON error and changes nothing."""

    sections = {"http": {"maxBodySize": 2048}}

    async def test_too_large(self) -> None:
        """A body over C{http.maxBodySize} is 413."""
        await self.seed()
        big = {"id": "big", "name": "x" * 4096}
        error, _ = await self.assertError(413, "POST", "/shop/Product", big)
        self.assertIn("2048", error)
        await self.assertError(413, "PUT", "/shop/Product/p1", big)

    async def test_too_large_chunked(self) -> None:
        """A chunked body (no Content-Length) over the limit is 413 too."""
        await self.seed()
        before = await self.snapshot()
        body = b'{"id": "big", "name": "' + b"x" * 8192 + b'"}'
        producer = FileBodyProducer(BytesIO(body))
        producer.length = UNKNOWN_LENGTH
        response = await self.daemon.agent().request(
            b"POST", self.daemon.url("/shop/Product").encode(),
            Headers({b"content-type": [b"application/json"]}), producer)
        answer = json.loads(await readBody(response))
        self.assertEqual(response.code, 413, answer)
        self.assertIn("2048", answer["error"])
        self.assertEqual(await self.snapshot(), before)

    async def test_at_limit(self) -> None:
        """A body just under the limit is accepted."""
        body = {"id": "edge", "name": ""}
        overhead = len(b'{"id": "edge", "name": ""}')
        body["name"] = "y" * (2048 - overhead)
        status, answer, _ = await self.request("POST", "/shop/Product", body)
        self.assertEqual(status, 201, answer)

    async def test_unsupported_media_type(self) -> None:
        """A text/plain (or form) body is 415."""
        await self.seed()
        raw = b'{"id": "t", "name": "x"}'
        for ctype in ("text/plain", "application/x-www-form-urlencoded"):
            error, _ = await self.assertError(415, "POST", "/shop/Product", raw=raw,
                                              headers={"content-type": ctype})
            self.assertIn("application/json", error)

    async def test_json_content_type_variants(self) -> None:
        """C{application/json; charset=utf-8} is JSON; so is a missing content type."""
        charset = {"content-type": "application/json; charset=utf-8"}
        status, _, _ = await self.request("POST", "/shop/Product",
                                          raw=b'{"id": "c1", "name": "x"}', headers=charset)
        self.assertEqual(status, 201)
        status, _, _ = await self.request("POST", "/shop/Product",
                                          raw=b'{"id": "c2", "name": "y"}')
        self.assertEqual(status, 201)

    async def test_bad_json(self) -> None:
        """Malformed JSON, an empty body and invalid UTF-8 are 400."""
        await self.seed()
        for raw in (b'{"id": "j", "name": ', b"", b"nope", b'{"id": "j", "name": "\xff\xfe"}',
                    b'{"id": "j", "name": "x"} trailing', b"\xef\xbb\xbf{}"):
            await self.assertError(400, "POST", "/shop/Product", raw=raw, headers=JSON)
        await self.assertError(400, "PUT", "/shop/Product/p1", raw=b"{", headers=JSON)
        await self.assertError(400, "PATCH", "/shop/Product/p1", raw=b"[", headers=JSON)

    async def test_not_an_object(self) -> None:
        """JSON that is not an object (or array of objects) is 400."""
        await self.seed()
        for body in (1, "text", None, True, [1, 2], [[{"name": "x"}]]):
            await self.assertError(400, "POST", "/shop/Product", raw=_dumps(body), headers=JSON)
        for body in ([{"name": "x"}], "x", 3):
            await self.assertError(400, "PUT", "/shop/Product/p1", body)
            await self.assertError(400, "PATCH", "/shop/Product/p1", body)

    async def test_wrong_types(self) -> None:
        """Each type mismatch is 400 naming the field."""
        await self.seed()
        cases = [
            ("name", 5), ("name", None), ("price", "9.99"), ("price", True),
            ("quantity", 1.5), ("quantity", "3"), ("quantity", 2**64), ("inStock", "yes"),
            ("inStock", 1), ("category", ["a"]), ("category", {"a": 1}), ("id", 1.5),
            ("id", ["x"]),
        ]
        for field, value in cases:
            record = {"id": "w", "name": "n", field: value}
            error, _ = await self.assertError(400, "POST", "/shop/Product", record)
            self.assertIn(f"'{field}'", error, (field, value))

    async def test_unknown_field(self) -> None:
        """A field the schema does not have is refused, by name."""
        await self.seed()
        error, _ = await self.assertError(400, "POST", "/shop/Product",
                                          {"id": "u", "name": "n", "colour": "red"})
        self.assertIn("colour", error)
        await self.assertError(400, "PATCH", "/shop/Product/p1", {"colour": "red"})
        await self.assertError(400, "PUT", "/shop/Product/p1", {"name": "n", "colour": "red"})

    async def test_nul_bytes(self) -> None:
        """A NUL character in a string or id is 400."""
        await self.seed()
        error, _ = await self.assertError(400, "POST", "/shop/Product",
                                          {"id": "z", "name": "a\u0000b"})
        self.assertIn("'name'", error)
        await self.assertError(400, "POST", "/shop/Product", {"id": "z\u0000", "name": "x"})
        await self.assertError(400, "POST", "/shop/Product",
                               raw=b'{"id": "z", "name": "x", "\\u0000": 1}', headers=JSON)

    async def test_timestamps_cannot_be_forged_type(self) -> None:
        """A timestamp field of the wrong type is 400 like any other field."""
        await self.seed()
        await self.assertError(400, "POST", "/shop/Product",
                               {"id": "t", "name": "x", "createdAt": 5})


class QueryErrorTests(ProductTestCase):
    """Bad query strings are 400 and nothing is harmed."""

    async def test_bad_fiql(self) -> None:
        """Malformed filters and unknown fields are 400."""
        await self.seed()
        for query in ("?price=gt=", "?filter=(price=gt=1", "?price=zz=1", "?price=gt=abc",
                      "?quantity==1.5", "?inStock=gt=true", "?nofield==1", "?filter=",
                      "?category==a)", "?%FF==1", "?name==%FF"):
            await self.assertError(400, "GET", "/shop/Product" + query)

    async def test_bad_select_sort(self) -> None:
        """An unknown select or sort field is 400 naming it."""
        await self.seed()
        error, _ = await self.assertError(400, "GET", "/shop/Product?select=id,bogus")
        self.assertIn("bogus", error)
        error, _ = await self.assertError(400, "GET", "/shop/Product?sort=-bogus")
        self.assertIn("bogus", error)
        await self.assertError(400, "GET", "/shop/Product?sort=")
        await self.assertError(400, "GET", "/shop/Product/p1?select=bogus")

    async def test_bad_limit_offset(self) -> None:
        """Negative, non-integer and huge limits and offsets are 400."""
        await self.seed()
        for query in ("?offset=-1", "?limit=-1", "?limit=abc", "?limit=1.5",
                      "?limit=99999999999999999999999", "?offset=99999999999999999999999",
                      "?limit=1&limit=2"):
            await self.assertError(400, "GET", "/shop/Product" + query)

    async def test_large_limit_is_a_cap(self) -> None:
        """A large but valid limit just returns every record."""
        await self.seed()
        self.assertEqual(len(await self.ids("?limit=1000000000")), 5)

    async def test_sql_injection_in_values(self) -> None:
        """SQL in a filter value is a plain value: it matches nothing, harms nothing."""
        await self.seed()
        for value in ("x'%20OR%20'1'='1", "x%27%3B%20DROP%20TABLE%20Product%3B--",
                      "%22%29%20OR%201%3D1--", "1%20OR%201%3D1"):
            self.assertEqual(await self.ids("?name==" + value), [], value)
            self.assertEqual(await self.ids("?filter=category==" + value), [], value)
        self.assertEqual(len(await self.snapshot()), 5)

    async def test_sql_injection_in_names(self) -> None:
        """SQL in a field name, sort or select is 400 and harms nothing."""
        await self.seed()
        for query in ("?name')%20OR%201=1--==x", "?sort=name;DROP%20TABLE%20Product",
                      "?sort=name%20DESC", "?select=id,(SELECT%201)",
                      "?%22data%22==1", "?data==1", "?rowid=gt=0", "?key==p1"):
            await self.assertError(400, "GET", "/shop/Product" + query)
        self.assertEqual(await self.ids(), ["p1", "p2", "p3", "p4", "p5"])


class IdTests(ProductTestCase):
    """Ids in URLs: encodings, slashes, dots, length."""

    async def test_encoded_slash(self) -> None:
        """C{%2F} in a URL id is a slash inside the id, not a path separator."""
        status, _, _ = await self.request("PUT", "/shop/Product/a%2Fb", {"name": "slash"})
        self.assertEqual(status, 201)
        status, body, _ = await self.request("GET", "/shop/Product/a%2Fb")
        self.assertEqual((status, body["id"]), (200, "a/b"))
        await self.assertError(404, "GET", "/shop/Product/a/b")

    async def test_percent_encoding(self) -> None:
        """Percent-encoded UTF-8 ids round-trip; the same id is found either way."""
        status, body, _ = await self.request("POST", "/shop/Product",
                                             {"id": "café ☕", "name": "x"})
        self.assertEqual(status, 201)
        status, body, _ = await self.request("GET", "/shop/Product/caf%C3%A9%20%E2%98%95")
        self.assertEqual((status, body["id"]), (200, "café ☕"))
        status, _, _ = await self.request("DELETE", "/shop/Product/caf%C3%A9%20%E2%98%95")
        self.assertEqual(status, 204)

    async def test_invalid_utf8_id(self) -> None:
        """An id that is not UTF-8 once decoded is 400."""
        await self.seed()
        await self.assertError(400, "GET", "/shop/Product/%FF")
        await self.assertError(400, "PUT", "/shop/Product/%C3%28", {"name": "x"})

    async def test_nul_id(self) -> None:
        """An id holding an encoded NUL is 400."""
        await self.seed()
        await self.assertError(400, "GET", "/shop/Product/a%00b")
        await self.assertError(400, "PUT", "/shop/Product/a%00b", {"name": "x"})

    async def test_dot_ids(self) -> None:
        """C{.} and C{..} cannot be ids (clients normalise them away): 400."""
        await self.seed()
        for path in ("/shop/Product/..", "/shop/Product/%2E%2E", "/shop/Product/%2E"):
            await self.assertError(400, "PUT", path, {"name": "x"})
            await self.assertError(400, "GET", path)
        await self.assertError(400, "POST", "/shop/Product", {"id": "..", "name": "x"})

    async def test_dotdot_does_not_escape(self) -> None:
        """C{..} in the middle of a path does not reach another table or app."""
        await self.seed()
        await self.assertError(404, "GET", "/shop/Product/../Product/p1")
        await self.assertError(404, "GET", "/shop/Secret/../Product")

    async def test_long_ids(self) -> None:
        """Ids up to the maximum length work; longer ones are 400 by URL or body."""
        longest = "k" * MAX_KEY_BYTES
        status, _, _ = await self.request("PUT", f"/shop/Product/{longest}", {"name": "x"})
        self.assertEqual(status, 201)
        status, body, _ = await self.request("GET", f"/shop/Product/{longest}")
        self.assertEqual((status, body["id"]), (200, longest))
        too_long = longest + "k"
        error, _ = await self.assertError(400, "GET", f"/shop/Product/{too_long}")
        self.assertIn(str(MAX_KEY_BYTES), error)
        await self.assertError(400, "PUT", f"/shop/Product/{too_long}", {"name": "x"})
        await self.assertError(400, "POST", "/shop/Product", {"id": too_long, "name": "x"})
        # multi-byte characters count as their UTF-8 bytes
        await self.assertError(400, "POST", "/shop/Product",
                               {"id": "é" * (MAX_KEY_BYTES // 2 + 1), "name": "x"})

    async def test_empty_body_id(self) -> None:
        """An empty string id is 400."""
        await self.assertError(400, "POST", "/shop/Product", {"id": "", "name": "x"})


class CorsTests(ProductTestCase):
    """C{http.cors} with C{corsAccessList: ["*"]} (the shipped default)."""

    sections = {"http": {"cors": True, "corsAccessList": ["*"]}}

    async def test_simple_request(self) -> None:
        """Responses, errors included, carry C{Access-Control-Allow-Origin: *}."""
        headers = {"origin": "https://example.com"}
        for method, path in (("GET", "/shop/Product"), ("GET", "/shop/Product/none"),
                             ("GET", "/nope/x"), ("DELETE", "/shop/Product")):
            _, _, got = await self.request(method, path, headers=headers)
            self.assertEqual(got.getRawHeaders(b"access-control-allow-origin"), [b"*"],
                             (method, path))

    async def test_preflight(self) -> None:
        """OPTIONS answers 204 with the allowed methods and requested headers."""
        status, body, got = await self.request("OPTIONS", "/shop/Product", headers={
            "origin": "https://example.com",
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type, x-custom",
        })
        self.assertEqual((status, body), (204, None))
        self.assertEqual(got.getRawHeaders(b"access-control-allow-origin"), [b"*"])
        methods = got.getRawHeaders(b"access-control-allow-methods")[0].decode()
        self.assertEqual(set(methods.split(", ")), {"GET", "POST"})
        self.assertEqual(got.getRawHeaders(b"access-control-allow-headers"),
                         [b"content-type, x-custom"])
        self.assertTrue(got.hasHeader(b"access-control-max-age"))
        status, _, got = await self.request("OPTIONS", "/shop/Product/p1",
                                            headers={"origin": "https://example.com"})
        methods = got.getRawHeaders(b"access-control-allow-methods")[0].decode()
        self.assertEqual(set(methods.split(", ")), {"GET", "PUT", "PATCH", "DELETE"})


class RestrictedCorsTests(ProductTestCase):
    """C{http.corsAccessList} naming origins: only those get CORS headers."""

    sections = {"http": {"cors": True, "corsAccessList": ["https://good.example"]}}

    async def test_listed_origin(self) -> None:
        """A listed origin is echoed back, with C{Vary: Origin}."""
        _, _, got = await self.request("GET", "/shop/Product",
                                       headers={"origin": "https://good.example"})
        self.assertEqual(got.getRawHeaders(b"access-control-allow-origin"),
                         [b"https://good.example"])
        self.assertIn(b"Origin", got.getRawHeaders(b"vary")[0])
        status, _, got = await self.request("OPTIONS", "/shop/Product", headers={
            "origin": "https://good.example", "access-control-request-method": "POST"})
        self.assertEqual(status, 204)
        self.assertEqual(got.getRawHeaders(b"access-control-allow-origin"),
                         [b"https://good.example"])

    async def test_other_origin(self) -> None:
        """Another origin, or none, gets no C{Access-Control-Allow-Origin}."""
        for headers in ({"origin": "https://evil.example"}, {}):
            status, _, got = await self.request("GET", "/shop/Product", headers=headers)
            self.assertEqual(status, 200)
            self.assertFalse(got.hasHeader(b"access-control-allow-origin"))
            _, _, got = await self.request("OPTIONS", "/shop/Product", headers=headers)
            self.assertFalse(got.hasHeader(b"access-control-allow-origin"))


class CorsDisabledTests(ProductTestCase):
    """C{http.cors: false}: no CORS headers at all."""

    sections = {"http": {"cors": False}}

    async def test_no_headers(self) -> None:
        """Neither responses nor preflights carry CORS headers."""
        _, _, got = await self.request("GET", "/shop/Product",
                                       headers={"origin": "https://example.com"})
        self.assertFalse(got.hasHeader(b"access-control-allow-origin"))
        status, _, got = await self.request("OPTIONS", "/shop/Product", headers={
            "origin": "https://example.com", "access-control-request-method": "POST"})
        self.assertEqual(status, 204)
        self.assertFalse(got.hasHeader(b"access-control-allow-origin"))
        self.assertFalse(got.hasHeader(b"access-control-allow-methods"))


class ShippedAppTests(DaemonTestCase):
    """
    The curl examples of C{crud.md} and C{rest.md}, run against a copy of
    the shipped C{etc/my-app}.
    """

    def apps(self, root: str) -> list[str]:
        target = os.path.join(root, "my-app")
        shutil.copytree(os.path.join(ETC, "my-app"), target)
        return [target]

    async def test_crud_md(self) -> None:
        """The examples of C{crud.md}, in order, answer as documented."""
        status, body, _ = await self.request("POST", "/my-app/Product", {
            "id": "prod-1", "name": "Widget", "price": 9.99, "category": "hardware",
            "inStock": True})
        self.assertEqual((status, body), (201, {"message": "Record created", "id": "prod-1"}))
        status, body, _ = await self.request("POST", "/my-app/Product", [
            {"id": "prod-2", "name": "Gadget", "price": 24.99, "category": "hardware"},
            {"id": "prod-3", "name": "Gizmo", "price": 4.5, "category": "toys"}])
        self.assertEqual(status, 201)
        status, body, _ = await self.request("POST", "/my-app/Product", {"name": "No id"})
        self.assertEqual(status, 201)
        uuid.UUID(body["id"])

        status, body, _ = await self.request("GET", "/my-app/Product")
        self.assertEqual((status, len(body)), (200, 4))
        status, body, _ = await self.request("GET", "/my-app/Product/prod-1")
        self.assertEqual((status, body["name"]), (200, "Widget"))
        self.assertTrue(ISO_UTC.match(body["createdAt"]))
        status, body, _ = await self.request("GET", "/my-app/Product?category==hardware")
        self.assertEqual(sorted(r["id"] for r in body), ["prod-1", "prod-2"])
        status, body, _ = await self.request("GET", "/my-app/Product?price=gt=10")
        self.assertEqual([r["id"] for r in body], ["prod-2"])

        status, body, _ = await self.request("PUT", "/my-app/Product/prod-1", {
            "id": "prod-1", "name": "Widget Pro", "price": 14.99, "category": "hardware",
            "inStock": True})
        self.assertEqual((status, body["name"], body["price"]), (200, "Widget Pro", 14.99))
        status, body, _ = await self.request("PATCH", "/my-app/Product/prod-1",
                                             {"price": 12.99, "inStock": False})
        self.assertEqual((status, body["name"], body["price"], body["inStock"]),
                         (200, "Widget Pro", 12.99, False))
        status, body, _ = await self.request("DELETE", "/my-app/Product/prod-3")
        self.assertEqual((status, body), (204, None))
        self.assertEqual((await self.request("GET", "/my-app/Product/prod-3"))[0], 404)

    async def test_rest_md(self) -> None:
        """The examples of C{rest.md} answer as documented."""
        status, body, headers = await self.request("POST", "/my-app/Product", {
            "id": "prod-3", "name": "Doohickey", "price": 29.99})
        self.assertEqual((status, body), (201, {"message": "Record created", "id": "prod-3"}))
        self.assertEqual(headers.getRawHeaders(b"location"), [b"/my-app/Product/prod-3"])
        for i, price in enumerate((5, 15, 45, 55, 35)):
            await self.daemon.request("POST", "/my-app/Product",
                                      {"id": f"x{i}", "name": f"n{i}", "price": price})
            await deferLater(reactor, 0.002, lambda: None)
        status, body, _ = await self.request(
            "GET", "/my-app/Product?limit=10&sort=-createdAt&select=id,name,price")
        self.assertEqual(status, 200)
        self.assertEqual([r["id"] for r in body], ["x4", "x3", "x2", "x1", "x0", "prod-3"])
        self.assertEqual(set(body[0]), {"id", "name", "price"})
        status, body, _ = await self.request(
            "GET", "/my-app/Product?filter=price=gt=10;price=lt=50&sort=-price&limit=5")
        self.assertEqual([r["id"] for r in body], ["x2", "x4", "prod-3", "x1"])
        status, body, _ = await self.request("GET", "/my-app/Product/prod-3")
        self.assertEqual((status, body["price"]), (200, 29.99))
        self.assertEqual((await self.request("GET", "/my-app/Product/nope"))[0], 404)

    async def test_message_table(self) -> None:
        """The seed's C{Message} table answers REST with its required fields."""
        status, body, _ = await self.request("POST", "/my-app/Message",
                                             {"id": "m1", "title": "Hi", "content": "Hello"})
        self.assertEqual(status, 201)
        status, body, _ = await self.request("GET", "/my-app/Message/m1")
        self.assertEqual(body, {"id": "m1", "title": "Hi", "content": "Hello"})
        status, body, _ = await self.request("POST", "/my-app/Message", {"title": "only"})
        self.assertEqual(status, 400)
        self.assertIn("'content'", body["error"])


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()
