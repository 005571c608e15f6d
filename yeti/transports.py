"""
Writing to transports with as little per-write overhead as the fan-out needs.

Twisted's C{write} always buffers and sends on a later reactor turn: for one
event fanned out to N sockets (WebSocket frames, SSE chunks) that is N
registrations with epoll, N dispatches and N unregistrations besides the N
sends, the largest cost in the fan-out profile (docs/benchmarks.md); its TLS
transport adds a C{callLater(0)} per write to aggregate small writes.
L{write_now} sends at once instead when nothing is queued ahead, which keeps
the order of bytes and leaves anything not sent to Twisted as usual.
"""

from __future__ import annotations

from typing import Any

from OpenSSL.SSL import WantReadError
from twisted.internet import tcp
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, IProtocolFactory
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory, TLSMemoryBIOProtocol


def write_now(transport: Any, data: bytes) -> None:
    """
    Write C{data}, sending it at once when C{transport} is a plain TCP
    connection with nothing buffered, or a L{FanoutTLSTransport} with
    nothing queued; through C{transport.write} otherwise.
    """
    if isinstance(transport, FanoutTLSTransport):
        transport.write_now(data)
        return
    if (
        isinstance(transport, tcp.Connection)
        and transport.connected
        and not transport.disconnecting
        and not transport._tempDataLen
        and transport.offset == len(transport.dataBuffer)
    ):
        sent = transport.writeSomeData(data)
        if not isinstance(sent, int):  # the connection is gone: let Twisted notice
            return
        data = data[sent:]
        if not data:
            return
    transport.write(data)


class FanoutTLSTransport(BufferingTLSTransport):
    """
    Twisted's server-side TLS transport, with L{write_now}: a frame is
    encrypted at once when no application bytes are queued ahead of it
    (instead of in the aggregating C{callLater(0)} of C{write}), and all
    ciphertext goes to the TCP connection through L{write_now}.
    """

    def write_now(self, data: bytes) -> None:
        aggregated = getattr(self._aggregator, "_buffer", None)
        if (
            aggregated == []  # the live aggregator, holding nothing
            and self._handshakeDone
            and not self._appSendBuffer
            and not self.disconnecting
        ):
            TLSMemoryBIOProtocol.write(self, data)  # encrypt now, unaggregated
        else:
            self.write(data)

    def _flushSendBIO(self) -> None:
        # TLSMemoryBIOProtocol._flushSendBIO, sending with write_now
        try:
            ciphertext = self._tlsConnection.bio_read(2**15)
        except WantReadError:
            return
        write_now(self.transport, ciphertext)


def tls_server_factory(
    options: IOpenSSLServerConnectionCreator, wrapped: IProtocolFactory
) -> TLSMemoryBIOFactory:
    """What C{listenSSL} listens with, using L{FanoutTLSTransport}."""
    factory = TLSMemoryBIOFactory(options, False, wrapped)
    factory.protocol = FanoutTLSTransport
    return factory
