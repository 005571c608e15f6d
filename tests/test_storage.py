"""
Integration tests for L{yeti.storage.SQLiteStorage}: real SQLite files, real threads.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Coroutine
from functools import wraps
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase

from yeti.errors import ConfigError, Conflict, NotFound, StorageError, Unavailable
from yeti.schema import InterfaceDefaults, parse_schema
from yeti.storage import Delete, Insert, Patch, Put, SQLiteStorage

SCHEMA = """
type Product @table(database: "shop") @export {
  id: ID! @primaryKey
  name: String
  category: String @indexed
  price: Float
  createdAt: String @createdTime
}
type Counter @table(database: "shop", table: "counters") {
  n: Int! @primaryKey
  label: String
}
type Note @table(database: "notes.v1") {
  id: ID! @primaryKey
  text: String
}
"""
PRODUCT, COUNTER, NOTE = parse_schema(SCHEMA, "schema.graphql", InterfaceDefaults("app"))


def deferred_test(f: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., Deferred[None]]:
    """Let trial run an C{async def} test method."""

    @wraps(f)
    def run(self: TestCase) -> Deferred[None]:
        return ensureDeferred(f(self))

    return run


def product(i: int | str, **fields: Any) -> dict[str, Any]:
    return {"id": str(i), "name": f"p{i}", **fields}


class StorageTests(TestCase):
    """Records written by L{SQLiteStorage} and read back."""

    def start(self, data_dir: str | None = None, **kw: Any) -> SQLiteStorage:
        storage = SQLiteStorage(data_dir or self.mktemp(), [PRODUCT, COUNTER, NOTE], reactor, **kw)
        storage.startService()
        self.addCleanup(storage.stopService)
        return storage

    @deferred_test
    async def test_insert_and_get(self) -> None:
        """An inserted record is returned and read back; an unknown key reads as None."""
        s = self.start()
        self.assertEqual(await s.write([Insert(PRODUCT, product(1))]), [product(1)])
        self.assertEqual(await s.get(PRODUCT, "1"), product(1))
        self.assertIsNone(await s.get(PRODUCT, "2"))

    @deferred_test
    async def test_int_primary_key(self) -> None:
        """An Int primary key stays an int in the stored JSON; the key is its text."""
        s = self.start()
        await s.write([Insert(COUNTER, {"n": 7, "label": "seven"})])
        self.assertEqual(await s.get(COUNTER, "7"), {"n": 7, "label": "seven"})
        self.assertEqual(await s.count(COUNTER), 1)
        self.assertEqual(await s.count(PRODUCT), 0)

    @deferred_test
    async def test_insert_conflict(self) -> None:
        """Inserting an existing key fails with Conflict and leaves the record alone."""
        s = self.start()
        await s.write([Insert(PRODUCT, product(1))])
        await self.assertFailure(s.write([Insert(PRODUCT, product(1, name="x"))]), Conflict)
        self.assertEqual(await s.get(PRODUCT, "1"), product(1))

    @deferred_test
    async def test_put(self) -> None:
        """Put creates, then replaces the whole record, and says which it did."""
        s = self.start()
        [result] = await s.write([Put(PRODUCT, product(1, price=2.5))])
        self.assertEqual(result, (product(1, price=2.5), True))
        [result] = await s.write([Put(PRODUCT, {"id": "1", "category": "c"})])
        self.assertEqual(result, ({"id": "1", "category": "c"}, False))
        self.assertEqual(await s.get(PRODUCT, "1"), {"id": "1", "category": "c"})

    @deferred_test
    async def test_put_keep(self) -> None:
        """Fields in C{keep} come from the existing record, or from the new one if none."""
        s = self.start()
        keep = ("createdAt",)
        [(first, _)] = await s.write([Put(PRODUCT, product(1, createdAt="t1"), keep=keep)])
        self.assertEqual(first["createdAt"], "t1")
        [(second, created)] = await s.write(
            [Put(PRODUCT, product(1, name="new", createdAt="t2"), keep=keep)]
        )
        self.assertFalse(created)
        self.assertEqual(second, product(1, name="new", createdAt="t1"))
        self.assertEqual(await s.get(PRODUCT, "1"), second)

    @deferred_test
    async def test_put_keeps_insertion_order(self) -> None:
        """Replacing a record keeps its rowid, so insertion order is unchanged."""
        data_dir = self.mktemp()
        s = self.start(data_dir)
        for i in (1, 2):
            await s.write([Insert(PRODUCT, product(i))])
        await s.write([Put(PRODUCT, product(1, name="again"))])
        with sqlite3.connect(FilePath(data_dir).child("shop.sqlite3").path) as conn:
            keys = [k for (k,) in conn.execute('SELECT key FROM "Product" ORDER BY rowid')]
        self.assertEqual(keys, ["1", "2"])

    @deferred_test
    async def test_patch(self) -> None:
        """Patch merges changes into the record; a missing record is NotFound."""
        s = self.start()
        await s.write([Insert(PRODUCT, product(1, price=1.0))])
        [merged] = await s.write([Patch(PRODUCT, "1", {"price": 3.0, "category": "c"})])
        self.assertEqual(merged, product(1, price=3.0, category="c"))
        self.assertEqual(await s.get(PRODUCT, "1"), merged)
        await self.assertFailure(s.write([Patch(PRODUCT, "2", {"price": 1.0})]), NotFound)
        self.assertIsNone(await s.get(PRODUCT, "2"))

    @deferred_test
    async def test_delete(self) -> None:
        """Delete returns the deleted record; deleting a missing record is NotFound."""
        s = self.start()
        await s.write([Insert(PRODUCT, product(1))])
        self.assertEqual(await s.write([Delete(PRODUCT, "1")]), [product(1)])
        self.assertIsNone(await s.get(PRODUCT, "1"))
        await self.assertFailure(s.write([Delete(PRODUCT, "1")]), NotFound)

    @deferred_test
    async def test_batch_results_in_order(self) -> None:
        """One write of several operations returns their results in order."""
        s = self.start()
        results = await s.write(
            [
                Insert(PRODUCT, product(1)),
                Put(PRODUCT, product(2)),
                Patch(PRODUCT, "1", {"price": 9.0}),
                Delete(PRODUCT, "2"),
            ]
        )
        self.assertEqual(
            results,
            [product(1), (product(2), True), product(1, price=9.0), product(2)],
        )

    @deferred_test
    async def test_batch_is_atomic(self) -> None:
        """If one operation of a write fails, none of its operations is stored."""
        s = self.start()
        await s.write([Insert(PRODUCT, product(2))])
        d = s.write([Insert(PRODUCT, product(1)), Insert(PRODUCT, product(2, name="x"))])
        await self.assertFailure(d, Conflict)
        self.assertIsNone(await s.get(PRODUCT, "1"))
        self.assertEqual(await s.get(PRODUCT, "2"), product(2))
        self.assertEqual(await s.count(PRODUCT), 1)

    @deferred_test
    async def test_failed_write_fails_alone(self) -> None:
        """Writes queued together commit even when one of them fails."""
        s = self.start()
        await s.write([Insert(PRODUCT, product(2))])
        first = s.write([Insert(PRODUCT, product(1))])
        bad = s.write([Insert(PRODUCT, product(3)), Insert(PRODUCT, product(2))])
        last = s.write([Insert(PRODUCT, product(4))])
        self.assertEqual(await first, [product(1)])
        await self.assertFailure(bad, Conflict)
        self.assertEqual(await last, [product(4)])
        self.assertEqual(await s.count(PRODUCT), 3)
        self.assertIsNone(await s.get(PRODUCT, "3"))

    @deferred_test
    async def test_sqlite_error_is_safe(self) -> None:
        """An SQLite failure in one write is a StorageError with no detail; others commit."""
        [unknown] = parse_schema(
            'type Ghost @table(database: "shop") { id: ID! @primaryKey }',
            "ghost.graphql",
            InterfaceDefaults("app"),
        )
        s = self.start()
        bad = s.write([Insert(unknown, {"id": "1"})])
        good = s.write([Insert(PRODUCT, product(1))])
        error = await self.assertFailure(bad, StorageError)
        self.assertEqual(error.message, "database write failed")
        self.assertEqual(await good, [product(1)])

    @deferred_test
    async def test_group_commit_in_order(self) -> None:
        """
        Many concurrent writes all commit, in fewer transactions than writes, and
        their results arrive in submission order.
        """
        data_dir = self.mktemp()
        s = self.start(data_dir)
        delivered: list[str] = []
        pending = [
            s.write([Insert(PRODUCT, product(i))]).addCallback(
                lambda r: delivered.append(r[0]["id"])
            )
            for i in range(500)
        ]
        for d in pending:
            await d
        self.assertEqual(delivered, [str(i) for i in range(500)])
        self.assertLess(s.commits, 500)
        self.assertGreater(s.commits, 0)
        self.assertEqual(await s.count(PRODUCT), 500)
        with sqlite3.connect(FilePath(data_dir).child("shop.sqlite3").path) as conn:
            keys = [k for (k,) in conn.execute('SELECT key FROM "Product" ORDER BY rowid')]
        self.assertEqual(keys, delivered)

    @deferred_test
    async def test_max_batch(self) -> None:
        """No transaction holds more than C{max_batch} writes."""
        s = self.start(max_batch=10)
        await s.write([Insert(PRODUCT, product("first"))])
        before = s.commits
        pending = [s.write([Insert(PRODUCT, product(i))]) for i in range(100)]
        for d in pending:
            await d
        self.assertGreaterEqual(s.commits - before, 10)

    @deferred_test
    async def test_concurrent_reads_batched(self) -> None:
        """
        Many concurrent reads each get their own record, and come back to the
        reactor in fewer batches than reads.
        """
        s = self.start()
        await s.write([Insert(PRODUCT, product(i)) for i in range(300)])
        before = s.read_batches
        pending = [s.get(PRODUCT, str(i)) for i in range(300)] + [s.get(PRODUCT, "absent")]
        results = [await d for d in pending]
        self.assertEqual([r["id"] for r in results[:-1]], [str(i) for i in range(300)])
        self.assertIsNone(results[-1])
        self.assertLess(s.read_batches - before, 301)
        self.assertGreater(s.read_batches - before, 0)

    @deferred_test
    async def test_restart_keeps_data(self) -> None:
        """Committed records are read back by a new storage on the same directory."""
        data_dir = self.mktemp()
        s = self.start(data_dir)
        await s.write([Insert(PRODUCT, product(1)), Insert(COUNTER, {"n": 1})])
        await s.write([Insert(NOTE, {"id": "a", "text": "hi"})])
        await s.stopService()
        again = self.start(data_dir)
        self.assertEqual(await again.get(PRODUCT, "1"), product(1))
        self.assertEqual(await again.get(COUNTER, "1"), {"n": 1})
        self.assertEqual(await again.get(NOTE, "a"), {"id": "a", "text": "hi"})

    def test_files_and_tables(self) -> None:
        """Each database is one WAL-mode file holding its tables, in a created data_dir."""
        data_dir = FilePath(self.mktemp()).child("nested")
        self.start(data_dir.path)
        self.assertEqual(
            sorted(p.basename() for p in data_dir.children() if p.path.endswith(".sqlite3")),
            ["notes.v1.sqlite3", "shop.sqlite3"],
        )
        with sqlite3.connect(data_dir.child("shop.sqlite3").path) as conn:
            self.assertEqual(conn.execute("PRAGMA journal_mode").fetchone(), ("wal",))
            names = {
                n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
        self.assertEqual(names, {"Product", "counters"})

    def test_index(self) -> None:
        """An @indexed field has an expression index that filters on it use."""
        data_dir = FilePath(self.mktemp())
        self.start(data_dir.path)
        with sqlite3.connect(data_dir.child("shop.sqlite3").path) as conn:
            indexes = [row[1] for row in conn.execute('PRAGMA index_list("Product")')]
            self.assertIn("Product__category", indexes)
            plan = conn.execute(
                'EXPLAIN QUERY PLAN SELECT data FROM "Product"'
                " WHERE json_extract(data,'$.category') = ?",
                ("c",),
            ).fetchall()
        self.assertIn("USING INDEX Product__category", " ".join(row[-1] for row in plan))

    @deferred_test
    async def test_query_and_count(self) -> None:
        """An empty query returns every record in insertion order."""
        from yeti.fiql import Query

        s = self.start()
        await s.write([Insert(PRODUCT, product(i)) for i in (3, 1, 2)])
        self.assertEqual(await s.query(PRODUCT, Query()), [product(i) for i in (3, 1, 2)])
        self.assertEqual(await s.count(PRODUCT), 3)

    @deferred_test
    async def test_query_filter(self) -> None:
        """A filtered, sorted query runs on the reader connections, regexp included."""
        from yeti.fiql import parse_query

        s = self.start()
        await s.write(
            [
                Insert(PRODUCT, product(1, category="a", price=1.0)),
                Insert(PRODUCT, product(2, category="b", price=2.0)),
                Insert(PRODUCT, product(3, category="a", price=3.0)),
                Insert(PRODUCT, product("x9", category="a", price=4.0)),
            ]
        )
        found = await s.query(PRODUCT, parse_query(PRODUCT, "category==a&sort(-price)"))
        self.assertEqual([r["id"] for r in found], ["x9", "3", "1"])
        found = await s.query(PRODUCT, parse_query(PRODUCT, "id==x*9"))
        self.assertEqual([r["id"] for r in found], ["x9"])

    @deferred_test
    async def test_one_database_per_write(self) -> None:
        """A write spanning two databases is refused, since it cannot be atomic."""
        s = self.start()
        d = s.write([Insert(PRODUCT, product(1)), Insert(NOTE, {"id": "a"})])
        await self.assertFailure(d, ValueError)
        self.assertIsNone(await s.get(PRODUCT, "1"))

    @deferred_test
    async def test_stop_waits_for_writes(self) -> None:
        """stopService fires only after every queued write committed and was delivered."""
        data_dir = self.mktemp()
        s = self.start(data_dir)
        delivered: list[Any] = []
        for i in range(200):
            s.write([Insert(PRODUCT, product(i))]).addCallback(delivered.append)
        await s.stopService()
        self.assertEqual(len(delivered), 200)
        self.assertEqual(await self.start(data_dir).count(PRODUCT), 200)

    @deferred_test
    async def test_unavailable_after_stop(self) -> None:
        """Once stopping has begun, writes and reads fail with Unavailable."""
        s = self.start()
        stopped = s.stopService()
        await self.assertFailure(s.write([Insert(PRODUCT, product(1))]), Unavailable)
        await stopped
        await self.assertFailure(s.write([Insert(PRODUCT, product(1))]), Unavailable)
        await self.assertFailure(s.get(PRODUCT, "1"), Unavailable)
        self.assertFalse(s.running)


class StartupErrorTests(TestCase):
    """Problems opening storage are one-line L{ConfigError}s."""

    def test_bad_database_name(self) -> None:
        """A database name that is not a plain file name is refused."""
        for name in ("../escape", ".hidden", "a b", ""):
            [table] = parse_schema(
                f'type T @table(database: "{name}") {{ id: ID! @primaryKey }}',
                "s.graphql",
                InterfaceDefaults("app"),
            )
            storage = SQLiteStorage(self.mktemp(), [table], reactor)
            e = self.assertRaises(ConfigError, storage.startService)
            self.assertIn("s.graphql", str(e))
            self.assertIn(repr(name), str(e))
            self.assertFalse(storage.running)

    def test_corrupt_file(self) -> None:
        """A file that is not an SQLite database is named in the error."""
        data_dir = FilePath(self.mktemp())
        data_dir.makedirs()
        data_dir.child("shop.sqlite3").setContent(b"this is not a database" * 100)
        storage = SQLiteStorage(data_dir.path, [PRODUCT], reactor)
        e = self.assertRaises(ConfigError, storage.startService)
        self.assertIn(data_dir.child("shop.sqlite3").path, str(e))
        self.assertNotIn("\n", str(e))

    def test_unusable_directory(self) -> None:
        """A data directory that cannot be created is named in the error."""
        blocker = FilePath(self.mktemp())
        blocker.setContent(b"")
        storage = SQLiteStorage(blocker.child("data").path, [PRODUCT], reactor)
        e = self.assertRaises(ConfigError, storage.startService)
        self.assertIn(blocker.child("data").path, str(e))
