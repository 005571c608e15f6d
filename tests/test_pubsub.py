"""
Unit tests of L{yeti.pubsub}: topics, fan-out, events encoded once,
pull-style subscriptions and the lag cut-off.  In memory, on a fake clock.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.trial import unittest

from yeti.pubsub import (
    DELETE,
    PUBLISH,
    UPDATE,
    Event,
    Lagged,
    PubSub,
    Subscription,
    iso_timestamp,
)

# 2025-01-15T10:30:00.250Z
T0 = datetime(2025, 1, 15, 10, 30, 0, 250000, tzinfo=UTC).timestamp()


class Recorder:
    """A push subscriber that keeps what it is given."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def deliver(self, event: Event) -> None:
        self.events.append(event)


def make_pubsub(queue_size: int = 256) -> PubSub:
    clock = Clock()
    clock.advance(T0)
    return PubSub(clock, queue_size)


class TimestampTests(unittest.TestCase):
    def test_iso_utc_milliseconds(self) -> None:
        """Epoch seconds format as ISO 8601 UTC with milliseconds and a Z."""
        self.assertEqual(iso_timestamp(T0), "2025-01-15T10:30:00.250Z")
        self.assertEqual(iso_timestamp(0), "1970-01-01T00:00:00.000Z")

    def test_event_stamped_from_clock(self) -> None:
        """Events take their timestamp from the injected clock, not the wall clock."""
        pubsub = make_pubsub()
        event = pubsub.event(UPDATE, "Message", "m1", {"id": "m1"})
        self.assertEqual(event.timestamp, "2025-01-15T10:30:00.250Z")


class TopicTests(unittest.TestCase):
    def test_topic_appears_on_first_subscribe(self) -> None:
        """A topic exists from its first subscriber on."""
        pubsub = make_pubsub()
        self.assertEqual((pubsub.topic_count(), pubsub.topics()), (0, []))
        pubsub.subscribe("Message", Recorder())
        self.assertEqual((pubsub.topic_count(), pubsub.topics()), (1, ["Message"]))

    def test_topic_disappears_with_last_subscriber(self) -> None:
        """A topic goes away when its last subscriber leaves, not before."""
        pubsub = make_pubsub()
        a, b = Recorder(), Recorder()
        pubsub.subscribe("Message", a)
        pubsub.subscribe("Message", b)
        pubsub.unsubscribe("Message", a)
        self.assertEqual(pubsub.topics(), ["Message"])
        self.assertEqual(pubsub.subscriber_count("Message"), 1)
        pubsub.unsubscribe("Message", b)
        self.assertEqual((pubsub.topic_count(), pubsub.topics()), (0, []))
        self.assertEqual(pubsub.subscriber_count("Message"), 0)

    def test_subscribe_twice_is_harmless(self) -> None:
        """Subscribing to a topic one already has adds nothing and delivers once."""
        pubsub = make_pubsub()
        a = Recorder()
        pubsub.subscribe("Message", a)
        pubsub.subscribe("Message", a)
        self.assertEqual(pubsub.subscriber_count("Message"), 1)
        pubsub.notify_publish("Message", {"n": 1})
        self.assertEqual(len(a.events), 1)

    def test_unsubscribe_unknown_is_harmless(self) -> None:
        """Unsubscribing from a topic one does not have changes nothing."""
        pubsub = make_pubsub()
        a, b = Recorder(), Recorder()
        pubsub.unsubscribe("nothing", a)
        pubsub.subscribe("Message", a)
        pubsub.unsubscribe("Message", b)
        self.assertEqual(pubsub.subscriber_count("Message"), 1)

    def test_counts(self) -> None:
        """subscriber_count() without a topic counts subscriptions over all topics."""
        pubsub = make_pubsub()
        a, b = Recorder(), Recorder()
        pubsub.subscribe("Message", a)
        pubsub.subscribe("Message/m1", a)
        pubsub.subscribe("Message", b)
        pubsub.subscribe("chat", b)
        self.assertEqual(pubsub.topic_count(), 3)
        self.assertEqual(pubsub.topics(), ["Message", "Message/m1", "chat"])
        self.assertEqual(pubsub.subscriber_count(), 4)
        self.assertEqual(pubsub.subscriber_count("Message"), 2)
        self.assertEqual(pubsub.subscriber_count("Message/m1"), 1)
        self.assertEqual(pubsub.subscriber_count("absent"), 0)

    def test_remove_topic(self) -> None:
        """remove_topic drops a topic and all its subscriptions."""
        pubsub = make_pubsub()
        a = Recorder()
        pubsub.subscribe("Message", a)
        pubsub.subscribe("chat", a)
        pubsub.remove_topic("Message")
        self.assertEqual(pubsub.topics(), ["chat"])
        pubsub.notify_update("Message", "m1", {"id": "m1"})
        self.assertEqual(a.events, [])


