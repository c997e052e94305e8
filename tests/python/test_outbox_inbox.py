"""Outbox rows and inbox claims written from Python with the application's
own sqlite3 / psycopg connection, relayed and checked by the C library."""
from __future__ import annotations

import os
import sqlite3
import time

import pytest

import msgbus
from conftest import unique
from msgbus import inbox as mbinbox
from msgbus import outbox as mboutbox


def _recv_all(sub, n, timeout=10.0):
    out, deadline = [], time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        m = sub.receive(0.1)
        if m is not None:
            out.append(m)
            m.ack()
    return out


@pytest.fixture
def app_db(tmp_path):
    path = str(tmp_path / "app.db")
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE orders (id TEXT PRIMARY KEY, total INTEGER)")
    conn.commit()
    yield path, conn
    conn.close()


# ------------------------------------------------------------------ outbox, SQLite

def test_sqlite_outbox_row_relayed_by_c(app_db, mem_url, topic):
    path, conn = app_db
    mboutbox.create_table(conn)
    # the application's own transaction: business row + message together
    conn.execute("INSERT INTO orders VALUES ('o-1', 12)")
    mid = mboutbox.put(conn, topic, b"{\"total\":12}\x00\xff", key=b"order-1",
                       headers={"content-type": "application/json", "u": "é"})
    mid2 = mboutbox.put(conn, topic, "second", id="my-id-2", timestamp=1700000000000)
    conn.commit()
    with msgbus.Bus(mem_url) as bus, bus.subscribe(topic, "g") as sub, \
            mboutbox.Relay.sqlite(path, bus) as relay:
        assert relay.stats()["pending"] == 2
        assert relay.run_once(100, 5) == 2
        got = _recv_all(sub, 2)
        assert [m.id for m in got] == [mid, mid2]
        a, b = got
        assert a.payload == b"{\"total\":12}\x00\xff" and a.key == b"order-1"
        assert a.headers == {"content-type": "application/json", "u": "é"}
        assert b.payload == b"second" and b.key is None and b.timestamp == 1700000000000
        assert relay.stats() == {"pending": 0, "failed": 0, "sent": 0,
                                 "oldest_pending_age_ms": 0}
    assert conn.execute("SELECT count(*) FROM msgbus_outbox").fetchone()[0] == 0


def test_sqlite_outbox_keeps_cloudevents_attributes(app_db, mem_url, topic):
    path, conn = app_db
    mboutbox.create_table(conn)
    mboutbox.put(conn, topic, b"x", type="com.example.created", source="//shop/orders",
                 subject="o-1")
    mboutbox.put(conn, topic, b"y")
    for bad in ({"type": ""}, {"source": "a\nb"}, {"headers": {"ce_type": "x"}},
                {"headers": {"cloudEvents_id": "x"}}):
        with pytest.raises(msgbus.InvalidError):
            mboutbox.put(conn, topic, b"z", **bad)
    conn.commit()
    with msgbus.Bus(mem_url) as bus, bus.subscribe(topic, "g") as sub, \
            mboutbox.Relay.sqlite(path, bus) as relay:
        assert relay.run_once(100, 5) == 2
        a, b = _recv_all(sub, 2)
        assert (a.type, a.source, a.subject) == ("com.example.created", "//shop/orders", "o-1")
        assert a.headers == {}
        assert b.type == topic and b.subject is None


def test_sqlite_rolled_back_transaction_leaves_nothing(app_db, mem_url, topic):
    path, conn = app_db
    mboutbox.create_table(conn)
    conn.execute("INSERT INTO orders VALUES ('o-2', 5)")
    mboutbox.put(conn, topic, b"never", key="k")
    assert conn.in_transaction  # put did not commit
    conn.rollback()
    assert conn.execute("SELECT count(*) FROM msgbus_outbox").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 0
    with msgbus.Bus(mem_url) as bus, bus.subscribe(topic) as sub, \
            mboutbox.Relay.sqlite(path, bus) as relay:
        assert relay.run_once(100, 5) == 0
        assert sub.receive(0.3) is None


def test_sqlite_outbox_background_relay(app_db, mem_url, topic):
    path, conn = app_db
    with msgbus.Bus(mem_url) as bus, bus.subscribe(topic, "g") as sub, \
            mboutbox.Relay.sqlite(path, bus) as relay:  # the relay creates the table
        relay.start(poll_interval_ms=50)
        ids = []
        for i in range(20):
            ids.append(mboutbox.put(conn, topic, f"m{i}", key="same-key"))
            conn.commit()
            relay.wake()
        got = _recv_all(sub, 20)
        relay.stop()
        assert [m.id for m in got] == ids  # commit order, per-key order
        assert [m.payload for m in got] == [f"m{i}".encode() for i in range(20)]


