"""
Record storage: the L{IStorage} interface and its SQLite backend.

Each database is one SQLite file in WAL mode.  All writes to a database go
through one writer thread that commits in groups: it takes every job queued
(up to C{max_batch}), runs each inside a savepoint of one transaction, commits
once, and only then hands every result to the reactor in one call, in queue
order.  Reads run on a small thread pool with their own connections.
"""

from __future__ import annotations

import queue
import re
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from twisted.application import service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath

from yeti.errors import ConfigError, Conflict, NotFound, StorageError, Unavailable, YetiError
from yeti.schema import Table

if TYPE_CHECKING:
    from yeti.fiql import Query

_DATABASE_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_BUSY_TIMEOUT_MS = 5000


@dataclass(frozen=True)
class Insert:
    """Add a new record; result: the record.  L{Conflict} if its key exists."""

    table: Table
    record: dict[str, Any]


@dataclass(frozen=True)
class Put:
    """
    Store a full record, replacing any existing one; result: C{(record, created)}.

    Fields named in C{keep} are copied from the existing record, if any.
    """

    table: Table
    record: dict[str, Any]
    keep: tuple[str, ...] = ()


@dataclass(frozen=True)
class Patch:
    """Merge C{changes} into record C{key}; result: the merged record."""

    table: Table
    key: str
    changes: dict[str, Any]


@dataclass(frozen=True)
class Delete:
    """Remove record C{key}; result: the deleted record."""

    table: Table
    key: str


WriteOp = Insert | Put | Patch | Delete


class IStorage(Protocol):
    """What the rest of Yeti needs from a storage backend."""

    def get(self, table: Table, key: str) -> Deferred[dict[str, Any] | None]: ...

    def query(self, table: Table, query: Query) -> Deferred[list[dict[str, Any]]]: ...

    def write(self, ops: Sequence[WriteOp]) -> Deferred[list[Any]]:
        """Apply C{ops} in one atomic transaction; results in order."""

    def count(self, table: Table) -> Deferred[int]: ...


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _dumps(record: dict[str, Any]) -> str:
    return orjson.dumps(record).decode("utf-8")


def _safe(e: BaseException) -> BaseException:
    """Map an exception to what a caller may see; SQLite detail goes in C{__cause__}."""
    if isinstance(e, YetiError) or not isinstance(e, sqlite3.Error):
        return e
    text = str(e).lower()
    if "locked" in text or "busy" in text:
        safe: YetiError = Unavailable("database is busy, try again later")
    elif "full" in text:
        safe = StorageError("database is full")
    else:
        safe = StorageError("database write failed")
    safe.__cause__ = e
    return safe


def _load(conn: sqlite3.Connection, table: Table, key: str) -> dict[str, Any] | None:
    row = conn.execute(
        f"SELECT data FROM {_quote(table.storage_name)} WHERE key = ?", (key,)
    ).fetchone()
    return None if row is None else orjson.loads(row[0])


def _apply(conn: sqlite3.Connection, op: WriteOp) -> Any:
    """Run one operation inside the current transaction."""
    table = op.table
    name = _quote(table.storage_name)
    pk = table.primary_key
    if isinstance(op, Insert):
        key = str(op.record[pk])
        cursor = conn.execute(
            f"INSERT INTO {name}(key, data) VALUES (?, ?) ON CONFLICT(key) DO NOTHING",
            (key, _dumps(op.record)),
        )
        if cursor.rowcount == 0:
            raise Conflict(f"{table.name} {key!r} already exists")
        return op.record
    if isinstance(op, (Put, Patch)):
        key = str(op.record[pk]) if isinstance(op, Put) else op.key
        old = _load(conn, table, key)
        if isinstance(op, Put):
            kept = {f: old[f] for f in op.keep if f in old} if old is not None else {}
            record = {**op.record, **kept}
        elif old is None:
            raise NotFound(f"{table.name} {key!r} not found")
        else:
            record = {**old, **op.changes, pk: old[pk]}
        conn.execute(
            f"INSERT INTO {name}(key, data) VALUES (?, ?)"
            " ON CONFLICT(key) DO UPDATE SET data = excluded.data",
            (key, _dumps(record)),
        )
        return (record, old is None) if isinstance(op, Put) else record
    old = _load(conn, table, op.key)
    if old is None:
        raise NotFound(f"{table.name} {op.key!r} not found")
    conn.execute(f"DELETE FROM {name} WHERE key = ?", (op.key,))
    return old


