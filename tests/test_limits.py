"""
Limits and exposure of the real daemon: C{http.maxConnections} for
WebSockets and SSE streams together, C{http.maxInFlightRequests}, a
plain-HTTP request to the TLS port, and SSE streams to peers that stopped
reading or vanished (C{TCP_USER_TIMEOUT}, the paused-stream cut-off).

Covered elsewhere: the operations API binding loopback by default
(C{test_tap}), TLS 1.0/1.1 refused (C{test_tls}), body size (C{test_rest}).
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import deferLater
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.trial import unittest

from tests.harness import RawClient, write_app
from tests.test_sse import SSETestCase
from tests.test_websocket import (
    TIMEOUT,
    HandshakeFailed,
    RealtimeTestCase,
    eventually,
    health,
    open_ws,
    pubsub_of,
    realtime_apps,
    with_timeout,
    ws_factory_of,
)
from yeti.errors import Unavailable
from yeti.limits import Connections

# Requests to /slow-app/Slow wait here until the test fires them.
PENDING: list[Deferred[None]] = []

SLOW_RESOURCE = """
from twisted.internet.defer import Deferred

from tests.test_limits import PENDING
from yeti.resources import Resource


class Slow(Resource):
    async def get(self, request):
        gate = Deferred()
        PENDING.append(gate)
        await gate
        return {"slow": True}
"""

UPGRADE_HEADERS = {
    "Upgrade": "websocket", "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13",
}


def sse_streams_of(daemon: Any) -> Any:
    """The daemon's SSE stream registry."""
    return daemon.service.getServiceNamed("http")._sse


def tcp_socket(request: Any) -> socket.socket:
    """The server-side TCP socket under an HTTP request (below TLS, if any)."""
    transport = request.transport
    if isinstance(transport, TLSMemoryBIOProtocol):
        transport = transport.transport
    handle = transport.getHandle()
    assert isinstance(handle, socket.socket), handle
    return handle


class ConnectionLimitTests(RealtimeTestCase, SSETestCase):
    sections = {"http": {"maxConnections": 3}}

    async def assert_ws_refused(self) -> None:
        """A WebSocket upgrade fails with 503; the same request over HTTP says why in JSON."""
        client, opened = open_ws(self.daemon, "/my-app/Message")
        error = await with_timeout(opened.addCallbacks(lambda _: None, lambda f: f.value),
                                   TIMEOUT, "the handshake to fail")
        self.assertIsInstance(error, HandshakeFailed, "upgraded past the limit")
        self.assertIn("[503]", str(error))
        await with_timeout(client.closed, TIMEOUT, "the refused connection to close")
        status, body, headers = await self.request("GET", "/my-app/Message",
                                                   headers=UPGRADE_HEADERS)
        self.assertEqual(status, 503)
        self.assertIn("too many connections", body["error"])
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"])

    async def assert_sse_refused(self) -> None:
        status, body, headers = await self.request("GET", "/my-app/Message?stream=sse")
        self.assertEqual(status, 503)
        self.assertIn("too many connections", body["error"])
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"])

    async def test_websocket_limit(self) -> None:
        """
        With http.maxConnections 3, a fourth WebSocket upgrade and an SSE
        stream are refused with 503 JSON; the open ones keep working; after
        one closes, a new connection is accepted.
        """
        clients = [await self.subscribe_table() for _ in range(3)]
        await self.assert_ws_refused()
        await self.assert_sse_refused()
        record = {"id": "m1", "title": "a", "content": "b"}
        await self.post(record)
        for client in clients:
            self.assert_update(await client.next(), record)
        # REST is not a long-lived connection: unaffected
        status, body, _ = await self.request("GET", "/my-app/Message")
        self.assertEqual((status, body), (200, [record]))
        await clients[0].close_and_wait()
        factory = ws_factory_of(self.daemon)
        await eventually(lambda: len(factory.protocols) == 2, "the closed connection to go")
        await self.subscribe_table()
        report = await health(self.daemon)
        self.assertEqual(report["connections"], {"websocket": 3, "sse": 0})

    async def test_sse_and_websocket_share_the_limit(self) -> None:
        """SSE streams and WebSockets count together against http.maxConnections."""
        streams = [await self.open_connected("/my-app/Message?stream=sse") for _ in range(2)]
        ws = await self.subscribe_table()
        report = await health(self.daemon)
        self.assertEqual(report["connections"], {"websocket": 1, "sse": 2})
        await self.assert_sse_refused()
        await self.assert_ws_refused()
        await streams[0].disconnect()
        registry = sse_streams_of(self.daemon)
        await eventually(lambda: len(registry.streams) == 1, "the stream to go")
        replacement = await self.open_connected("/my-app/Message?stream=sse")
        record = {"id": "m1", "title": "a", "content": "b"}
        await self.post(record)
        SSETestCase.assert_update(self, await replacement.next(), record)
        SSETestCase.assert_update(self, await streams[1].next(), record)
        RealtimeTestCase.assert_update(self, await ws.next(), record)