def test_outbox_bad_input_writes_nothing(app_db, topic):
    _, conn = app_db
    mboutbox.create_table(conn)
    with pytest.raises(msgbus.InvalidError, match="reserved"):
        mboutbox.put(conn, topic, b"x", headers={"ce_id": "1"})
    with pytest.raises(msgbus.InvalidError, match="header name"):
        mboutbox.put(conn, topic, b"x", headers={"bad name": "1"})
    with pytest.raises(msgbus.InvalidError, match="not UTF-8"):
        mboutbox.put(conn, topic, b"x", headers={"h": b"\xff"})
    with pytest.raises(msgbus.InvalidError, match="topic"):
        mboutbox.put(conn, "bad topic", b"x")
    # The C rules, not a copy: names a broker reserves are refused too.
    with pytest.raises(msgbus.InvalidError, match="invalid topic name 'amq.orders'"):
        mboutbox.put(conn, "amq.orders", b"x")
    with pytest.raises(msgbus.InvalidError, match="reserved"):
        mboutbox.put(conn, topic, b"x", headers={"CloudEvents:Type": "t"})
    with pytest.raises(msgbus.InvalidError, match="invalid CloudEvents type"):
        mboutbox.put(conn, topic, b"x", type="a\x85b")
    with pytest.raises(msgbus.InvalidError, match="NUL"):
        mboutbox.put(conn, "a\0b", b"x")
    with pytest.raises(msgbus.InvalidError, match="message id"):
        mboutbox.put(conn, topic, b"x", id="a b")
    with pytest.raises(msgbus.InvalidError, match="connection"):
        mboutbox.put(object(), topic, b"x")
    with pytest.raises(msgbus.StoreError, match="no such table"):
        mboutbox.put(conn, topic, b"x", table="missing_table")
    conn.commit()
    assert conn.execute("SELECT count(*) FROM msgbus_outbox").fetchone()[0] == 0


def test_relay_open_errors(tmp_path, mem_url):
    with msgbus.Bus(mem_url) as bus:
        with pytest.raises(msgbus.StoreError, match="cannot open"):
            mboutbox.Relay.sqlite(str(tmp_path / "no" / "such" / "dir.db"), bus)
        with pytest.raises(msgbus.InvalidError):
            mboutbox.Relay.sqlite(str(tmp_path / "x.db"), bus, table="bad-name")


# ------------------------------------------------------------------ outbox, PostgreSQL

@pytest.fixture
def pg(pg_url):
    try:
        import psycopg
    except ImportError:  # scripts/test-python installs it; missing is a failure
        if os.environ.get("MSGBUS_TEST_ALLOW_SKIP") == "1":
            pytest.skip("psycopg is not installed")
        raise
    conn = psycopg.connect(pg_url)
    yield conn
    conn.close()


def test_pg_outbox_row_relayed_by_c(pg, pg_url, mem_url, topic):
    table = "py_outbox_" + unique("t").rsplit("-", 1)[1]
    try:
        mboutbox.create_table(pg, table)
        pg.commit()
        with pg.transaction():
            mid = mboutbox.put(pg, topic, b"\x00pg\xff", key=b"k\x01",
                               headers={"a": "1", "b": "ü"}, table=table)
        with pg.transaction():
            mboutbox.put(pg, topic, b"rolled back", table=table)
            raise_rollback(pg)
        with msgbus.Bus(mem_url) as bus, bus.subscribe(topic, "g") as sub, \
                mboutbox.Relay.pg(pg_url, bus, table=table) as relay:
            assert relay.run_once(100, 5) == 1
            (m,) = _recv_all(sub, 1)
            assert (m.id, m.payload, m.key, m.headers) == \
                (mid, b"\x00pg\xff", b"k\x01", {"a": "1", "b": "ü"})
            assert sub.receive(0.2) is None
    finally:
        pg.rollback()
        pg.execute(f'DROP TABLE IF EXISTS "{table}"')
        pg.commit()


def raise_rollback(conn):
    import psycopg
    raise psycopg.Rollback()


# ------------------------------------------------------------------ inbox, SQLite

