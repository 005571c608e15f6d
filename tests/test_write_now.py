"""
L{yeti.websocket.write_now}: frames go out at once on an idle plain TCP
connection, and in order behind anything Twisted has buffered.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.trial import unittest

from yeti.websocket import write_now


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


class WriteNowTests(unittest.TestCase):
    """Real loopback TCP connections."""

    async def connect(self) -> tuple[Protocol, _Collect]:
        server_side: Deferred[Protocol] = Deferred()

        class Server(Protocol):
            def connectionMade(self) -> None:
                server_side.callback(self)

        port = reactor.listenTCP(0, Factory.forProtocol(Server), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = _Collect()
        connected: Deferred[None] = Deferred()

        class Made(ClientFactory):
            def buildProtocol(self, addr: object) -> Protocol:
                reactor.callLater(0, connected.callback, None)
                return client

        connector = reactor.connectTCP("127.0.0.1", port.getHost().port, Made())
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
