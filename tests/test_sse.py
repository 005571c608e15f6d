"""
Integration tests of Server-Sent Events: the real daemon over TLS, read by
Twisted's HTTP client streaming the response body.
"""

from __future__ import annotations

import json
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientCreator, Protocol
from twisted.internet.task import LoopingCall, deferLater
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from tests.harness import DaemonTestCase, RawClient, write_app
from tests.test_websocket import (
    TIMEOUT,
    Wakeup,
    eventually,
    health,
    open_ws,
    pubsub_of,
    realtime_apps,
    with_timeout,
)
from yeti.sse import CONNECTED


class SSEClient(Protocol):
    """
    Reads a C{text/event-stream} body into a list of events: dicts with
    C{event}, C{id} (if any) and C{data} (the data lines joined).
    """

    def __init__(self, response: IResponse) -> None:
        self.response = response
        self.events: list[dict[str, str]] = []
        self.comments: list[str] = []
        self._buffer = b""
        self._cursor = 0
        self._wakeup = Wakeup()
        self.finished: Deferred[None] = Deferred()
        self.ended: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data.replace(b"\r\n", b"\n")
        while b"\n\n" in self._buffer:
            block, self._buffer = self._buffer.split(b"\n\n", 1)
            self._parse(block.decode("utf-8"))

    def _parse(self, block: str) -> None:
        event: dict[str, str] = {}
        data: list[str] = []
        for line in block.split("\n"):
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            else:
                event[name] = value
        if data:
            event["data"] = "\n".join(data)
        if event:
            event.setdefault("event", "message")
            self.events.append(event)
            self._wakeup.wake()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.ended = reason
        self.finished.callback(None)
        self._wakeup.wake()

    async def next(self, timeout: float = TIMEOUT, skip_pings: bool = True) -> dict[str, str]:
        """The next event not yet taken (pings skipped unless asked for)."""
        deadline = time.monotonic() + timeout
        while True:
            while self._cursor >= len(self.events):
                if self.ended is not None:
                    raise AssertionError(f"stream ended ({self.ended.value!r}) while waiting")
                await self._wakeup.wait(deadline, "an SSE event")
            event = self.events[self._cursor]
            self._cursor += 1
            if not (skip_pings and event["event"] == "ping"):
                return event

    def pending(self) -> list[dict[str, str]]:
        return [e for e in self.events[self._cursor:] if e["event"] != "ping"]

    async def disconnect(self) -> None:
        """Drop the connection from the client side and wait until it is gone."""
        if self.ended is None:
            self.transport.stopProducing()
            await with_timeout(self.finished, TIMEOUT, "the SSE connection to close")


class SSETestCase(DaemonTestCase):
    def apps(self, root: str) -> list[str]:
        return realtime_apps(root)

    async def open(self, path: str, headers: dict[str, str] | None = None) -> SSEClient:
        """Open a stream on C{path}; it is dropped when the test ends."""
        hdrs = Headers({k.encode(): [v.encode()] for k, v in (headers or {}).items()})
        response = await with_timeout(
            self.daemon.agent().request(b"GET", self.daemon.url(path).encode(), hdrs),
            TIMEOUT, f"the response headers of {path}",
        )
        self.assertEqual(response.code, 200)
        client = SSEClient(response)
        response.deliverBody(client)
        self.addCleanup(client.disconnect)
        return client

    async def open_connected(self, path: str, headers: dict[str, str] | None = None) -> SSEClient:
        """Open a stream and take its first event, which must be the connected message."""
        client = await self.open(path, headers)
        first = await client.next()
        self.assertEqual(first["event"], "message")
        self.assertEqual(json.loads(first["data"]), {"type": "connected", "status": "ok"})
        return client

    async def post(self, record: dict[str, Any]) -> None:
        status, body, _ = await self.request("POST", "/my-app/Message", record)
        self.assertEqual(status, 201, body)

    def assert_update(self, event: dict[str, str], record: dict[str, Any]) -> None:
        self.assertEqual(event["event"], "update")
        self.assertEqual(event["id"], record["id"])
        self.assertEqual(json.loads(event["data"]), record)


