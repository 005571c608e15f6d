"""
The WebSocket endpoint: an HTTP/1.1 upgrade of a table or record URL.

A connection follows one topic from its URL (the table, or one record) and
any topics the client adds with C{{"action": "subscribe"}}.  Events reach it
as prepared frames (framed once per event, see L{YetiWebSocketFactory.frame})
and are written straight to the transport.  The connection is the
transport's push producer: while the transport's buffer is full it queues up
to C{ws.queueSize} events, and one more cuts it off with close code 1008.

Other client messages go to the resource's incoming-message handler.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.web import server
from twisted.web.iweb import IRequest

from yeti.config import WSConfig
from yeti.errors import BadRequest, YetiError
from yeti.limits import Connections
from yeti.pubsub import Event, Outbox, PubSub
from yeti.resources import Resource
from yeti.transports import write_now

_log = Logger()

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY_VIOLATION = 1008
CLOSE_INTERNAL_ERROR = 1011

# What Autobahn's server protocol reads only during the opening handshake
# (processHandshake / succeedHandshake) and then keeps for the life of the
# connection: the raw request and response, the parsed request, and the
# handshake-only options it copies from the factory.  Dropped once open.
_HANDSHAKE_ONLY = (
    "http_request_data", "http_response_data", "http_status_line", "http_headers",
    "http_request_uri", "http_request_host", "http_request_path", "http_request_params",
    "_wskey", "websocket_origin", "websocket_protocols", "websocket_extensions",
    "versions", "webStatus", "maxConnections", "trustXForwardedFor",
    "allowedOrigins", "allowedOriginsPatterns", "allowNullOrigin",
    "perMessageCompressionAccept", "serveFlashSocketPolicy", "flashSocketPolicy",
)


def _compact(obj: Any) -> None:
    """Copy C{obj}'s attribute dict (if any) into one sized for what it holds now."""
    attributes = getattr(obj, "__dict__", None)
    if attributes is not None:
        obj.__dict__ = dict(attributes.items())


class _SendQueue(list):  # type: ignore[type-arg]
    """
    Autobahn's send queue (for sync and chopped writes, which this server
    does not make) as a list: Autobahn only appends, pops from the left and
    takes its length, and an empty list costs 56 bytes where an empty deque
    costs 760.
    """

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