class InFlightLimitTests(RealtimeTestCase):
    sections = {"http": {"maxInFlightRequests": 2}}

    def apps(self, root: str) -> list[str]:
        return realtime_apps(root) + [write_app(
            root, "slow-app", "", {"resources": ["slow.py"], "schemas": []},
            files={"slow.py": SLOW_RESOURCE},
        )]

    def setUp(self) -> None:
        super().setUp()
        PENDING.clear()
        self.addCleanup(self.release)

    def release(self) -> None:
        while PENDING:
            PENDING.pop().callback(None)

    async def test_in_flight_limit(self) -> None:
        """
        With http.maxInFlightRequests 2 and two requests being handled, a third
        request gets 503 with a JSON error; once they finish, requests pass again.
        """
        slow = [self.request("GET", "/slow-app/Slow") for _ in range(2)]
        await eventually(lambda: len(PENDING) == 2, "two requests in flight")
        status, body, headers = await self.request("GET", "/my-app/Message")
        self.assertEqual(status, 503)
        self.assertIn("in flight", body["error"])
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"])
        status, body, _ = await self.request("POST", "/my-app/Message",
                                             {"id": "m1", "title": "a", "content": "b"})
        self.assertEqual(status, 503)
        self.release()
        for d in slow:
            status, body, _ = await with_timeout(d, TIMEOUT, "the slow request")
            self.assertEqual((status, body), (200, {"slow": True}))
        # the refused POST stored nothing; requests pass again
        status, body, _ = await self.request("GET", "/my-app/Message")
        self.assertEqual((status, body), (200, []))


class PlainHTTPOnTLSPortTests(RealtimeTestCase):
    async def test_plain_http_refused(self) -> None:
        """
        A plain-HTTP request to the TLS port gets no HTTP response and the
        connection is closed; the daemon goes on serving HTTPS.
        """
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.daemon.port)
        peer = await connectProtocol(endpoint, RawClient())
        peer.transport.write(b"GET /my-app/Message HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await with_timeout(peer.lost, TIMEOUT, "the server to close the connection")
        self.assertFalse(peer.data.startswith(b"HTTP/"), peer.data)
        self.assertNotIn(b"Message", peer.data)
        status, body, _ = await self.request("GET", "/my-app/Message")
        self.assertEqual((status, body), (200, []))


PING = 0.3


class SSEPeerTests(SSETestCase):
    sections = {"sse": {"pingInterval": PING}, "ws": {"queueSize": 100000}}

    def server_stream(self) -> Any:
        [stream] = sse_streams_of(self.daemon).streams
        return stream

    async def test_user_timeout(self) -> None:
        """The server sets TCP_USER_TIMEOUT to two ping intervals on an SSE stream's socket."""
        await self.open_connected("/my-app/Message?stream=sse")
        sock = tcp_socket(self.server_stream()._request)
        value = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
        self.assertEqual(value, int(2 * PING * 1000))

    async def test_paused_reader_cut_off(self) -> None:
        """
        A client that stops reading while many events are published is cut
        off two to three ping intervals after its transport paused the stream
        (and did not resume it), long before the queue limit; a reading
        client gets every event.
        """
        stalled = await self.open_connected("/my-app/Message?stream=sse")
        stalled_stream = self.server_stream()
        reader = await self.open_connected("/my-app/Message?stream=sse")
        # Linux applies TCP_USER_TIMEOUT to a zero receive window too, so the
        # kernel may abort this stream first: take it out of the race, to
        # test the stream's own cut-off.
        tcp_socket(stalled_stream._request).setsockopt(
            socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 0)
        stalled.transport.pauseProducing()
        registry = sse_streams_of(self.daemon)
        pubsub = pubsub_of(self.daemon)
        padding = "x" * 4000
        sent = 0
        started = time.monotonic()
        # publish steadily: the stalled client's kernel buffers fill, then the
        # transport pauses its stream for good
        while stalled_stream in registry.streams and time.monotonic() - started < 10:
            for _ in range(20):
                pubsub.notify_publish("Message", {"n": sent, "pad": padding})
                sent += 1
            await deferLater(reactor, 0.005, lambda: None)
        cut_at = reactor.seconds()
        self.assertNotIn(stalled_stream, registry.streams, f"not cut off after {sent} events")
        self.assertLess(sent, 100000)  # long before the queue limit
        paused_for = cut_at - stalled_stream._paused_since
        self.assertGreaterEqual(paused_for, 2 * PING)
        self.assertLess(paused_for, 3 * PING + 0.5)
        self.assertEqual(pubsub.lagged_count, 1)
        self.assertEqual(len(registry.streams), 1)
        self.assertEqual(pubsub.subscriber_count("Message"), 1)
        # the reader got every event, in order, and is still open
        got = []
        while len(got) < sent:
            event = await reader.next(timeout=10)
            got.append(json.loads(event["data"])["n"])
        self.assertEqual(got, list(range(sent)))
        self.assertIsNone(reader.ended)
        report = await health(self.daemon)
        self.assertEqual(report["connections"]["sse"], 1)
        self.assertEqual(report["subscribers"], 1)
        # the stalled client finds its connection gone once it reads again
        stalled.transport.resumeProducing()
        await with_timeout(stalled.finished, TIMEOUT, "the stalled client's connection to end")

    async def test_reading_idle_stream_stays(self) -> None:
        """A client that reads but gets no events stays open for many ping intervals."""
        client = await self.open_connected("/my-app/Message?stream=sse")
        await deferLater(reactor, 6 * PING, lambda: None)
        self.assertIsNone(client.ended)
        self.assertEqual(len(sse_streams_of(self.daemon).streams), 1)
        record = {"id": "late", "title": "a", "content": "b"}
        await self.post(record)
        self.assert_update(await client.next(), record)


class PlainSSEPeerTests(SSEPeerTests):
    """The same over plain HTTP (tls.enabled false)."""

    tls = False



class ConnectionsTests(unittest.TestCase):
    """L{Connections} on its own."""

    def test_websockets_and_streams_count_together(self) -> None:
        """The limit counts both kinds; a 503 Unavailable past it, and room again after one goes."""
        connections = Connections(3)
        connections.websockets.update({"ws-1", "ws-2"})
        connections.check()
        connections.streams.add("sse-1")
        error = self.assertRaises(Unavailable, connections.check)
        self.assertEqual(error.status, 503)
        connections.websockets.discard("ws-1")
        connections.check()
