"""
Hostile WebSocket clients against the real daemon (real TLS, real Autobahn
clients over C{wss://}): oversized messages, invalid UTF-8, binary garbage
and a message flood.  Each gets its close code or Error message, stores
nothing, and leaves the daemon serving everyone else.
"""

from __future__ import annotations

import os
import time

from twisted.internet import reactor
from twisted.internet.task import deferLater

from tests.test_websocket import (
    TIMEOUT,
    RealtimeTestCase,
    WSClient,
    eventually,
    health,
    pubsub_of,
    with_timeout,
    ws_factory_of,
)

MAX_MESSAGE_SIZE = 4096
MAX_RATE = 50


class HostileTestCase(RealtimeTestCase):
    sections = {"ws": {"maxMessageSize": MAX_MESSAGE_SIZE,
                       "maxMessagesPerSecond": MAX_RATE}}

    async def closed_with(self, client: WSClient) -> tuple[int | None, str | None]:
        """Wait until the server closes C{client}; return its close code and reason."""
        _, code, reason = await with_timeout(client.closed, TIMEOUT, "the server to close")
        return code, reason

    async def assert_nothing_stored(self) -> None:
        status, body, _ = await self.request("GET", "/my-app/Message")
        self.assertEqual((status, body), (200, []))

    async def assert_still_serving(self, others: int = 0) -> None:
        """
        A fresh client can write and gets its Update; the server holds no
        connection but that one and the C{others} still open.
        """
        client = await self.subscribe_table()
        record = {"id": "after", "title": "still", "content": "serving"}
        client.send_json(record)
        self.assert_update(await client.next(), record)
        factory = ws_factory_of(self.daemon)
        await eventually(lambda: len(factory.protocols) == 1 + others,
                         "the closed connection to be gone")


