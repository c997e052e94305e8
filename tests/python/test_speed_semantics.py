"""What the fast paths of issue 22 must not change (bench/python,
docs/notes/2026-12-07-python-speed.md).

A received message's fields are read from the library when first asked
for, and an acked message keeps its C message until the Python object
goes. These tests pin what a user sees: every field, read for the first
time after ack, after nack, after the subscription or the bus closed, is
the value the message arrived with; settling twice is still a StateError;
and the publish fast path (payload only) checks its arguments as the
general path does.
"""
from __future__ import annotations

import gc

import pytest

import msgbus
from msgbus import _core

FIELDS = ("payload", "key", "headers", "id", "attempt", "topic", "group", "timestamp",
          "partition", "offset", "redelivered", "type", "source", "subject")


def _publish_one(bus, topic, **kw):
    d = bus.publish(topic, b"body", key=b"k1", headers={"h": "v"}, type="t.x",
                    subject="s1", **kw)
    bus.flush(10)
    return d.result(5)


def _expect(m, topic, mid):
    assert m.payload == b"body"
    assert m.key == b"k1"
    assert m.headers.get("h") == "v"
    assert m.id == mid
    assert m.attempt == 1
    assert m.topic == topic and m.group == "g"
    assert m.timestamp > 0
    assert m.type == "t.x" and m.subject == "s1"
    assert m.redelivered is False


def test_fields_first_read_after_ack(url, topic):
    with msgbus.Bus(url) as bus:
        with bus.subscribe(topic, "g") as sub:
            mid = _publish_one(bus, topic)
            m = sub.receive(10)
            assert m is not None
            m.ack()  # nothing read yet
            assert m.settled
            _expect(m, topic, mid)
            with pytest.raises(msgbus.StateError):
                m.ack()
            with pytest.raises(msgbus.StateError):
                m.nack()


def test_fields_first_read_after_bus_close(mem_url, topic):
    bus = msgbus.Bus(mem_url)
    sub = bus.subscribe(topic, "g")
    mid = _publish_one(bus, topic)
    unsettled = sub.receive(5)
    mid2 = _publish_one(bus, topic)
    acked = sub.receive(5)
    acked.ack()
    bus.close()  # frees both C messages: every field is read first
    assert unsettled._ptr is None and acked._ptr is None
    _expect(unsettled, topic, mid)
    _expect(acked, topic, mid2)
    with pytest.raises(msgbus.ClosedError):
        unsettled.ack()
    with pytest.raises(msgbus.StateError):
        acked.ack()


def test_fields_first_read_after_subscription_close(mem_url, topic):
    with msgbus.Bus(mem_url) as bus:
        sub = bus.subscribe(topic, "g")
        mid = _publish_one(bus, topic)
        m = sub.receive(5)
        sub.close()
        _expect(m, topic, mid)
        with pytest.raises(msgbus.ClosedError):
            m.ack()


def test_nacked_message_keeps_the_attempt_it_arrived_with(mem_url, topic):
    """A nack may bring the same C message back through the core's retry
    with attempt + 1: the first Message keeps what it received."""
    with msgbus.Bus(mem_url) as bus:
        with bus.subscribe(topic, "g", {"retry_initial_ms": 0, "retry_max_attempts": 3}) as sub:
            mid = _publish_one(bus, topic)
            first = sub.receive(5)
            first.nack()  # nothing read yet
            again = sub.receive(5)
            assert again is not None and again.id == mid
            assert again.attempt == 2
            _expect(first, topic, mid)  # attempt 1
            again.ack()


def test_every_field_is_stable_and_writable(mem_url, topic):
    with msgbus.Bus(mem_url) as bus:
        with bus.subscribe(topic, "g") as sub:
            _publish_one(bus, topic)
            m = sub.receive(5)
            first = {f: getattr(m, f) for f in FIELDS}
            m.ack()
            assert {f: getattr(m, f) for f in FIELDS} == first
            m.payload = b"changed"  # plain attributes, as before
            assert m.payload == b"changed"
            with pytest.raises(AttributeError):
                m.no_such_field  # noqa: B018


def test_dropped_acked_messages_are_freed(mem_url, topic):
    """An acked message is freed when its object goes, not kept by the bus."""
    with msgbus.Bus(mem_url) as bus:
        with bus.subscribe(topic, "g") as sub:
            for i in range(50):
                bus.publish(topic, b"x")
            bus.flush(5)
            for _ in range(50):
                sub.receive(5).ack()
            gc.collect()
            assert len(bus._msgs) == 0


def test_publish_fast_path_checks_its_arguments(mem_url, topic):
    with msgbus.Bus(mem_url) as bus:
        with bus.subscribe(topic, "g") as sub:
            for bad in (None, 5, [b"x"]):
                with pytest.raises(msgbus.InvalidTypeError):
                    bus.publish(topic, bad)
            with pytest.raises(msgbus.InvalidTypeError):
                bus.publish(None, b"x")
            with pytest.raises(msgbus.InvalidError):
                bus.publish("bad topic!", b"x")
            with pytest.raises(msgbus.InvalidError):
                bus.publish("bad topic!", b"x")  # refused again, not cached as good
            for p in ("text", bytearray(b"ba"), memoryview(b"mv")):
                bus.publish(topic, p)
            bus.flush(5)
            got = [sub.receive(5) for _ in range(3)]
            assert [m.payload for m in got] == [b"text", b"ba", b"mv"]
            for m in got:
                m.ack()


def test_topic_cache_is_bounded(mem_url):
    with msgbus.Bus(mem_url) as bus:
        for i in range(_core._TOPIC_CACHE_MAX + 10):
            bus.publish(f"pyt-many-{i}", b"x")
        bus.flush(10)
        assert len(_core._topics) <= _core._TOPIC_CACHE_MAX
