"""Argument checks of the binding (issue 16, item 11; docs/python.md
"Argument rules"): a bad argument raises the documented error BEFORE any C
call, any database write or any settle — ctypes would otherwise truncate
ints (2**70 → 0, -1 → SIZE_MAX) and pass None as NULL.

Each test asserts the exception type and that nothing happened: the C
functions that would act were not called (a recording proxy stands in for
libmsgbus), nothing was published or written, the message is unsettled.
"""
from __future__ import annotations

import ctypes
import math
import os
import sqlite3
import time

import pytest

import msgbus
from msgbus import _check, _lib
from msgbus import inbox as mbinbox
from msgbus import outbox as mboutbox


class _Spy:
    """Stands in for the loaded CDLL and records the name of every C
    function called through it."""

    def __init__(self, real):
        self._real = real
        self.calls = []

    def __getattr__(self, name):
        fn = getattr(self._real, name)
        if not callable(fn):
            return fn

        def call(*args):
            self.calls.append(name)
            return fn(*args)
        return call

    def called(self, *names):
        return [c for c in self.calls if c in names]


@pytest.fixture
def c_calls(monkeypatch):
    """Records the libmsgbus functions called while the test runs."""
    spy = _Spy(_lib.load())
    monkeypatch.setattr(_lib, "_lib", spy)
    return spy


@pytest.fixture
def sqlite_calls(monkeypatch):
    """Records the libsqlite3 functions the relay calls."""
    spy = _Spy(mboutbox._sqlite())
    monkeypatch.setattr(mboutbox, "_sqlite_lib", spy)
    return spy


@pytest.fixture
def bus(mem_url):
    with msgbus.Bus(mem_url) as b:
        yield b


def _nothing_arrives(sub):
    assert sub.receive(0.3) is None


@pytest.fixture
def app_db(tmp_path):
    path = str(tmp_path / "app.db")
    conn = sqlite3.connect(path)
    mboutbox.create_table(conn)
    conn.commit()
    yield path, conn
    conn.close()


def _rows(conn, table="msgbus_outbox"):
    return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


# ------------------------------------------------------------------ item 11, case by case

def test_timestamp_2_pow_70_is_refused_not_wrapped(bus, topic, c_calls):
    """ctypes turned 2**70 into 0 and the message went out with timestamp 0."""
    bus.declare(topic, "g")
    with bus.subscribe(topic, "g") as sub:
        for bad in (2 ** 70, 2 ** 63, -1):
            with pytest.raises(msgbus.InvalidError, match="timestamp") as ei:
                bus.publish(topic, b"x", timestamp=bad)
            assert isinstance(ei.value, ValueError)
        with pytest.raises(msgbus.InvalidTypeError, match="timestamp"):
            bus.publish(topic, b"x", timestamp=1.5e12)  # not silently int()-ed
        assert c_calls.called("msgbus_msg_new", "msgbus_publish") == []
        assert bus.outstanding == 0
        _nothing_arrives(sub)
        # the largest int64 still passes, unchanged
        bus.publish(topic, b"x", timestamp=_check.INT64_MAX).result(5)
        m = sub.receive(5)
        assert m is not None and m.timestamp == _check.INT64_MAX
        m.ack()


def test_outbox_put_timestamp_2_pow_70_writes_no_row(app_db, topic):
    _, conn = app_db
    with pytest.raises(msgbus.InvalidError, match="timestamp"):
        mboutbox.put(conn, topic, b"x", timestamp=2 ** 70)
    with pytest.raises(msgbus.InvalidError, match="timestamp"):
        mboutbox.put(conn, topic, b"x", timestamp=-5)
    conn.commit()
    assert _rows(conn) == 0


def test_huge_poll_timeout_is_refused_not_returned_at_once(bus, topic, c_calls):
    """A timeout above C int max ms wrapped to a small or negative number:
    poll returned at once. Now it raises, and no confirm was served."""
    bus.declare(topic, "g")
    d = bus.publish(topic, b"x")
    c_calls.calls.clear()
    for bad in (2 ** 40, 1e300, float("inf"), _check.MAX_TIMEOUT_S + 1):
        t0 = time.monotonic()
        with pytest.raises(msgbus.InvalidError, match="timeout must be at most"):
            bus.poll(bad)
        assert time.monotonic() - t0 < 0.5
    with pytest.raises(msgbus.InvalidError, match="timeout"):
        bus.poll(float("nan"))
    with pytest.raises(msgbus.InvalidError, match="timeout"):
        bus.poll(-1)  # seconds; Python's forever is None
    with pytest.raises(msgbus.InvalidTypeError, match="timeout"):
        bus.poll("1")
    with pytest.raises(msgbus.InvalidError, match="timeout must be at most"):
        bus.flush(2 ** 40)
    assert c_calls.called("msgbus_poll", "msgbus_flush") == []
    assert not d.done()  # no confirm was served by the refused calls
    assert d.result(5) == d.message_id


