"""Positions, pause, batch receive and capabilities from Python, on every
backend: what a backend claims works, what it does not claim is refused."""
from __future__ import annotations

import time

import pytest

import msgbus
from conftest import unique


def receive_n(sub, n, timeout=30.0):
    out, deadline = [], time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        out.extend(sub.receive_batch(n - len(out), 0.2))
    return out


def publish(bus, topic, payloads, key=b"k"):
    for p in payloads:
        bus.publish(topic, p, key=key)
    bus.flush(30)


def test_receive_batch_in_order(url, topic):
    group = unique("g")
    with msgbus.Bus(url) as bus, bus.subscribe(topic, group) as sub:
        sent = [b"m%d" % i for i in range(25)]
        publish(bus, topic, sent)
        got = receive_n(sub, 25)
        assert [m.payload for m in got] == sent
        for m in got:
            m.ack()
        assert sub.receive_batch(10, 0) == []
        with pytest.raises(msgbus.InvalidError):
            sub.receive_batch(0, 0)


def test_pause_holds_back_and_resume_delivers_everything(url, topic):
    group = unique("g")
    with msgbus.Bus(url) as bus, bus.subscribe(topic, group) as sub:
        publish(bus, topic, [b"before"])
        first = receive_n(sub, 1)
        assert [m.payload for m in first] == [b"before"]
        sub.pause()
        assert sub.paused
        publish(bus, topic, [b"during%d" % i for i in range(5)])
        assert sub.receive(1.0) is None
        first[0].ack()  # what was received before the pause still settles
        sub.resume()
        got = receive_n(sub, 5)
        assert sorted(m.payload for m in got) == [b"during%d" % i for i in range(5)]
        for m in got:
            m.ack()
        assert sub.receive(0.5) is None


def test_buffered_messages_go_back_at_close(mem_url, topic):
    """Messages the binding took from the C queue in one batch and did not
    hand out are released unsettled at close: another member gets them."""
    group = unique("g")
    with msgbus.Bus(mem_url) as bus:
        bus.declare(topic, group)
        publish(bus, topic, [b"m%d" % i for i in range(10)])
        sub = bus.subscribe(topic, group)
        one = sub.receive(5)
        assert one is not None and one.payload == b"m0"
        one.ack()
        sub.close()
        with bus.subscribe(topic, group) as sub2:
            got = receive_n(sub2, 9)
            assert [m.payload for m in got] == [b"m%d" % i for i in range(1, 10)]


def test_capabilities_are_consistent(url):
    with msgbus.Bus(url) as bus:
        caps = bus.capabilities
        detail = bus.capabilities_detail()
        assert detail["backend"] == bus.backend
        assert detail["max_message_size"] == bus.max_message_size
        assert {c["name"] for c in detail["capabilities"] if c["supported"]} == caps
        missing = [c for c in detail["capabilities"] if not c["supported"]]
        assert all(c["why_not"] for c in missing)
    if missing:
        sep = "&" if "?" in url else "?"
        with pytest.raises(msgbus.ConfigError, match=missing[0]["name"]):
            msgbus.Bus(f"{url}{sep}require={missing[0]['name']}")
    if caps:
        sep = "&" if "?" in url else "?"
        msgbus.Bus(f"{url}{sep}require={','.join(sorted(caps))}").close()


def test_start_earliest_where_claimed_refused_elsewhere(url, topic):
    group = unique("g")
    with msgbus.Bus(url) as bus:
        if "replay" not in bus.capabilities:
            with pytest.raises(msgbus.UnsupportedError, match="replay"):
                bus.subscribe(topic, group, {"start": "earliest"})
            with pytest.raises(msgbus.UnsupportedError):
                bus.group_reset(topic, group, "earliest")
            return
        bus.declare(topic)
        publish(bus, topic, [b"old1", b"old2"])
        with bus.subscribe(topic, group, {"start": "earliest"}) as sub:
            got = receive_n(sub, 2)
            assert [m.payload for m in got] == [b"old1", b"old2"]
            for m in got:
                m.ack()
        bus.group_reset(topic, group, "earliest")
        with bus.subscribe(topic, group) as sub:
            got = receive_n(sub, 2)
            assert [m.payload for m in got] == [b"old1", b"old2"]
            with pytest.raises(msgbus.StateError):
                bus.group_reset(topic, group, "latest")
            for m in got:
                m.ack()


def test_start_earliest_on_mem_with_retain(topic):
    with msgbus.Bus(f"mem://{unique('pymem')}?retain=100") as bus:
        assert "replay" in bus.capabilities
        bus.declare(topic, "other")  # mem keeps a topic while it has a group
        publish(bus, topic, [b"a", b"b"])
        with bus.subscribe(topic, unique("g"), {"start": "earliest"}) as sub:
            assert [m.payload for m in receive_n(sub, 2)] == [b"a", b"b"]