class DeliveryTests(unittest.TestCase):
    def test_update_reaches_record_and_table_topics(self) -> None:
        """notify_update publishes one Update to the record topic and the table topic."""
        pubsub = make_pubsub()
        table, record, other = Recorder(), Recorder(), Recorder()
        pubsub.subscribe("Message", table)
        pubsub.subscribe("Message/m1", record)
        pubsub.subscribe("Message/m2", other)
        event = pubsub.notify_update("Message", "m1", {"id": "m1", "title": "t"})
        self.assertEqual(table.events, [event])
        self.assertEqual(record.events, [event])
        self.assertEqual(other.events, [])
        self.assertEqual(
            event.as_dict(),
            {
                "message_type": "Update",
                "data": {"id": "m1", "title": "t"},
                "id": "m1",
                "timestamp": "2025-01-15T10:30:00.250Z",
            },
        )

    def test_delete_carries_id(self) -> None:
        """notify_delete publishes a Delete whose id and data name the record."""
        pubsub = make_pubsub()
        table, record = Recorder(), Recorder()
        pubsub.subscribe("Message", table)
        pubsub.subscribe("Message/m1", record)
        event = pubsub.notify_delete("Message", "m1")
        self.assertEqual((table.events, record.events), ([event], [event]))
        self.assertEqual(event.message_type, DELETE)
        self.assertEqual(event.id, "m1")
        self.assertEqual(event.data, {"id": "m1"})

    def test_publish_custom_topic(self) -> None:
        """notify_publish sends a Publish to that topic only."""
        pubsub = make_pubsub()
        chat, table = Recorder(), Recorder()
        pubsub.subscribe("chat", chat)
        pubsub.subscribe("Message", table)
        event = pubsub.notify_publish("chat", {"typing": True})
        self.assertEqual(chat.events, [event])
        self.assertEqual(table.events, [])
        self.assertEqual(event.message_type, PUBLISH)
        self.assertEqual(event.data, {"typing": True})

    def test_publish_returns_receivers(self) -> None:
        """publish() returns how many subscribers it reached and counts events."""
        pubsub = make_pubsub()
        event = pubsub.event(PUBLISH, "chat", "chat", {})
        self.assertEqual(pubsub.publish("chat", event), 0)
        pubsub.subscribe("chat", Recorder())
        pubsub.subscribe("chat", Recorder())
        self.assertEqual(pubsub.publish("chat", event), 2)
        self.assertEqual(pubsub.published_count, 2)

    def test_one_event_object_for_all(self) -> None:
        """Every subscriber is handed the very same Event object."""
        pubsub = make_pubsub()
        subscribers = [Recorder() for _ in range(50)]
        for s in subscribers:
            pubsub.subscribe("Message", s)
        event = pubsub.notify_update("Message", 1, {"id": 1})
        for s in subscribers:
            self.assertIs(s.events[0], event)

    def test_order(self) -> None:
        """Subscribers of a topic see its events in publish order."""
        pubsub = make_pubsub()
        a, b = Recorder(), Recorder()
        pubsub.subscribe("Message", a)
        pubsub.subscribe("Message", b)
        sent = [pubsub.notify_update("Message", i, {"id": i}) for i in range(100)]
        sent.append(pubsub.notify_delete("Message", 3))
        self.assertEqual(a.events, sent)
        self.assertEqual(b.events, sent)

    def test_unsubscribe_during_delivery(self) -> None:
        """A subscriber may unsubscribe itself while an event is delivered; others still get it."""
        pubsub = make_pubsub()
        later = Recorder()

        class Leaver:
            def __init__(self) -> None:
                self.events: list[Event] = []

            def deliver(self, event: Event) -> None:
                self.events.append(event)
                pubsub.unsubscribe("Message", self)

        leaver = Leaver()
        pubsub.subscribe("Message", leaver)
        pubsub.subscribe("Message", later)
        first = pubsub.notify_update("Message", 1, {"id": 1})
        second = pubsub.notify_update("Message", 2, {"id": 2})
        self.assertEqual(leaver.events, [first])
        self.assertEqual(later.events, [first, second])
        self.assertEqual(pubsub.subscriber_count("Message"), 1)