def _connect(path: str) -> sqlite3.Connection:
    # Connections are made on one thread and used (only) on another.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
    return conn


_STOP = object()
_Job = tuple[Sequence[WriteOp], Deferred]


class _BatchThreads:
    """
    Threads that take queued jobs in batches: a thread waits for a job, takes
    the others already queued (up to C{max_batch}) and handles them at once.
    """

    def __init__(self, storage: SQLiteStorage, names: list[str]) -> None:
        self._storage = storage
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.threads = [threading.Thread(target=self._run, name=name) for name in names]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        """Handle every job queued so far, then end the threads."""
        for _ in self.threads:
            self._queue.put(_STOP)

    def join(self) -> None:
        for thread in self.threads:
            thread.join()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
            while batch[-1] is not _STOP and len(batch) < self._storage.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if batch[-1] is _STOP:
                stopping = True
                batch.pop()
            if batch:
                self._handle(batch)
        self._finished()

    def _handle(self, batch: list[Any]) -> None:
        raise NotImplementedError

    def _finished(self) -> None:
        """In the thread, after its last batch."""


class _Writer(_BatchThreads):
    """The one thread that writes to one database file."""

    def __init__(self, path: str, conn: sqlite3.Connection, storage: SQLiteStorage) -> None:
        super().__init__(storage, [f"yeti-writer {path}"])
        self._conn = conn

    def submit(self, job: _Job) -> None:
        self._queue.put(job)

    def _handle(self, batch: list[_Job]) -> None:
        outcomes, committed = self._batch([ops for ops, _ in batch])
        self._storage._reactor.callFromThread(
            self._storage._deliver, [d for _, d in batch], outcomes, committed
        )

    def _finished(self) -> None:
        self._conn.close()

    def _batch(self, jobs: list[Sequence[WriteOp]]) -> tuple[list[Any], bool]:
        """Run C{jobs} in one transaction; return (per-job result or exception, committed)."""
        conn = self._conn
        outcomes: list[Any] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for ops in jobs:
                conn.execute("SAVEPOINT job")
                try:
                    outcomes.append([_apply(conn, op) for op in ops])
                except Exception as e:
                    if not conn.in_transaction:
                        raise  # SQLite dropped the whole transaction.
                    conn.execute("ROLLBACK TO job")
                    outcomes.append(_safe(e))
                conn.execute("RELEASE job")
            conn.execute("COMMIT")
        except Exception as e:  # noqa: BLE001 - every job must get an outcome
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # The batch fails either way; the error below says why.
            return [_safe(e)] * len(jobs), False
        return outcomes, True


class _Readers(_BatchThreads):
    """
    The threads that read, each on its own read-only connections.  A thread
    hands the results of a whole batch back to the reactor at once: under
    concurrent reads that is one wake-up of the reactor and one hand-over of
    the GIL per batch, not per read (a thread pool call per read made REST
    reads about 1.5 times slower, docs/benchmarks.md).
    """

    def __init__(self, count: int, storage: SQLiteStorage) -> None:
        super().__init__(storage, [f"yeti-reader-{i}" for i in range(count)])

    def submit(self, table: Table, sql: str, params: Sequence[Any], d: Deferred) -> None:
        self._queue.put((table, sql, params, d))

    def _handle(self, batch: list[Any]) -> None:
        storage = self._storage
        outcomes: list[Any] = []
        for table, sql, params, _ in batch:
            try:
                outcomes.append(storage._fetch(table, sql, params))
            except Exception as e:  # noqa: BLE001 - every read must get an outcome
                outcomes.append(e)
        storage._reactor.callFromThread(storage._deliver_reads, [d for *_, d in batch], outcomes)


