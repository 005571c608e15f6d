"""
Integration tests of the WebSocket endpoint: the real daemon on loopback
with real TLS, and real Autobahn Twisted clients over C{wss://}.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    connectWS,
)
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web.client import Agent, readBody

from tests.harness import MESSAGE_SCHEMA, DaemonTestCase, write_app
from yeti.pubsub import PubSub
from yeti.websocket import _HANDSHAKE_ONLY, _SendQueue

TIMEOUT = 5.0

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

# Quiet: REST only, no WebSocket or SSE, in an app that has both on.
QUIET_SCHEMA = """
type Quiet @table(database: "realtime-demo") @export(rest: true, ws: false, sse: false) {
    id: ID! @primaryKey
    title: String!
}
"""

# Int primary keys: ids in URLs must be integers.
COUNTER_SCHEMA = """
type Counter @table(database: "realtime-demo") @export(rest: true, ws: true, sse: true) {
    id: Int! @primaryKey
    n: Int
}
"""

# An app whose config turns WebSocket off; its table inherits that.
PLAIN_SCHEMA = """
type Note @table(database: "plain") @export(rest: true) {
    id: ID! @primaryKey
    text: String!
}
"""


def realtime_apps(root: str) -> list[str]:
    """my-app (Message with ws and sse, Quiet without) and plain-app (ws/sse off)."""
    return [
        write_app(root, "my-app", MESSAGE_SCHEMA + QUIET_SCHEMA + COUNTER_SCHEMA),
        write_app(root, "plain-app", PLAIN_SCHEMA, {"ws": False, "sse": False}),
    ]


def with_timeout(d: Deferred[Any], seconds: float, what: str) -> Deferred[Any]:
    """C{d}, failing with an AssertionError naming C{what} after C{seconds}."""

    def timed_out(failure: Failure) -> Failure:
        from twisted.internet.defer import TimeoutError

        if failure.check(TimeoutError):
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        return failure

    return d.addTimeout(seconds, reactor).addErrback(timed_out)


class Wakeup:
    """Lets a test wait for a test client's next input (or its end)."""

    def __init__(self) -> None:
        self._waiter: Deferred[None] | None = None

    def wake(self) -> None:
        """Something arrived, or the peer went away: the waiting test looks again."""
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.callback(None)

    async def wait(self, deadline: float, what: str) -> None:
        """Wait for the next L{wake}; an AssertionError naming C{what} at C{deadline}."""
        self._waiter = Deferred()
        await with_timeout(self._waiter, max(0.01, deadline - time.monotonic()), what)


class HandshakeFailed(Exception):
    """The WebSocket opening handshake did not succeed."""


