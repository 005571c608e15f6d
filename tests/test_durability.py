"""
Durability of acknowledged writes: a real C{twistd -n yeti} process, killed
with SIGKILL in the middle of a stream of concurrent HTTPS and WebSocket
writes, then restarted on the same root directory; and a clean stop with
SIGTERM.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import sys
from io import BytesIO
from typing import Any

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    connectWS,
)
from twisted.internet import defer, error, reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from tests.harness import MESSAGE_SCHEMA, REPO, TrustCert, write_app, write_config
from yeti.config import load_config

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
CLIENTS = 20
WS_CLIENTS = 5
WRITE_SECONDS = 2.0
READY = re.compile(rb"Site \(TLS\) starting on (\d+)")


class DaemonProcess(ProcessProtocol):
    """A C{twistd -n yeti} child process; C{ready} fires with its HTTPS port."""

    def __init__(self) -> None:
        self.output = b""
        self.ready: Deferred[int] = Deferred()
        self.ended: Deferred[BaseException] = Deferred()
        self.running = True

    def outReceived(self, data: bytes) -> None:
        self.output += data
        match = READY.search(self.output)
        if match and not self.ready.called:
            self.ready.callback(int(match.group(1)))

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.running = False
        if not self.ready.called:
            self.ready.errback(RuntimeError(
                "daemon exited before listening:\n" + self.output.decode("utf-8", "replace")))
        self.ended.callback(reason.value)


class Writers:
    """C{CLIENTS} concurrent loops POSTing new records until told to stop."""

    def __init__(self, agent: Agent, url: bytes, prefix: str) -> None:
        self._agent = agent
        self._url = url
        self._prefix = prefix
        self.acked: set[str] = set()
        self.failures = 0
        self.stopping = False
        self.done = defer.gatherResults(
            [defer.ensureDeferred(self._loop(n)) for n in range(CLIENTS)]
        )

    async def _loop(self, n: int) -> None:
        i = 0
        while not self.stopping:
            key = f"{self._prefix}{n}-{i}"
            i += 1
            body = b'{"id": "%s", "title": "t", "content": "%s"}' % (key.encode(), b"x" * 64)
            try:
                response = await self._agent.request(
                    b"POST", self._url,
                    Headers({b"content-type": [b"application/json"]}),
                    FileBodyProducer(BytesIO(body)),
                )
                await readBody(response)
            except Exception:
                # The daemon went away: this write was never acknowledged.
                self.failures += 1
                return
            if response.code == 201:
                self.acked.add(key)


class WSWriter(WebSocketClientProtocol):
    """
    Subscribes to the Message table, then sends records (plain JSON objects,
    stored like PUT) one after another; a write is acknowledged when the
    Update for its id arrives.
    """

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix
        self.acked: set[str] = set()
        self.opened: Deferred[None] = Deferred()
        self.closed: Deferred[None] = Deferred()
        self.stopping = False
        self.in_flight: str | None = None
        self._i = 0

    def onOpen(self) -> None:
        self.sendMessage(b'{"action": "subscribe", "topic": "Message"}')
        self.opened.callback(None)
        self._send()

    def _send(self) -> None:
        if self.stopping:
            self.in_flight = None
            return
        self.in_flight = f"{self.prefix}-{self._i}"
        self._i += 1
        self.sendMessage(b'{"id": "%s", "title": "w", "content": "%s"}'
                         % (self.in_flight.encode(), b"y" * 64))

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        message = json.loads(payload)
        sent = self.in_flight
        if sent is not None and (message.get("message_type"), message.get("id")) == (
            "Update", sent
        ):
            self.acked.add(sent)
            self._send()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.opened.called:
            self.opened.errback(RuntimeError(f"WebSocket did not open: {reason}"))
        if not self.closed.called:
            self.closed.callback(None)


class WSWriterFactory(WebSocketClientFactory):
    """Makes exactly one given L{WSWriter}."""

    def __init__(self, url: str, client: WSWriter) -> None:
        super().__init__(url, reactor=reactor)
        self.protocol = lambda: client  # type: ignore[assignment]
        self._client = client

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        if not self._client.opened.called:
            self._client.opened.errback(reason)
        if not self._client.closed.called:
            self._client.closed.callback(None)


class DurabilityTests(unittest.TestCase):
    """Every acknowledged write survives SIGKILL; SIGTERM stops cleanly."""

    timeout = 60

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        self.config_path = write_config(
            self.root, [write_app(self.root, "my-app", MESSAGE_SCHEMA)], tls=True,
            operationsApi={"enabled": False},
        )
        [app] = load_config(self.config_path).applications
        [self.table] = app.tables
        self.db_path = os.path.join(self.root, "data", self.table.database + ".sqlite3")

    async def start(self) -> tuple[DaemonProcess, int]:
        proc = DaemonProcess()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in [env.get("PYTHONPATH")] if p])
        transport = reactor.spawnProcess(
            proc, TWISTD, [TWISTD, "-n", "--pidfile=", "yeti", "--config", self.config_path],
            env=env, path=self.root,
        )

        async def kill() -> None:
            if proc.running:
                transport.signalProcess("KILL")
                await proc.ended

        self.addCleanup(lambda: defer.ensureDeferred(kill()))
        self.transport = transport
        timer = reactor.callLater(20, lambda: proc.running and transport.signalProcess("KILL"))
        try:
            port = await proc.ready
        finally:
            if timer.active():
                timer.cancel()
        return proc, port

    def agent(self) -> tuple[Agent, HTTPConnectionPool]:
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = CLIENTS
        pool.retryAutomatically = False
        self.addCleanup(pool.closeCachedConnections)
        cert = os.path.join(self.root, "certs", "localhost", "cert.pem")
        return Agent(reactor, contextFactory=TrustCert(cert), pool=pool), pool

    async def stored_ids(self, agent: Agent, port: int) -> set[str]:
        response = await agent.request(
            b"GET", f"https://localhost:{port}/my-app/Message?select=id".encode())
        self.assertEqual(response.code, 200)
        return {r["id"] for r in json.loads(await readBody(response))}

    async def ws_writers(self, port: int) -> list[WSWriter]:
        """C{WS_CLIENTS} open WebSocket writers to the Message table."""
        cert = os.path.join(self.root, "certs", "localhost", "cert.pem")
        tls = TrustCert(cert).creatorForNetloc(b"localhost", port)
        clients = [WSWriter(f"w{n}") for n in range(WS_CLIENTS)]
        for client in clients:
            connectWS(WSWriterFactory(f"wss://localhost:{port}/my-app/Message", client),
                      contextFactory=tls)

            self.addCleanup(self.close_ws, client)
        await defer.gatherResults([c.opened for c in clients])
        return clients

    @staticmethod
    def close_ws(client: WSWriter) -> Deferred[None]:
        """Drop C{client}'s connection (if still up) and wait until it is gone."""
        client.stopping = True
        if client.transport is not None and not client.closed.called:
            client.transport.abortConnection()
        return client.closed

    def sqlite_ids(self) -> set[str]:
        """The keys in the database file, read directly (daemon stopped)."""
        conn = sqlite3.connect(self.db_path)
        try:
            (check,) = conn.execute("PRAGMA integrity_check").fetchone()
            self.assertEqual(check, "ok")
            name = self.table.storage_name.replace('"', '""')
            return {k for (k,) in conn.execute(f'SELECT key FROM "{name}"')}
        finally:
            conn.close()

    async def test_sigkill_keeps_acknowledged_writes(self) -> None:
        """
        SIGKILL during C{CLIENTS} concurrent HTTPS writers and C{WS_CLIENTS}
        WebSocket writers loses no acknowledged write; SIGTERM during writers
        stops cleanly (exit 0, or the SIGTERM twistd re-raises after its clean
        shutdown) with every acknowledged write on disk and the database
        intact.
        """
        proc, port = await self.start()
        agent, pool = self.agent()
        url = f"https://localhost:{port}/my-app/Message".encode()
        ws = await self.ws_writers(port)
        writers = Writers(agent, url, "a")
        await deferLater(reactor, WRITE_SECONDS, lambda: None)
        self.transport.signalProcess("KILL")
        reason = await proc.ended
        writers.stopping = True
        await writers.done
        await defer.gatherResults([c.closed for c in ws])
        ws_acked = set().union(*(c.acked for c in ws))
        await pool.closeCachedConnections()
        self.assertIsInstance(reason, error.ProcessTerminated)
        self.assertEqual(reason.signal, 9)
        self.assertGreater(len(writers.acked), 100, "too few writes to mean anything")
        self.assertGreater(writers.failures, 0, "the kill did not hit the write stream")
        for c in ws:
            self.assertGreater(len(c.acked), 10, f"too few WebSocket writes by {c.prefix}")
            # the kill cut a WebSocket write in flight
            self.assertIsNotNone(c.in_flight, f"{c.prefix} had nothing in flight")

        proc, port = await self.start()
        agent, pool = self.agent()
        stored = await self.stored_ids(agent, port)
        missing = writers.acked - stored
        self.assertEqual(missing, set(), f"{len(missing)} acknowledged writes lost")
        missing = ws_acked - stored
        self.assertEqual(missing, set(), f"{len(missing)} acknowledged WebSocket writes lost")

        # A second stream, stopped with SIGTERM: exit 0, every ack on disk.
        second = Writers(agent, f"https://localhost:{port}/my-app/Message".encode(), "b")
        await deferLater(reactor, 0.5, lambda: None)
        self.transport.signalProcess("TERM")
        reason = await proc.ended
        second.stopping = True
        await second.done
        await pool.closeCachedConnections()
        # a clean stop exits with status 0
        self.assertIsInstance(reason, error.ProcessDone, proc.output.decode())
        self.assertIn(b"Server Shut Down", proc.output)
        self.assertNotIn(b"Traceback", proc.output)
        on_disk = self.sqlite_ids()
        self.assertTrue(stored <= on_disk)
        self.assertEqual(second.acked - on_disk, set())
