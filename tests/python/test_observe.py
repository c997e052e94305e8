"""Stats, connection state and logging from Python (issue 18): Bus.stats()
counts exactly what known traffic did on mem://, Kafka and RabbitMQ;
Bus.state / Subscription.state / on_state / on_stats; libmsgbus's log lines
reach logging.getLogger("msgbus") and never stderr on their own."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import time

import pytest

import msgbus
from msgbus import _log
from conftest import need_url, unique

OPTS = {"retry_max_attempts": 2, "retry_initial_ms": 10, "retry_jitter": 0}


def _wait(pred, timeout=30.0, step=0.1, bus=None):
    """pred() until true (serving bus callbacks meanwhile); its last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= deadline:
            return v
        if bus is not None:
            bus.poll(step)
        else:
            time.sleep(step)


def _sub_stats(bus, topic):
    subs = [s for s in bus.stats()["subscriptions"] if s["topic"] == topic]
    assert len(subs) == 1, subs
    return subs[0]


# ------------------------------------------------------------------ stats

def test_stats_counters_exact(url, topic):
    """10 published, all confirmed; received 12 (10 + 2 retried copies):
    6 acked at once, 2 nacked then acked at attempt 2, 2 dead-lettered."""
    group = unique("g")
    with msgbus.Bus(url) as bus:
        bus.declare(topic, group)
        with bus.subscribe(topic, group, options=OPTS) as sub:
            before = bus.stats()
            assert before["published"] == 0 and before["confirmed"] == 0
            assert before["backend"] == bus.backend and before["url"] == bus.url
            ds = [bus.publish(topic, f"m{i}", key=f"k{i}") for i in range(10)]
            bus.flush(30)
            assert all(d.exception() is None for d in ds)
            s = bus.stats()
            assert (s["published"], s["confirmed"], s["failed"], s["outstanding"]) == \
                (10, 10, 0, 0), s
            assert s["failed_by_error"] == {}
            assert s["confirm_latency_us"]["count"] == 10, s["confirm_latency_us"]
            lat = s["confirm_latency_us"]
            assert 0 <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
            assert s["state"] == "UP" and s["queue_max"] > 0
            assert s["uptime_ms"] >= 0 and isinstance(s["detail"], dict)

            handled, deadline = 0, time.monotonic() + 60
            while handled < 12 and time.monotonic() < deadline:
                m = sub.receive(0.2)
                if m is None:
                    continue
                handled += 1
                i = int(m.payload[1:])
                if i < 6:
                    m.ack()
                elif i < 8:
                    if m.attempt == 1:
                        m.nack(reason="try again")
                    else:
                        m.ack()
                else:
                    m.dead_letter("poison")
            assert handled == 12
            assert sub.receive(0.5) is None
            # dead letters count once the broker confirmed them
            st = _wait(lambda: (lambda x: x if x["dead_lettered"] == 2 else None)(
                _sub_stats(bus, topic)), 30)
            assert st, _sub_stats(bus, topic)
            assert (st["received"], st["acked"], st["nacked"], st["retried"],
                    st["dead_lettered"], st["unsettled"], st["queued"]) == \
                (12, 8, 2, 2, 2, 0, 0), st
            assert st["group"] == group and st["state"] == "UP"
            # the dead letters msgbus sent itself are not "published"
            s = bus.stats()
            assert (s["published"], s["confirmed"], s["failed"]) == (10, 10, 0), s
            # the group caught up: lag goes to 0 (Kafka commits asynchronously)
            lag = _wait(lambda: (lambda x: x if x.get("lag") == 0 else None)(
                _sub_stats(bus, topic)), 30)
            assert lag, _sub_stats(bus, topic)
            assert "lag_detail" in lag


