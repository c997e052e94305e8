"""The idempotent consumer (inbox) from Python.

:class:`Inbox` claims message ids with the application's own ``sqlite3``
or ``psycopg`` connection, inside the application's own transaction,
following the table contract of docs/inbox.md — so Python and C consumers
may share one table. :class:`MemoryInbox` is the C library's bounded
in-memory store.
"""
from __future__ import annotations

import enum
from ctypes import byref, c_void_p
from typing import Any, Callable, Optional, Union

from . import _check, _lib
from ._core import Message
from ._sql import (CHECK_CONSUMER, check_id, check_rule, check_table, kind, now_ms, pg_status, schema,
                   require_txn_for_claim)
from .errors import ClosedError, InvalidError, InvalidTypeError, StateError, StoreError, check

DEFAULT_TABLE = "msgbus_inbox"


class Outcome(enum.Enum):
    """What :meth:`Inbox.handle` did with a message."""

    APPLIED = "applied"      #: handler succeeded, committed, acked
    DUPLICATE = "duplicate"  #: processed before: acked, handler not called
    REJECTED = "rejected"    #: handler raised: rolled back, nacked (redelivered)


def _message_id(msg: Union[Message, str]) -> str:
    if isinstance(msg, Message):
        if msg.id is None:
            raise InvalidError("message has no id (its producer is not msgbus): claim an id of "
                               "your own with claim(id) or dead-letter it")
        return msg.id
    if not isinstance(msg, str):
        raise InvalidTypeError(f"msg must be a msgbus.Message or an id (str), "
                               f"not {type(msg).__name__}")
    return check_id(msg)