class SSEStreamTests(SSETestCase):
    async def test_headers(self) -> None:
        """The stream says text/event-stream and asks caches and proxies not to buffer."""
        client = await self.open("/my-app/Message?stream=sse")
        headers = client.response.headers
        [content_type] = headers.getRawHeaders(b"content-type")
        self.assertTrue(content_type.startswith(b"text/event-stream"), content_type)
        [cache] = headers.getRawHeaders(b"cache-control")
        self.assertIn(b"no-cache", cache)
        self.assertEqual(headers.getRawHeaders(b"x-accel-buffering"), [b"no"])

    async def test_connected_first(self) -> None:
        """The first event is the connected message, sent before any change."""
        await self.open_connected("/my-app/Message?stream=sse")

    async def test_accept_header(self) -> None:
        """Accept: text/event-stream opens a stream like ?stream=sse."""
        client = await self.open_connected(
            "/my-app/Message", {"Accept": "text/event-stream"}
        )
        record = {"id": "a1", "title": "t", "content": "c"}
        await self.post(record)
        self.assert_update(await client.next(), record)

    async def test_update_and_delete(self) -> None:
        """POST, PUT and PATCH are update events with an id line; DELETE a delete event."""
        client = await self.open_connected("/my-app/Message?stream=sse")
        record = {"id": "msg-1", "title": "Hello", "content": "World"}
        await self.post(record)
        self.assert_update(await client.next(), record)
        await self.request("PUT", "/my-app/Message/msg-1", {"title": "H", "content": "W"})
        self.assert_update(await client.next(), {"id": "msg-1", "title": "H", "content": "W"})
        await self.request("PATCH", "/my-app/Message/msg-1", {"content": "X"})
        self.assert_update(await client.next(), {"id": "msg-1", "title": "H", "content": "X"})
        status, _, _ = await self.request("DELETE", "/my-app/Message/msg-1")
        self.assertEqual(status, 204)
        event = await client.next()
        self.assertEqual((event["event"], event["id"]), ("delete", "msg-1"))
        self.assertEqual(json.loads(event["data"]), {"id": "msg-1"})

    async def test_publish(self) -> None:
        """A WebSocket client's publish to the table topic is a publish event."""
        client = await self.open_connected("/my-app/Message?stream=sse")
        ws, opened = open_ws(self.daemon, "/my-app/Message")
        self.addCleanup(ws.close_and_wait)
        await with_timeout(opened, TIMEOUT, "the WebSocket to open")
        ws.send_json({"action": "publish", "topic": "Message", "data": {"alert": "hi"}})
        event = await client.next()
        self.assertEqual(event["event"], "publish")
        self.assertEqual(json.loads(event["data"]), {"alert": "hi"})

    async def test_ws_write_seen(self) -> None:
        """A record written over WebSocket reaches SSE streams."""
        client = await self.open_connected("/my-app/Message?stream=sse")
        ws, opened = open_ws(self.daemon, "/my-app/Message")
        self.addCleanup(ws.close_and_wait)
        await with_timeout(opened, TIMEOUT, "the WebSocket to open")
        record = {"id": "from-ws", "title": "t", "content": "c"}
        ws.send_json(record)
        self.assert_update(await client.next(), record)

    async def test_record_stream(self) -> None:
        """A record stream gets the record first, then only that record's changes."""
        record = {"id": "mine", "title": "a", "content": "b"}
        await self.post(record)
        client = await self.open_connected("/my-app/Message/mine?stream=sse")
        retained = await client.next()
        self.assertEqual((retained["event"], retained["id"]), ("message", "mine"))
        self.assertEqual(json.loads(retained["data"]), record)
        await self.post({"id": "other", "title": "x", "content": "y"})
        await self.request("PATCH", "/my-app/Message/mine", {"title": "z"})
        self.assert_update(await client.next(), {"id": "mine", "title": "z", "content": "b"})
        await self.request("DELETE", "/my-app/Message/other")
        await self.request("DELETE", "/my-app/Message/mine")
        event = await client.next()
        self.assertEqual((event["event"], event["id"]), ("delete", "mine"))
        self.assertEqual(client.pending(), [])

    async def test_record_stream_absent(self) -> None:
        """A record stream of a missing record sends no retained event."""
        client = await self.open_connected("/my-app/Message/later?stream=sse")
        record = {"id": "later", "title": "a", "content": "b"}
        await self.post(record)
        self.assert_update(await client.next(), record)

    async def test_not_enabled(self) -> None:
        """A table without SSE answers 400 with a JSON error, not a stream."""
        for path in ("/my-app/Quiet?stream=sse", "/plain-app/Note?stream=sse"):
            status, body, headers = await self.request("GET", path)
            self.assertEqual(status, 400, path)
            self.assertIsInstance(body["error"], str)
            self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"])
        status, body, _ = await self.request(
            "GET", "/my-app/Quiet", headers={"Accept": "text/event-stream"})
        self.assertEqual(status, 400)

    async def test_unknown_and_bad_id(self) -> None:
        """Unknown tables are 404; an id that does not fit the key type is 400."""
        status, _, _ = await self.request("GET", "/my-app/Nope?stream=sse")
        self.assertEqual(status, 404)
        status, body, _ = await self.request("GET", "/my-app/Counter/abc?stream=sse")
        self.assertEqual(status, 400)
        self.assertIn("Int", body["error"])

    async def test_cleanup_on_disconnect(self) -> None:
        """A client that goes away leaves no stream, subscription or timer behind."""
        pubsub = pubsub_of(self.daemon)
        clients = [await self.open_connected("/my-app/Message?stream=sse") for _ in range(5)]
        await self.post({"id": "r1", "title": "a", "content": "b"})
        clients.append(await self.open_connected("/my-app/Message/r1?stream=sse"))
        report = await health(self.daemon)
        self.assertEqual(report["connections"]["sse"], 6)
        self.assertEqual(report["subscribers"], 6)
        self.assertEqual(len(_ping_timers()), 6)
        for client in clients:
            await client.disconnect()
        await eventually(lambda: pubsub.subscriber_count() == 0, "unsubscribe on disconnect")
        report = await health(self.daemon)
        self.assertEqual(report["connections"]["sse"], 0)
        self.assertEqual((report["topics"], report["subscribers"]), (0, 0))
        self.assertEqual(_ping_timers(), [])

    async def test_end_on_stop(self) -> None:
        """Stopping the daemon ends open streams cleanly."""
        client = await self.open_connected("/my-app/Message?stream=sse")
        await self.daemon.stop()
        await with_timeout(client.finished, TIMEOUT, "the stream to end")
        self.assertTrue(client.ended.check(ResponseDone), client.ended)
        self.assertEqual(_ping_timers(), [])