def test_huge_receive_timeout_is_refused_and_message_stays(bus, topic, c_calls):
    bus.declare(topic, "g")
    d = bus.publish(topic, b"kept")
    with pytest.raises(msgbus.InvalidError, match="timeout"):
        d.result(timeout=-1)
    with pytest.raises(msgbus.InvalidError, match="timeout"):
        d.exception(timeout=float("nan"))
    d.result(5)
    with bus.subscribe(topic, "g") as sub:
        c_calls.calls.clear()
        with pytest.raises(msgbus.InvalidError, match="timeout"):
            sub.receive(2 ** 70)
        with pytest.raises(msgbus.InvalidError, match="idle_timeout"):
            sub.messages(idle_timeout=-1)  # raises at the call, not at next()
        assert c_calls.called("msgbus_receive") == []
        m = sub.receive(5)  # still there, first delivery
        assert m is not None and m.payload == b"kept" and m.attempt == 1
        m.ack()


def test_run_once_negative_max_rows_publishes_nothing(app_db, bus, topic, c_calls):
    """max_rows=-1 reached C as SIZE_MAX: one pass without a limit."""
    path, conn = app_db
    mboutbox.put(conn, topic, b"row")
    conn.commit()
    bus.declare(topic, "g")
    with bus.subscribe(topic, "g") as sub, mboutbox.Relay.sqlite(path, bus) as relay:
        c_calls.calls.clear()
        for bad in (-1, 0, 2 ** 64):
            with pytest.raises(msgbus.InvalidError, match="max_rows"):
                relay.run_once(max_rows=bad)
        with pytest.raises(msgbus.InvalidTypeError, match="max_rows"):
            relay.run_once(max_rows=1.0)
        with pytest.raises(msgbus.InvalidError, match="timeout"):
            relay.run_once(timeout=2 ** 40)
        assert c_calls.called("msgbus_outbox_relay") == []
        assert relay.stats()["pending"] == 1
        _nothing_arrives(sub)
        assert relay.run_once(1, 5) == 1  # the valid call still works


def test_memory_inbox_negative_capacity_opens_nothing(c_calls):
    """capacity=-1 reached C as SIZE_MAX (an inbox without a bound)."""
    for bad in (-1, 0, 2 ** 64):
        with pytest.raises(msgbus.InvalidError, match="capacity"):
            mbinbox.MemoryInbox("c", capacity=bad)
    for bad in (-1, 2 ** 63):
        with pytest.raises(msgbus.InvalidError, match="ttl_ms"):
            mbinbox.MemoryInbox("c", ttl_ms=bad)
    with pytest.raises(msgbus.InvalidTypeError, match="capacity"):
        mbinbox.MemoryInbox("c", capacity=True)
    with pytest.raises(msgbus.InvalidTypeError, match="consumer"):
        mbinbox.MemoryInbox(None)
    assert c_calls.called("msgbus_inbox_open_memory") == []
    with mbinbox.MemoryInbox("c", capacity=1) as ib:  # the smallest valid one
        assert ib.claim("a") and not ib.claim("a")


def test_relay_sqlite_none_opens_no_temporary_database(bus, tmp_path, monkeypatch,
                                                       c_calls, sqlite_calls):
    """sqlite3_open_v2(NULL) (and "") opens a private temporary database:
    the relay ran on a database that no application connection sees."""
    monkeypatch.chdir(tmp_path)
    for bad in (None, 42, b"", "", ":memory:"):
        with pytest.raises((msgbus.InvalidTypeError, msgbus.InvalidError), match="path"):
            mboutbox.Relay.sqlite(bad, bus)
    with pytest.raises(msgbus.InvalidTypeError) as ei:
        mboutbox.Relay.sqlite(None, bus)
    assert isinstance(ei.value, TypeError)
    with pytest.raises(msgbus.InvalidTypeError, match="bus"):
        mboutbox.Relay.sqlite(str(tmp_path / "x.db"), None)
    with pytest.raises(msgbus.InvalidError, match="table"):
        mboutbox.Relay.sqlite(str(tmp_path / "y.db"), bus, table="bad-name")
    with pytest.raises(msgbus.InvalidTypeError, match="conninfo"):
        mboutbox.Relay.pg(None, bus)
    assert sqlite_calls.called("sqlite3_open_v2") == []
    assert c_calls.called("msgbus_outbox_open_sqlite", "msgbus_outbox_open_pg") == []
    assert os.listdir(tmp_path) == []  # not even the files of the valid paths
    assert len(bus._dependents) == 0
    # a path-like works
    with mboutbox.Relay.sqlite(tmp_path / "ok.db", bus) as relay:
        assert relay.stats()["pending"] == 0


