"""The compiled hot paths (msgbus._speedups) and the ctypes path behave the
same: the same values, the same typed errors with the same messages, the
same delivery outcomes; and the compiled one is what the package uses.

Each path runs in a process of its own (the choice is made once per
process, when the first Bus opens): MSGBUS_PY_NO_SPEEDUPS=1 forces ctypes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

import msgbus

from conftest import need_url, unique

# Runs in a child: a list of observations, printed as JSON, that must be
# equal under both paths (ids and timestamps are replaced by what can be
# compared).
_SCRIPT = r'''
import json, sys
import msgbus

url, topic = sys.argv[1], sys.argv[2]
out = []

def err(fn):
    try:
        fn()
    except Exception as e:
        return [type(e).__name__, str(e)]
    return None

with msgbus.Bus(url) as bus:
    out.append(["speedups", msgbus.speedups()])
    sub = bus.subscribe(topic, "g")
    d1 = bus.publish(topic, b"plain")
    d2 = bus.publish(topic, "text \u00e9")
    d3 = bus.publish(topic, bytearray(b"ba"), key=b"k", headers={"h": "v", "b": b"\xff"},
                     id="my-id-1", timestamp=1700000000000, type="t.x", source="/s",
                     subject="subj")
    d4 = bus.publish(topic, memoryview(b"mv"))
    bus.flush(30)
    for d in (d1, d2, d3, d4):
        out.append(["delivery", d.done(), d.topic == topic, len(d.message_id), d.exception(0),
                    d.result(0) == d.message_id])
    got = []
    while len(got) < 4:
        m = sub.receive(30)
        assert m is not None, "nothing received"
        got.append(m)
    ids = {d1.message_id: "d1", d2.message_id: "d2", d3.message_id: "d3", d4.message_id: "d4"}
    got.sort(key=lambda m: ids.get(m.id, ""))  # arrival order is not promised across keys
    for m in got:
        out.append(["msg", ids.get(m.id), m.payload.decode("utf-8", "replace"), m.key,
                    sorted((k, v) for k, v in m.headers.items() if not k.startswith("ce")),
                    m.attempt, m.topic == topic, m.group, m.type, m.source, m.subject, m.settled])
    got[0].ack()
    out.append(["double ack", err(got[0].ack)])
    out.append(["settled", got[0].settled, got[1].settled])
    got[1].nack()
    out.append(["after nack", got[1].payload.decode(), got[1].attempt, err(got[1].ack)])
    again = sub.receive(30)
    out.append(["redelivered", again is not None and again.attempt])
    again.ack()
    for m in got[2:]:
        m.ack()
    out.append(["bad topic", err(lambda: bus.publish("bad topic!", b"x"))])
    out.append(["bad payload", err(lambda: bus.publish(topic, 12))])
    out.append(["bad header", err(lambda: bus.publish(topic, b"x", headers={"h": 1}))])
    out.append(["nul id", err(lambda: bus.publish(topic, b"x", id="a\0b"))])
    out.append(["bad timeout", err(lambda: sub.receive(-5))])
    out.append(["empty", sub.receive(0)])
    sub.close()
    out.append(["closed sub", err(lambda: sub.receive(0))])
out.append(["closed bus publish", err(lambda: bus.publish(topic, b"x"))])
out.append(["closed bus flush", err(lambda: bus.flush(0))])
out.append(["closed bus poll", err(lambda: bus.poll(0))])
print("OUT " + json.dumps(out, default=repr).replace(topic, "TOPIC"))
'''


def _run(url: str, topic: str, ctypes_only: bool) -> list:
    env = dict(os.environ)
    env.pop("MSGBUS_PY_NO_SPEEDUPS", None)
    if ctypes_only:
        env["MSGBUS_PY_NO_SPEEDUPS"] = "1"
    p = subprocess.run([sys.executable, "-c", _SCRIPT, url, topic], capture_output=True,
                       text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    line = [x for x in p.stdout.splitlines() if x.startswith("OUT ")]
    assert line, p.stdout + p.stderr
    return list(json.loads(line[-1][4:]))


@pytest.mark.parametrize("backend", ["mem", "kafka", "amqp"])
def test_both_paths_observe_the_same(backend: str) -> None:
    url = "mem://speedups" if backend == "mem" else need_url(backend)
    fast = _run(url, unique("sp-fast"), False)
    slow = _run(url, unique("sp-slow"), True)
    assert fast[0] == ["speedups", "in use"], fast[0]
    assert slow[0] == ["speedups", "turned off by MSGBUS_PY_NO_SPEEDUPS=1"], slow[0]
    assert fast[1:] == slow[1:]
    assert len([o for o in fast if o[0] == "msg"]) == 4


def test_the_package_uses_the_compiled_paths() -> None:
    """The installed package was built with its extension (setup.py) and
    uses it, unless MSGBUS_PY_NO_SPEEDUPS=1 says otherwise."""
    with msgbus.Bus("mem://sp-state"):
        state = msgbus.speedups()
    if os.environ.get("MSGBUS_PY_NO_SPEEDUPS") == "1":
        assert state == "turned off by MSGBUS_PY_NO_SPEEDUPS=1"
    else:
        assert state == "in use", state
        from msgbus import _speedups  # noqa: F401  (built and importable)


@pytest.mark.parametrize("backend", ["mem", "kafka"])
def test_done_callbacks_run_once_on_the_thread_serving_their_bus(backend: str) -> None:
    """Delivery reports are served per bus: a done-callback runs on the
    thread that polls its own bus, exactly once, also when added while
    another thread serves the reports."""
    url = "mem://sp-cb" if backend == "mem" else need_url(backend)
    topic = unique("sp-cb")
    n = 2000
    with msgbus.Bus(url) as a, msgbus.Bus(url) as b:
        calls = {"a": [], "b": []}
        ta = tb = 0
        da = [a.publish(topic, b"a") for _ in range(n)]
        db = [b.publish(topic, b"b") for _ in range(n)]

        def add_all() -> None:
            for d in da:
                d.add_done_callback(lambda d, c=calls["a"]: c.append(threading.get_ident()))

        adder = threading.Thread(target=add_all)
        adder.start()

        def serve_b() -> None:
            nonlocal tb
            tb = threading.get_ident()
            for d in db:
                d.add_done_callback(lambda d, c=calls["b"]: c.append(threading.get_ident()))
            b.flush(60)

        tb_thread = threading.Thread(target=serve_b)
        tb_thread.start()
        ta = threading.get_ident()
        while not all(d.done() for d in da):
            a.poll(0.01)
        adder.join()
        tb_thread.join()
        a.flush(60)
        assert all(d.exception(0) is None for d in da + db)
        # every callback ran exactly once
        assert len(calls["a"]) == n and len(calls["b"]) == n
        # b's ran on b's serving thread only; a's on this thread or, for
        # the ones added once their delivery was done, on the adder's
        assert set(calls["b"]) == {tb}
        assert set(calls["a"]) <= {ta, adder.ident}


def test_a_failed_delivery_keeps_its_error_and_type() -> None:
    """A report with an error (Kafka refuses a record over
    message.max.bytes) fails its Delivery with the same typed error on
    both paths: checked here in this process's path."""
    url = need_url("kafka")
    with msgbus.Bus(url) as bus:
        big = b"x" * (8 << 20)
        try:
            d = bus.publish(unique("sp-big"), big)
        except msgbus.TooLargeError as e:
            assert "large" in str(e).lower() or "size" in str(e).lower(), e
            return
        e2 = d.exception(60)
        assert isinstance(e2, msgbus.TooLargeError), e2
        with pytest.raises(msgbus.TooLargeError):
            d.result(0)