FEED_RESOURCE = """
from yeti.resources import Resource


class Feed(Resource):
    sse = True

    async def get(self, request):
        return {"feed": True}
"""


class CustomResourceSSETests(SSETestCase):
    def apps(self, root: str) -> list[str]:
        return realtime_apps(root) + [write_app(
            root, "feed-app", "", {"resources": ["feed.py"], "schemas": []},
            files={"feed.py": FEED_RESOURCE},
        )]

    async def test_resource_without_topic(self) -> None:
        """A custom resource that has no topic answers 400 to a stream request."""
        status, body, _ = await self.request("GET", "/feed-app/Feed")
        self.assertEqual((status, body), (200, {"feed": True}))
        status, body, _ = await with_timeout(
            self.request("GET", "/feed-app/Feed?stream=sse"), TIMEOUT, "the answer")
        self.assertEqual(status, 400)
        self.assertIsInstance(body["error"], str)
        self.assertEqual(pubsub_of(self.daemon).topic_count(), 0)


def _dechunk(body: bytes) -> tuple[bytes, bytes]:
    """Decode complete HTTP/1.1 chunks; return (decoded, undecoded rest)."""
    decoded = b""
    while b"\r\n" in body:
        size_line, rest = body.split(b"\r\n", 1)
        size = int(size_line, 16)
        if len(rest) < size + 2:
            break
        if rest[size:size + 2] != b"\r\n":
            raise AssertionError(f"chunk of {size} bytes not followed by CRLF: {rest!r}")
        decoded += rest[:size]
        body = rest[size + 2:]
    return decoded, body