def test_str_headers_is_type_error_and_publishes_nothing(bus, topic, c_calls):
    """A str for headers raised AttributeError ('str' has no items); "" was
    taken as no headers."""
    bus.declare(topic, "g")
    with bus.subscribe(topic, "g") as sub:
        for bad in ("content-type=text/plain", "", [("a", "b")], 5):
            with pytest.raises(msgbus.InvalidTypeError, match="headers must be a mapping") as ei:
                bus.publish(topic, b"x", headers=bad)
            assert isinstance(ei.value, TypeError)
        with pytest.raises(msgbus.InvalidTypeError, match="header name"):
            bus.publish(topic, b"x", headers={1: "v"})
        with pytest.raises(msgbus.InvalidTypeError, match="header 'h'"):
            bus.publish(topic, b"x", headers={"h": 1})
        assert c_calls.called("msgbus_msg_new", "msgbus_publish") == []
        assert bus.outstanding == 0
        _nothing_arrives(sub)


def test_outbox_put_str_headers_writes_no_row(app_db, topic):
    _, conn = app_db
    for bad in ("a=b", "", [("a", "b")]):
        with pytest.raises(msgbus.InvalidTypeError, match="headers must be a mapping"):
            mboutbox.put(conn, topic, b"x", headers=bad)
    conn.commit()
    assert _rows(conn) == 0


def test_str_options_is_type_error_and_subscribes_nothing(bus, topic, c_calls):
    for bad in ("dlq=off", "", [("dlq", "off")]):
        with pytest.raises(msgbus.InvalidTypeError, match="options must be a mapping") as ei:
            bus.subscribe(topic, "g", options=bad)
        assert isinstance(ei.value, TypeError)
    with pytest.raises(msgbus.InvalidTypeError, match="options"):
        bus.subscribe(topic, "g", options={1: "x"})
    with pytest.raises(msgbus.InvalidTypeError, match="retry_max_attempts"):
        bus.subscribe(topic, "g", options={"retry_max_attempts": None})
    assert c_calls.called("msgbus_subscribe", "msgbus_subscribe_ex") == []
    assert len(bus._subs) == 0


def test_inbox_handle_not_callable_leaves_message_unsettled(tmp_path, bus, topic, c_calls):
    """handle(msg, "not callable") began, claimed, called the str (TypeError
    caught as a handler failure) and nacked the message."""
    conn = sqlite3.connect(str(tmp_path / "in.db"))
    ib = mbinbox.Inbox(conn, "billing")
    bus.declare(topic, "g")
    bus.publish(topic, b"x").result(5)
    with bus.subscribe(topic, "g") as sub:
        m = sub.receive(5)
        assert m is not None
        c_calls.calls.clear()
        with pytest.raises(msgbus.InvalidTypeError, match="handler must be callable") as ei:
            ib.handle(m, "not callable")
        assert isinstance(ei.value, TypeError)
        with pytest.raises(msgbus.InvalidTypeError, match="msg"):
            ib.handle(m.id, lambda _: None)  # an id is not a message to settle
        assert c_calls.called("msgbus_ack", "msgbus_nack", "msgbus_nack_reason") == []
        assert not m.settled
        assert not conn.in_transaction
        assert _rows(conn, "msgbus_inbox") == 0  # nothing claimed
        assert ib.handle(m, lambda _: None) is mbinbox.Outcome.APPLIED  # still unsettled
        assert m.settled
    conn.close()


# ------------------------------------------------------------------ the other arguments

def test_dlq_replay_arguments(bus, topic, c_calls):
    with pytest.raises(msgbus.InvalidError, match="max"):
        bus.dlq_replay(f"{topic}.dlq", max=-1)
    with pytest.raises(msgbus.InvalidTypeError, match="idle_timeout"):
        bus.dlq_replay(f"{topic}.dlq", idle_timeout=None)  # C needs a limit
    with pytest.raises(msgbus.InvalidError, match="idle_timeout"):
        bus.dlq_replay(f"{topic}.dlq", idle_timeout=2 ** 31)
    with pytest.raises(msgbus.InvalidTypeError, match="dlq_topic"):
        bus.dlq_replay(None)
    assert c_calls.called("msgbus_dlq_replay") == []


def test_relay_start_and_retention_arguments(app_db, bus, c_calls):
    path, _ = app_db
    with mboutbox.Relay.sqlite(path, bus) as relay:
        c_calls.calls.clear()
        with pytest.raises(msgbus.InvalidError, match="batch_max"):
            relay.start(batch_max=-1)
        with pytest.raises(msgbus.InvalidError, match="poll_interval_ms"):
            relay.start(poll_interval_ms=2 ** 32)  # wrapped to 0: the default
        with pytest.raises(msgbus.InvalidError, match="backoff_max_ms"):
            relay.start(backoff_max_ms=-5)
        with pytest.raises(msgbus.InvalidError, match="keep_ms"):
            relay.set_retention(-2)
        with pytest.raises(msgbus.InvalidError, match="keep_ms"):
            relay.set_retention(2 ** 64 - 1)  # wrapped to -1: forever
        assert c_calls.called("msgbus_outbox_relay_start",
                              "msgbus_outbox_set_retention") == []
        relay.set_retention(-1)


