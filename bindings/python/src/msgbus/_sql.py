"""What outbox.py and inbox.py share: telling sqlite3 from psycopg
connections, their transaction state, and name and id checks."""
from __future__ import annotations

import os
import re
import sqlite3
import time
from typing import Any

from .errors import InvalidError, InvalidTypeError, StateError

NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")  # topics and groups
HEADER_RE = re.compile(r"^[A-Za-z0-9._:-]{1,255}$")
CONSUMER_RE = re.compile(r"^[A-Za-z0-9._-]{1,255}$")
TABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,49}$")


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


def check_table(table: str, pg: bool) -> str:
    if not isinstance(table, str):
        raise InvalidTypeError(f"table must be a str, not {type(table).__name__}")
    t = table
    if pg and "." in table:
        schema, _, t = table.partition(".")
        if not TABLE_RE.match(schema):
            raise InvalidError(f"table {table!r}: schema must be 1..50 characters of "
                               "A-Z a-z 0-9 _, not starting with a digit")
    if not TABLE_RE.match(t):
        raise InvalidError(f"table {table!r}: use 1..50 characters of A-Z a-z 0-9 _, "
                           "not starting with a digit")
    return table


def quote_table(table: str) -> str:
    return ".".join(f'"{p}"' for p in table.split("."))


def check_id(mid: Any) -> str:
    if not isinstance(mid, str):
        raise InvalidTypeError(f"message id must be a str, not {type(mid).__name__}")
    if not (1 <= len(mid) <= 255) or \
            any(not (0x21 <= ord(c) <= 0x7e) for c in mid):
        raise InvalidError(f"message id {mid!r}: use 1..255 printable ASCII characters "
                           "without spaces")
    return mid


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