def test_a_dropped_bus_and_message_go_at_once() -> None:
    """No reference cycle keeps a bus or a received message alive (the
    compiled publish holds its bus weakly): both are freed when dropped."""
    import gc
    import weakref
    gc.disable()
    try:
        bus = msgbus.Bus("mem://sp-drop")
        topic = unique("sp-drop")
        sub = bus.subscribe(topic, "g")
        bus.publish(topic, b"x").result(5)
        m = sub.receive(5)
        assert m is not None
        wm, wb = weakref.ref(m), weakref.ref(bus)
        assert len(bus._msgs) == 1
        del m
        assert wm() is None and len(bus._msgs) == 0
        again = sub.receive(0)  # dropped unsettled: not lost, comes back at close
        assert again is None
        sub.close()
        del sub, bus
        assert wb() is None
    finally:
        gc.enable()


def test_publish_keeps_the_class_and_its_overrides() -> None:
    calls = []

    class Mine(msgbus.Bus):
        def publish(self, topic, payload, *a, **k):  # type: ignore[override]
            calls.append(topic)
            return super().publish(topic, payload, *a, **k)

    topic = unique("sp-sub")
    with Mine("mem://sp-sub") as bus:
        bus.publish(topic, b"x").result(5)
        assert calls == [topic]
    with msgbus.Bus("mem://sp-doc") as bus:
        assert bus.publish.__doc__ == msgbus.Bus.publish.__doc__
        # every form of call reaches the same checks
        d = bus.publish(topic=topic, payload=b"kw")
        assert d.result(5) == d.message_id
        with pytest.raises(msgbus.InvalidError, match="topic"):
            bus.publish("no good", b"x")
        with pytest.raises(TypeError):
            bus.publish(topic)  # type: ignore[call-arg]


def test_reports_served_outside_the_binding_settle_on_that_thread() -> None:
    """A confirm served by libmsgbus's own poll on another thread (as the
    C outbox relay's thread does on the bus it relays into) settles its
    Delivery there and then, and runs its done-callbacks on that thread."""
    import ctypes
    import time

    from msgbus import _lib
    topic = unique("sp-foreign")
    with msgbus.Bus("mem://sp-foreign") as bus:
        ran_on = []
        d = bus.publish(topic, b"x")
        d.add_done_callback(lambda _d: ran_on.append(threading.get_ident()))
        lib = _lib.load()
        seen = {}

        def foreign() -> None:
            seen["thread"] = threading.get_ident()
            served = ctypes.c_int()
            deadline = time.monotonic() + 10
            while not d.done() and time.monotonic() < deadline:
                assert lib.msgbus_poll(bus._ptr, 100, ctypes.byref(served)) == 0
            seen["done_there"] = d.done()

        t = threading.Thread(target=foreign)
        t.start()
        t.join()
        assert seen["done_there"] is True
        assert ran_on == [seen["thread"]]
        assert d.result(0) == d.message_id