def test_inbox_arguments(tmp_path, c_calls):
    conn = sqlite3.connect(str(tmp_path / "in.db"))
    with pytest.raises(msgbus.InvalidTypeError, match="connection"):
        mbinbox.Inbox(None, "c")
    with pytest.raises(msgbus.InvalidTypeError, match="consumer"):
        mbinbox.Inbox(conn, None)
    with pytest.raises(msgbus.InvalidTypeError, match="create"):
        mbinbox.Inbox(conn, "c", create="no")
    assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0  # no table
    ib = mbinbox.Inbox(conn, "c")
    conn.execute("BEGIN")
    with pytest.raises(msgbus.InvalidTypeError, match="msg"):
        ib.claim(None)
    with pytest.raises(msgbus.InvalidTypeError, match="msg"):
        ib.claim(b"id-1")
    with pytest.raises(msgbus.InvalidError, match="older_than_ms"):
        ib.purge(2 ** 70)
    with pytest.raises(msgbus.InvalidError, match="older_than_ms"):
        ib.purge(-1)
    conn.rollback()
    with pytest.raises(msgbus.InvalidTypeError, match="connection"):
        mboutbox.create_table(None)
    conn.close()


def test_misc_arguments(bus, topic, c_calls):
    bus.declare(topic, "g")
    d = bus.publish(topic, b"x")
    with pytest.raises(msgbus.InvalidTypeError, match="fn must be callable"):
        d.add_done_callback("not callable")
    d.result(5)
    c_calls.calls.clear()
    for bad in (True, 4, -1, 2.0, None):
        with pytest.raises(msgbus.InvalidError, match="level"):
            msgbus.set_log_level(bad)
    with pytest.raises(msgbus.InvalidTypeError, match="topic"):
        bus.publish(None, b"x")
    with pytest.raises(msgbus.InvalidTypeError, match="topic"):
        bus.declare(None)
    with pytest.raises(msgbus.InvalidTypeError, match="url"):
        msgbus.Bus(b"mem://x")
    assert c_calls.called("msgbus_set_log", "msgbus_msg_new", "msgbus_declare",
                          "msgbus_open") == []
    with bus.subscribe(topic, "g") as sub:
        m = sub.receive(5)
        assert m is not None
        c_calls.calls.clear()
        with pytest.raises(msgbus.InvalidTypeError, match="reason"):
            m.nack(reason=5)
        with pytest.raises(msgbus.InvalidTypeError, match="reason"):
            m.dead_letter(reason=b"bytes")
        assert c_calls.called("msgbus_nack", "msgbus_nack_reason",
                              "msgbus_dead_letter") == []
        assert not m.settled
        m.ack()


# ------------------------------------------------------------------ the rules themselves

@pytest.mark.parametrize("fn,lo,hi", [
    (_check.size, 0, 2 ** (8 * ctypes.sizeof(ctypes.c_size_t)) - 1),
    (_check.c_int, 0, 2 ** 31 - 1),
    (_check.int64, 0, 2 ** 63 - 1),
])
def test_integer_bounds_match_the_c_types(fn, lo, hi):
    assert fn(lo, "n") == lo and fn(hi, "n") == hi
    for bad in (lo - 1, hi + 1):
        with pytest.raises(msgbus.InvalidError, match=f"n must be {lo}..{hi}"):
            fn(bad, "n")
    for bad in (True, 1.0, "1", None):
        with pytest.raises(msgbus.InvalidTypeError, match="n must be an int"):
            fn(bad, "n")


def test_timeout_rule():
    t = _check.timeout_ms
    assert t(None) == -1 and t(0) == 0 and t(0.0004) == 0 and t(1.5) == 1500
    assert t(_check.MAX_TIMEOUT_S) == 2 ** 31 - 1
    for bad in (-0.001, -1, _check.MAX_TIMEOUT_S + 0.001, math.inf, -math.inf, math.nan):
        with pytest.raises(msgbus.InvalidError):
            t(bad)
    for bad in (True, "1", [1]):
        with pytest.raises(msgbus.InvalidTypeError):
            t(bad)
    with pytest.raises(msgbus.InvalidTypeError):
        t(None, forever=False)


def test_invalid_type_error_is_both():
    e = msgbus.InvalidTypeError("x")
    assert isinstance(e, msgbus.InvalidError) and isinstance(e, TypeError)
    assert isinstance(e, ValueError) and e.code == 1 and e.name == "MSGBUS_ERR_INVALID"