class OversizedTests(HostileTestCase):
    async def test_message_over_limit(self) -> None:
        """A message over ws.maxMessageSize closes the connection with 1009; nothing stored."""
        bystander = await self.subscribe_table()
        client = await self.subscribe_table()
        big = {"id": "big", "title": "t", "content": "x" * MAX_MESSAGE_SIZE}
        client.send_json(big)
        code, _ = await self.closed_with(client)
        self.assertEqual(code, 1009)
        self.assertEqual(client.pending(), [])
        await self.assert_nothing_stored()
        self.assertTrue(bystander.still_open)
        self.assertEqual(bystander.pending(), [])
        await self.assert_still_serving(others=1)

    async def test_fragmented_message_over_limit(self) -> None:
        """Small frames adding up to more than ws.maxMessageSize also close with 1009."""
        client = await self.subscribe_table()
        chunk = b"x" * 1024
        client.beginMessage(isBinary=False)
        for _ in range(MAX_MESSAGE_SIZE // len(chunk) + 2):
            client.sendMessageFrame(chunk)
        client.endMessage()
        code, _ = await self.closed_with(client)
        self.assertEqual(code, 1009)
        await self.assert_nothing_stored()
        await self.assert_still_serving()

    async def test_message_at_limit(self) -> None:
        """A message of exactly ws.maxMessageSize bytes is accepted."""
        client = await self.subscribe_table()
        record = {"id": "fits", "title": "t", "content": ""}
        overhead = len(b'{"id": "fits", "title": "t", "content": ""}')
        record["content"] = "y" * (MAX_MESSAGE_SIZE - overhead)
        client.send_json(record)
        self.assert_update(await client.next(), record)


class EncodingTests(HostileTestCase):
    async def test_invalid_utf8_text(self) -> None:
        """A text frame that is not valid UTF-8 closes the connection with 1007; nothing stored."""
        bystander = await self.subscribe_table()
        client = await self.subscribe_table()
        client.sendMessage(b'{"id": "bad", "title": "\xff\xfe", "content": "c"}', isBinary=False)
        code, _ = await self.closed_with(client)
        self.assertEqual(code, 1007)
        await self.assert_nothing_stored()
        self.assertTrue(bystander.still_open)
        await self.assert_still_serving(others=1)

    async def test_truncated_utf8_text(self) -> None:
        """A text message ending inside a UTF-8 sequence closes with 1007."""
        client = await self.subscribe_table()
        client.sendMessage('{"id": "é'.encode()[:-1], isBinary=False)
        code, _ = await self.closed_with(client)
        self.assertEqual(code, 1007)
        await self.assert_nothing_stored()

    async def test_binary_garbage(self) -> None:
        """Random binary frames each get an Error message; the connection stays open."""
        client = await self.subscribe_table()
        for size in (1, 7, 200, 4000):
            client.sendMessage(os.urandom(size), isBinary=True)
            message = await client.next()
            self.assertEqual(message["message_type"], "Error", message)
            self.assertIn("JSON", message["error"])
            self.assertTrue(client.still_open)
        await self.assert_nothing_stored()
        record = {"id": "ok", "title": "after", "content": "garbage"}
        client.send_json(record)
        self.assert_update(await client.next(), record)


class FloodTests(HostileTestCase):
    async def test_flood_closed_others_keep_latency(self) -> None:
        """
        A client sending faster than ws.maxMessagesPerSecond is closed with
        1008 and a reason about the rate; meanwhile another client's writes
        come back as Updates in well under a second; the flood stores nothing.
        """
        other = await self.subscribe_table()
        flooder = await self.connect("/my-app/Message")
        flooder.send_json({"action": "unsubscribe", "topic": "Message"})
        await eventually(lambda: pubsub_of(self.daemon).subscriber_count("Message") == 1,
                         "the flooder to unsubscribe")
        sent = 0
        latencies: list[float] = []
        started = time.monotonic()
        while flooder.close_info is None and time.monotonic() - started < TIMEOUT:
            # a burst of messages that would store nothing even if accepted
            for _ in range(200):
                if flooder.state != flooder.STATE_OPEN:
                    break
                flooder.send_json({"action": "publish", "topic": "flood", "data": {"n": sent}})
                sent += 1
            record = {"id": f"r{len(latencies)}", "title": "t", "content": "c"}
            sent_at = time.monotonic()
            other.send_json(record)
            self.assert_update(await other.next(timeout=2.0), record)
            latencies.append(time.monotonic() - sent_at)
        code, reason = await self.closed_with(flooder)
        self.assertEqual(code, 1008)
        self.assertIn("rate", reason)
        self.assertGreater(sent, MAX_RATE)
        # the other client goes on with low latency after the flood too
        for i in range(5):
            record = {"id": f"after{i}", "title": "t", "content": "c"}
            sent_at = time.monotonic()
            other.send_json(record)
            self.assert_update(await other.next(timeout=2.0), record)
            latencies.append(time.monotonic() - sent_at)
        self.assertLess(max(latencies), 1.0, latencies)
        self.assertTrue(other.still_open)
        # only the other client's records are stored; the flood published nothing stored
        status, body, _ = await self.request("GET", "/my-app/Message")
        self.assertEqual(status, 200)
        self.assertEqual(sorted(r["id"] for r in body),
                         sorted([f"r{i}" for i in range(len(latencies) - 5)]
                                + [f"after{i}" for i in range(5)]))
        await eventually(lambda: len(ws_factory_of(self.daemon).protocols) == 1,
                         "the flooder to be gone")
        report = await health(self.daemon)
        self.assertEqual(report["connections"]["websocket"], 1)
        self.assertEqual(report["topics"], 1)

    async def test_rate_window(self) -> None:
        """Up to ws.maxMessagesPerSecond messages a second are fine, second after second."""
        client = await self.subscribe_table()
        for second in range(2):
            for i in range(MAX_RATE - 5):
                client.send_json({"id": f"s{second}-{i}", "title": "t", "content": "c"})
            await client.take(MAX_RATE - 5)
            await deferLater(reactor, 1.05, lambda: None)
        self.assertTrue(client.still_open)
        status, body, _ = await self.request("GET", "/my-app/Message?limit=1000")
        self.assertEqual(len(body), 2 * (MAX_RATE - 5))
