"""
The in-process publish/subscribe backbone.

Topics are strings: C{"Message"} (every change of a table), C{"Message/msg-1"}
(changes of one record) or anything an application chooses.  A topic exists
while it has subscribers.

Delivery is synchronous and in publish order: L{PubSub.publish} hands the same
L{Event} object to every subscriber's C{deliver}.  An event is encoded once;
each interface caches its own wire form on the event (L{Event.encoded}), so a
fan-out to thousands of sockets does the JSON and framing work once.

A subscriber owns its bounded queue: when it cannot keep up it tells its peer
and unsubscribes itself, and calls L{PubSub.lagged} so the count is kept.
Pull-style code (custom resources, tests) uses L{Subscription}, whose C{get}
returns a L{Deferred}.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from twisted.application import service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

UPDATE = "Update"
DELETE = "Delete"
PUBLISH = "Publish"
RETAINED = "Retained"


def iso_timestamp(seconds: float) -> str:
    """Format epoch seconds as ISO 8601 UTC with milliseconds."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class Event:
    """
    One message: C{message_type}, C{data}, C{id} and C{timestamp}, exactly
    the fields a WebSocket client receives.
    """

    __slots__ = ("message_type", "topic", "id", "data", "timestamp", "_json", "_cache")

    def __init__(
        self, message_type: str, topic: str, id: Any, data: Any, timestamp: str
    ) -> None:
        self.message_type = message_type
        self.topic = topic
        self.id = id
        self.data = data
        self.timestamp = timestamp
        self._json: bytes | None = None
        self._cache: dict[Any, Any] = {}

    def as_dict(self) -> dict[str, Any]:
        return {
            "message_type": self.message_type,
            "data": self.data,
            "id": self.id,
            "timestamp": self.timestamp,
        }

    def json(self) -> bytes:
        """The event as UTF-8 JSON, encoded on first use only."""
        if self._json is None:
            self._json = orjson.dumps(self.as_dict())
        return self._json

    def encoded(self, key: Any, build: Callable[[Event], Any]) -> Any:
        """Return C{build(self)}, computed once per C{key} for this event."""
        try:
            return self._cache[key]
        except KeyError:
            value = self._cache[key] = build(self)
            return value

    def __repr__(self) -> str:
        return f"<Event {self.message_type} {self.topic} id={self.id!r}>"


class Subscriber(Protocol):
    """Anything that can receive events.  C{deliver} must not block."""

    def deliver(self, event: Event) -> None: ...


class PubSub(service.Service):
    """
    Topic registry and fan-out.

    @ivar lagged_count: subscribers cut off because they fell behind.
    @ivar published_count: events published.
    """

    name = "pubsub"

    def __init__(self, clock: IReactorTime, queue_size: int = 256) -> None:
        self._clock = clock
        self.queue_size = queue_size
        self._topics: dict[str, dict[Subscriber, None]] = {}
        self.lagged_count = 0
        self.published_count = 0

    # -- subscriptions -------------------------------------------------

    def subscribe(self, topic: str, subscriber: Subscriber) -> None:
        """Add C{subscriber} to C{topic}; subscribing twice is harmless."""
        self._topics.setdefault(topic, {})[subscriber] = None

    def unsubscribe(self, topic: str, subscriber: Subscriber) -> None:
        """Remove C{subscriber} from C{topic}; the topic goes with its last subscriber."""
        subscribers = self._topics.get(topic)
        if subscribers is None:
            return
        subscribers.pop(subscriber, None)
        if not subscribers:
            del self._topics[topic]

    def lagged(self, subscriber: Subscriber, topics: list[str]) -> None:
        """Count a subscriber cut off for lagging and drop its subscriptions."""
        self.lagged_count += 1
        for topic in topics:
            self.unsubscribe(topic, subscriber)

    def topic_count(self) -> int:
        return len(self._topics)

    def subscriber_count(self, topic: str | None = None) -> int:
        """Subscribers of C{topic}, or subscriptions over all topics."""
        if topic is None:
            return sum(len(s) for s in self._topics.values())
        return len(self._topics.get(topic, ()))

    def topics(self) -> list[str]:
        return sorted(self._topics)

    def remove_topic(self, topic: str) -> None:
        """Drop a topic and all its subscriptions."""
        self._topics.pop(topic, None)

    # -- publishing ----------------------------------------------------

    def event(self, message_type: str, topic: str, id: Any, data: Any) -> Event:
        """Make an event stamped with the current time."""
        return Event(message_type, topic, id, data, iso_timestamp(self._clock.seconds()))

    def publish(self, topic: str, event: Event) -> int:
        """Deliver C{event} to every subscriber of C{topic}; return how many."""
        self.published_count += 1
        subscribers = self._topics.get(topic)
        if not subscribers:
            return 0
        # A subscriber may unsubscribe itself (or others) while we iterate.
        targets = list(subscribers)
        for subscriber in targets:
            subscriber.deliver(event)
        return len(targets)

    def notify_update(self, table: str, id: Any, data: dict[str, Any]) -> Event:
        """Publish an C{Update} to the record topic, then the table topic."""
        return self._notify(UPDATE, table, id, data)

    def notify_delete(self, table: str, id: Any) -> Event:
        """Publish a C{Delete} (data: C{{"id": id}}) to the record and table topics."""
        return self._notify(DELETE, table, id, {"id": id})

    def notify_publish(self, topic: str, data: Any) -> Event:
        """Publish a custom C{Publish} message; its C{id} is the topic."""
        event = self.event(PUBLISH, topic, topic, data)
        self.publish(topic, event)
        return event

    def _notify(self, message_type: str, table: str, id: Any, data: Any) -> Event:
        event = self.event(message_type, table, id, data)
        self.publish(f"{table}/{id}", event)
        self.publish(table, event)
        return event


