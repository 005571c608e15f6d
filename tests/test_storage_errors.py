"""
Storage errors at run time, made by real means on the real SQLite file: a
second connection holding the write lock (database locked) and a database on
a tiny tmpfs (disk full).  Each gives a JSON 503/500 without a traceback, and
the daemon keeps serving reads and, once the cause is gone, writes.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.trial import unittest

from tests.harness import MESSAGE_SCHEMA, Daemon, DaemonTestCase, write_app, write_config

RECORD = {"id": "m1", "title": "first", "content": "stored before the error"}


def database_path(daemon: Daemon) -> str:
    [app] = daemon.config.applications
    [table] = app.tables
    return os.path.join(daemon.config.root_directory, "data", table.database + ".sqlite3")


class StorageErrorTestsMixin:
    """Assertions shared by the storage error tests."""

    def assert_clean_error(self: Any, status: int, body: Any, expected: int, words: str) -> None:
        """A JSON error with status C{expected}, a message naming C{words}, no traceback."""
        self.assertEqual(status, expected, body)
        self.assertIsInstance(body, dict, body)
        self.assertEqual(list(body), ["error"])
        self.assertIn(words, body["error"])
        self.assertNotIn("Traceback", body["error"])
        self.assertNotIn("sqlite", body["error"].lower())


class DatabaseLockedTests(StorageErrorTestsMixin, DaemonTestCase):
    """Another process holding the SQLite write lock."""

    timeout = 30

    async def test_locked_write_503_reads_served(self) -> None:
        """
        While another connection holds C{BEGIN EXCLUSIVE} on the database file,
        a write waits out the busy timeout and gets 503 with a JSON error; reads
        are served meanwhile; the failed write stored nothing; after the lock
        is released writes succeed again.
        """
        status, body, _ = await self.request("POST", "/my-app/Message", RECORD)
        self.assertEqual(status, 201, body)

        holder = sqlite3.connect(database_path(self.daemon), isolation_level=None)
        self.addCleanup(holder.close)
        holder.execute("BEGIN EXCLUSIVE")
        # An uncommitted row: readers must not see it.
        holder.execute(f'INSERT INTO "{self.table_name()}" VALUES (\'zz\', \'{{}}\')')
        try:
            started = time.monotonic()
            write = self.request("POST", "/my-app/Message",
                                 {"id": "m2", "title": "t", "content": "blocked"})
            # Reads while the write waits for the lock.
            status, body, _ = await self.request("GET", "/my-app/Message/m1")
            self.assertEqual((status, body), (200, RECORD))
            status, body, _ = await self.request("GET", "/my-app/Message")
            self.assertEqual((status, body), (200, [RECORD]))
            self.assertFalse(write.called, "the write did not wait for the lock")
            status, body, _ = await write
            self.assertGreaterEqual(time.monotonic() - started, 4.0)
            self.assert_clean_error(status, body, 503, "busy")
        finally:
            holder.execute("ROLLBACK")

        status, body, _ = await self.request("GET", "/my-app/Message/m2")
        self.assertEqual(status, 404, body)
        status, body, _ = await self.request(
            "POST", "/my-app/Message", {"id": "m2", "title": "t", "content": "after"})
        self.assertEqual(status, 201, body)
        status, body, _ = await self.request("GET", "/my-app/Message?select=id")
        self.assertEqual(sorted(r["id"] for r in body), ["m1", "m2"])

    def table_name(self) -> str:
        [app] = self.daemon.config.applications
        [table] = app.tables
        return table.storage_name


class DiskFullTests(StorageErrorTestsMixin, unittest.TestCase):
    """The database's file system fills up (a tmpfs of a few hundred KiB)."""

    timeout = 30

    def setUp(self) -> None:
        root = os.path.abspath(self.mktemp())
        data = os.path.join(root, "data")
        os.makedirs(data)
        mount = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=384k", "tmpfs", data],
            capture_output=True, text=True,
        )
        if mount.returncode != 0:
            raise unittest.SkipTest(
                "cannot mount a tmpfs here (needs root): " + mount.stderr.strip())
        self.addCleanup(subprocess.run, ["umount", data], check=True)
        # Space an operator can free later.
        self.ballast = os.path.join(data, "ballast")
        with open(self.ballast, "wb") as f:
            f.write(b"\0" * 65536)
        config = write_config(root, [write_app(root, "my-app", MESSAGE_SCHEMA)], tls=True)
        self.daemon = Daemon(config)
        self.daemon.start()
        # Cleanups run last-in first-out: the daemon stops before the unmount.
        self.addCleanup(self.daemon.stop)

    def request(self, *args: Any, **kwargs: Any) -> Any:
        return ensureDeferred(self.daemon.request(*args, **kwargs))

    async def test_disk_full_500_reads_served(self) -> None:
        """
        Writes on a full file system get 500 "database is full" as JSON; reads
        of what was stored before keep being served; once space is freed on the
        file system, writes succeed again.
        """
        content = "x" * 16000
        stored: list[str] = []
        for i in range(200):
            status, body, _ = await self.request(
                "POST", "/my-app/Message", {"id": f"r{i}", "title": "t", "content": content})
            if status != 201:
                break
            stored.append(f"r{i}")
        else:
            self.fail("the file system never filled up")
        self.assertGreater(len(stored), 3, "the database filled up at once")
        self.assert_clean_error(status, body, 500, "full")

        # A second write fails the same way; reads are served.
        status, body, _ = await self.request(
            "POST", "/my-app/Message", {"id": "late", "title": "t", "content": content})
        self.assert_clean_error(status, body, 500, "full")
        status, body, _ = await self.request("GET", f"/my-app/Message/{stored[0]}")
        self.assertEqual((status, body["id"]), (200, stored[0]))
        status, body, _ = await self.request("GET", "/my-app/Message?select=id")
        self.assertEqual((status, sorted(r["id"] for r in body)), (200, sorted(stored)))
        status, body, _ = await self.request("GET", "/my-app/Message/late")
        self.assertEqual(status, 404, body)


        # The operator frees disk space: writes succeed again.
        os.remove(self.ballast)
        status, body, _ = await self.request(
            "POST", "/my-app/Message", {"id": "late", "title": "t", "content": "after"})
        self.assertEqual(status, 201, body)
        status, body, _ = await self.request("GET", "/my-app/Message/late")
        self.assertEqual((status, body["content"]), (200, "after"))