def test_stats_unsettled_and_settle_latency(url, topic):
    group = unique("g")
    with msgbus.Bus(url) as bus:
        bus.declare(topic, group)
        for i in range(16):
            bus.publish(topic, f"x{i}")
        bus.flush(30)
        with bus.subscribe(topic, group) as sub:
            held = []
            deadline = time.monotonic() + 60
            while len(held) < 16 and time.monotonic() < deadline:
                m = sub.receive(0.2)
                if m is not None:
                    held.append(m)
            assert len(held) == 16
            bus.stats()  # a new interval starts here
            st = _sub_stats(bus, topic)
            assert (st["received"], st["unsettled"], st["acked"]) == (16, 16, 0), st
            for m in held[:10]:
                m.ack()
            st = _sub_stats(bus, topic)
            assert (st["received"], st["unsettled"], st["acked"]) == (16, 6, 10), st
            # every 8th received message is timed: 2 of these 16
            assert st["settle_latency_us"]["count"] >= 1, st
            for m in held[10:]:
                m.ack()
            st = _sub_stats(bus, topic)
            assert (st["unsettled"], st["acked"]) == (0, 16), st


def test_stats_refused_publish_not_counted(mem_url, topic):
    """A publish refused at the call (too large here) is not "published"."""
    with msgbus.Bus(mem_url + "?max_message_bytes=100") as bus:
        with pytest.raises(msgbus.TooLargeError):
            bus.publish(topic, b"x" * 1000)
        bus.publish(topic, b"ok").result(5)
        s = bus.stats()
        assert (s["published"], s["confirmed"], s["failed"], s["failed_by_error"]) == \
            (1, 1, 0, {}), s


def test_state_and_events(url, topic):
    group = unique("g")
    with msgbus.Bus(url) as bus:
        st = bus.state
        assert isinstance(st, msgbus.State)
        assert st.name == "UP" and st.reason, st
        events = []
        bus.on_state(events.append)
        bus.declare(topic, group)
        with bus.subscribe(topic, group) as sub:
            assert sub.state.name in ("CONNECTING", "UP")
            ev = _wait(lambda: next((e for e in events if e.subscription is sub
                                     and e.state == "UP"), None), 60, bus=bus)
            assert ev is not None, events
            assert isinstance(ev, msgbus.StateEvent)
            assert (ev.topic, ev.group) == (topic, group)
            assert ev.previous in ("CONNECTING", "RECONNECTING") and ev.reason
            assert abs(ev.time_ms - time.time() * 1000) < 120_000
            assert sub.state.name == "UP"
        with pytest.raises(msgbus.ClosedError):
            sub.state
        bus.on_state(None)
    with pytest.raises(msgbus.ClosedError):
        bus.state
    with pytest.raises(msgbus.ClosedError):
        bus.stats()


def test_on_stats_periodic(mem_url, topic, caplog):
    snaps = []
    with msgbus.Bus(mem_url + "?stats_interval_ms=50") as bus:
        bus.on_stats(snaps.append)
        bus.publish(topic, b"x").result(5)
        deadline = time.monotonic() + 10
        while len(snaps) < 3 and time.monotonic() < deadline:
            bus.poll(0.2)
        assert len(snaps) >= 3
        assert all(isinstance(s, dict) and s["backend"] == "mem" for s in snaps)
        assert snaps[-1]["published"] == 1
        assert 0 < snaps[-1]["interval_ms"] < 5000

        # a raising callback is logged, never raised into C or poll
        def bad(_snap):
            raise RuntimeError("boom in on_stats")
        caplog.set_level(logging.ERROR, logger="msgbus")
        bus.on_stats(bad)
        _wait(lambda: "boom in on_stats" in caplog.text, 10, bus=bus)
        assert "boom in on_stats" in caplog.text
        bus.on_stats(None)
        n = len(snaps)
        time.sleep(0.2)
        bus.poll(0.2)
        assert len(snaps) == n
        with pytest.raises(msgbus.InvalidTypeError):
            bus.on_stats("not callable")
        with pytest.raises(msgbus.InvalidTypeError):
            bus.on_state(42)


# ------------------------------------------------------------------ logging

@pytest.fixture
def follow_logger():
    msgbus.sync_log_level()  # undo a level pinned by another test
    yield
    msgbus.sync_log_level()