class EncodingTests(unittest.TestCase):
    def test_json_encoded_once(self) -> None:
        """json() encodes on first use and returns the same bytes object after."""
        pubsub = make_pubsub()
        event = pubsub.notify_update("Message", "m1", {"id": "m1", "title": "é"})
        first = event.json()
        self.assertIs(event.json(), first)
        self.assertEqual(orjson.loads(first), event.as_dict())

    def test_json_is_spec_message(self) -> None:
        """The JSON holds exactly message_type, data, id and timestamp."""
        event = Event(UPDATE, "Message", "m1", {"id": "m1"}, "2025-01-15T10:30:00.000Z")
        self.assertEqual(
            orjson.loads(event.json()),
            {
                "message_type": "Update",
                "data": {"id": "m1"},
                "id": "m1",
                "timestamp": "2025-01-15T10:30:00.000Z",
            },
        )

    def test_encoded_cached_per_key(self) -> None:
        """encoded() builds a wire form once per key, however many subscribers ask."""
        pubsub = make_pubsub()
        calls: list[tuple[str, Event]] = []

        def builder(name: str) -> Any:
            def build(event: Event) -> bytes:
                calls.append((name, event))
                return name.encode() + event.json()

            return build

        class Encoder:
            def __init__(self, key: str) -> None:
                self.key = key
                self.build = builder(key)
                self.frames: list[bytes] = []

            def deliver(self, event: Event) -> None:
                self.frames.append(event.encoded(self.key, self.build))

        ws = [Encoder("ws") for _ in range(20)]
        sse = [Encoder("sse") for _ in range(20)]
        for e in ws + sse:
            pubsub.subscribe("Message", e)
        event = pubsub.notify_update("Message", "m1", {"id": "m1"})
        self.assertEqual(sorted(name for name, _ in calls), ["sse", "ws"])
        self.assertTrue(all(e is event for _, e in calls))
        frames = {id(f) for e in ws for f in e.frames}
        self.assertEqual(len(frames), 1)
        self.assertTrue(ws[0].frames[0].startswith(b"ws{"))
        self.assertTrue(sse[0].frames[0].startswith(b"sse{"))