class SSEWireTests(SSETestCase):
    """
    The bytes on the wire over plain HTTP, where events are written straight
    to the socket as prepared chunks.
    """

    tls = False

    async def raw_stream(self, version: bytes) -> RawClient:
        client = RawClient()
        await ClientCreator(reactor, lambda: client).connectTCP("127.0.0.1", self.daemon.port)
        self.addCleanup(lambda: client.lost)
        self.addCleanup(client.transport.loseConnection)
        client.transport.write(
            b"GET /my-app/Message?stream=sse " + version + b"\r\nHost: localhost\r\n\r\n"
        )
        await eventually(lambda: b'"connected"' in client.data, "the connected event")
        return client

    async def post_many(self, count: int) -> list[dict[str, Any]]:
        records = [{"id": f"w{i}", "title": "t" * i, "content": "\u00e9" * i}
                   for i in range(count)]
        for record in records:
            await self.post(record)
        return records

    def assert_updates(self, events: bytes, records: list[dict[str, Any]]) -> None:
        frames = [f for f in events.split(b"\n\n") if f.startswith(b"event: update")]
        self.assertEqual(len(frames), len(records), events)
        for frame, record in zip(frames, records, strict=True):
            lines = frame.split(b"\n")
            self.assertEqual(lines[1], b"id: " + record["id"].encode())
            self.assertEqual(json.loads(lines[2].removeprefix(b"data: ")), record)

    async def test_http11_chunks(self) -> None:
        """Over HTTP/1.1 every event is one well-formed chunk, in commit order."""
        client = await self.raw_stream(b"HTTP/1.1")
        records = await self.post_many(20)
        await eventually(lambda: client.data.count(b"event: update") == 20, "20 updates")
        head, _, body = client.data.partition(b"\r\n\r\n")
        self.assertIn(b"Transfer-Encoding: chunked", head)
        decoded, rest = _dechunk(body)
        self.assertEqual(rest, b"")
        self.assertTrue(decoded.startswith(CONNECTED), decoded)
        self.assert_updates(decoded, records)

    async def test_http10_unchunked(self) -> None:
        """An HTTP/1.0 client gets the events without chunked coding."""
        client = await self.raw_stream(b"HTTP/1.0")
        records = await self.post_many(5)
        await eventually(lambda: client.data.count(b"event: update") == 5, "5 updates")
        head, _, body = client.data.partition(b"\r\n\r\n")
        self.assertNotIn(b"chunked", head.lower())
        self.assertTrue(body.startswith(CONNECTED), body)
        self.assert_updates(body, records)


def _ping_timers() -> list[Any]:
    """Pending reactor calls that belong to a LoopingCall (the SSE pings)."""
    return [
        call for call in reactor.getDelayedCalls()
        if isinstance(call.func, LoopingCall)
    ]


class SSEPingTests(SSETestCase):
    sections = {"sse": {"pingInterval": 0.2}}

    async def test_ping_on_timer(self) -> None:
        """A ping event comes every sse.pingInterval seconds."""
        client = await self.open_connected("/my-app/Message?stream=sse")
        started = time.monotonic()
        for _ in range(3):
            event = await client.next(timeout=2, skip_pings=False)
            self.assertEqual(event["event"], "ping")
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertGreater(time.monotonic() - started, 0.3)

    async def test_pings_between_events(self) -> None:
        """Pings do not disturb the event stream."""
        client = await self.open_connected("/my-app/Message?stream=sse")
        await deferLater(reactor, 0.5, lambda: None)
        record = {"id": "p1", "title": "a", "content": "b"}
        await self.post(record)
        self.assert_update(await client.next(), record)
        self.assertTrue(any(e["event"] == "ping" for e in client.events))
