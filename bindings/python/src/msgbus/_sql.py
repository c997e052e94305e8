"""What outbox.py and inbox.py share: telling sqlite3 from psycopg
connections, their transaction state, and the name rules and table SQL —
the last two asked of the C library (msgbus_check, msgbus_outbox_schema,
msgbus_inbox_schema), so they are the ones the C API and the C stores
apply and cannot drift."""
from __future__ import annotations

import functools
import os
import sqlite3
import time
from ctypes import byref, c_char_p, c_int, c_void_p, string_at
from typing import Any, List

from . import _lib
from .errors import InvalidError, InvalidTypeError, StateError, make_error

# msgbus_check_t (msgbus.h)
CHECK_TOPIC = 1
CHECK_GROUP = 2
CHECK_HEADER_NAME = 3
CHECK_ID = 4
CHECK_CONSUMER = 5
CHECK_CE_TYPE = 6
CHECK_CE_SOURCE = 7
CHECK_CE_SUBJECT = 8


@functools.lru_cache(maxsize=None)
def _fns() -> Any:
    lib = _lib.load()
    chk = lib.msgbus_check
    chk.argtypes, chk.restype = [c_int, c_char_p], c_int
    for f in (lib.msgbus_outbox_schema, lib.msgbus_inbox_schema):
        f.argtypes, f.restype = [c_char_p, c_char_p, c_void_p], c_int
    free = lib.msgbus_free
    free.argtypes, free.restype = [c_void_p], None
    return lib


def _utf8(text: str, what: str) -> bytes:
    if "\0" in text:
        raise InvalidError(f"{what} {text[:64]!r}: must not contain NUL")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidError(f"{what} {text[:64]!r}: not valid UTF-8") from None


@functools.lru_cache(maxsize=1024)
def _valid(kind_: int, text: str) -> bool:
    """Only successes are cached (a failure raises)."""
    lib = _fns()
    e = lib.msgbus_check(kind_, _utf8(text, "value"))
    if e != 0:
        raise make_error(e)
    return True


def check_rule(kind_: int, text: str) -> str:
    """The C library's rule `kind_` (CHECK_*) on `text`: InvalidError with
    the C API's own message when it is broken. Returns `text`."""
    _valid(kind_, text)
    return text


@functools.lru_cache(maxsize=64)
def schema(which: str, store: str, table: str) -> List[str]:
    """The statements that create the outbox or inbox (`which`) table on
    `store` ("sqlite" or "pg"), as the C stores run them. InvalidError for
    a table name the C store would refuse."""
    lib = _fns()
    fn = lib.msgbus_outbox_schema if which == "outbox" else lib.msgbus_inbox_schema
    out = c_void_p()
    e = fn(store.encode(), _utf8(table, "table"), byref(out))
    if e != 0:
        raise make_error(e)
    try:
        text = string_at(out.value).decode("utf-8") if out.value else ""
    finally:
        lib.msgbus_free(out)
    return [st for st in text.split(";\n") if st.strip()]


def kind(conn: Any) -> str:
    """'sqlite' or 'pg' (psycopg 3 or psycopg2), else InvalidTypeError."""
    if isinstance(conn, sqlite3.Connection):
        return "sqlite"
    mod = type(conn).__module__
    if mod.startswith("psycopg"):
        if "Async" in type(conn).__name__:
            # Its execute() returns a coroutine: called from here nothing
            # would be written, silently (docs/python.md, asyncio).
            raise InvalidTypeError(
                f"connection: {mod}.{type(conn).__name__} is asynchronous; use a synchronous "
                "psycopg connection in an executor (docs/python.md, \"Outbox and inbox from "
                "async code\")")
        return "pg"
    got = "None" if conn is None else f"{type(conn).__module__}.{type(conn).__name__}"
    raise InvalidTypeError(f"connection: expected a sqlite3 or psycopg connection, got {got}")


def pg_status(conn: Any) -> str:
    """'idle', 'intrans' or 'inerror' for a psycopg 3 / psycopg2 connection."""
    info = getattr(conn, "info", None)
    st = getattr(info, "transaction_status", None)
    if st is None and hasattr(conn, "get_transaction_status"):
        st = conn.get_transaction_status()
    v = int(st) if st is not None else 0
    # libpq PGTransactionStatusType: 0 IDLE, 1 ACTIVE, 2 INTRANS, 3 INERROR, 4 UNKNOWN
    return {0: "idle", 1: "intrans", 2: "intrans", 3: "inerror"}.get(v, "unknown")


def pg_autocommit(conn: Any) -> bool:
    return bool(getattr(conn, "autocommit", False))


def sqlite_autocommit(conn: sqlite3.Connection) -> bool:
    """True when a statement outside an explicit transaction commits on its
    own (no implicit BEGIN by the sqlite3 module)."""
    ac = getattr(conn, "autocommit", None)  # Python >= 3.12
    if ac is True:
        return True
    if ac is False:
        return False
    return conn.isolation_level is None


def check_table(which: str, store: str, table: str) -> str:
    """The table name rule of the C store (`which` "outbox" or "inbox" on
    `store` "sqlite" or "pg": only an inbox on PostgreSQL may name a
    schema). Returns `table`."""
    if not isinstance(table, str):
        raise InvalidTypeError(f"table must be a str, not {type(table).__name__}")
    schema(which, store, table)
    return table


def quote_table(table: str) -> str:
    """The outbox table as the C store names it in SQL (quoted; the inbox's
    is not quoted: see schema())."""
    return ".".join(f'"{p}"' for p in table.split("."))


def check_id(mid: Any) -> str:
    if not isinstance(mid, str):
        raise InvalidTypeError(f"message id must be a str, not {type(mid).__name__}")
    return check_rule(CHECK_ID, mid)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def uuid7() -> str:
    """A fresh UUIDv7 in the text form msgbus_msg_new uses."""
    ms = now_ms()
    r = int.from_bytes(os.urandom(10), "big")
    rand_a = (r >> 68) & 0xFFF
    rand_b = r & ((1 << 62) - 1)
    v = ((ms & ((1 << 48) - 1)) << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
    h = f"{v:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def require_txn_for_claim(conn: Any, k: str) -> None:
    """The inbox rule: a claim joins a transaction, it never commits alone."""
    if k == "sqlite":
        if not conn.in_transaction and sqlite_autocommit(conn):
            raise StateError("inbox claim: no transaction is open on the sqlite3 connection "
                             "(autocommit); BEGIN first so the claim commits with the effects")
    else:
        st = pg_status(conn)
        if st == "inerror":
            raise StateError("inbox claim: the PostgreSQL transaction has failed; roll back")
        if st == "idle" and pg_autocommit(conn):
            raise StateError("inbox claim: no transaction is open on the psycopg connection "
                             "(autocommit); use conn.transaction() so the claim commits "
                             "with the effects")