def test_sqlite_inbox_claim_twice_is_duplicate(app_db):
    _, conn = app_db
    ib = mbinbox.Inbox(conn, "billing")
    assert ib.store == "sqlite"
    assert ib.claim("id-1") is True
    assert ib.claim("id-1") is False  # same transaction
    conn.commit()
    assert ib.claim("id-1") is False  # committed before
    conn.rollback()
    assert ib.claim("id-2") is True
    conn.rollback()  # a rolled-back claim is forgotten
    assert ib.claim("id-2") is True
    conn.commit()
    other = mbinbox.Inbox(conn, "shipping")  # consumers are independent
    assert other.claim("id-1") is True
    conn.commit()
    rows = conn.execute("SELECT consumer, message_id FROM msgbus_inbox ORDER BY 1, 2").fetchall()
    assert rows == [("billing", "id-1"), ("billing", "id-2"), ("shipping", "id-1")]


def test_sqlite_inbox_refuses_autocommit(tmp_path):
    conn = sqlite3.connect(str(tmp_path / "a.db"), isolation_level=None)
    ib = mbinbox.Inbox(conn, "c")
    with pytest.raises(msgbus.StateError, match="no transaction"):
        ib.claim("x")
    conn.execute("BEGIN")
    assert ib.claim("x") is True
    conn.execute("COMMIT")
    assert conn.execute("SELECT count(*) FROM msgbus_inbox").fetchone()[0] == 1
    with pytest.raises(msgbus.InvalidError):
        mbinbox.Inbox(conn, "bad consumer")
    with pytest.raises(msgbus.InvalidError):
        mbinbox.Inbox(conn, "c", table="1bad")
    conn.close()


def test_sqlite_inbox_purge_and_forget(app_db):
    _, conn = app_db
    ib = mbinbox.Inbox(conn, "p")
    ib.claim("a")
    conn.commit()
    assert ib.forget("a") is True and ib.forget("a") is False
    conn.commit()
    ib.claim("b")
    conn.commit()
    assert ib.purge(3_600_000) == 0
    time.sleep(0.01)
    assert ib.purge(0) == 1
    conn.commit()


def test_inbox_handle_on_mem_bus(app_db, mem_url, topic):
    _, conn = app_db
    ib = mbinbox.Inbox(conn, "billing")
    calls = []

    def apply(m):
        calls.append(m.id)
        if m.payload == b"fail" and m.attempt == 1:
            raise RuntimeError("first attempt fails")
        conn.execute("INSERT INTO orders VALUES (?, ?)", (m.id, len(m.payload)))

    with msgbus.Bus(mem_url) as bus, bus.subscribe(topic, "billing") as sub:
        d1 = bus.publish(topic, b"ok")
        d2 = bus.publish(topic, b"fail")
        bus.publish(topic, b"again", id=d1.result(5))  # a duplicate of the first
        bus.flush(5)
        outcomes = []
        for m in sub.messages(idle_timeout=0.5):
            outcomes.append((m.payload, m.attempt, ib.handle(m, apply)))
        assert outcomes == [(b"ok", 1, mbinbox.Outcome.APPLIED),
                            (b"fail", 1, mbinbox.Outcome.REJECTED),
                            (b"again", 1, mbinbox.Outcome.DUPLICATE),
                            (b"fail", 2, mbinbox.Outcome.APPLIED)]
    ids = sorted(r[0] for r in conn.execute("SELECT id FROM orders"))
    assert ids == sorted([d1.message_id, d2.message_id])


# ------------------------------------------------------------------ inbox, PostgreSQL and memory

def test_pg_inbox_claim_twice_is_duplicate(pg):
    table = "py_inbox_" + unique("t").rsplit("-", 1)[1]
    try:
        ib = mbinbox.Inbox(pg, "billing", table=table)
        with pg.transaction():
            assert ib.claim("m-1") is True
            assert ib.claim("m-1") is False
        with pg.transaction():
            assert ib.claim("m-1") is False
        pg.autocommit = True
        with pytest.raises(msgbus.StateError, match="no transaction"):
            ib.claim("m-2")
        with pg.transaction():
            assert ib.claim("m-2") is True
        pg.autocommit = False
        n = pg.execute(f'SELECT count(*) FROM "{table}" WHERE consumer = %s',
                       ("billing",)).fetchone()[0]
        assert n == 2
    finally:
        pg.rollback()
        pg.autocommit = False
        pg.execute(f'DROP TABLE IF EXISTS "{table}"')
        pg.commit()