class Outbox:
    """
    The sending side of a streaming subscriber (a WebSocket or an SSE stream).

    Events are written at once while the peer keeps up.  While the transport
    has paused the subscriber, or while it is held (until its C{Retained}
    record is out), up to C{limit} events wait in order; one more closes the
    outbox and calls C{overflow}.  An event that arrives through two topics
    (a record and its table) is written once.
    """

    # one per connection: no attribute dict
    __slots__ = ("_limit", "_write", "_overflow", "_queue", "_last", "_held", "paused", "closed")

    def __init__(
        self, limit: int, write: Callable[[Event], None], overflow: Callable[[], None]
    ) -> None:
        self._limit = limit
        self._write = write
        self._overflow = overflow
        # made when the first event has to wait: an empty deque is 760 bytes,
        # and most subscribers never queue anything
        self._queue: deque[Event] | None = None
        self._last: Event | None = None
        self._held = True
        self.paused = False
        self.closed = False

    def put(self, event: Event) -> None:
        if event is self._last or self.closed:
            return
        self._last = event
        if self.paused or self._held or self._queue:
            if self._queue is None:
                self._queue = deque()
            if len(self._queue) >= self._limit:
                self.close()
                self._overflow()
                return
            self._queue.append(event)
            return
        self._write(event)

    def release(self) -> None:
        """Stop holding events back (the retained record has been sent)."""
        self._held = False
        self._flush()

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self._flush()

    def close(self) -> None:
        """Drop what is queued and write nothing more."""
        self.closed = True
        self._queue = None

    def _flush(self) -> None:
        while self._queue and not (self.paused or self._held or self.closed):
            self._write(self._queue.popleft())


class Subscription:
    """
    A pull-style subscriber: C{get()} returns a Deferred for the next event.

    At most C{queue_size} undelivered events are held; one more and the
    subscription is cut off: pending and later C{get()}s fail with L{Lagged}.
    """

    def __init__(self, pubsub: PubSub, topics: list[str]) -> None:
        self._pubsub = pubsub
        self._topics = list(topics)
        self._queue: deque[Event] = deque()
        self._waiting: deque[Deferred[Event]] = deque()
        self._last: Event | None = None
        self.lagged = False
        for topic in self._topics:
            pubsub.subscribe(topic, self)

    def deliver(self, event: Event) -> None:
        if event is self._last:  # the same event via a record and its table topic
            return
        self._last = event
        if self._waiting:
            self._waiting.popleft().callback(event)
            return
        if len(self._queue) >= self._pubsub.queue_size:
            self._cut_off()
            return
        self._queue.append(event)

    def get(self) -> Deferred[Event]:
        if self._queue:
            return succeed(self._queue.popleft())
        if self.lagged:
            return Deferred.fromCoroutine(_raise_lagged())
        d: Deferred[Event] = Deferred(lambda d: self._waiting.remove(d))
        self._waiting.append(d)
        return d

    def close(self) -> None:
        """Unsubscribe from every topic."""
        for topic in self._topics:
            self._pubsub.unsubscribe(topic, self)
        self._topics = []

    def _cut_off(self) -> None:
        self.lagged = True
        self._queue.clear()
        self._pubsub.lagged(self, self._topics)
        self._topics = []


class Lagged(Exception):
    """The subscriber fell more than its queue size behind and was cut off."""


async def _raise_lagged() -> Event:
    raise Lagged("subscriber fell behind and was cut off")