class YetiWebSocketProtocol(WebSocketServerProtocol):
    """One WebSocket client of a table or record URL."""

    def __init__(self, target: Resource, path_id: str | None, topic: str | None) -> None:
        super().__init__()
        self.target = target
        self.path_id = path_id
        self._url_topic = topic
        self.pubsub: PubSub = target.app.pubsub
        self.topics: list[str] = []
        self._outbox = Outbox(self.pubsub.queue_size, self._send_event, self._lag)
        self._opened = False
        self._window_start = 0.0
        self._window_count = 0

    # -- life cycle ----------------------------------------------------

    def onOpen(self) -> None:
        self._drop_handshake_state()
        self._opened = True
        self.factory.opened(self)
        try:
            transport = self.transport
            assert transport is not None
            transport.unregisterProducer()
            transport.registerProducer(self, True)
            # Over TLS, unregisterProducer gives the transport an attribute
            # that (on CPython 3.11) no longer fits its class's shared key
            # table, so its dict becomes an 832-byte table: copy it smaller.
            _compact(transport)
            if self._url_topic is not None:
                self.subscribe(self._url_topic)
        except Exception:
            # Autobahn swallows exceptions raised here: log, and close.
            _log.failure("opening a WebSocket connection failed")
            self.close(CLOSE_INTERNAL_ERROR, "internal server error")
            return
        self._run(self._start)

    def _drop_handshake_state(self) -> None:
        """
        Free what only the opening handshake needed (about 3 KiB per idle
        connection): the attributes in L{_HANDSHAKE_ONLY}, then the attribute
        dict itself, copied because a dict never shrinks (Autobahn's 95 or so
        attributes need a 3.3 KiB table, the remaining 75 one of 1.6 KiB).
        """
        for name in _HANDSHAKE_ONLY:
            self.__dict__.pop(name, None)
        if not self.send_queue:
            self.send_queue = _SendQueue()  # type: ignore[assignment]
        _compact(self)

    async def _start(self) -> None:
        try:
            event = await self.target.retained(self.path_id)
            if event is not None and self.state == self.STATE_OPEN:
                self.sendMessage(event.json())
        finally:
            self._outbox.release()
        if self.state == self.STATE_OPEN:
            await self.target.on_open(self)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        # Autobahn leaves its close handshake timer running when the
        # connection is lost before the peer's Close reply (e.g. after 1007).
        if self.closeHandshakeTimeoutCall is not None:
            self.closeHandshakeTimeoutCall.cancel()
            self.closeHandshakeTimeoutCall = None
        for topic in self.topics:
            self.pubsub.unsubscribe(topic, self)
        self.topics = []
        self._outbox.close()
        if self._opened:
            self._opened = False
            self.factory.closed(self)

    # -- producer: the transport tells us when its buffer is full --------

    def pauseProducing(self) -> None:
        self._outbox.pause()

    def resumeProducing(self) -> None:
        self._outbox.resume()

    def stopProducing(self) -> None:
        self._outbox.pause()

    # -- outgoing --------------------------------------------------------

    def deliver(self, event: Event) -> None:
        self._outbox.put(event)

    def _send_event(self, event: Event) -> None:
        # closing: no data frame may follow our (or the peer's) Close frame
        if self.state == self.STATE_OPEN:
            write_now(self.transport, event.encoded(self.factory, self.factory.frame))

    def _lag(self) -> None:
        self.pubsub.lagged(self, self.topics)
        self.topics = []
        self.close(
            CLOSE_POLICY_VIOLATION,
            f"subscriber lagged more than {self.pubsub.queue_size} messages behind",
        )

    def send(self, message: Any) -> None:
        if self.state == self.STATE_OPEN:
            self.sendMessage(orjson.dumps(message))

    def send_raw(self, payload: bytes, is_binary: bool) -> None:
        if self.state == self.STATE_OPEN:
            self.sendMessage(payload, is_binary)

    def send_error(self, error: str) -> None:
        self.send({"message_type": "Error", "error": error})

    def close(self, code: int, reason: str) -> None:
        """Close with any RFC 6455 code (Autobahn's sendClose refuses 1001-2999)."""
        if self.state == self.STATE_OPEN:
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8")[:123])

    # -- topics ----------------------------------------------------------

    def subscribe(self, topic: str) -> None:
        if topic not in self.topics:
            self.topics.append(topic)
            self.pubsub.subscribe(topic, self)

    def unsubscribe(self, topic: str) -> None:
        if topic in self.topics:
            self.topics.remove(topic)
            self.pubsub.unsubscribe(topic, self)

    # -- incoming --------------------------------------------------------

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if not self._within_rate():
            return
        if self.target.raw_messages:
            self._run(self.target.on_raw_message, self, payload, isBinary)
            return
        try:
            message = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.send_error("message is not valid JSON")
            return
        if not isinstance(message, dict):
            self.send_error("message must be a JSON object")
            return
        action = message.get("action")
        if action is None:
            self._run(self.target.on_message, self, message)
            return
        handler = _ACTIONS.get(action) if isinstance(action, str) else None
        if handler is None:
            self.send_error(
                f"unknown action {action!r}; expected subscribe, unsubscribe or publish"
            )
            return
        try:
            handler(self, message)
        except YetiError as e:
            self.send_error(e.message)

    def _within_rate(self) -> bool:
        """At most C{ws.maxMessagesPerSecond} messages per second, or close 1008."""
        now = self.factory.clock.seconds()
        if now - self._window_start >= 1.0:
            self._window_start = now
            self._window_count = 0
        self._window_count += 1
        if self._window_count > self.factory.config.max_messages_per_second:
            self.close(CLOSE_POLICY_VIOLATION, "message rate limit exceeded")
            return False
        return True

    def handle_subscribe(self, message: dict[str, Any]) -> None:
        self.subscribe(self._topic_of(message))

    def handle_unsubscribe(self, message: dict[str, Any]) -> None:
        self.unsubscribe(self._topic_of(message))

    def handle_publish(self, message: dict[str, Any]) -> None:
        topic = self._topic_of(message)
        if "data" not in message:
            raise BadRequest("publish needs 'data'")
        self.pubsub.notify_publish(topic, message["data"])

    def _topic_of(self, message: dict[str, Any]) -> str:
        topic = message.get("topic")
        if not isinstance(topic, str) or not topic or len(topic) > 512:
            raise BadRequest("'topic' must be a non-empty string of at most 512 characters")
        self.factory.check_topic(self.target, topic)
        return topic

    def _run(self, handler: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Run a handler; its errors become Error messages, never tracebacks."""
        d: Deferred[Any] = Deferred.fromCoroutine(handler(*args))
        d.addErrback(self._handler_failed)

    def _handler_failed(self, failure: Any) -> None:
        if failure.check(YetiError):
            self.send_error(failure.value.message)
            return
        _log.failure("WebSocket handler failed", failure)
        self.send_error("internal server error")


_ACTIONS: dict[str, Callable[[YetiWebSocketProtocol, dict[str, Any]], None]] = {
    "subscribe": YetiWebSocketProtocol.handle_subscribe,
    "unsubscribe": YetiWebSocketProtocol.handle_unsubscribe,
    "publish": YetiWebSocketProtocol.handle_publish,
}


class YetiWebSocketFactory(WebSocketServerFactory):
    """
    Builds a protocol per upgraded request and keeps count of open ones.

    @param topic_check: C{(target, topic) -> None}, raising L{YetiError} for a
        topic that a connection of C{target} may not use.
    @param connections: the open long-lived connections; ours are its
        C{websockets}, counted with its C{streams} against the limit.
    """

    def __init__(
        self,
        config: WSConfig,
        connections: Connections,
        reactor: Any,
        topic_check: Callable[[Resource, str], None],
    ) -> None:
        super().__init__(server=None, reactor=reactor)
        self.config = config
        self.clock: IReactorTime = reactor
        self.connections = connections
        self.check_topic = topic_check
        self.protocols: set[YetiWebSocketProtocol] = connections.websockets
        self.setProtocolOptions(
            autoPingInterval=config.ping_interval,
            autoPingTimeout=config.ping_timeout,
            maxMessagePayloadSize=config.max_message_size,
            maxFramePayloadSize=config.max_message_size,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=2,
            failByDrop=False,  # protocol errors get their close code (1002, 1007, 1009)
        )

    def frame(self, event: Event) -> bytes:
        """
        The event as the bytes of a WebSocket text frame, built once per event
        and written as is to every subscriber.  (Server frames are unmasked
        and this server never negotiates compression, so the bytes are the
        same for every connection.)
        """
        return self.prepareMessage(event.json()).payloadHybi

    def opened(self, protocol: YetiWebSocketProtocol) -> None:
        self.protocols.add(protocol)

    def closed(self, protocol: YetiWebSocketProtocol) -> None:
        self.protocols.discard(protocol)

    def close_all(self, code: int = CLOSE_GOING_AWAY, reason: str = "server shutting down") -> None:
        for protocol in list(self.protocols):
            protocol.close(code, reason)

    def upgrade(self, request: IRequest, target: Resource, path_id: str | None) -> int:
        """
        Hand the request's connection to a new protocol, which then runs the
        WebSocket opening handshake (after L{autobahn.twisted.resource.WebSocketResource}).
        """
        self.connections.check()
        if request.clientproto != b"HTTP/1.1":
            raise BadRequest("WebSocket upgrade needs HTTP/1.1")
        # A bad id in the URL (e.g. not an integer for an Int key) is an
        # HTTP error now, not a failure after the upgrade.
        topic = target.topic(path_id)
        protocol = YetiWebSocketProtocol(target, path_id, topic)
        protocol.factory = self
        transport, request.channel.transport = request.channel.transport, None
        if isinstance(transport, ProtocolWrapper):
            transport.wrappedProtocol = protocol
        elif isinstance(transport.protocol, ProtocolWrapper):
            transport.protocol.wrappedProtocol = protocol
        else:
            transport.protocol = protocol
        protocol.makeConnection(transport)
        if hasattr(transport, "_networkProducer"):
            transport._networkProducer.resumeProducing()
        elif hasattr(transport, "resumeProducing"):
            transport.resumeProducing()
        data = request.method + b" " + request.uri + b" HTTP/1.1\r\n"
        for name, values in request.requestHeaders.getAllRawHeaders():
            data += name + b": " + b",".join(values) + b"\r\n"
        data += b"\r\n" + request.content.read()
        protocol.dataReceived(data)
        return server.NOT_DONE_YET
