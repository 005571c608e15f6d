"""
L{yeti.transports.write_now}: frames go out at once on an idle plain TCP or
TLS connection, and in order behind anything Twisted has buffered.
"""

from __future__ import annotations

import os

from twisted.internet import reactor, ssl
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.trial import unittest

from tests.test_websocket import eventually
from yeti.tls import context_factory, ensure_certificate
from yeti.transports import FanoutTLSTransport, tls_server_factory, write_now


class _Collect(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.waiting: tuple[int, Deferred[bytes]] | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if self.waiting and len(self.data) >= self.waiting[0]:
            self.waiting[1].callback(self.data)

    def wait_for(self, n: int) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        self.waiting = (n, d)
        if len(self.data) >= n:
            d.callback(self.data)
        return d


class _LoopbackTestCase(unittest.TestCase):
    def listen(self, factory: Factory) -> int:
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port


class WriteNowTests(_LoopbackTestCase):
    """Real loopback TCP connections."""

    async def connect(self) -> tuple[Protocol, _Collect]:
        server_side: Deferred[Protocol] = Deferred()

        class Server(Protocol):
            def connectionMade(self) -> None:
                server_side.callback(self)

        port = self.listen(Factory.forProtocol(Server))
        client = _Collect()
        connected: Deferred[None] = Deferred()

        class Made(ClientFactory):
            def buildProtocol(self, addr: object) -> Protocol:
                reactor.callLater(0, connected.callback, None)
                return client

        connector = reactor.connectTCP("127.0.0.1", port, Made())
        self.addCleanup(connector.disconnect)
        server = await server_side
        await connected
        return server, client

    async def test_sends_at_once_when_idle(self) -> None:
        """On an idle connection the bytes leave without being buffered."""
        server, client = await self.connect()
        write_now(server.transport, b"frame-1")
        transport = server.transport
        self.assertEqual((transport._tempDataLen, len(transport.dataBuffer)), (0, 0))
        self.assertEqual(await client.wait_for(7), b"frame-1")

    async def test_keeps_order_behind_buffered_bytes(self) -> None:
        """Bytes already buffered by Twisted go first; ours are buffered behind them."""
        server, client = await self.connect()
        server.transport.write(b"first,")
        write_now(server.transport, b"second")
        self.assertEqual(server.transport._tempDataLen, len(b"first,second"))
        self.assertEqual(await client.wait_for(12), b"first,second")


class TLSWriteNowTests(_LoopbackTestCase):
    """Real loopback TLS connections through L{tls_server_factory}."""

    async def connect_tls(self) -> tuple[Protocol, _Collect]:
        """A connection whose handshake is done (the server got the client's first bytes)."""
        directory = os.path.abspath(self.mktemp())
        key, cert = ensure_certificate(directory)
        server_side: Deferred[Protocol] = Deferred()

        class Server(Protocol):
            def dataReceived(self, data: bytes) -> None:
                server_side.callback(self)

        options = context_factory(key, cert)
        port = self.listen(tls_server_factory(options, Factory.forProtocol(Server)))
        with open(cert, "rb") as f:
            trust = ssl.Certificate.loadPEM(f.read())
        client = _Collect()
        connector = reactor.connectSSL(
            "127.0.0.1", port, ClientFactory.forProtocol(lambda: client),
            ssl.optionsForClientTLS("localhost", trustRoot=trust),
        )
        self.addCleanup(connector.disconnect)
        await eventually(lambda: client.transport is not None, "the client to connect")
        client.transport.write(b"hello")
        server = await server_side
        self.assertIsInstance(server.transport, FanoutTLSTransport)
        return server, client

    async def test_tls_sends_at_once_when_idle(self) -> None:
        """The frame is encrypted and sent at once: nothing aggregated, nothing buffered."""
        server, client = await self.connect_tls()
        tls = server.transport
        write_now(tls, b"frame-1")
        self.assertEqual(tls._aggregator._buffer, [])
        self.assertIsNone(tls._aggregator._scheduled)
        self.assertEqual((tls.transport._tempDataLen, len(tls.transport.dataBuffer)), (0, 0))
        self.assertEqual(await client.wait_for(7), b"frame-1")

    async def test_tls_keeps_order_behind_aggregated_bytes(self) -> None:
        """Bytes waiting in Twisted's aggregator go first; ours queue behind them."""
        server, client = await self.connect_tls()
        server.transport.write(b"first,")
        write_now(server.transport, b"second")
        self.assertEqual(await client.wait_for(12), b"first,second")

    async def test_tls_large_frames(self) -> None:
        """Frames larger than a TLS record and than a socket buffer arrive whole, in order."""
        server, client = await self.connect_tls()
        frames = [bytes([65 + i]) * 300_000 for i in range(5)]
        for frame in frames:
            write_now(server.transport, frame)
        self.assertEqual(await client.wait_for(1_500_000), b"".join(frames))
