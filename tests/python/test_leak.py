"""No memory or handle leaks: RSS and open descriptors before/after 100,000
messages through publish → receive → ack, and across many bus lifetimes."""
from __future__ import annotations

import gc
import os

import msgbus
from conftest import figure, unique

N = 100_000


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def pump(bus, sub, topic, n, batch=1000):
    """Publishes n messages (key, 2 headers, 64-byte payload) in batches,
    receives and acks each; returns how many were received."""
    payload = b"p" * 64
    got = 0
    for start in range(0, n, batch):
        ds = [bus.publish(topic, payload, key=str(i % 16), headers={"i": str(i), "h": "v"})
              for i in range(start, min(n, start + batch))]
        bus.flush(30)
        assert all(d.done() for d in ds)
        for _ in range(len(ds)):
            m = sub.receive(5)
            assert m is not None, f"message {got} missing"
            m.ack()
            got += 1
    return got


def test_no_leak_over_100k_messages(url):
    """On mem:// (the binding alone) and on each real broker."""
    topic, group = unique("leak"), unique("g")
    backend = url.split(":")[0]
    with msgbus.Bus(url) as bus:
        bus.declare(topic, group)
        with bus.subscribe(topic, group) as sub:
            pump(bus, sub, topic, 10_000)  # warm up: allocator pools, client buffers
            gc.collect()
            rss0, fd0 = rss_kib(), open_fds()
            assert pump(bus, sub, topic, N) == N
            gc.collect()
            rss1, fd1 = rss_kib(), open_fds()
    figure(f"leak: {N} messages publish+receive+ack on {backend}: RSS {rss0} KiB -> {rss1} KiB "
           f"({rss1 - rss0:+d} KiB), open fds {fd0} -> {fd1}")
    assert fd1 == fd0
    # A lost free of the smallest C message (~100 bytes) would add ~10 MiB.
    limit = 4096 if backend == "mem" else 8192
    assert rss1 - rss0 < limit, f"RSS grew by {rss1 - rss0} KiB over {N} messages"


def test_no_handle_leak_over_bus_lifetimes():
    def cycle(k):
        for i in range(k):
            with msgbus.Bus(f"mem://{unique('life')}") as bus:
                t = unique("t")
                sub = bus.subscribe(t, "g")
                bus.publish(t, b"x").result(5)
                m = sub.receive(2)
                assert m is not None
                if i % 2:
                    m.ack()  # the other half stays unsettled and is released by close
    cycle(50)
    gc.collect()
    rss0, fd0 = rss_kib(), open_fds()
    cycle(1000)
    gc.collect()
    rss1, fd1 = rss_kib(), open_fds()
    figure(f"leak: 1000 bus open/subscribe/publish/receive/close cycles: RSS {rss0} KiB -> "
           f"{rss1} KiB ({rss1 - rss0:+d} KiB), open fds {fd0} -> {fd1}")
    assert fd1 == fd0
    assert rss1 - rss0 < 4096