class SubscriptionTests(unittest.TestCase):
    def test_get_waits_for_next_event(self) -> None:
        """get() returns an unfired Deferred that fires with the next event."""
        pubsub = make_pubsub()
        sub = Subscription(pubsub, ["Message"])
        d = sub.get()
        self.assertNoResult(d)
        event = pubsub.notify_update("Message", "m1", {"id": "m1"})
        self.assertIs(self.successResultOf(d), event)

    def test_get_returns_queued_in_order(self) -> None:
        """Events that arrive before get() are queued and returned in order."""
        pubsub = make_pubsub()
        sub = Subscription(pubsub, ["Message"])
        sent = [pubsub.notify_update("Message", i, {"id": i}) for i in range(5)]
        got = [self.successResultOf(sub.get()) for _ in range(5)]
        self.assertEqual(got, sent)
        self.assertNoResult(sub.get())

    def test_several_waiting_gets(self) -> None:
        """Several pending get()s fire in the order they were made."""
        pubsub = make_pubsub()
        sub = Subscription(pubsub, ["Message"])
        d1, d2 = sub.get(), sub.get()
        e1 = pubsub.notify_update("Message", 1, {"id": 1})
        e2 = pubsub.notify_update("Message", 2, {"id": 2})
        self.assertIs(self.successResultOf(d1), e1)
        self.assertIs(self.successResultOf(d2), e2)

    def test_record_and_table_topic_once(self) -> None:
        """A subscription to a record and its table gets each event once."""
        pubsub = make_pubsub()
        sub = Subscription(pubsub, ["Message/m1", "Message"])
        e1 = pubsub.notify_update("Message", "m1", {"id": "m1"})
        e2 = pubsub.notify_update("Message", "m2", {"id": "m2"})
        self.assertIs(self.successResultOf(sub.get()), e1)
        self.assertIs(self.successResultOf(sub.get()), e2)
        self.assertNoResult(sub.get())

    def test_cancel_get(self) -> None:
        """A cancelled get() fails with CancelledError and loses no event."""
        pubsub = make_pubsub()
        sub = Subscription(pubsub, ["Message"])
        d = sub.get()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        event = pubsub.notify_update("Message", 1, {"id": 1})
        self.assertIs(self.successResultOf(sub.get()), event)

    def test_close_unsubscribes(self) -> None:
        """close() leaves every topic; the topics vanish."""
        pubsub = make_pubsub()
        sub = Subscription(pubsub, ["Message", "chat"])
        self.assertEqual(pubsub.subscriber_count(), 2)
        sub.close()
        self.assertEqual((pubsub.topic_count(), pubsub.subscriber_count()), (0, 0))
        pubsub.notify_publish("chat", {})
        self.assertNoResult(sub.get())

    def test_queue_holds_queue_size(self) -> None:
        """Up to queue_size undelivered events are kept without a cut-off."""
        pubsub = make_pubsub(queue_size=8)
        sub = Subscription(pubsub, ["Message"])
        sent = [pubsub.notify_update("Message", i, {"id": i}) for i in range(8)]
        self.assertFalse(sub.lagged)
        self.assertEqual(pubsub.lagged_count, 0)
        self.assertEqual([self.successResultOf(sub.get()) for _ in range(8)], sent)

    def test_lag_cut_off(self) -> None:
        """One event past queue_size cuts the subscription off and counts it."""
        pubsub = make_pubsub(queue_size=8)
        slow = Subscription(pubsub, ["Message"])
        fast = Subscription(pubsub, ["Message"])
        sent = []
        for i in range(9):
            sent.append(pubsub.notify_update("Message", i, {"id": i}))
            self.assertIs(self.successResultOf(fast.get()), sent[-1])
        self.assertTrue(slow.lagged)
        self.assertEqual(pubsub.lagged_count, 1)
        self.failureResultOf(slow.get(), Lagged)
        self.failureResultOf(slow.get(), Lagged)
        # the slow one is gone from the topic; the fast one is unaffected
        self.assertEqual(pubsub.subscriber_count("Message"), 1)
        later = pubsub.notify_update("Message", 99, {"id": 99})
        self.assertIs(self.successResultOf(fast.get()), later)
        self.assertFalse(fast.lagged)

    def test_lag_drops_all_topics(self) -> None:
        """A cut-off subscription leaves all its topics; close() after is harmless."""
        pubsub = make_pubsub(queue_size=2)
        sub = Subscription(pubsub, ["Message", "chat"])
        for i in range(3):
            pubsub.notify_publish("chat", {"n": i})
        self.assertTrue(sub.lagged)
        self.assertEqual((pubsub.topic_count(), pubsub.subscriber_count()), (0, 0))
        sub.close()
        self.assertEqual(pubsub.lagged_count, 1)