class Inbox:
    """An inbox for consumer `consumer` on the application's connection `conn`.

    ``claim(msg)`` returns True the first time an id is claimed and False
    for a duplicate (already claimed and committed, or claimed earlier in
    the same transaction). Claims join the transaction open on `conn`; the
    inbox never begins, commits or rolls back (except in :meth:`handle`).
    With ``create=True`` (default) the table is created if missing, which
    must happen outside a transaction.
    """

    def __init__(self, conn: Any, consumer: str, table: str = DEFAULT_TABLE,
                 create: bool = True):
        self._kind = kind(conn)
        if not isinstance(consumer, str):
            raise InvalidTypeError(f"consumer must be a str, not {type(consumer).__name__}")
        _check.flag(create, "create")
        check_rule(CHECK_CONSUMER, consumer)
        check_table("inbox", self._kind, table)
        self.conn = conn
        self.consumer = consumer
        self.table = table
        # Unquoted, as the C stores name it (PostgreSQL folds it to lower
        # case): C and Python consumers of one table meet in the same one.
        self._q = table
        self._ph = "?" if self._kind == "sqlite" else "%s"
        if create:
            self.create_table()

    @property
    def store(self) -> str:
        """``"sqlite"`` or ``"pg"``."""
        return self._kind

    def create_table(self) -> None:
        """Creates the table and its index (docs/inbox.md, exact DDL) if missing.
        Outside a transaction (StateError otherwise). On PostgreSQL in
        non-autocommit mode it commits the DDL it ran."""
        c = self.conn
        cur = c.cursor()
        try:
            if self._kind == "sqlite":
                if c.in_transaction:
                    raise StateError("inbox: create the table outside a transaction")
            else:
                if pg_status(c) != "idle":
                    raise StateError("inbox: create the table outside a transaction")
                # The C store's lock: concurrent first opens (C or Python)
                # take turns instead of racing in the catalog.
                cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                            (f"msgbus_inbox:{self.table}",))
            for stmt in schema("inbox", self._kind, self.table):
                cur.execute(stmt)
            if self._kind == "pg" and not getattr(c, "autocommit", False):
                c.commit()
        finally:
            cur.close()

    def claim(self, msg: Union[Message, str]) -> bool:
        """Records that this consumer processes `msg` (a :class:`Message` or
        an id), inside the open transaction. True the first time, False when
        it is a duplicate. :class:`StateError` when no transaction is open
        (autocommit) or the PG transaction failed; :class:`InvalidError` for
        a message without an id; :class:`StoreError` for database errors."""
        mid = _message_id(msg)
        require_txn_for_claim(self.conn, self._kind)
        ph = self._ph
        cur = self.conn.cursor()
        try:
            cur.execute(f"INSERT INTO {self._q} (consumer, message_id, claimed_at) "
                        f"VALUES ({ph}, {ph}, {ph}) "
                        "ON CONFLICT (consumer, message_id) DO NOTHING",
                        (self.consumer, mid, now_ms()))
            n = int(cur.rowcount)
        except Exception as e:
            raise StoreError(f"inbox claim in {self.table}: {e}") from e
        finally:
            cur.close()
        return n == 1

    def forget(self, msg: Union[Message, str]) -> bool:
        """Deletes the claim of `msg` inside the open transaction; False when
        there was none."""
        mid = _message_id(msg)
        ph = self._ph
        cur = self.conn.cursor()
        try:
            cur.execute(f"DELETE FROM {self._q} WHERE consumer = {ph} AND message_id = {ph}",
                        (self.consumer, mid))
            n = int(cur.rowcount)
        except Exception as e:
            raise StoreError(f"inbox forget in {self.table}: {e}") from e
        finally:
            cur.close()
        return n == 1

    def purge(self, older_than_ms: int) -> int:
        """Deletes this consumer's claims at least `older_than_ms` old; returns
        how many. Joins an open transaction (it does not commit)."""
        age = _check.int64(older_than_ms, "older_than_ms")
        ph = self._ph
        cur = self.conn.cursor()
        try:
            cur.execute(f"DELETE FROM {self._q} WHERE consumer = {ph} AND claimed_at <= {ph}",
                        (self.consumer, now_ms() - age))
            return max(int(cur.rowcount), 0)
        except Exception as e:
            raise StoreError(f"inbox purge in {self.table}: {e}") from e
        finally:
            cur.close()

    def _in_txn(self) -> bool:
        if self._kind == "sqlite":
            return bool(self.conn.in_transaction)
        return pg_status(self.conn) != "idle"

    def handle(self, msg: Message, handler: Callable[[Message], Any]) -> Outcome:
        """Processes `msg` effectively once, like ``msgbus_inbox_handle``:
        begin; claim — a duplicate is rolled back and acked, the handler not
        called; ``handler(msg)`` applies the effects with the same
        connection (it must not commit); if it raises, roll back, nack
        and return REJECTED; else commit, then ack. A transaction already
        open is :class:`StateError` (the message is left unsettled). A `msg`
        that is not a :class:`Message` or a `handler` that is not callable
        is :class:`InvalidTypeError`, raised before anything is begun,
        claimed or settled."""
        _check.instance(msg, Message, "msg")
        _check.function(handler, "handler")
        c = self.conn
        if self._in_txn():
            raise StateError("inbox handle: a transaction is already open on the connection")
        _message_id(msg)
        try:
            if self._kind == "sqlite":
                c.execute("BEGIN IMMEDIATE")  # takes the write lock up front, like C
            elif getattr(c, "autocommit", False):
                cur = c.cursor()
                try:
                    cur.execute("BEGIN")
                finally:
                    cur.close()
            first = self.claim(msg)
        except BaseException:
            if self._in_txn():
                c.rollback()
            msg.nack()
            raise
        if not first:
            c.rollback()
            msg.ack()
            return Outcome.DUPLICATE
        try:
            handler(msg)
        except Exception:
            if self._in_txn():
                c.rollback()
            msg.nack()
            return Outcome.REJECTED
        except BaseException:  # KeyboardInterrupt, SystemExit: undo, leave unsettled
            if self._in_txn():
                c.rollback()
            raise
        if not self._in_txn():
            msg.nack()
            raise StateError("inbox handle: the handler ended the transaction")
        try:
            c.commit()
        except Exception as e:
            try:
                c.rollback()
            finally:
                msg.nack()
            raise StoreError(f"inbox handle: commit failed: {e}") from e
        msg.ack()
        return Outcome.APPLIED


class MemoryInbox:
    """The C library's bounded in-memory inbox (``msgbus_inbox_open_memory``):
    at most `capacity` ids, each for at most `ttl_ms` (0: no time limit);
    claims take effect at once and are forgotten when the process ends."""

    def __init__(self, consumer: str, capacity: int = 100000, ttl_ms: int = 0):
        cb = _check.text(consumer, "consumer")
        cap = _check.size(capacity, "capacity", lo=1)
        ttl = _check.int64(ttl_ms, "ttl_ms", hint=" (0: no time limit)")
        self._p: Optional[int] = None
        out = c_void_p()
        check(_lib.load().msgbus_inbox_open_memory(byref(out), cb, cap, ttl))
        self._p: Optional[int] = out.value
        self.consumer = consumer

    def _ptr(self) -> int:
        if self._p is None:
            raise ClosedError("the inbox is closed")
        return self._p

    def claim(self, msg: Union[Message, str]) -> bool:
        """True the first time, False for a duplicate."""
        rc = _lib.load().msgbus_inbox_claim_id(self._ptr(),
                                               _check.text(_message_id(msg), "id"))
        if rc == 11:
            return False
        check(rc)
        return True

    def close(self) -> None:
        p, self._p = self._p, None
        if p:
            _lib.load().msgbus_inbox_close(p)

    def __enter__(self) -> "MemoryInbox":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


__all__ = ["Inbox", "MemoryInbox", "Outcome", "DEFAULT_TABLE"]
