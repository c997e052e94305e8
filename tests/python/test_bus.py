"""Bus, publish, subscribe, settle — on mem:// and both real brokers."""
from __future__ import annotations

import selectors
import threading
import time

import pytest

import msgbus
from conftest import need_url, unique

ALL_BYTES = bytes(range(256))


def receive_n(sub, n, timeout=20.0):
    out, deadline = [], time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        m = sub.receive(0.2)
        if m is not None:
            out.append(m)
    return out


def test_round_trip_fields(url, topic):
    """Payload (every byte value), binary key, headers (UTF-8) and id survive
    the broker; the first delivery has attempt 1; ack settles."""
    group = unique("g")
    sent = [
        (ALL_BYTES, b"k\x00\xff1", {"content-type": "application/octet-stream", "u": "é€"}),
        (b"", b"key-2", {}),
        (b"x" * 70000, None, {"trace-id": "abc", "n": ""}),
    ]
    with msgbus.Bus(url) as bus:
        bus.declare(topic, group)
        ds = [bus.publish(topic, p, key=k, headers=h) for p, k, h in sent]
        bus.flush(30)
        assert all(d.done() and d.exception() is None for d in ds)
        with bus.subscribe(topic, group) as sub:
            got = receive_n(sub, 3)
            assert len(got) == 3, f"received {len(got)} of 3"
            by_id = {m.id: m for m in got}
            for d, (p, k, h) in zip(ds, sent):
                m = by_id[d.message_id]
                assert m.payload == p
                assert m.key == k
                assert {n: v for n, v in m.headers.items() if not n.startswith("msgbus-")} == h
                assert m.attempt == 1
                assert m.topic == topic and m.group == group
                assert m.timestamp > 0
                m.ack()
                assert m.settled
            assert sub.receive(0.3) is None


def test_position_and_redelivered(url, topic):
    """Kafka says the partition and offset a message came from (one key:
    one partition, offsets rising); others say -1. RabbitMQ flags a message
    that was delivered before and not acked."""
    group = unique("g")
    with msgbus.Bus(url) as bus:
        bus.declare(topic, group)
        for _ in range(3):
            bus.publish(topic, b"p", key=b"pk")
        bus.flush(30)
        with bus.subscribe(topic, group) as sub:
            got = receive_n(sub, 3)
            assert len(got) == 3, f"received {len(got)} of 3"
            kafka = url.startswith("kafka")
            for m in got:
                assert not m.redelivered
                if kafka:
                    assert m.partition == got[0].partition and m.partition >= 0
                else:
                    assert (m.partition, m.offset) == (-1, -1)
            if kafka:
                assert [m.offset for m in got] == sorted({m.offset for m in got})
            got[0].ack()
            got[1].ack()
            last = got[2]
            last_offset = last.offset
            del got, m, last  # the last one unsettled: delivered again
        with bus.subscribe(topic, group) as sub:
            again = receive_n(sub, 1)
            assert len(again) == 1
            assert again[0].redelivered == url.startswith("amqp")
            if url.startswith("kafka"):
                assert again[0].offset == last_offset


def test_nack_redelivers_with_attempt_raised(url, topic):
    group = unique("g")
    with msgbus.Bus(url) as bus:
        bus.declare(topic, group)
        d = bus.publish(topic, b"again", key="k1")
        d.result(30)
        with bus.subscribe(topic, group) as sub:
            (m,) = receive_n(sub, 1)
            assert m.attempt == 1
            m.nack()
            with pytest.raises(msgbus.StateError):
                m.ack()
            (m2,) = receive_n(sub, 1)
            assert m2.id == d.message_id and m2.payload == b"again"
            assert m2.attempt == 2
            m2.ack()


def test_broadcast_and_fileno(url, topic):
    """A broadcast subscriber sees what is published after it subscribed, and
    the bus fd turns readable for it (selectors)."""
    with msgbus.Bus(url) as bus, bus.subscribe(topic) as sub:
        assert sub.group is None
        bus.publish(topic, b"hello", headers={"a": "b"}).result(30)
        sel = selectors.DefaultSelector()
        sel.register(bus.fileno(), selectors.EVENT_READ)
        got = None
        deadline = time.monotonic() + 20
        while got is None and time.monotonic() < deadline:
            if sel.select(timeout=1.0):
                bus.poll(0)
                got = sub.receive(0)
        sel.close()
        assert got is not None, "fd never led to the message"
        assert got.payload == b"hello" and got.headers.get("a") == "b" and got.group is None
        got.ack()


