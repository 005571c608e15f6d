"""
Server-Sent Events on table and record URLs (C{?stream=sse} or
C{Accept: text/event-stream}).

Each stream subscribes to the URL's topic.  Frames are built once per event
and cached on it; on HTTP/1.1 the cached bytes are the whole chunk (size
line, frame, CRLF), written straight to the connection's transport like a
WebSocket frame.  The stream is the request's push producer, so a client
that stops reading fills at most C{ws.queueSize} queued events before it is
cut off, like a WebSocket; one that stays paused (its transport has not
resumed us) for more than two ping intervals is cut off too, however few
events came.  The socket's C{TCP_USER_TIMEOUT} (Linux) is set to two ping
intervals, so the kernel aborts a stream whose peer vanished and stopped
acknowledging the pings.

A stream counts against C{http.maxConnections} together with the open
WebSocket connections; past it a stream request is refused with 503.
"""

from __future__ import annotations

import socket
from typing import Any

import orjson
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web import server
from twisted.web.iweb import IRequest

from yeti.config import SSEConfig
from yeti.errors import BadRequest
from yeti.limits import Connections
from yeti.pubsub import DELETE, PUBLISH, RETAINED, UPDATE, Event, Outbox, PubSub
from yeti.resources import Resource
from yeti.transports import write_now

_log = Logger()

CONNECTED = b'event: message\ndata: {"type":"connected","status":"ok"}\n\n'
PING = b"event: ping\ndata: {}\n\n"
_EVENT_NAMES = {UPDATE: b"update", DELETE: b"delete", PUBLISH: b"publish", RETAINED: b"message"}


def sse_frame(event: Event) -> bytes:
    """One event in C{text/event-stream} framing."""
    name = _EVENT_NAMES[event.message_type]
    data = event.data if event.message_type != DELETE else {"id": event.id}
    frame = b"event: " + name + b"\n"
    if event.message_type != PUBLISH:
        frame += b"id: " + _id_line(event.id) + b"\n"
    return frame + b"data: " + orjson.dumps(data) + b"\n\n"


def sse_chunk(event: Event) -> bytes:
    """L{sse_frame} in HTTP/1.1 chunked coding: what C{Request.write} would send."""
    frame = sse_frame(event)
    return b"%x\r\n%b\r\n" % (len(frame), frame)


def _id_line(value: Any) -> bytes:
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return text.replace("\r", "").replace("\n", "").replace("\x00", "").encode("utf-8")


class SSEStream:
    """One client's event stream: a PubSub subscriber and a push producer."""

    def __init__(self, request: IRequest, pubsub: PubSub, streams: SSEStreams) -> None:
        self._request = request
        self._pubsub = pubsub
        self._streams = streams
        self.topics: list[str] = []
        self._outbox = Outbox(pubsub.queue_size, self._send_event, self._lag)
        self._paused_since = 0.0
        self._open = True
        self._ping = LoopingCall(self._tick)
        self._ping.clock = streams.clock

    def start(self, topic: str, retained: Deferred[Event | None]) -> None:
        request = self._request
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache, no-transform")
        request.setHeader(b"x-accel-buffering", b"no")
        request.registerProducer(self, True)
        request.notifyFinish().addBoth(self._finished)
        _set_user_timeout(request.transport, self._streams.config.ping_interval * 2)
        self.topics.append(topic)
        self._pubsub.subscribe(topic, self)
        self._write(CONNECTED)
        retained.addCallback(self._send_retained)
        retained.addErrback(self._retained_failed)
        self._ping.start(self._streams.config.ping_interval, now=False)

    def _send_retained(self, event: Event | None) -> None:
        if event is not None:
            self._write(sse_frame(event))
        self._outbox.release()

    def _retained_failed(self, failure: Any) -> None:
        _log.failure("reading the retained record failed", failure)
        self.close()

    def deliver(self, event: Event) -> None:
        self._outbox.put(event)

    def _send_event(self, event: Event) -> None:
        request = self._request
        if self._open and request.chunked and request.channel is not None:
            # The headers went out with CONNECTED; the chunk is built once
            # for all streams and skips Request.write's per-call work.
            write_now(request.channel.transport, event.encoded(sse_chunk, sse_chunk))
        else:
            self._write(event.encoded(sse_frame, sse_frame))

    def _lag(self) -> None:
        self._pubsub.lagged(self, self.topics)
        self.topics = []
        self._write(b'event: error\ndata: {"error":"subscriber lagged behind"}\n\n')
        self.close()

    def _write(self, data: bytes) -> None:
        if self._open:
            self._request.write(data)

    def _tick(self) -> None:
        """Every ping interval: a ping, or cut off a peer that has stopped reading."""
        limit = 2 * self._streams.config.ping_interval
        if self._outbox.paused and self._streams.clock.seconds() - self._paused_since > limit:
            # Its buffers are full: finish() could never flush, so drop it.
            self._pubsub.lagged(self, self.topics)
            self.topics = []
            self._request.transport.abortConnection()
            return
        self._write(PING)

    def pauseProducing(self) -> None:
        if not self._outbox.paused:
            self._paused_since = self._streams.clock.seconds()
        self._outbox.pause()

    def resumeProducing(self) -> None:
        self._outbox.resume()

    def stopProducing(self) -> None:
        self._outbox.pause()

    def close(self) -> None:
        """End the stream from our side."""
        if self._open:
            self._request.unregisterProducer()
            self._request.finish()

    def _finished(self, _: Any) -> None:
        self._open = False
        if self._ping.running:
            self._ping.stop()
        for topic in self.topics:
            self._pubsub.unsubscribe(topic, self)
        self.topics = []
        self._outbox.close()
        self._streams.streams.discard(self)


def _set_user_timeout(transport: Any, seconds: float) -> None:
    """
    Set C{TCP_USER_TIMEOUT} on the TCP socket under C{transport} (below TLS,
    if any): the kernel then aborts the connection when sent data stays
    unacknowledged that long.  Not on platforms without the option.
    """
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    while option is not None and transport is not None:
        handle = getattr(transport, "getHandle", lambda: None)()
        if isinstance(handle, socket.socket):
            handle.setsockopt(socket.IPPROTO_TCP, option, max(1, int(seconds * 1000)))
            return
        # a TLS transport's handle is its OpenSSL connection: go down a layer
        transport = getattr(transport, "transport", None)


class SSEStreams:
    """
    Starts streams for requests and keeps the open ones (for shutdown and health).

    @param connections: the open long-lived connections; ours are its
        C{streams}, counted with its C{websockets} against the limit.
    """

    def __init__(
        self,
        config: SSEConfig,
        clock: IReactorTime,
        connections: Connections,
    ) -> None:
        self.config = config
        self.clock = clock
        self.connections = connections
        self.streams: set[SSEStream] = connections.streams

    def __call__(self, request: IRequest, target: Resource, path_id: str | None) -> int:
        topic = target.topic(path_id)
        if topic is None:
            raise BadRequest(f"{request.path.decode('utf-8', 'replace')} has no event stream")
        self.connections.check()
        stream = SSEStream(request, target.app.pubsub, self)
        self.streams.add(stream)
        stream.start(topic, Deferred.fromCoroutine(target.retained(path_id)))
        return server.NOT_DONE_YET

    def close_all(self) -> None:
        for stream in list(self.streams):
            stream.close()