def test_log_lines_go_to_msgbus_logger(mem_url, topic, caplog, capfd, follow_logger):
    caplog.set_level(logging.DEBUG, logger="msgbus")
    with msgbus.Bus(mem_url) as bus:  # opening reads the logger's level: debug
        assert _log.current_level() == 3
        bus.declare(topic, "g")
        bus.publish(topic, b"x").result(5)
        with bus.subscribe(topic, "g", options=OPTS) as sub:
            m = sub.receive(5)
            m.nack(reason="again")  # the core logs the retry at debug
            m = sub.receive(5)
            m.ack()
    recs = [r for r in caplog.records if r.name == "msgbus"]
    opened = [r for r in recs if "opened mem bus" in r.getMessage()]
    assert opened and opened[0].levelno == logging.INFO
    assert opened[0].pathname == "libmsgbus"  # where the line comes from
    nacked = [r for r in recs if "nacked (attempt 1)" in r.getMessage()]
    assert nacked and nacked[0].levelno == logging.DEBUG
    out, err = capfd.readouterr()
    assert "msgbus" not in err, err


def test_log_level_follows_logger(mem_url, caplog, follow_logger):
    caplog.set_level(logging.WARNING, logger="msgbus")
    msgbus.sync_log_level()
    assert _log.current_level() == 1
    caplog.clear()
    with msgbus.Bus(mem_url):
        pass
    assert not [r for r in caplog.records if "opened mem bus" in r.getMessage()]
    caplog.set_level(logging.INFO, logger="msgbus")
    with msgbus.Bus(mem_url):  # read again when a bus opens
        assert _log.current_level() == 2
    assert [r for r in caplog.records if "opened mem bus" in r.getMessage()]
    msgbus.set_log_level(0)  # pinned: the logger's level no longer counts
    caplog.clear()
    with msgbus.Bus(mem_url):
        assert _log.current_level() == 0
    assert not [r for r in caplog.records if "opened mem bus" in r.getMessage()]
    msgbus.sync_log_level()
    assert _log.current_level() == 2