def test_delivery_future(mem_url, topic):
    with msgbus.Bus(mem_url) as bus:
        seen = []
        d = bus.publish(topic, b"x")
        d.add_done_callback(lambda f: seen.append(f.message_id))
        assert not d.done() or seen  # served only by poll/flush/result
        assert d.result(5) == d.message_id
        assert seen == [d.message_id]
        late = []
        d.add_done_callback(lambda f: late.append(1))  # already done: at once
        assert late == [1]
        assert "confirmed" in repr(d)


def test_publish_with_own_id_and_timestamp(mem_url, topic):
    with msgbus.Bus(mem_url) as bus, bus.subscribe(topic) as sub:
        d = bus.publish(topic, "text payload", key="k", id="order-42:v1", timestamp=1234567)
        assert d.message_id == "order-42:v1"
        bus.flush(5)
        m = sub.receive(2)
        assert (m.id, m.payload, m.key, m.timestamp) == ("order-42:v1", b"text payload", b"k",
                                                          1234567)
        m.ack()


def test_iteration_and_idle_timeout(mem_url, topic):
    with msgbus.Bus(mem_url) as bus, bus.subscribe(topic, "g") as sub:
        for i in range(5):
            bus.publish(topic, str(i))
        bus.flush(5)
        payloads = []
        for m in sub.messages(idle_timeout=0.3):
            payloads.append(m.payload)
            m.ack()
        assert payloads == [b"0", b"1", b"2", b"3", b"4"]
        sub.close()
        assert list(sub) == []  # a closed subscription ends iteration


def test_threads_publish_main_flushes(mem_url, topic):
    with msgbus.Bus(mem_url) as bus, bus.subscribe(topic, "g") as sub:
        def work(t):
            for i in range(500):
                bus.publish(topic, f"{t}:{i}", key=str(t))
        ts = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        bus.flush(10)
        per_key = {}
        for m in sub.messages(idle_timeout=1.0):  # ack as we go: prefetch is 1000
            t, i = m.payload.decode().split(":")
            per_key.setdefault(t, []).append(int(i))
            m.ack()
        assert sum(len(v) for v in per_key.values()) == 2000
        assert all(v == list(range(500)) for v in per_key.values())  # per-key order


def test_asyncio_reader(mem_url, topic):
    import asyncio

    async def main():
        loop = asyncio.get_running_loop()
        with msgbus.Bus(mem_url) as bus, bus.subscribe(topic) as sub:
            got = []
            done = asyncio.Event()

            def readable():
                bus.poll(0)
                while (m := sub.receive(0)) is not None:
                    got.append(m.payload)
                    m.ack()
                if len(got) == 3:
                    done.set()
            loop.add_reader(bus.fileno(), readable)
            for i in range(3):
                bus.publish(topic, f"a{i}")
            await asyncio.wait_for(done.wait(), 5)
            loop.remove_reader(bus.fileno())
            return got
    assert asyncio.run(main()) == [b"a0", b"a1", b"a2"]


def test_close_releases_messages_and_fails_later_calls(mem_url, topic):
    bus = msgbus.Bus(mem_url)
    sub = bus.subscribe(topic, "g")
    bus.publish(topic, b"keep")
    bus.flush(5)
    m = sub.receive(2)
    bus.close()
    bus.close()  # idempotent
    assert bus.closed and sub.closed
    assert m.payload == b"keep"  # fields stay readable
    with pytest.raises(msgbus.ClosedError):
        m.ack()
    with pytest.raises(msgbus.ClosedError):
        bus.publish(topic, b"late")
    with pytest.raises(msgbus.ClosedError):
        sub.receive(0)
    assert repr(bus) == "<Bus closed>"


def test_bus_properties(mem_url):
    with msgbus.Bus(mem_url) as bus:
        assert bus.backend == "mem"
        assert bus.url == mem_url
        assert bus.outstanding == 0
        assert bus.fileno() >= 0


def test_password_hidden_in_url():
    url = need_url("amqp")
    with msgbus.Bus(url) as bus:
        assert ":***@" in bus.url and "guest:guest" not in bus.url
        assert bus.backend == "amqp"


def test_url_from_environment(monkeypatch, mem_url):
    monkeypatch.setenv("MSGBUS_URL", mem_url)
    with msgbus.Bus() as bus:
        assert bus.url == mem_url