def test_pg_inbox_table_shared_with_c_inbox(pg, pg_url):
    """On PostgreSQL a Python and a C inbox given the same (mixed-case)
    table name use the same table: the name is spliced unquoted by both, as
    msgbus_inbox_schema says, so a claim committed by one is a duplicate for
    the other. (A quoted copy in Python once made a second table.)"""
    from ctypes import byref, c_char_p, c_void_p

    from msgbus import _lib
    from msgbus.outbox import _pq

    table = "PyInbox_" + unique("t").rsplit("-", 1)[1]
    pq, lib = _pq(), _lib.load()
    pq.PQexec.argtypes, pq.PQexec.restype = [c_void_p, c_char_p], c_void_p
    pq.PQclear.argtypes, pq.PQclear.restype = [c_void_p], None
    conn = pq.PQconnectdb(pg_url.encode())
    cib = c_void_p()
    try:
        ib = mbinbox.Inbox(pg, "billing", table=table)
        with pg.transaction():
            assert ib.claim("from-python") is True
        assert pq.PQstatus(conn) == 0
        assert lib.msgbus_inbox_open_pg(byref(cib), conn, b"billing", table.encode()) == 0, \
            lib.msgbus_last_error()
        pq.PQclear(pq.PQexec(conn, b"BEGIN"))
        assert lib.msgbus_inbox_claim_id(cib, b"from-python") == 11  # MSGBUS_ERR_DUPLICATE
        assert lib.msgbus_inbox_claim_id(cib, b"from-c") == 0
        pq.PQclear(pq.PQexec(conn, b"COMMIT"))
        with pg.transaction():
            assert ib.claim("from-c") is False
        n = pg.execute("SELECT count(*) FROM pg_tables WHERE lower(tablename) = lower(%s)",
                       (table,)).fetchone()[0]
        assert n == 1
    finally:
        lib.msgbus_inbox_close(cib)
        pq.PQfinish(conn)
        pg.rollback()
        pg.execute(f"DROP TABLE IF EXISTS {table}")
        pg.commit()


def test_memory_inbox():
    with mbinbox.MemoryInbox("c", capacity=2) as ib:
        assert ib.claim("a") is True
        assert ib.claim("a") is False
        ib.claim("b")
        ib.claim("c")  # evicts "a"
        assert ib.claim("a") is True


def test_sqlite_inbox_table_shared_with_c_inbox(tmp_path):
    """A table Python created passes the C inbox's contract check, and a
    claim Python committed is a duplicate for the C inbox (and back)."""
    from ctypes import byref, c_char_p, c_void_p

    from msgbus import _lib
    from msgbus.outbox import _sqlite

    path = str(tmp_path / "shared.db")
    conn = sqlite3.connect(path)
    ib = mbinbox.Inbox(conn, "billing")
    assert ib.claim("from-python") is True
    conn.commit()

    sq, lib = _sqlite(), _lib.load()
    sq.sqlite3_exec.argtypes = [c_void_p, c_char_p, c_void_p, c_void_p, c_void_p]
    db = c_void_p()
    assert sq.sqlite3_open_v2(path.encode(), byref(db), 0x02, None) == 0
    cib = c_void_p()
    try:
        assert lib.msgbus_inbox_open_sqlite(byref(cib), db, b"billing", None) == 0, \
            lib.msgbus_last_error()
        sq.sqlite3_exec(db, b"BEGIN IMMEDIATE", None, None, None)
        assert lib.msgbus_inbox_claim_id(cib, b"from-python") == 11  # MSGBUS_ERR_DUPLICATE
        assert lib.msgbus_inbox_claim_id(cib, b"from-c") == 0
        sq.sqlite3_exec(db, b"COMMIT", None, None, None)
    finally:
        lib.msgbus_inbox_close(cib)
        sq.sqlite3_close_v2(db)
    assert ib.claim("from-c") is False
    conn.rollback()
    conn.close()


def test_bus_close_stops_its_background_relay(app_db, mem_url, topic):
    path, conn = app_db
    bus = msgbus.Bus(mem_url)
    relay = mboutbox.Relay.sqlite(path, bus)
    relay.start(poll_interval_ms=20)
    mboutbox.put(conn, topic, b"x")
    conn.commit()
    bus.close()  # must stop the relay thread before msgbus_close
    with pytest.raises(msgbus.ClosedError):
        relay.stats()


def test_an_async_psycopg_connection_is_refused():
    """psycopg's AsyncConnection.execute returns a coroutine: the outbox and
    inbox would write nothing, so they refuse it (by type, before any SQL)."""
    from msgbus import _sql

    class AsyncConnection:  # stands for psycopg.AsyncConnection (same module and name)
        pass

    AsyncConnection.__module__ = "psycopg.connection_async"
    with pytest.raises(msgbus.InvalidTypeError, match="asynchronous"):
        _sql.kind(AsyncConnection())
    with pytest.raises(msgbus.InvalidTypeError, match="asynchronous"):
        msgbus.outbox.put(AsyncConnection(), "t", b"x")