def _run_py(code: str, timeout=90):
    env = dict(os.environ)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_nothing_on_stderr_unless_logging_says_so(mem_url):
    """An application that configures no logging sees no msgbus line on
    stderr (NullHandler); with logging.basicConfig the same lines come out
    through logging's format."""
    code = f"""
        import logging, sys
        {{setup}}
        import msgbus
        msgbus.set_log_level(3)
        with msgbus.Bus({mem_url!r}) as bus:
            bus.publish("t", b"x").result(5)
        print("done")
    """
    r = _run_py(code.format(setup="pass"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "done" and r.stderr == "", r.stderr
    r = _run_py(code.format(setup="logging.basicConfig(level=logging.DEBUG)"))
    assert r.returncode == 0, r.stderr
    assert "INFO:msgbus:opened mem bus" in r.stderr, r.stderr
    assert "msgbus info:" not in r.stderr  # the C default format is not used


def test_exit_with_broker_bus_open_logging_from_io_threads():
    """A Kafka and an AMQP bus left open at exit at debug level: their I/O
    threads log while the interpreter shuts down; the hook is handed back to
    the C default first, so the process exits cleanly (no hang, no crash)."""
    kafka, amqp = need_url("kafka"), need_url("amqp")
    code = f"""
        import logging
        logging.basicConfig(level=logging.DEBUG)
        import msgbus
        buses = [msgbus.Bus({kafka!r}), msgbus.Bus({amqp!r})]
        for b in buses:
            b.publish("{unique('pyexit')}", b"x")
        print("leaving")
    """
    r = _run_py(code, timeout=120)
    assert r.returncode == 0, (r.returncode, r.stderr[-3000:])
    assert r.stdout.strip() == "leaving"
    assert "DEBUG:msgbus:" in r.stderr or "INFO:msgbus:" in r.stderr


def test_atexit_hands_the_hook_back_to_c(mem_url):
    """After the exit handlers ran, libmsgbus no longer calls into Python (a
    C thread must not enter a finalizing interpreter): its lines take the C
    default path, not the "msgbus" logger."""
    code = f"""
        import atexit, logging
        logging.basicConfig(level=logging.DEBUG, format="PY %(name)s %(message)s")
        import msgbus
        from msgbus import _lib
        with msgbus.Bus({mem_url!r}):
            pass
        atexit._run_exitfuncs()
        _lib.load().msgbus_set_log(None, None, 2)  # the C default, at info
        with msgbus.Bus({mem_url!r}):
            pass
    """
    r = _run_py(code)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert sum("PY msgbus opened mem bus" in ln for ln in lines) == 1, r.stderr
    assert sum(ln.startswith("msgbus info: opened mem bus") for ln in lines) == 1, r.stderr


class _Proxy:
    """A TCP proxy on loopback to the RabbitMQ of the tests, that can be cut
    (listener and every connection closed) and brought back on the same
    port: a broker outage without touching the shared broker."""

    def __init__(self, host: str, port: int):
        import socket
        import threading
        self._socket, self._threading = socket, threading
        self.target = (host, port)
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._lsock = None
        self._conns = []
        self._lock = threading.Lock()

    def start(self):
        s = self._socket.socket()
        s.setsockopt(self._socket.SOL_SOCKET, self._socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(16)
        self._lsock = s
        self._threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def _accept(self, ls):
        while True:
            try:
                c, _ = ls.accept()
            except OSError:
                return
            try:
                u = self._socket.create_connection(self.target, timeout=5)
            except OSError:
                c.close()
                continue
            with self._lock:
                self._conns += [c, u]
            for a, b in ((c, u), (u, c)):
                self._threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(2)
            except OSError:
                pass

    def cut(self):
        if self._lsock is not None:
            try:  # wakes the accept() in progress: close alone would not
                self._lsock.shutdown(2)
            except OSError:
                pass
            self._lsock.close()
            self._lsock = None
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(2)
            except OSError:
                pass
            s.close()


def test_amqp_state_down_then_up_through_a_cut_link(topic):
    """The link to RabbitMQ is cut: on_state sees the bus leave UP
    (RECONNECTING, then DOWN as reconnect attempts fail) and come back UP
    once the link is back; Bus.state and stats() say the same, and
    "reconnects" counts one."""
    from urllib.parse import urlsplit
    base = urlsplit(need_url("amqp"))
    proxy = _Proxy(base.hostname or "127.0.0.1", base.port or 5672)
    proxy.start()
    netloc = (base.netloc.rsplit("@", 1)[0] + "@" if "@" in base.netloc else "") + \
        f"127.0.0.1:{proxy.port}"
    sep = "&" if base.query else ""
    url = base._replace(netloc=netloc, query=base.query + sep +
                        "heartbeat=1&reconnect_backoff_ms=50&reconnect_backoff_max_ms=200"
                        ).geturl()
    events = []
    try:
        with msgbus.Bus(url) as bus:
            assert bus.state.name == "UP"
            bus.declare(topic, "g")
            bus.on_state(events.append)
            proxy.cut()
            down = _wait(lambda: next((e for e in events if e.subscription is None
                                       and e.state == "DOWN"), None), 30, bus=bus)
            assert down is not None, events
            assert bus.state.name == "DOWN" and bus.state.reason == down.reason
            assert "reconnect" in down.reason
            seen = [e.state for e in events if e.subscription is None]
            assert seen[0] == "RECONNECTING" and events[0].previous == "UP", events
            s = bus.stats()
            assert s["state"] == "DOWN" and s["reconnects"] == 0
            proxy.start()
            up = _wait(lambda: next((e for e in events if e.subscription is None
                                     and e.state == "UP"), None), 30, bus=bus)
            assert up is not None, events
            assert up.previous == "DOWN" and "reconnected" in up.reason
            assert bus.state.name == "UP"
            assert bus.stats()["reconnects"] == 1
            bus.publish(topic, b"after").result(30)  # and it works again
    finally:
        proxy.cut()