class SQLiteStorage(service.Service):
    """
    L{IStorage} on SQLite files: one per database, in C{data_dir}.

    @ivar commits: how many transactions have committed (one per write batch).
    @ivar read_batches: how many batches of reads were handed back to the reactor.
    """

    _log = Logger()

    def __init__(
        self,
        data_dir: FilePath[str] | str,
        tables: Iterable[Table],
        reactor: Any,
        *,
        max_batch: int = 512,
        readers: int = 2,
    ) -> None:
        self._dir = data_dir if isinstance(data_dir, FilePath) else FilePath(data_dir)
        self._tables = list(tables)
        self._reactor = reactor
        self.max_batch = max_batch
        self._reader_count = readers
        self._writers: dict[str, _Writer] = {}
        self._readers: _Readers | None = None
        self._local = threading.local()
        self._read_conns: list[sqlite3.Connection] = []
        self._read_lock = threading.Lock()
        self._accepting = False
        self._stopped: list[Deferred[None]] | None = None
        self.commits = 0
        self.read_batches = 0

    def _path(self, database: str) -> str:
        return self._dir.child(database + ".sqlite3").path

    def startService(self) -> None:
        by_db: dict[str, list[Table]] = {}
        for table in self._tables:
            db = table.database
            if not _DATABASE_NAME.fullmatch(db) or db.startswith("."):
                raise ConfigError(f"{table.source}: table {table.name}: bad database name {db!r}")
            by_db.setdefault(db, []).append(table)
        try:
            self._dir.makedirs(ignoreExistingDirectory=True)
        except OSError as e:
            raise ConfigError(
                f"{self._dir.path}: cannot create data directory: {e.strerror or e}"
            ) from None
        opened: dict[str, sqlite3.Connection] = {}
        try:
            for db, tables in by_db.items():
                opened[db] = conn = _connect(self._path(db))
                self._prepare(conn, tables)
        except sqlite3.Error as e:
            for conn in opened.values():
                conn.close()
            raise ConfigError(f"{self._path(db)}: cannot open database: {e}") from None
        for db, conn in opened.items():
            self._writers[db] = _Writer(self._path(db), conn, self)
            self._writers[db].start()
        self._readers = _Readers(self._reader_count, self)
        self._readers.start()
        self._accepting = True
        super().startService()

    @staticmethod
    def _prepare(conn: sqlite3.Connection, tables: list[Table]) -> None:
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if mode.lower() != "wal":
            raise sqlite3.OperationalError(f"cannot use WAL journal mode (got {mode})")
        conn.execute("PRAGMA synchronous = FULL")
        for t in tables:
            name = _quote(t.storage_name)
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {name} (key TEXT PRIMARY KEY, data TEXT NOT NULL)"
            )
            for f in t.indexed_fields:
                conn.execute(
                    f"CREATE INDEX IF NOT EXISTS {_quote(t.storage_name + '__' + f.name)}"
                    f" ON {name}(json_extract(data, '$.{f.name}'))"
                )

    def stopService(self) -> Deferred[None]:
        """Commit and deliver every queued write, then stop all threads and close."""
        self._accepting = False
        if self._stopped is None:
            if not self.running:
                return succeed(None)
            self._stopped = []
            writers, readers = list(self._writers.values()), self._readers
            for w in writers:
                w.stop()
            if readers is not None:
                readers.stop()
            threading.Thread(target=self._close, args=(writers, readers), name="yeti-stop").start()
            super().stopService()
        waiter: Deferred[None] = Deferred()
        self._stopped.append(waiter)
        return waiter

    def _close(self, writers: list[_Writer], readers: _Readers | None) -> None:
        """Off the reactor thread: join writers and readers, close connections."""
        for w in writers:
            w.join()
        if readers is not None:
            readers.join()
        for conn in self._read_conns:
            conn.close()
        self._reactor.callFromThread(self._closed)

    def _closed(self) -> None:
        waiters, self._stopped = self._stopped or [], None
        self._writers, self._readers, self._read_conns = {}, None, []
        for d in waiters:
            d.callback(None)

    def write(self, ops: Sequence[WriteOp]) -> Deferred[list[Any]]:
        if not self._accepting:
            return fail(Unavailable("storage is not running"))
        if not ops:
            return succeed([])
        databases = {op.table.database for op in ops}
        if len(databases) != 1 or not databases <= self._writers.keys():
            return fail(ValueError(f"one write must use one known database, not {databases}"))
        d: Deferred[list[Any]] = Deferred()
        self._writers[databases.pop()].submit((list(ops), d))
        return d

    def _deliver(self, waiting: list[Deferred], outcomes: list[Any], committed: bool) -> None:
        """On the reactor thread: fire a write batch's Deferreds in queue order."""
        if committed:
            self.commits += 1
        self._fire(waiting, outcomes, "write")

    def _deliver_reads(self, waiting: list[Deferred], outcomes: list[Any]) -> None:
        """On the reactor thread: answer a batch of reads."""
        self.read_batches += 1
        self._fire(waiting, outcomes, "read")

    def _fire(self, waiting: list[Deferred], outcomes: list[Any], what: str) -> None:
        """On the reactor thread: fire each Deferred with its outcome (a result or an error)."""
        logged: set[int] = set()
        for d, outcome in zip(waiting, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                cause = outcome.__cause__
                if cause is not None and id(cause) not in logged:
                    logged.add(id(cause))
                    self._log.error("storage {what} failed: {e!r}", what=what, e=cause)
                d.errback(Failure(outcome))
            else:
                d.callback(outcome)

    def _read(self, table: Table, sql: str, params: Sequence[Any]) -> Deferred[list[Any]]:
        if not self._accepting or self._readers is None:
            return fail(Unavailable("storage is not running"))
        d: Deferred[list[Any]] = Deferred()
        self._readers.submit(table, sql, params, d)
        return d

    def _fetch(self, table: Table, sql: str, params: Sequence[Any]) -> list[Any]:
        """In a reader thread: run C{sql} on this thread's connection to C{table}'s file."""
        conns = self._local.__dict__.setdefault("conns", {})
        conn = conns.get(table.database)
        if conn is None:
            from yeti.sqlfilter import register_functions

            conn = conns[table.database] = _connect(self._path(table.database))
            conn.execute("PRAGMA query_only = ON")
            register_functions(conn)
            with self._read_lock:
                self._read_conns.append(conn)
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise _safe(e) from e

    def get(self, table: Table, key: str) -> Deferred[dict[str, Any] | None]:
        sql = f"SELECT data FROM {_quote(table.storage_name)} WHERE key = ?"
        d = self._read(table, sql, (key,))
        return d.addCallback(lambda rows: orjson.loads(rows[0][0]) if rows else None)

    def query(self, table: Table, query: Query) -> Deferred[list[dict[str, Any]]]:
        from yeti.sqlfilter import compile_query

        suffix, params = compile_query(table, query)
        d = self._read(table, f"SELECT data FROM {_quote(table.storage_name)}" + suffix, params)
        return d.addCallback(lambda rows: [orjson.loads(r[0]) for r in rows])

    def count(self, table: Table) -> Deferred[int]:
        d = self._read(table, f"SELECT count(*) FROM {_quote(table.storage_name)}", ())
        return d.addCallback(lambda rows: rows[0][0])
