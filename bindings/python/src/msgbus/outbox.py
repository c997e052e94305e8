"""The transactional outbox from Python.

Write outbox rows with the application's own ``sqlite3`` or ``psycopg``
connection, inside the application's own transaction: :func:`put` never
begins, commits or rolls back. The rows follow the table contract of
docs/outbox.md, so the C relay publishes them; :class:`Relay` runs that C
relay (``msgbus_outbox_relay*``) on a connection of its own.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
from ctypes import byref, c_char_p, c_int, c_size_t, c_void_p
from typing import Any, Dict, Mapping, Optional, Union

from . import _check, _core, _lib
from ._core import Bus
from ._sql import (CHECK_CE_SOURCE, CHECK_CE_SUBJECT, CHECK_CE_TYPE, CHECK_HEADER_NAME, CHECK_TOPIC,
                   check_id, check_rule, check_table, kind, pg_status, quote_table, schema, uuid7)
from .errors import ClosedError, ConnectError, InvalidError, InvalidTypeError, StateError, \
    StoreError, check, make_error

DEFAULT_TABLE = "msgbus_outbox"

def create_table(conn: Any, table: str = DEFAULT_TABLE) -> None:
    """Creates the outbox table and its indexes (docs/outbox.md) if missing,
    with the application's connection. It does not commit: on SQLite run it
    outside a transaction (the sqlite3 module then applies DDL at once); on
    PostgreSQL commit afterwards. The C relay creates the same table when it
    opens, so this is only needed when writers start before the relay."""
    k = kind(conn)
    check_table("outbox", k, table)
    cur = conn.cursor()
    try:
        for stmt in schema("outbox", k, table):
            cur.execute(stmt)
    finally:
        cur.close()


def _headers_dict(headers: Optional[Mapping[str, Union[str, bytes]]]) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for name, value in (_check.mapping(headers, "headers") or {}).items():
        if not isinstance(name, str):
            raise InvalidTypeError(f"header name must be a str, not {type(name).__name__}")
        # The C rule, reserved names included (msgbus_msg_set_header's).
        check_rule(CHECK_HEADER_NAME, name)
        if isinstance(value, (bytes, bytearray)):
            try:
                value = bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidError(f"header '{name}': value is not UTF-8 (JSON cannot hold "
                                   "it)") from None
        if not isinstance(value, str):
            raise InvalidTypeError(f"header '{name}': value must be str, not "
                                   f"{type(value).__name__}")
        if "\0" in value:
            raise InvalidError(f"header '{name}': value must not contain NUL")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidError(f"header '{name}': value is not UTF-8 (JSON cannot hold "
                               "it)") from None
        out[name] = value
    return out


def _headers_json(headers: Mapping[str, str]) -> str:
    return json.dumps(headers, ensure_ascii=False, separators=(",", ":"))


def put(conn: Any, topic: str, payload: Union[bytes, str],
        key: Optional[Union[bytes, str]] = None,
        headers: Optional[Mapping[str, Union[str, bytes]]] = None, *, id: Optional[str] = None,
        timestamp: Optional[int] = None, type: Optional[str] = None,
        source: Optional[str] = None, subject: Optional[str] = None,
        table: str = DEFAULT_TABLE) -> str:
    """Writes one pending outbox row with `conn` (``sqlite3`` or ``psycopg``)
    and returns its message id (`id`, or a fresh UUIDv7). `type`, `source`
    and `subject` are the message's CloudEvents attributes (stored in the
    row's headers as ce_type, ce_source, ce_subject; docs/outbox.md).

    The INSERT joins the transaction the application has open on `conn`
    and is never committed or rolled back here: the row becomes visible to
    the relay when the application commits and vanishes if it rolls back.
    (Python's sqlite3 module and psycopg open a transaction implicitly
    before an INSERT unless the connection is in autocommit mode; in
    autocommit mode the INSERT commits at once.) A bad topic, header name,
    non-UTF-8 header value or malformed id raises :class:`InvalidError` and
    writes nothing; a database error raises :class:`StoreError`; a failed
    PostgreSQL transaction :class:`StateError`.

    With tracing on (:func:`msgbus.instrument`) it makes a ``create
    <topic>`` PRODUCER span around the INSERT and writes its context into
    the row's headers (``traceparent``, ``tracestate``), so the consumer's
    span of the relayed message is its child.
    """
    k = kind(conn)
    check_table("outbox", k, table)
    if not isinstance(topic, str):
        raise InvalidTypeError(f"topic must be a str, not {type(topic).__name__}")
    check_rule(CHECK_TOPIC, topic)
    mid = check_id(id) if id is not None else uuid7()
    hd = _headers_dict(headers)
    for what, ck, v in (("type", CHECK_CE_TYPE, type), ("source", CHECK_CE_SOURCE, source),
                        ("subject", CHECK_CE_SUBJECT, subject)):
        if v is not None:
            t = (_check.text(v, what) or b"").decode("utf-8")
            hd["ce_" + what] = check_rule(ck, t)
    pb = _check.data(payload, "payload")
    kb = None if key is None else _check.data(key, "key")
    ts = None if timestamp is None else _check.int64(timestamp, "timestamp",
                                                       hint=" (ms since the epoch)")
    if k == "pg" and pg_status(conn) == "inerror":
        raise StateError("outbox put: the PostgreSQL transaction has failed; roll back")
    tracer, span = _core._tracer, None
    if tracer is not None:
        try:
            span, carrier = tracer.outbox_put(topic, mid, len(pb), kb, k, table)
            hd.update(carrier)
        except Exception:  # tracing must not stop the write
            logging.getLogger("msgbus").exception("tracer: starting the outbox span failed")
    hj = _headers_json(hd)
    q = quote_table(table)
    if k == "pg":
        sql = (f"INSERT INTO {q} (msg_id, topic, msg_key, headers, payload, msg_ts) "
               "VALUES (%s, %s, %s, %s::jsonb, %s, %s)")
    else:
        sql = (f"INSERT INTO {q} (msg_id, topic, msg_key, headers, payload, msg_ts) "
               "VALUES (?, ?, ?, ?, ?, ?)")
    err: Optional[BaseException] = None
    try:
        cur = conn.cursor()
        try:
            cur.execute(sql, (mid, topic, kb, hj, pb, ts))
        except Exception as e:
            err = StoreError(f"outbox put into {table}: {e}")
            raise err from e
        finally:
            cur.close()
    finally:
        if span is not None:
            try:
                tracer.outbox_done(span, err)
            except Exception:
                logging.getLogger("msgbus").exception("tracer: ending the outbox span failed")
    return mid


# ------------------------------------------------------------------ the C relay

_sqlite_lib: Any = None
_pq_lib: Any = None


def _sqlite() -> Any:
    global _sqlite_lib
    if _sqlite_lib is None:
        lib = ctypes.CDLL(ctypes.util.find_library("sqlite3") or "libsqlite3.so.0")
        lib.sqlite3_open_v2.argtypes = [c_char_p, ctypes.POINTER(c_void_p), c_int, c_char_p]
        lib.sqlite3_open_v2.restype = c_int
        lib.sqlite3_close_v2.argtypes = [c_void_p]
        lib.sqlite3_close_v2.restype = c_int
        lib.sqlite3_errmsg.argtypes = [c_void_p]
        lib.sqlite3_errmsg.restype = c_char_p
        _sqlite_lib = lib
    return _sqlite_lib


def _pq() -> Any:
    global _pq_lib
    if _pq_lib is None:
        lib = ctypes.CDLL(ctypes.util.find_library("pq") or "libpq.so.5")
        lib.PQconnectdb.argtypes = [c_char_p]
        lib.PQconnectdb.restype = c_void_p
        lib.PQstatus.argtypes = [c_void_p]
        lib.PQstatus.restype = c_int
        lib.PQerrorMessage.argtypes = [c_void_p]
        lib.PQerrorMessage.restype = c_char_p
        lib.PQfinish.argtypes = [c_void_p]
        lib.PQfinish.restype = None
        _pq_lib = lib
    return _pq_lib


class Relay:
    """The C outbox relay, on a database connection of its own (never the
    application's: the relay begins and commits transactions on it).

    Make one with :meth:`sqlite` (a database file) or :meth:`pg` (a libpq
    connection string); it opens that connection in C, opens an outbox on it
    (``msgbus_outbox_open_*``, creating the table if missing) and publishes
    into `bus`. Call :meth:`run_once` from your loop, or :meth:`start` the
    background thread. Close it (or use ``with``) before closing the bus;
    :meth:`Bus.close` closes relays still open on it first.
    """

    def __init__(self, ob: int, conn: int, store: str, bus: Bus):
        self._ob: Optional[int] = ob
        self._conn: Optional[int] = conn
        self._store = store
        self._bus = bus
        bus._dependents.add(self)  # closing the bus closes the relay first

    @classmethod
    def sqlite(cls, path: str, bus: Bus, table: Optional[str] = None) -> "Relay":
        """A relay on its own SQLite connection to the database file `path`
        (a str or os.PathLike; created if missing). None is
        :class:`InvalidTypeError`, "" and ":memory:" :class:`InvalidError`:
        SQLite would open a private database the application never sees."""
        pb = _check.path(path, "path")
        _check.instance(bus, Bus, "bus")
        tb = None if table is None else check_table("outbox", "sqlite", table).encode()
        lib = _lib.load()
        sq = _sqlite()
        db = c_void_p()
        rc = sq.sqlite3_open_v2(pb, byref(db), 0x02 | 0x04, None)
        if rc != 0:
            msg = sq.sqlite3_errmsg(db).decode() if db.value else f"code {rc}"
            sq.sqlite3_close_v2(db)
            raise StoreError(f"relay: cannot open SQLite database {path!r}: {msg}")
        ob = c_void_p()
        e = lib.msgbus_outbox_open_sqlite(byref(ob), db, tb)
        if e != 0:
            err = make_error(e)
            sq.sqlite3_close_v2(db)
            raise err
        return cls(int(ob.value or 0), int(db.value or 0), "sqlite", bus)

    @classmethod
    def pg(cls, conninfo: str, bus: Bus, table: Optional[str] = None) -> "Relay":
        """A relay on its own PostgreSQL connection (`conninfo`: a libpq
        connection string or URL; "" means libpq's defaults from the PG*
        environment variables, None is refused)."""
        cb = _check.text(conninfo, "conninfo")
        _check.instance(bus, Bus, "bus")
        tb = None if table is None else check_table("outbox", "pg", table).encode()
        lib = _lib.load()
        pq = _pq()
        conn = pq.PQconnectdb(cb)
        if not conn or pq.PQstatus(conn) != 0:
            msg = pq.PQerrorMessage(conn).decode(errors="replace").strip() if conn else \
                "out of memory"
            if conn:
                pq.PQfinish(conn)
            raise ConnectError(f"relay: cannot connect to PostgreSQL: {msg}")
        ob = c_void_p()
        e = lib.msgbus_outbox_open_pg(byref(ob), conn, tb)
        if e != 0:
            err = make_error(e)
            pq.PQfinish(conn)
            raise err
        return cls(int(ob.value or 0), int(conn), "pg", bus)

    def _p(self) -> int:
        if self._ob is None:
            raise ClosedError("the relay is closed")
        return self._ob

    def run_once(self, max_rows: int = 500, timeout: Optional[float] = 10.0) -> int:
        """One relay pass (``msgbus_outbox_relay``): publishes up to
        `max_rows` pending rows in commit order, waits up to `timeout`
        seconds (None: forever) for the confirms, marks them sent; returns
        how many were marked. Transient failures raise (rows stay pending).
        `max_rows` >= 1; `timeout` as everywhere (see docs/python.md)."""
        rows = _check.size(max_rows, "max_rows", lo=1)
        ms = _check.timeout_ms(timeout)
        n = c_size_t()
        check(_lib.load().msgbus_outbox_relay(self._p(), self._bus._p(), rows, ms, byref(n)))
        return n.value

    def start(self, batch_max: int = 0, confirm_timeout_ms: int = 0, poll_interval_ms: int = 0,
              backoff_min_ms: int = 0, backoff_max_ms: int = 0) -> None:
        """Starts the background relay thread (zero options: the defaults of
        outbox.h). Each is >= 0; the *_ms ones fit a C int."""
        o = _lib.OutboxRelayOpts(_check.size(batch_max, "batch_max", hint=" (0: default)"),
                                 _check.c_int(confirm_timeout_ms, "confirm_timeout_ms",
                                              hint=" (0: default)"),
                                 _check.c_int(poll_interval_ms, "poll_interval_ms",
                                              hint=" (0: default)"),
                                 _check.c_int(backoff_min_ms, "backoff_min_ms",
                                              hint=" (0: default)"),
                                 _check.c_int(backoff_max_ms, "backoff_max_ms",
                                              hint=" (0: default)"))
        check(_lib.load().msgbus_outbox_relay_start(self._p(), self._bus._p(), byref(o)))

    def wake(self) -> None:
        """Nudges the background relay to run a pass now (e.g. after a commit)."""
        _lib.load().msgbus_outbox_relay_wake(self._p())

    def stop(self) -> None:
        """Stops the background relay; raises the last pass's error, if any."""
        check(_lib.load().msgbus_outbox_relay_stop(self._p()))

    def set_retention(self, keep_ms: int) -> None:
        """0: delete rows once confirmed; > 0: keep them as sent that long; -1: forever."""
        ms = _check.int64(keep_ms, "keep_ms", lo=-1, hint=" (-1: keep forever)")
        check(_lib.load().msgbus_outbox_set_retention(self._p(), ms))

    def purge(self) -> int:
        """Deletes sent rows older than the retention time; returns how many."""
        n = c_size_t()
        check(_lib.load().msgbus_outbox_purge(self._p(), byref(n)))
        return n.value

    def retry_failed(self) -> int:
        """Moves 'failed' rows back to 'pending'; returns how many."""
        n = c_size_t()
        check(_lib.load().msgbus_outbox_retry_failed(self._p(), byref(n)))
        return n.value

    def stats(self) -> Dict[str, int]:
        """``pending``, ``failed``, ``sent`` and ``oldest_pending_age_ms``."""
        st = _lib.OutboxStats()
        check(_lib.load().msgbus_outbox_stats(self._p(), byref(st)))
        return {"pending": st.pending, "failed": st.failed, "sent": st.sent,
                "oldest_pending_age_ms": st.oldest_pending_age_ms}

    def close(self) -> None:
        """Stops the background relay if it runs, closes the outbox and its
        connection. Idempotent."""
        ob, self._ob = self._ob, None
        if ob:
            _lib.load().msgbus_outbox_close(ob)
        conn, self._conn = self._conn, None
        if conn:
            if self._store == "sqlite":
                _sqlite().sqlite3_close_v2(conn)
            else:
                _pq().PQfinish(conn)

    def __enter__(self) -> "Relay":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


__all__ = ["put", "create_table", "Relay", "DEFAULT_TABLE"]