class WSClient(WebSocketClientProtocol):
    """
    An Autobahn client that records every message (parsed JSON) and lets a
    test await the next one.  C{answer_pings=False} makes it a dead peer.
    """

    answer_pings = True

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[Any] = []
        self._cursor = 0
        self._wakeup = Wakeup()
        self.opened: Deferred[WSClient] = Deferred()
        self.closed: Deferred[tuple[bool, int | None, str | None]] = Deferred()
        self.close_info: tuple[bool, int | None, str | None] | None = None
        self.pings = 0

    # -- Autobahn callbacks --------------------------------------------

    def onOpen(self) -> None:
        self.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.messages.append(json.loads(payload))
        self._wakeup.wake()

    def onPing(self, payload: bytes) -> None:
        self.pings += 1
        if self.answer_pings:
            super().onPing(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.close_info = (wasClean, code, reason)
        if not self.opened.called:
            self.opened.errback(HandshakeFailed(reason))
        self.closed.callback(self.close_info)
        self._wakeup.wake()

    # -- for tests -------------------------------------------------------

    @property
    def still_open(self) -> bool:
        return self.close_info is None and self.state == self.STATE_OPEN

    async def next(self, timeout: float = TIMEOUT) -> Any:
        """The next message not yet taken (waiting up to C{timeout} seconds)."""
        deadline = time.monotonic() + timeout
        while self._cursor >= len(self.messages):
            if self.close_info is not None:
                raise AssertionError(f"connection closed {self.close_info} while waiting")
            await self._wakeup.wait(deadline, "a WebSocket message")
        message = self.messages[self._cursor]
        self._cursor += 1
        return message

    async def take(self, count: int, timeout: float = TIMEOUT) -> list[Any]:
        return [await self.next(timeout) for _ in range(count)]

    def pending(self) -> list[Any]:
        """Messages received but not yet taken."""
        return self.messages[self._cursor:]

    def send_json(self, message: Any, binary: bool = False) -> None:
        self.sendMessage(json.dumps(message).encode("utf-8"), isBinary=binary)

    async def close_and_wait(self) -> None:
        """Close (if still open) and wait until the connection is gone."""
        if self.close_info is None:
            if self.state == self.STATE_OPEN:
                self.sendClose(1000)
            elif self.transport is not None:
                self.transport.loseConnection()
            await with_timeout(self.closed, TIMEOUT, "the connection to close")


class WSClientFactory(WebSocketClientFactory):
    """Makes exactly one given L{WSClient}; reports a failed TCP/TLS connect."""

    def __init__(self, url: str, client: WSClient) -> None:
        super().__init__(url, reactor=reactor)
        self._client = client
        self.protocol = lambda: client  # type: ignore[assignment]

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        if not self._client.opened.called:
            self._client.opened.errback(reason)
        if not self._client.closed.called:
            self._client.closed.callback((False, None, str(reason.value)))


def open_ws(
    daemon: Any, path: str, client: WSClient | None = None
) -> tuple[WSClient, Deferred[WSClient]]:
    """Start connecting a client to C{path}; return it and its C{opened} Deferred."""
    client = client or WSClient()
    factory = WSClientFactory(daemon.url(path, "wss"), client)
    connectWS(factory, contextFactory=daemon.client_tls() if daemon.tls else None)
    return client, client.opened


def pubsub_of(daemon: Any) -> PubSub:
    """The PubSub service of the daemon's first application."""
    services = list(daemon.service)
    while services:
        s = services.pop(0)
        if isinstance(s, PubSub):
            return s
        if hasattr(s, "__iter__"):
            services.extend(s)
    raise AssertionError("no PubSub service in the daemon")


def ws_factory_of(daemon: Any) -> Any:
    """The daemon's WebSocket server factory."""
    return daemon.service.getServiceNamed("http")._ws


async def health(daemon: Any) -> dict[str, Any]:
    """GET /health from the operations API (plain HTTP on loopback)."""
    response = await Agent(reactor).request(
        b"GET", f"http://127.0.0.1:{daemon.ops_port}/health".encode()
    )
    body = await readBody(response)
    assert response.code == 200, (response.code, body)
    return json.loads(body)


async def eventually(check: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> None:
    """Poll C{check} (sync or async) until it returns true."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if hasattr(result, "__await__"):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await deferLater(reactor, 0.02, lambda: None)


def assert_timestamp(test: Any, value: Any) -> None:
    """An ISO 8601 UTC timestamp of about now."""
    test.assertIsInstance(value, str)
    test.assertRegex(value, ISO_UTC)
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    test.assertEqual(moment.utcoffset().total_seconds(), 0)
    test.assertLess(abs(moment.timestamp() - datetime.now(UTC).timestamp()), 30)


class RealtimeTestCase(DaemonTestCase):
    """A daemon with the realtime apps, and clients closed at the end of each test."""

    def apps(self, root: str) -> list[str]:
        return realtime_apps(root)

    async def connect(self, path: str, client: WSClient | None = None) -> WSClient:
        """Open a WebSocket to C{path}; it is closed when the test ends."""
        client, opened = open_ws(self.daemon, path, client)
        self.addCleanup(lambda: ensureDeferred(client.close_and_wait()))
        await with_timeout(opened, TIMEOUT, f"the WebSocket to {path} to open")
        return client

    async def subscribe_table(self, path: str = "/my-app/Message") -> WSClient:
        """Connect to a table URL and do what the spec's client does on open."""
        client = await self.connect(path)
        client.send_json({"action": "subscribe", "topic": path.rsplit("/", 1)[1]})
        return client

    async def post(self, record: dict[str, Any], table: str = "Message") -> Any:
        status, body, _ = await self.request("POST", f"/my-app/{table}", record)
        self.assertEqual(status, 201, body)
        return body["id"]

    def assert_update(self, message: Any, record: dict[str, Any]) -> None:
        """Exactly the spec's Update message for C{record}."""
        self.assertEqual(sorted(message), ["data", "id", "message_type", "timestamp"])
        self.assertEqual(message["message_type"], "Update")
        self.assertEqual(message["data"], record)
        self.assertEqual(message["id"], record["id"])
        assert_timestamp(self, message["timestamp"])


class TableSubscriptionTests(RealtimeTestCase):
    async def test_post_update(self) -> None:
        """A REST POST reaches a table subscriber as the spec's Update message."""
        client = await self.subscribe_table()
        record = {"id": "msg-1", "title": "Hello", "content": "World"}
        await self.post(record)
        self.assert_update(await client.next(), record)

    async def test_put_patch_update(self) -> None:
        """REST PUT and PATCH reach a table subscriber as Updates with the full record."""
        client = await self.subscribe_table()
        status, _, _ = await self.request(
            "PUT", "/my-app/Message/m1", {"title": "a", "content": "b"}
        )
        self.assertEqual(status, 201)
        self.assert_update(await client.next(), {"id": "m1", "title": "a", "content": "b"})
        status, _, _ = await self.request("PATCH", "/my-app/Message/m1", {"title": "c"})
        self.assertEqual(status, 200)
        self.assert_update(await client.next(), {"id": "m1", "title": "c", "content": "b"})

    async def test_delete(self) -> None:
        """A REST DELETE reaches a table subscriber as a Delete carrying the id."""
        await self.post({"id": "m1", "title": "a", "content": "b"})
        client = await self.subscribe_table()
        status, _, _ = await self.request("DELETE", "/my-app/Message/m1")
        self.assertEqual(status, 204)
        message = await client.next()
        self.assertEqual(sorted(message), ["data", "id", "message_type", "timestamp"])
        self.assertEqual(message["message_type"], "Delete")
        self.assertEqual(message["id"], "m1")
        self.assertEqual(message["data"], {"id": "m1"})
        assert_timestamp(self, message["timestamp"])

    async def test_failed_write_publishes_nothing(self) -> None:
        """A REST write that fails validation sends nothing to subscribers."""
        client = await self.subscribe_table()
        status, _, _ = await self.request("POST", "/my-app/Message", {"id": "bad", "title": 1})
        self.assertEqual(status, 400)
        good = {"id": "good", "title": "a", "content": "b"}
        await self.post(good)
        self.assert_update(await client.next(), good)

    async def test_commit_order(self) -> None:
        """Many concurrent REST writes reach every subscriber in the same order."""
        a = await self.subscribe_table()
        b = await self.subscribe_table()
        await DeferredList([
            self.request("PUT", f"/my-app/Message/m{i}", {"title": str(i), "content": "x"})
            for i in range(40)
        ], fireOnOneErrback=True)
        got_a = [m["id"] for m in await a.take(40)]
        got_b = [m["id"] for m in await b.take(40)]
        self.assertEqual(sorted(got_a), sorted(f"m{i}" for i in range(40)))
        self.assertEqual(got_a, got_b)

    async def test_no_retained_on_table(self) -> None:
        """A table-level connection gets no Retained messages for existing records."""
        await self.post({"id": "old", "title": "a", "content": "b"})
        client = await self.subscribe_table()
        new = {"id": "new", "title": "c", "content": "d"}
        await self.post(new)
        self.assert_update(await client.next(), new)

    async def test_subscribe_twice_harmless(self) -> None:
        """The spec client's subscribe to its own table adds no duplicate messages."""
        client = await self.subscribe_table()
        client.send_json({"action": "subscribe", "topic": "Message"})
        first = {"id": "m1", "title": "a", "content": "b"}
        second = {"id": "m2", "title": "a", "content": "b"}
        await self.post(first)
        await self.post(second)
        self.assert_update(await client.next(), first)
        self.assert_update(await client.next(), second)
        self.assertEqual(client.pending(), [])
        self.assertEqual(pubsub_of(self.daemon).subscriber_count("Message"), 1)


class RecordSubscriptionTests(RealtimeTestCase):
    async def test_retained_first(self) -> None:
        """A record-level connection first receives the record as one Retained message."""
        record = {"id": "msg-1", "title": "Hello", "content": "World"}
        await self.post(record)
        client = await self.connect("/my-app/Message/msg-1")
        message = await client.next()
        self.assertEqual(sorted(message), ["data", "id", "message_type", "timestamp"])
        self.assertEqual(message["message_type"], "Retained")
        self.assertEqual(message["data"], record)
        self.assertEqual(message["id"], "msg-1")
        assert_timestamp(self, message["timestamp"])

    async def test_no_retained_when_absent(self) -> None:
        """A record-level connection to a missing record gets no Retained, then its Update."""
        client = await self.connect("/my-app/Message/later")
        record = {"id": "later", "title": "a", "content": "b"}
        await self.post(record)
        self.assert_update(await client.next(), record)

    async def test_only_that_record(self) -> None:
        """A record-level connection sees only its record's changes."""
        await self.post({"id": "mine", "title": "a", "content": "b"})
        client = await self.connect("/my-app/Message/mine")
        self.assertEqual((await client.next())["message_type"], "Retained")
        await self.post({"id": "other", "title": "x", "content": "y"})
        await self.request("DELETE", "/my-app/Message/other")
        status, _, _ = await self.request("PATCH", "/my-app/Message/mine", {"title": "z"})
        self.assertEqual(status, 200)
        self.assert_update(await client.next(), {"id": "mine", "title": "z", "content": "b"})
        await self.request("DELETE", "/my-app/Message/mine")
        message = await client.next()
        self.assertEqual((message["message_type"], message["id"]), ("Delete", "mine"))
        self.assertEqual(client.pending(), [])


class WriteTests(RealtimeTestCase):
    async def test_write_stored_like_put(self) -> None:
        """A plain JSON object is stored; sender and other subscribers get the Update."""
        sender = await self.subscribe_table()
        other = await self.subscribe_table()
        record = {"id": "msg-new", "title": "From WebSocket", "content": "Sent via WS"}
        sender.send_json(record)
        self.assert_update(await sender.next(), record)
        self.assert_update(await other.next(), record)
        status, body, _ = await self.request("GET", "/my-app/Message/msg-new")
        self.assertEqual((status, body), (200, record))

    async def test_write_replaces(self) -> None:
        """A WS write of an existing id replaces the record, as PUT does."""
        await self.post({"id": "m1", "title": "old", "content": "old"})
        client = await self.subscribe_table()
        client.send_json({"id": "m1", "title": "new", "content": "new"})
        self.assert_update(await client.next(), {"id": "m1", "title": "new", "content": "new"})
        _, body, _ = await self.request("GET", "/my-app/Message")
        self.assertEqual(body, [{"id": "m1", "title": "new", "content": "new"}])

    async def test_write_new_uuid(self) -> None:
        """A WS write without an id on a table URL is stored under a new UUID."""
        client = await self.subscribe_table()
        client.send_json({"title": "a", "content": "b"})
        message = await client.next()
        self.assertEqual(message["message_type"], "Update")
        self.assertRegex(message["id"], UUID)
        self.assertEqual(message["data"], {"id": message["id"], "title": "a", "content": "b"})
        status, body, _ = await self.request("GET", f"/my-app/Message/{message['id']}")
        self.assertEqual((status, body), (200, message["data"]))

    async def test_write_on_record_url(self) -> None:
        """A WS write on a record URL takes its id from the URL."""
        client = await self.connect("/my-app/Message/from-url")
        client.send_json({"title": "a", "content": "b"})
        record = {"id": "from-url", "title": "a", "content": "b"}
        self.assert_update(await client.next(), record)
        status, body, _ = await self.request("GET", "/my-app/Message/from-url")
        self.assertEqual((status, body), (200, record))

    async def test_write_id_mismatch(self) -> None:
        """A WS write on a record URL naming another id is an Error; nothing stored."""
        client = await self.connect("/my-app/Message/url-id")
        client.send_json({"id": "other", "title": "a", "content": "b"})
        message = await client.next()
        self.assertEqual(message["message_type"], "Error")
        _, body, _ = await self.request("GET", "/my-app/Message")
        self.assertEqual(body, [])

    async def test_binary_frame(self) -> None:
        """A binary frame holding UTF-8 JSON is handled like a text frame."""
        client = await self.subscribe_table()
        record = {"id": "bin", "title": "ünïcode", "content": "✓"}
        client.send_json(record, binary=True)
        self.assert_update(await client.next(), record)
        status, body, _ = await self.request("GET", "/my-app/Message/bin")
        self.assertEqual((status, body), (200, record))

    async def test_seen_by_sse_and_rest(self) -> None:
        """A WS write is visible over REST list and to a record-level WS client."""
        watcher = await self.connect("/my-app/Message/w1")
        writer = await self.subscribe_table()
        writer.send_json({"id": "w1", "title": "t", "content": "c"})
        self.assert_update(await watcher.next(), {"id": "w1", "title": "t", "content": "c"})
        _, body, _ = await self.request("GET", "/my-app/Message?title==t")
        self.assertEqual(body, [{"id": "w1", "title": "t", "content": "c"}])


class ActionTests(RealtimeTestCase):
    async def test_publish_reaches_subscribers(self) -> None:
        """publish sends a Publish to the topic's subscribers, sender included if subscribed."""
        a = await self.subscribe_table()
        b = await self.subscribe_table()
        outsider = await self.subscribe_table()
        a.send_json({"action": "subscribe", "topic": "chat"})
        b.send_json({"action": "subscribe", "topic": "chat"})
        await eventually(lambda: pubsub_of(self.daemon).subscriber_count("chat") == 2,
                         "two chat subscribers")
        a.send_json({"action": "publish", "topic": "chat", "data": {"typing": "alice"}})
        for client in (a, b):
            message = await client.next()
            self.assertEqual(sorted(message), ["data", "id", "message_type", "timestamp"])
            self.assertEqual(message["message_type"], "Publish")
            self.assertEqual(message["data"], {"typing": "alice"})
            assert_timestamp(self, message["timestamp"])
        # the outsider's next message is the next table change, not the publish
        record = {"id": "m1", "title": "a", "content": "b"}
        await self.post(record)
        self.assert_update(await outsider.next(), record)

    async def test_publish_stores_nothing(self) -> None:
        """A publish to a table's topic stores nothing."""
        client = await self.subscribe_table()
        client.send_json({"action": "publish", "topic": "Message",
                          "data": {"id": "ghost", "title": "a", "content": "b"}})
        message = await client.next()
        self.assertEqual(message["message_type"], "Publish")
        _, body, _ = await self.request("GET", "/my-app/Message")
        self.assertEqual(body, [])
        status, _, _ = await self.request("GET", "/my-app/Message/ghost")
        self.assertEqual(status, 404)

    async def test_unsubscribe(self) -> None:
        """After unsubscribe, table changes no longer reach the connection."""
        client = await self.subscribe_table()
        client.send_json({"action": "subscribe", "topic": "sentinel"})
        client.send_json({"action": "unsubscribe", "topic": "Message"})
        pubsub = pubsub_of(self.daemon)
        await eventually(lambda: pubsub.subscriber_count("Message") == 0, "unsubscribe")
        await self.post({"id": "m1", "title": "a", "content": "b"})
        client.send_json({"action": "publish", "topic": "sentinel", "data": {"n": 1}})
        message = await client.next()
        self.assertEqual((message["message_type"], message["data"]), ("Publish", {"n": 1}))

    async def test_subscribe_record_topic(self) -> None:
        """A table connection may add a record topic of its table."""
        client = await self.connect("/my-app/Message")
        client.send_json({"action": "unsubscribe", "topic": "Message"})
        client.send_json({"action": "subscribe", "topic": "Message/m2"})
        pubsub = pubsub_of(self.daemon)
        await eventually(lambda: pubsub.topics() == ["Message/m2"], "the record topic")
        await self.post({"id": "m1", "title": "a", "content": "b"})
        await self.post({"id": "m2", "title": "c", "content": "d"})
        self.assert_update(await client.next(), {"id": "m2", "title": "c", "content": "d"})


class BadMessageTests(RealtimeTestCase):
    async def assert_error(self, client: WSClient, payload: bytes, binary: bool = False) -> str:
        client.sendMessage(payload, isBinary=binary)
        message = await client.next()
        self.assertEqual(sorted(message), ["error", "message_type"], message)
        self.assertEqual(message["message_type"], "Error")
        self.assertIsInstance(message["error"], str)
        self.assertTrue(message["error"])
        self.assertTrue(client.still_open)
        return message["error"]

    async def test_errors_keep_connection(self) -> None:
        """Every bad message gets an Error; the connection stays open and nothing is stored."""
        client = await self.subscribe_table()
        bad = [
            b"not json",
            b"{\"id\": ",
            b"[1, 2]",
            b"\"text\"",
            b"42",
            b"null",
            b'{"action": "dance"}',
            b'{"action": 7}',
            b'{"action": "subscribe"}',
            b'{"action": "subscribe", "topic": ""}',
            b'{"action": "publish", "topic": "chat"}',
            b'{"id": "x", "title": 5, "content": "c"}',
            b'{"id": "x", "title": "t"}',
            b'{"id": "x", "title": "t", "content": "c", "extra": 1}',
            b'{"action": "subscribe", "topic": "Quiet"}',
            b'{"action": "subscribe", "topic": "Quiet/q1"}',
            b'{"action": "publish", "topic": "Quiet", "data": {}}',
        ]
        for payload in bad:
            await self.assert_error(client, payload)
        await self.assert_error(client, b"\xff\xfe not utf-8", binary=True)
        _, body, _ = await self.request("GET", "/my-app/Message")
        self.assertEqual(body, [])
        self.assertEqual(pubsub_of(self.daemon).topics(), ["Message"])
        record = {"id": "after", "title": "still", "content": "open"}
        client.send_json(record)
        self.assert_update(await client.next(), record)

    async def test_error_texts(self) -> None:
        """Error texts say what was wrong."""
        client = await self.subscribe_table()
        self.assertIn("JSON", await self.assert_error(client, b"nope"))
        self.assertIn("object", await self.assert_error(client, b"[]"))
        self.assertIn("dance", await self.assert_error(client, b'{"action": "dance"}'))
        self.assertIn("content", await self.assert_error(client, b'{"id": "x", "title": "t"}'))
        self.assertIn("Quiet", await self.assert_error(
            client, b'{"action": "subscribe", "topic": "Quiet"}'))


class UpgradeRefusedTests(RealtimeTestCase):
    async def assert_refused(self, path: str, status: int) -> None:
        """The Autobahn client's handshake fails with C{status}; REST says why in JSON."""
        client, opened = open_ws(self.daemon, path)
        error = await with_timeout(opened.addCallbacks(lambda _: None, lambda f: f.value),
                                   TIMEOUT, "the handshake to fail")
        self.assertIsInstance(error, HandshakeFailed, f"{path} was upgraded")
        self.assertIn(f"[{status}]", str(error))
        await with_timeout(client.closed, TIMEOUT, "the refused connection to close")
        code, body, headers = await self.request("GET", path, headers={
            "Upgrade": "websocket", "Connection": "Upgrade",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13",
        })
        self.assertEqual(code, status)
        self.assertIsInstance(body, dict)
        self.assertIsInstance(body.get("error"), str)
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"])

    async def test_table_without_ws(self) -> None:
        """A table with ws off answers the upgrade with 400 before upgrading."""
        await self.assert_refused("/my-app/Quiet", 400)
        await self.assert_refused("/my-app/Quiet/q1", 400)

    async def test_app_without_ws(self) -> None:
        """A table of an app with ws off (no override) refuses the upgrade."""
        await self.assert_refused("/plain-app/Note", 400)

    async def test_unknown(self) -> None:
        """An unknown app or table answers the upgrade with 404."""
        await self.assert_refused("/nope/Message", 404)
        await self.assert_refused("/my-app/Nope", 404)

    async def test_bad_record_id(self) -> None:
        """A record URL whose id does not fit the key type answers 400 before upgrading."""
        await self.assert_refused("/my-app/Counter/abc", 400)

    async def test_too_deep(self) -> None:
        """A path below a record answers 404."""
        await self.assert_refused("/my-app/Message/a/b", 404)


class IdleMemoryTests(RealtimeTestCase):
    async def test_handshake_state_dropped(self) -> None:
        """
        Once open, the server side keeps none of Autobahn's handshake-only
        attributes, a small attribute dict and a small send queue, and still
        works, including Autobahn's queued (sync) sends.
        """
        client = await self.subscribe_table()
        (protocol,) = ws_factory_of(self.daemon).protocols
        for name in _HANDSHAKE_ONLY:
            self.assertNotIn(name, vars(protocol))
        self.assertLess(sys.getsizeof(vars(protocol)), 2048)
        self.assertIsInstance(protocol.send_queue, _SendQueue)
        protocol.sendMessage(b'{"queued": 1}', sync=True)
        protocol.sendMessage(b'{"queued": 2}', sync=True)
        self.assertEqual(await client.next(), {"queued": 1})
        self.assertEqual(await client.next(), {"queued": 2})
        record = {"id": "after-open", "title": "a", "content": "b"}
        await self.post(record)
        self.assert_update(await client.next(), record)


class HeartbeatTests(RealtimeTestCase):
    # Autobahn rounds its timers down to whole seconds, so the effective
    # timeout is between pingTimeout-1 and pingTimeout.
    sections = {"ws": {"pingInterval": 0.5, "pingTimeout": 2}}

    async def test_dead_client_closed(self) -> None:
        """A client that never answers pings is closed within interval + timeout."""
        dead = WSClient()
        dead.answer_pings = False
        started = time.monotonic()
        await self.connect("/my-app/Message", dead)
        await with_timeout(dead.closed, 0.5 + 2 + 1.5, "the dead client to be closed")
        elapsed = time.monotonic() - started
        self.assertGreaterEqual(dead.pings, 1)
        wasClean, code, _ = dead.close_info
        self.assertFalse(wasClean)
        self.assertLess(elapsed, 4.0)
        await eventually(lambda: not ws_factory_of(self.daemon).protocols, "server cleanup")
        self.assertEqual(pubsub_of(self.daemon).subscriber_count(), 0)

    async def test_live_client_stays(self) -> None:
        """A client that answers pings stays open across several intervals."""
        live = await self.subscribe_table()
        await deferLater(reactor, 3.5, lambda: None)
        self.assertTrue(live.still_open)
        self.assertGreaterEqual(live.pings, 2)
        record = {"id": "alive", "title": "a", "content": "b"}
        await self.post(record)
        self.assert_update(await live.next(), record)


class LagTests(RealtimeTestCase):
    sections = {"ws": {"queueSize": 64}}

    async def test_lagging_subscriber_cut_off(self) -> None:
        """
        A client that stops reading is closed with 1008 and a reason about
        lag; the others get every event; the lag is counted.
        """
        fast = [await self.subscribe_table() for _ in range(2)]
        slow = await self.subscribe_table()
        # stop reading: the kernel buffers fill, then the server's queue
        slow.transport.pauseProducing()
        pubsub = pubsub_of(self.daemon)
        padding = "x" * 2000
        sent = 0
        while pubsub.lagged_count == 0 and sent < 20000:
            for _ in range(50):
                pubsub.notify_publish("Message", {"n": sent, "pad": padding})
                sent += 1
            await deferLater(reactor, 0, lambda: None)
        self.assertEqual(pubsub.lagged_count, 1, f"no lag after {sent} events")
        for _ in range(50):
            pubsub.notify_publish("Message", {"n": sent, "pad": padding})
            sent += 1
        slow.transport.resumeProducing()
        _, code, reason = await with_timeout(slow.closed, TIMEOUT, "the slow client to close")
        self.assertEqual(code, 1008)
        self.assertIn("lag", reason)
        for client in fast:
            got = await client.take(sent, timeout=10)
            self.assertEqual([m["data"]["n"] for m in got], list(range(sent)))
            self.assertTrue(client.still_open)
        self.assertLess(len(slow.messages), sent)
        report = await health(self.daemon)
        self.assertEqual(report["applications"][0]["lagged"], 1)
        self.assertEqual(report["connections"]["websocket"], 2)
        self.assertEqual(pubsub.subscriber_count("Message"), 2)


class PlainLagTests(LagTests):
    """The same over plain TCP, where frames go out at once (write_now) until the socket is full."""

    tls = False


class CleanupTests(RealtimeTestCase):
    async def test_connect_disconnect_cycles(self) -> None:
        """After 300 connect/disconnect cycles (clean and aborted) nothing is left."""
        pubsub = pubsub_of(self.daemon)
        await self.post({"id": "r1", "title": "a", "content": "b"})

        async def cycle(i: int) -> None:
            path = "/my-app/Message" if i % 2 else "/my-app/Message/r1"
            client, opened = open_ws(self.daemon, path)
            await with_timeout(opened, TIMEOUT, "open")
            client.send_json({"action": "subscribe", "topic": f"custom-{i}"})
            if i % 3 == 0:
                client.transport.abortConnection()
                await with_timeout(client.closed, TIMEOUT, "abort")
            else:
                await client.close_and_wait()

        for batch in range(10):
            await DeferredList(
                [ensureDeferred(cycle(batch * 30 + i)) for i in range(30)],
                fireOnOneErrback=True, consumeErrors=True,
            )
        factory = ws_factory_of(self.daemon)
        await eventually(lambda: not factory.protocols, "all server protocols to go")
        self.assertEqual((pubsub.topic_count(), pubsub.subscriber_count()), (0, 0))
        report = await health(self.daemon)
        self.assertEqual(report["connections"]["websocket"], 0)
        self.assertEqual((report["topics"], report["subscribers"]), (0, 0))


class ShutdownTests(RealtimeTestCase):
    async def test_close_on_stop(self) -> None:
        """Stopping the daemon closes WebSocket clients with 1001."""
        table = await self.subscribe_table()
        record = await self.connect("/my-app/Message/x")
        await self.daemon.stop()
        for client in (table, record):
            wasClean, code, reason = await with_timeout(client.closed, TIMEOUT, "close")
            self.assertEqual(code, 1001)
            self.assertTrue(wasClean)
