"""Bus, Delivery, Subscription and Message: the Python face of msgbus.h."""
from __future__ import annotations

import collections
import ctypes
import itertools
import json
import os
import threading
import weakref
from ctypes import byref, c_char_p, c_int, c_size_t, c_void_p
from typing import (Any, Callable, Dict, Iterator, List, Mapping, NamedTuple, Optional, Union)

from . import _check, _lib, _log
from .errors import (ClosedError, DeliveryError, InvalidError, InvalidTypeError, MsgbusError,
                     UnsupportedError, check, make_error)

Bytes = Union[bytes, bytearray, memoryview, str]
HeaderValue = Union[str, bytes]

_WAIT_SLICE_MS = 200  # blocking C waits are cut into slices so Ctrl-C works
_RECV_BATCH = 64  # messages taken from the C queue per msgbus_receive_batch call
# Topics publish has checked and encoded (str → its UTF-8 bytes): a service
# publishes to a handful of topics; the bound keeps a caller that makes a
# topic per message from growing it without end.
_topics: Dict[str, bytes] = {}
_TOPIC_CACHE_MAX = 1024
# Timeouts (s) receive converts itself: well inside _check.timeout_ms's range.
_FAST_TIMEOUT_S = 1_000_000

# The tracer msgbus.instrument() installs (msgbus.otel), None when tracing is
# off: one global read per publish/receive/settle is all tracing costs then.
# Its methods: publish(bus, topic, m_ptr, msg_id, payload, key) -> span (it
# writes the span's context into m's headers), publish_failed(span, exc),
# confirmed(span, exc), received(bus, message) -> span, settled(message, span,
# how, reason, exc); outbox.put calls outbox_put(...) and outbox_done(...).
_tracer: Any = None
# What ends spans: the last tracer installed, kept after uninstrument() so
# the spans already started still end.
_span_ops: Any = None

# The compiled hot paths (msgbus/_speedups.c), when the package was built
# with them and MSGBUS_PY_NO_SPEEDUPS is not 1; set up with the library's
# function addresses when the first Bus opens (_speedups_init). Without
# them every call goes through ctypes, with the same results and errors.
_sp: Any = None
_sp_state = 0  # 0: not tried yet, 1: in use, -1: not available or turned off
_sp_why = "not tried yet"


def _c_msg_free(p: int) -> None:
    _lib.load().msgbus_msg_free(p)


def _c_ack(p: int) -> int:
    return int(_lib.load().msgbus_ack(p))


# What Message uses to free and ack its C message (the compiled ones once
# _speedups_init succeeded).
_msg_free: Callable[[int], None] = _c_msg_free
_msg_ack: Callable[[int], int] = _c_ack


def _speedups_init() -> bool:
    """Sets up the compiled hot paths once; True when they are in use."""
    global _sp, _sp_state, _sp_why, _msg_free, _msg_ack
    if _sp_state:
        return _sp_state > 0
    _sp_state = -1
    if os.environ.get("MSGBUS_PY_NO_SPEEDUPS") == "1":
        _sp_why = "turned off by MSGBUS_PY_NO_SPEEDUPS=1"
        return False
    try:
        from . import _speedups as mod  # type: ignore[attr-defined]
    except ImportError as e:
        _sp_why = f"not built ({e})"
        return False
    lib = _lib.load()
    names = ("msgbus_msg_new", "msgbus_msg_free", "msgbus_msg_payload", "msgbus_msg_id",
             "msgbus_publish", "msgbus_receive_batch", "msgbus_ack", "msgbus_poll",
             "msgbus_flush")
    if not all(hasattr(lib, n) for n in names):
        _sp_why = "this libmsgbus has no msgbus_receive_batch"
        return False
    mod.init({n: ctypes.cast(getattr(lib, n), c_void_p).value for n in names}, Message,
             Delivery)
    ack, delete = mod.message_methods(Message, check)
    Message.ack = ack  # type: ignore[method-assign]
    Message.__del__ = delete  # type: ignore[method-assign]
    _sp, _msg_free, _msg_ack = mod, mod.msg_free, mod.ack
    _sp_state, _sp_why = 1, "in use"
    return True


def speedups() -> str:
    """Whether the compiled hot paths serve publish, receive, ack and
    delivery reports: ``"in use"``, or why not (e.g. ``"not built (…)"``,
    ``"turned off by MSGBUS_PY_NO_SPEEDUPS=1"``). Decided when the first
    :class:`Bus` opens (this opens none)."""
    return _sp_why


def _hval(value: HeaderValue, name: str) -> bytes:
    if isinstance(value, str):
        b = value.encode("utf-8", "surrogateescape")
    elif isinstance(value, (bytes, bytearray)):
        b = bytes(value)
    else:
        raise InvalidTypeError(f"header '{name}': value must be str or bytes, "
                               f"not {type(value).__name__}")
    if b"\0" in b:
        raise InvalidError(f"header '{name}': value must not contain NUL bytes")
    return b


def _dec(b: Optional[bytes]) -> Optional[str]:
    return None if b is None else b.decode("utf-8", "surrogateescape")


_CE_SETTERS = (("type", "msgbus_msg_set_type"), ("source", "msgbus_msg_set_source"),
               ("subject", "msgbus_msg_set_subject"))


def build_message(payload: Bytes, key: Optional[Bytes] = None,
                  headers: Optional[Mapping[str, HeaderValue]] = None,
                  id: Optional[str] = None, timestamp: Optional[int] = None,
                  type: Optional[str] = None, source: Optional[str] = None,
                  subject: Optional[str] = None) -> int:
    """Makes a C msgbus_msg_t (caller frees it) and returns its address.
    Every argument is checked before the message is made."""
    lib = _lib.load()
    pb = _check.data(payload, "payload")
    kb = None if key is None else _check.data(key, "key")
    hs = [(_check.text(name, "header name"), _hval(value, name))
          for name, value in (_check.mapping(headers, "headers") or {}).items()]
    ib = _check.text(id, "id", optional=True)
    ts = None if timestamp is None else _check.int64(timestamp, "timestamp",
                                                       hint=" (ms since the epoch)")
    ce = [(fn, _check.text(v, what)) for (what, fn), v in zip(_CE_SETTERS, (type, source, subject))
          if v is not None]
    for fn, _ in ce:
        _need(fn, f"publish({fn[15:]}=...)")
    ptr = c_void_p()
    check(lib.msgbus_msg_new(byref(ptr), pb, len(pb)))
    m = int(ptr.value or 0)
    try:
        if kb is not None:
            check(lib.msgbus_msg_set_key(m, kb, len(kb)))
        for hn, hv in hs:
            check(lib.msgbus_msg_set_header(m, hn, hv))
        if ib is not None:
            check(lib.msgbus_msg_set_id(m, ib))
        if ts is not None:
            check(lib.msgbus_msg_set_timestamp(m, ts))
        for fn, v in ce:
            check(getattr(lib, fn)(m, v))
    except BaseException:
        lib.msgbus_msg_free(m)
        raise
    return m


# ------------------------------------------------------------------ delivery

_pending: Dict[int, "Delivery"] = {}
_ids = itertools.count(1)
_cb_obj: Any = None
_cb_lock = threading.Lock()  # a Delivery's status and its done-callbacks


def _on_delivery(opaque: Optional[int], report: Any) -> None:
    # Runs on the thread that calls msgbus_poll/flush/close. Must not raise.
    try:
        d = _pending.pop(opaque or 0, None)
        if d is not None:
            r = report.contents
            status = r.status
            d._finish(status, r.error if status else None)  # the text only on failure
    except BaseException:  # pragma: no cover - never let an exception into C
        pass


def _delivery_cb() -> Any:
    global _cb_obj
    if _cb_obj is None:
        _cb_obj = _lib.DELIVERY_CB(_on_delivery)  # kept for the life of the process
    return _cb_obj


def _drain(rq: Any) -> None:
    """Finishes the Deliveries whose reports the compiled callback queued
    (during the poll, flush or close that just returned), in order."""
    rq.finish()


class Delivery:
    """The broker's confirm of one published message, future-like.

    Settled by the delivery callback, which msgbus serves on a thread that
    calls :meth:`Bus.poll`, :meth:`Bus.flush` or :meth:`Bus.close`;
    :meth:`result` and :meth:`exception` serve it themselves while they wait.
    """

    __slots__ = ("_bus", "topic", "message_id", "_status", "_exc", "_callbacks", "_span",
                 "__weakref__")

    def __init__(self, bus: "Bus", topic: str, message_id: str):
        self._bus = bus
        self.topic = topic
        """The topic the message was published to."""
        self.message_id = message_id
        """The message id (the same one consumers see)."""
        self._status: Optional[int] = None
        self._exc: Optional[MsgbusError] = None
        self._callbacks: Optional[List[Callable[["Delivery"], Any]]] = None
        self._span: Any = None  # the tracer's publish span, ended at the outcome

    def _finish(self, status: int, error: Optional[bytes]) -> None:
        if status != 0:
            self._exc = make_error(status, (error or b"").decode("utf-8", "replace"))
        span, self._span = self._span, None
        if span is not None and _span_ops is not None:
            try:
                _span_ops.confirmed(span, self._exc)
            except Exception:  # a tracer's error must not lose the outcome
                _log.logger.exception("tracer: ending the publish span failed")
        with _cb_lock:
            self._status = status
            self._bus = None  # type: ignore[assignment]
            cbs, self._callbacks = self._callbacks, None
        for fn in cbs or ():
            try:
                fn(self)
            except Exception:  # like concurrent.futures: a callback's error is not ours
                import logging
                logging.getLogger("msgbus").exception("Delivery done-callback raised")

    def done(self) -> bool:
        """True once the outcome is known."""
        return self._status is not None

    def _wait(self, timeout: Optional[float]) -> None:
        ms = _check.timeout_ms(timeout)
        if self._status is not None:
            return
        import time
        deadline = None if ms < 0 else time.monotonic() + ms / 1000.0
        while self._status is None:
            bus = self._bus
            if bus is None or bus._ptr is None:
                if self._status is None:
                    raise ClosedError("the bus closed before the confirm was served")
                break
            left = _WAIT_SLICE_MS if deadline is None else \
                min(_WAIT_SLICE_MS, max(0, int((deadline - time.monotonic()) * 1000)))
            try:
                bus.poll(left / 1000.0)
            except ClosedError:  # closed meanwhile by another thread
                if self._status is None:
                    raise
                break
            if self._status is None and deadline is not None and time.monotonic() >= deadline:
                from .errors import TimeoutError as MTimeout
                raise MTimeout(f"no confirm for message {self.message_id} within {timeout} s")

    def result(self, timeout: Optional[float] = None) -> str:
        """Waits (serving the bus's callbacks) for the confirm and returns the
        message id; raises the delivery's error (e.g. :class:`ClosedError`,
        :class:`TooLargeError`), or :class:`msgbus.TimeoutError` if `timeout`
        seconds pass first."""
        self._wait(timeout)
        if self._exc is not None:
            raise self._exc
        return self.message_id

    def exception(self, timeout: Optional[float] = None) -> Optional[MsgbusError]:
        """Like :meth:`result`, but returns the error (None on success)."""
        self._wait(timeout)
        return self._exc

    def add_done_callback(self, fn: Callable[["Delivery"], Any]) -> None:
        """Calls ``fn(self)`` when the outcome is known (at once if it is), on
        the thread serving the callback. `fn` runs inside poll/flush/close:
        it must not close the bus, and waiting there for another delivery
        would block the thread that serves the confirms."""
        _check.function(fn, "fn")
        with _cb_lock:
            if self._status is None:
                cbs = self._callbacks
                if cbs is None:
                    cbs = self._callbacks = []
                cbs.append(fn)
                # The compiled report path settles a success without the
                # lock when it finds no callbacks: if it did so just
                # before ours was added, nobody else will call it.
                if self._status is None or self._callbacks is not cbs:
                    return
                self._callbacks = None
            else:
                cbs = None
        for f in cbs or (fn,):
            f(self)

    def __repr__(self) -> str:
        state = "pending" if self._status is None else \
            ("confirmed" if self._status == 0 else f"failed: {self._exc}")
        return f"<Delivery {self.topic} {self.message_id} {state}>"


# ------------------------------------------------------------------ message

_release_lock = threading.Lock()


# A received message's fields are read from C when first asked for (one
# ctypes call each costs about as much as the rest of a receive; a consumer
# that reads the payload and acks needs none of the others). Each reader
# takes (lib, ptr); Message.__getattr__ runs it once and stores the value in
# the slot, so later reads are plain attribute reads. Before the C message
# is freed while its Python object lives on (Bus.close), every field still
# unread is read (_materialise): fields stay readable after free.
# ctypes.string_at without its Python wrapper (a call less per message).
_string_at = getattr(ctypes, "_string_at", ctypes.string_at)


def _read_payload(lib: Any, ptr: int) -> bytes:
    n = c_size_t()
    p = lib.msgbus_msg_payload(ptr, n)  # ctypes passes n by reference (cheaper than byref)
    return _string_at(p, n.value) if n.value else b""


def _read_key(lib: Any, ptr: int) -> Optional[bytes]:
    n = c_size_t()
    k = lib.msgbus_msg_key(ptr, n)
    return None if not k else _string_at(k, n.value)


def _read_headers(lib: Any, ptr: int) -> Dict[str, str]:
    hs: Dict[str, str] = {}
    cnt = lib.msgbus_msg_header_count(ptr)
    if cnt:
        hn, hv = c_char_p(), c_char_p()
        at = lib.msgbus_msg_header_at
        for i in range(cnt):
            if at(ptr, i, byref(hn), byref(hv)) == 0:
                hs[(hn.value or b"").decode("utf-8", "surrogateescape")] = \
                    (hv.value or b"").decode("utf-8", "surrogateescape")
    return hs


def _text_reader(fn: str) -> Callable[[Any, int], Optional[str]]:
    def read(lib: Any, ptr: int) -> Optional[str]:
        return _dec(getattr(lib, fn)(ptr))
    return read


def _int_reader(fn: str) -> Callable[[Any, int], int]:
    def read(lib: Any, ptr: int) -> int:
        return int(getattr(lib, fn)(ptr))
    return read


_FIELDS: Dict[str, Callable[[Any, int], Any]] = {
    "payload": _read_payload,
    "key": _read_key,
    "headers": _read_headers,
    "id": _text_reader("msgbus_msg_id"),
    "attempt": _int_reader("msgbus_msg_attempt"),
    "topic": _text_reader("msgbus_msg_topic"),
    "group": _text_reader("msgbus_msg_group"),
    "timestamp": _int_reader("msgbus_msg_timestamp"),
    "partition": _int_reader("msgbus_msg_partition"),
    "offset": _int_reader("msgbus_msg_offset"),
    "redelivered": lambda lib, ptr: bool(lib.msgbus_msg_redelivered(ptr)),
    "type": _text_reader("msgbus_msg_type"),
    "source": _text_reader("msgbus_msg_source"),
    "subject": _text_reader("msgbus_msg_subject"),
}


class Message:
    """A received message.

    Its fields: ``payload`` (bytes), ``key`` (bytes or None), ``headers``
    (dict str → str; values that are not UTF-8 keep their bytes as
    surrogate escapes), ``id``, ``attempt`` (1 on first delivery),
    ``topic``, ``group`` (None for a broadcast subscriber), ``timestamp``
    (ms since the epoch), ``partition`` and ``offset`` (Kafka; -1
    elsewhere), ``redelivered`` (the broker delivered it before:
    RabbitMQ's flag) and ``type``, ``source``, ``subject`` (its CloudEvents
    attributes, None when it had none). Each is read from the library the
    first time it is asked for (the payload at once) and is the same value every time after,
    also once the message is settled or its bus is closed. Settle it once
    with :meth:`ack`, :meth:`nack` or :meth:`dead_letter`. A message
    dropped unsettled is delivered again when its subscription closes.
    """

    __slots__ = ("_ptr", "payload", "key", "headers", "id", "attempt", "topic", "group",
                 "timestamp", "partition", "offset", "redelivered", "type", "source",
                 "subject", "_settled", "_span", "_reg", "__weakref__")

    # Declared for type checkers; the values live in the slots above.
    payload: bytes
    key: Optional[bytes]
    headers: Dict[str, str]
    id: Optional[str]
    attempt: int
    topic: Optional[str]
    group: Optional[str]
    timestamp: int
    partition: int
    offset: int
    redelivered: bool
    type: Optional[str]
    source: Optional[str]
    subject: Optional[str]

    def __init__(self, ptr: int):
        # The C message stays ours until this object goes (or its bus
        # closes): an ack settles it but keeps it, so unread fields can
        # still be read from it.
        self._ptr: Optional[int] = ptr
        self._settled = False
        self._span: Any = None  # the tracer's process span, ended when settled
        # Nearly every consumer reads the payload: read at once, it skips the
        # first-read detour through __getattr__.
        self.payload = _read_payload(_lib.load(), ptr)

    def __getattr__(self, name: str) -> Any:
        # Only reached for a slot not yet filled: a field read the first time.
        read = _FIELDS.get(name)
        if read is None:
            raise AttributeError(f"'Message' object has no attribute '{name}'")
        p = self._ptr
        if p is None:  # freed before the field was read: cannot happen (see _release)
            raise AttributeError(f"Message.{name}: the message was released")
        v = read(_lib.load(), p)
        object.__setattr__(self, name, v)
        return v

    def _materialise(self) -> None:
        """Reads every field not read yet (before the C message goes)."""
        for name in _FIELDS:
            getattr(self, name)

    def _end_span(self, how: str, reason: Optional[str] = None,
                  exc: Optional[BaseException] = None) -> None:
        span, self._span = self._span, None
        if span is not None and _span_ops is not None:
            try:
                _span_ops.settled(self, span, how, reason, exc)
            except Exception:
                _log.logger.exception("tracer: ending the process span failed")

    def _release(self, keep_fields: bool = True) -> None:
        """Frees the C message; with `keep_fields`, reads the fields not read
        yet first (the object lives on: Bus.close, nack, dead_letter)."""
        if keep_fields and self._ptr is not None:
            self._materialise()
        with _release_lock:
            p, self._ptr = self._ptr, None
        if p:
            _msg_free(p)
        if self._span is not None and not self._settled:
            self._end_span("none")  # freed unsettled: the broker delivers it again

    def __del__(self) -> None:
        # Nobody can read its fields any more, and nobody else can free it:
        # Bus.close holds a reference while it releases, so it cannot run
        # at the same time as this (no lock needed).
        try:
            p = self._ptr
            if p:
                self._ptr = None
                _msg_free(p)
            if self._span is not None and not self._settled:
                self._end_span("none")  # freed unsettled: the broker delivers it again
        except Exception:
            pass

    def _settle(self, fn: Callable[[int], int], what: str,
                reason: Optional[str] = None) -> None:
        if self._settled:
            from .errors import StateError
            raise StateError(f"{what}: the message was already settled")
        p = self._ptr
        if p is None:
            raise ClosedError(f"{what}: the message's bus is closed (it will be delivered again)")
        if what != "ack":
            # A nacked message may come back through the core's retry as
            # the same C message with new fields: keep what was received.
            self._materialise()
        try:
            check(fn(p))
        except MsgbusError as e:
            if self._span is not None:
                self._end_span(what, reason, e)
            raise
        self._settled = True
        if self._span is not None:
            self._end_span(what, reason)
        if what != "ack":
            self._release(False)  # the core keeps what it still needs (refs)
        # An acked message stays ours until this object goes (or its bus
        # closes), so its fields not read yet can still be read: a free now
        # would mean reading all of them first, the cost laziness avoids.

    def ack(self) -> None:
        """Done: never deliver it again. Never blocks on the network.
        :class:`StateError` if already settled; :class:`ClosedError` if its
        subscription or bus is closed (the broker delivers it again)."""
        p = self._ptr
        if p is None or self._settled or self._span is not None:
            self._settle(_lib.load().msgbus_ack, "ack")  # the errors, or a span to end
            return
        rc = _msg_ack(p)
        if rc != 0:
            check(rc)
        self._settled = True
        # The C message stays ours (see _settle): fields not read yet can be.

    # With the compiled paths, ack and __del__ are replaced by C methods
    # (_speedups_init) that do the common case and call these otherwise.
    _ack_py = ack

    def _del_py(self) -> None:
        if self._span is not None and not self._settled:
            self._end_span("none")  # freed unsettled: the broker delivers it again

    def nack(self, reason: Optional[str] = None) -> None:
        """Failed: deliver it again with ``attempt`` + 1. ``reason`` travels in
        the dead letter's ``msgbus-dlq-error`` header if it ends up there
        (needs ``msgbus_nack_reason``; :class:`UnsupportedError` otherwise)."""
        lib = _lib.load()
        _check.text(reason, "reason", optional=True)
        if reason is None:
            self._settle(lib.msgbus_nack, "nack")
            return
        if not hasattr(lib, "msgbus_nack_reason"):
            raise UnsupportedError("nack(reason): this libmsgbus has no msgbus_nack_reason")
        r = _check.text(reason, "reason", optional=True)
        self._settle(lambda p: lib.msgbus_nack_reason(p, r), "nack", reason)

    def dead_letter(self, reason: Optional[str] = None) -> None:
        """Sends it to its subscription's dead-letter topic at once (a poison
        message). :class:`StateError` when dead-lettering is off."""
        lib = _lib.load()
        r = _check.text(reason, "reason", optional=True)
        if not hasattr(lib, "msgbus_dead_letter"):
            raise UnsupportedError("dead_letter: this libmsgbus has no msgbus_dead_letter")
        self._settle(lambda p: lib.msgbus_dead_letter(p, r), "dead_letter", reason)

    @property
    def settled(self) -> bool:
        """True after a successful ack, nack or dead_letter."""
        return self._settled

    def __repr__(self) -> str:
        return (f"<Message {self.topic}/{self.group} id={self.id} attempt={self.attempt} "
                f"key={self.key!r} {len(self.payload)} bytes>")


# ------------------------------------------------------------------ subscription

class Subscription:
    """A subscription to a topic, made by :meth:`Bus.subscribe`.

    Iterate over it to receive messages (blocks; ends when it is closed), or
    call :meth:`receive` with a timeout. Use it as a context manager, or
    call :meth:`close`.
    """

    def __init__(self, bus: "Bus", ptr: int, topic: str, group: Optional[str]):
        self._bus = bus
        self._ptr: Optional[int] = ptr
        self.topic = topic
        self.group = group
        # Messages taken from the C queue by one msgbus_receive_batch call
        # and not handed out yet (raw pointers; freed unsettled at close, so
        # the broker delivers them again).
        self._buf: "collections.deque[int]" = collections.deque()
        self._paused = False
        lib = _lib.load()
        # With the compiled paths the deque holds Message objects it made
        # (not handed out yet, so not tracked by the bus), else raw pointers.
        self._sp = _sp if bus._rq is not None else None
        self._reg = bus._msgs if self._sp is not None else None  # where take registers
        self._batch = hasattr(lib, "msgbus_receive_batch")
        self._arr = (c_void_p * _RECV_BATCH)() if self._batch and self._sp is None else None

    def _wrap(self, x: Any) -> Message:
        if x.__class__ is int:
            m = Message(x)
            self._bus._msgs.add(m)  # Bus._track, without the call
        else:
            m = x  # made and registered by the compiled take
        if _tracer is not None:
            try:
                m._span = _tracer.received(self._bus, m)
            except Exception:
                _log.logger.exception("tracer: starting the process span failed")
        return m

    def _take(self, p: int, ms: int, max_n: int) -> List[int]:
        """Up to max_n raw messages (with the compiled paths: Message objects),
        waiting up to ms for the first."""
        sp = self._sp
        if sp is not None:
            got = sp.take(p, min(max_n, _RECV_BATCH), ms, self._reg)
            if got.__class__ is list:
                return got
            rc = got
            if rc != 4:
                check(rc)
            return []
        lib = _lib.load()
        if self._batch:
            n = c_size_t()
            rc = lib.msgbus_receive_batch(p, min(max_n, _RECV_BATCH), ms, self._arr, n)
            if rc == 0:
                return self._arr[:n.value]  # ints (a received message is never NULL)
        else:
            out = c_void_p()
            rc = lib.msgbus_receive(p, ms, byref(out))
            if rc == 0:
                return [int(out.value or 0)]
        if rc != 4:  # not a timeout
            check(rc)
        return []

    def receive(self, timeout: Optional[float] = None) -> Optional[Message]:
        """The next message, waiting up to `timeout` seconds (None: forever,
        0: do not wait); None when none arrived. :class:`ClosedError` after
        close."""
        if timeout is None:
            total = -1
        elif timeout.__class__ in (int, float) and 0 <= timeout <= _FAST_TIMEOUT_S:
            total = int(timeout * 1000 + 0.5)  # what _check.timeout_ms gives, without the call
        else:
            total = _check.timeout_ms(timeout)  # the checks and their errors
        while True:
            p = self._ptr
            if p is None:
                raise ClosedError(f"subscription to '{self.topic}' is closed")
            if not self._paused:
                try:
                    return self._wrap(self._buf.popleft())
                except IndexError:
                    pass
            step = _WAIT_SLICE_MS if total < 0 else min(total, _WAIT_SLICE_MS)
            got = self._take(p, step, _RECV_BATCH)
            if got:
                first = got[0]
                self._buf.extend(got[1:])
                return self._wrap(first)
            if total >= 0:
                total -= step
                if total <= 0:
                    return None

    def receive_batch(self, max: int = 100, timeout: Optional[float] = None) -> List[Message]:
        """Up to `max` messages at once (``msgbus_receive_batch``): waits up
        to `timeout` seconds (None: forever, 0: do not wait) for the first,
        then takes what is already there. An empty list when none arrived."""
        n = _check.size(max, "max", lo=1)
        total = _check.timeout_ms(timeout)
        out: List[Message] = []
        while True:
            p = self._ptr
            if p is None:
                raise ClosedError(f"subscription to '{self.topic}' is closed")
            if not self._paused:
                while self._buf and len(out) < n:
                    try:
                        out.append(self._wrap(self._buf.popleft()))
                    except IndexError:
                        break
            if len(out) >= n:
                return out
            step = 0 if out else (_WAIT_SLICE_MS if total < 0 else min(total, _WAIT_SLICE_MS))
            got = self._take(p, step, n - len(out))
            out.extend(self._wrap(g) for g in got)
            if out:
                return out
            if total >= 0:
                total -= step
                if total <= 0:
                    return out

    def pause(self) -> None:
        """Stops delivery (``msgbus_sub_pause``): nothing is received until
        :meth:`resume`; messages already received can still be settled."""
        p = self._ptr
        if p is None:
            raise ClosedError(f"subscription to '{self.topic}' is closed")
        check(_need("msgbus_sub_pause", "Subscription.pause")(p))
        self._paused = True

    def resume(self) -> None:
        """Delivers again after :meth:`pause`, starting with what waited."""
        p = self._ptr
        if p is None:
            raise ClosedError(f"subscription to '{self.topic}' is closed")
        check(_need("msgbus_sub_resume", "Subscription.resume")(p))
        self._paused = False

    @property
    def paused(self) -> bool:
        return self._paused

    def messages(self, idle_timeout: Optional[float] = None) -> Iterator[Message]:
        """Yields messages until the subscription closes or, with
        `idle_timeout`, until none arrived for that many seconds. A bad
        `idle_timeout` raises here, not at the first ``next()``."""
        _check.timeout_ms(idle_timeout, "idle_timeout")
        return self._messages(idle_timeout)

    def _messages(self, idle_timeout: Optional[float]) -> Iterator[Message]:
        while True:
            try:
                m = self.receive(idle_timeout)
            except ClosedError:
                return
            if m is None:
                return
            yield m

    def __iter__(self) -> Iterator[Message]:
        return self.messages(None)

    def fileno(self) -> int:
        """The bus's descriptor (see :meth:`Bus.fileno`)."""
        return self._bus.fileno()

    def close(self) -> None:
        """Closes the subscription: its unsettled messages go to other members.
        Messages already received keep their fields; settling them raises
        :class:`ClosedError`. Idempotent."""
        # Under the bus's close lock: a Bus.close on another thread (e.g.
        # msgbus.aio closing the bus while a subscription's close still
        # runs in the executor) waits for msgbus_sub_close to return
        # before msgbus_close frees what it uses.
        with self._bus._close_lock:
            p, self._ptr = self._ptr, None
            if p:
                lib = _lib.load()
                lib.msgbus_sub_close(p)
                while self._buf:  # never handed out: freed unsettled, delivered again
                    x = self._buf.popleft()
                    if x.__class__ is int:
                        lib.msgbus_msg_free(x)
                    else:
                        x._release(False)
                self._bus._subs.discard(self)

    @property
    def closed(self) -> bool:
        return self._ptr is None

    @property
    def state(self) -> "State":
        """The subscription's own state (``msgbus_sub_state``), e.g.
        ``State("UP", "subscribed")``; :class:`ClosedError` after close."""
        p = self._ptr
        if p is None:
            raise ClosedError(f"subscription to '{self.topic}' is closed")
        return _read_state(_need("msgbus_sub_state", "Subscription.state"), p)

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Subscription {self.topic} group={self.group} {'closed' if self.closed else 'open'}>"


def _options(options: Optional[Mapping[str, Any]]) -> Optional[bytes]:
    if not _check.mapping(options, "options"):
        return None
    parts = []
    for k, v in options.items():  # type: ignore[union-attr]
        if not isinstance(k, str):
            raise InvalidTypeError(f"options: a name must be a str, not {type(k).__name__}")
        if v is True:
            v = "on"
        elif v is False:
            v = "off"
        elif not isinstance(v, (str, int, float)):
            raise InvalidTypeError(f"options['{k}'] must be a str, int, float or bool, "
                                   f"not {type(v).__name__}")
        v = str(v)
        for s, what in ((k, "name"), (v, "value")):
            if not s or any(c in s for c in "&=\0"):
                raise InvalidError(f"subscription option {what} {s!r}: must be non-empty "
                                   "and contain no '&', '=' or NUL")
        parts.append(f"{k}={v}")
    return "&".join(parts).encode()


# ------------------------------------------------------------------ state

class State(NamedTuple):
    """A connection's (or subscription's) state: ``name`` is
    ``"CONNECTING"``, ``"UP"``, ``"RECONNECTING"`` or ``"DOWN"``;
    ``reason`` says why (e.g. ``"connected"``, ``"all brokers down"``)."""

    name: str
    reason: str


class StateEvent(NamedTuple):
    """One state change, as given to :meth:`Bus.on_state` callbacks."""

    state: str
    """The new state's name."""
    previous: str
    """The state before."""
    reason: str
    """Why it changed."""
    subscription: Optional["Subscription"]
    """The subscription that changed (None: the bus connection, or a
    subscription closed since)."""
    topic: Optional[str]
    """The subscription's topic (None for the bus)."""
    group: Optional[str]
    """The subscription's group (None for the bus or a broadcast subscriber)."""
    time_ms: int
    """When it happened, ms since the Unix epoch."""


def _need(name: str, what: str) -> Any:
    lib = _lib.load()
    fn = getattr(lib, name, None)
    if fn is None:
        raise UnsupportedError(f"{what}: this libmsgbus has no {name}")
    return fn


def _state_name(lib: Any, v: int) -> str:
    return str(lib.msgbus_state_name(v).decode())


def _read_state(fn: Any, ptr: int) -> State:
    buf = ctypes.create_string_buffer(256)
    v = fn(ptr, buf, len(buf))
    return State(_state_name(_lib.load(), v), buf.value.decode("utf-8", "replace"))


# ------------------------------------------------------------------ bus

class Bus:
    """A connection to a broker, chosen by URL.

    ``Bus(url)`` opens it (``url`` None: ``$MSGBUS_URL``); use it as a
    context manager or call :meth:`close`. URLs: ``kafka://host:9092``,
    ``amqp://user:pass@host:5672/vhost``, ``mem://`` (options in the query,
    see the README). Raises :class:`ConfigError` for a missing, malformed
    or unknown URL/option and :class:`ConnectError` when the broker cannot
    be reached.

    Publishing, flushing, polling and receiving may be called from any
    thread; close it once, after other threads stopped using it.
    """

    def __init__(self, url: Optional[str] = None):
        lib = _lib.load()
        self._ptr: Optional[int] = None
        # Held while the bus or one of its subscriptions closes (reentrant:
        # Bus.close closes its subscriptions).
        self._close_lock = threading.RLock()
        self._subs: "weakref.WeakSet[Subscription]" = weakref.WeakSet()
        self._msgs: "weakref.WeakSet[Message]" = weakref.WeakSet()
        self._dependents: "weakref.WeakSet[Any]" = weakref.WeakSet()  # outbox relays
        self._cb = _delivery_cb()
        # ctypes callback objects of on_state/on_stats: kept while installed
        # and until close returns (close may still serve them)
        self._state_cfn: Any = None
        self._stats_cfn: Any = None
        self._otel_attrs: Any = None  # the tracer's per-bus attributes (msgbus.otel)
        # The compiled paths' queue of this bus's delivery reports (None:
        # ctypes callbacks); kept until the object goes (close may fill it).
        self._rq: Any = _sp.Reports(_pending) if _speedups_init() else None
        if self._rq is not None:
            # Live received messages, for close: id -> weakref, filled by
            # the compiled take and emptied by Message.__del__.
            self._msgs = {}  # type: ignore[assignment]
        ub = _check.text(url, "url", optional=True)
        _log.sync()  # logging configured since the last bus: follow its level
        ptr = c_void_p()
        check(lib.msgbus_open(byref(ptr), ub, None))
        self._ptr = ptr.value
        if self._rq is not None and type(self).publish is Bus.publish:
            # publish(topic, payload) in C; any other call goes to
            # Bus.publish (same arguments, checks and errors).
            self.publish = _sp.publisher(self, self._rq, Bus.publish, _pending,  # type: ignore
                                         _topics, _ids, globals())

    # -- helpers
    def _p(self) -> int:
        p = self._ptr
        if p is None:
            raise ClosedError("the bus is closed")
        return p

    def _track(self, m: Message) -> None:
        msgs = self._msgs
        if msgs.__class__ is dict:
            msgs[id(m)] = weakref.ref(m)  # type: ignore[index]
            m._reg = msgs
        else:
            msgs.add(m)

    def _live_messages(self) -> List[Message]:
        msgs = self._msgs
        if msgs.__class__ is dict:
            return [m for m in (r() for r in list(msgs.values())) if m is not None]  # type: ignore
        return list(msgs)

    # -- properties
    @property
    def url(self) -> str:
        """The URL it was opened with (``msgbus_url``), every secret — the
        password of ``user:pass@`` and each option whose name says password,
        secret, token or key material — shown as ``***``."""
        return str(_lib.load().msgbus_url(self._p()).decode())

    @property
    def backend(self) -> str:
        """``"kafka"``, ``"amqp"`` or ``"mem"``."""
        return str(_lib.load().msgbus_backend(self._p()).decode())

    @property
    def outstanding(self) -> int:
        """Published messages still waiting for their confirm."""
        return int(_lib.load().msgbus_outstanding(self._p()))

    @property
    def closed(self) -> bool:
        return self._ptr is None

    # -- publishing
    def publish(self, topic: str, payload: Bytes, key: Optional[Bytes] = None,
                headers: Optional[Mapping[str, HeaderValue]] = None, *,
                id: Optional[str] = None, timestamp: Optional[int] = None,
                type: Optional[str] = None, source: Optional[str] = None,
                subject: Optional[str] = None) -> Delivery:
        """Publishes a message asynchronously and returns its :class:`Delivery`.

        ``payload`` and ``key`` are bytes (a str is encoded as UTF-8);
        ``headers`` maps names to str values; ``id`` replaces the fresh
        UUIDv7 id; ``timestamp`` is ms since the epoch; ``type``,
        ``source`` and ``subject`` are the message's CloudEvents attributes
        (default type: the topic; source: the bus's ``ce_source``). Never blocks on the
        network. :class:`QueueFullError` when ``queue_max`` messages await
        confirms (call :meth:`poll` or :meth:`flush`, then retry);
        :class:`InvalidError` for a bad topic or header name.
        """
        lib = _lib.load()
        bus = self._ptr
        if bus is None:
            raise ClosedError("the bus is closed")
        exact = topic.__class__ is str
        tb = _topics.get(topic) if exact else None
        if tb is None:
            tb = _check.text(topic, "topic")
            if exact:
                if len(_topics) >= _TOPIC_CACHE_MAX:
                    _topics.clear()
                _topics[topic] = tb  # type: ignore[assignment]
        rq = self._rq
        if key is None and headers is None and id is None and timestamp is None \
                and type is None and source is None and subject is None:
            # The common case, without build_message's general path (lists
            # and checks of arguments that are not there).
            pb = payload if payload.__class__ is bytes else _check.data(payload, "payload")
            if rq is not None and _tracer is None:
                r = _sp.publish_payload(rq, bus, tb, pb, next(_ids), self, topic, _pending)
                if r.__class__ is int:
                    check(r)
                return r  # type: ignore[no-any-return]
            out = c_void_p()
            check(lib.msgbus_msg_new(out, pb, len(pb)))  # by reference, as byref(out)
            m = out.value or 0
        else:
            m = build_message(payload, key, headers, id, timestamp, type, source, subject)
        span = None
        try:
            mid = lib.msgbus_msg_id(m).decode() if rq is None else _sp.msg_id(m)
            token = next(_ids)
            d = Delivery(self, topic, mid)
            tracer = _tracer
            if tracer is not None:
                # starts the span and writes its context into m's headers
                try:
                    span = tracer.publish(self, topic, m, mid, payload, key)
                except Exception:  # tracing must not stop a publish
                    _log.logger.exception("tracer: starting the publish span failed")
                d._span = span
            _pending[token] = d
            if rq is None:
                rc = lib.msgbus_publish(bus, tb, m, self._cb, token)
            else:
                rc = _sp.publish(rq, bus, tb, m, token)
            if rc != 0:
                _pending.pop(token, None)
                check(rc)
        except BaseException as e:
            if span is not None and _span_ops is not None:
                d._span = None
                try:
                    _span_ops.publish_failed(span, e)
                except Exception:
                    _log.logger.exception("tracer: ending the publish span failed")
            raise
        finally:
            lib.msgbus_msg_free(m)
        return d

    def flush(self, timeout: Optional[float] = None) -> None:
        """Waits until every message published so far is confirmed or failed,
        serving delivery callbacks on this thread. Raises
        :class:`DeliveryError` (``.failed`` = how many failed since the
        previous flush) or :class:`msgbus.TimeoutError`."""
        ms = _check.timeout_ms(timeout)
        rq = self._rq
        if rq is None:
            failed = c_size_t()
            rc = _lib.load().msgbus_flush(self._p(), ms, byref(failed))
            nfailed = failed.value
        else:
            rc, nfailed = _sp.flush(self._p(), ms)
        if rc != 0:
            e = make_error(rc)  # now: the reports' done-callbacks may call the library
            if isinstance(e, DeliveryError):
                e.failed = nfailed
            if rq is not None:
                _drain(rq)
            raise e
        if rq is not None:
            _drain(rq)

    def poll(self, timeout: Optional[float] = 0) -> int:
        """Serves pending delivery callbacks on this thread, waiting up to
        `timeout` seconds (0: do not wait, None: forever) for the first one;
        returns how many were served."""
        ms = _check.timeout_ms(timeout)
        rq = self._rq
        if rq is None:
            served = c_int()
            check(_lib.load().msgbus_poll(self._p(), ms, byref(served)))
            return served.value
        rc, n = _sp.poll(self._p(), ms)
        e = make_error(rc) if rc != 0 else None  # before the done-callbacks run
        _drain(rq)
        if e is not None:
            raise e
        return int(n)

    def declare(self, topic: str, group: Optional[str] = None) -> None:
        """Creates the topic and the group's storage ahead of its first
        consumer, so messages published from now on are kept for it."""
        tb = _check.text(topic, "topic")
        gb = _check.text(group, "group", optional=True)
        check(_lib.load().msgbus_declare(self._p(), tb, gb))

    # -- subscribing
    def subscribe(self, topic: str, group: Optional[str] = None,
                  options: Optional[Mapping[str, Any]] = None) -> Subscription:
        """Subscribes to `topic` as a member of `group` (None: a broadcast
        subscriber that sees every message published after this call).
        `options` (e.g. ``{"retry_max_attempts": 3, "dlq": True}``) are
        per-subscription options, see ``msgbus_subscribe_ex``."""
        tb = _check.text(topic, "topic")
        gb = _check.text(group, "group", optional=True)
        opts = _options(options)
        lib = _lib.load()
        out = c_void_p()
        if opts is None:
            check(lib.msgbus_subscribe(self._p(), tb, gb, byref(out)))
        else:
            if not hasattr(lib, "msgbus_subscribe_ex"):
                raise UnsupportedError("subscribe(options=…): this libmsgbus has no "
                                       "msgbus_subscribe_ex")
            check(lib.msgbus_subscribe_ex(self._p(), tb, gb, opts, byref(out)))
        s = Subscription(self, int(out.value or 0), topic, group)
        self._subs.add(s)
        return s

    def dlq_replay(self, dlq_topic: str, dlq_group: Optional[str] = None, max: int = 0,
                   idle_timeout: float = 1.0) -> int:
        """Moves dead letters back to their topics (see ``msgbus_dlq_replay``);
        returns how many were moved. `max`: 0 for no limit; `idle_timeout`:
        seconds (not None: the replay needs a point to stop)."""
        tb = _check.text(dlq_topic, "dlq_topic")
        gb = _check.text(dlq_group, "dlq_group", optional=True)
        n = _check.size(max, "max", hint=" (0: no limit)")
        ms = _check.timeout_ms(idle_timeout, "idle_timeout", forever=False)
        lib = _lib.load()
        if not hasattr(lib, "msgbus_dlq_replay"):
            raise UnsupportedError("dlq_replay: this libmsgbus has no msgbus_dlq_replay")
        moved = c_size_t()
        check(lib.msgbus_dlq_replay(self._p(), tb, gb, n, ms, byref(moved)))
        return moved.value

    # -- positions, inspection, capabilities (docs/semantics.md)
    def group_reset(self, topic: str, group: str, to: str) -> None:
        """Moves `group`'s position on `topic` (``msgbus_group_reset``):
        ``"earliest"``, ``"latest"``, an RFC 3339 time or ``"-15m"``. The
        group must have no active member (:class:`StateError`)."""
        tb = _check.text(topic, "topic")
        gb = _check.text(group, "group")
        pb = _check.text(to, "to")
        check(_need("msgbus_group_reset", "Bus.group_reset")(self._p(), tb, gb, pb))

    def _text(self, fn: Any, *args: Any) -> Dict[str, Any]:
        lib = _lib.load()
        out = c_void_p()
        check(fn(self._p(), *args, byref(out)))
        try:
            text = ctypes.string_at(out.value) if out.value else b"{}"
        finally:
            lib.msgbus_free(out.value)
        return dict(json.loads(text.decode("utf-8")))

    def inspect(self, topic: Optional[str] = None, group: Optional[str] = None,
                timeout: Optional[float] = 10.0) -> Dict[str, Any]:
        """What the broker holds (``msgbus_inspect_json``) as a dict: topics
        with their partitions and groups with their lag."""
        tb = _check.text(topic, "topic", optional=True)
        gb = _check.text(group, "group", optional=True)
        ms = _check.timeout_ms(timeout)
        return self._text(_need("msgbus_inspect_json", "Bus.inspect"), tb, gb, ms)

    @property
    def capabilities(self) -> "frozenset[str]":
        """The names of the capabilities the backend claims (``msgbus_caps``),
        e.g. ``{"key_order", "replay", ...}``."""
        lib = _lib.load()
        bits = _need("msgbus_caps", "Bus.capabilities")(self._p())
        names = set()
        b = 1
        while True:
            name = lib.msgbus_cap_name(b)
            if name is None:
                break
            if bits & b:
                names.add(name.decode())
            b <<= 1
        return frozenset(names)

    def capabilities_detail(self) -> Dict[str, Any]:
        """Every capability with its description and, where not supported,
        why (``msgbus_caps_json``), plus ``max_message_size``."""
        return self._text(_need("msgbus_caps_json", "Bus.capabilities_detail"))

    @property
    def max_message_size(self) -> int:
        """The largest message the bus accepts, in bytes (0: no limit)."""
        return int(_need("msgbus_max_message_size", "Bus.max_message_size")(self._p()))

    # -- observability (docs/stats.md)
    @property
    def state(self) -> State:
        """The connection's current state (``msgbus_state``), e.g.
        ``State("UP", "connected")``. Any thread."""
        return _read_state(_need("msgbus_state", "Bus.state"), self._p())

    def stats(self) -> Dict[str, Any]:
        """A snapshot of the bus's figures (``msgbus_stats_json``) as a dict:
        counters since open, latency percentiles since the previous
        snapshot, each subscription with its lag, the backend's detail —
        every field is listed in docs/stats.md. May wait up to about a
        second for the broker (lag)."""
        fn = _need("msgbus_stats_json", "Bus.stats")
        lib = _lib.load()
        out = c_void_p()
        check(fn(self._p(), byref(out)))
        try:
            text = ctypes.string_at(out.value) if out.value else b"{}"
        finally:
            lib.msgbus_stats_free(out.value)
        return dict(json.loads(text.decode("utf-8")))

    def on_state(self, callback: Optional[Callable[[StateEvent], Any]]) -> None:
        """Calls ``callback(event)`` (a :class:`StateEvent`) for each change of
        the connection's or a subscription's state, in order, on the thread
        that calls :meth:`poll`, :meth:`flush` or :meth:`close` (also inside
        ``Delivery.result()``). None removes it. Changes before it was set
        are not replayed (read :attr:`state`). An exception the callback
        raises is logged to the "msgbus" logger, not raised."""
        if callback is not None:
            _check.function(callback, "callback")
        fn = _need("msgbus_set_state_cb", "Bus.on_state")
        p = self._p()
        if callback is None:
            check(fn(p, None, None))
            self._state_cfn = None
            return
        wself = weakref.ref(self)
        lib = _lib.load()

        def trampoline(_opaque: Any, evp: Any) -> None:
            try:
                ev = evp.contents
                bus = wself()
                sub = None
                if ev.sub and bus is not None:
                    for s in list(bus._subs):
                        if s._ptr == ev.sub:
                            sub = s
                            break
                callback(StateEvent(_state_name(lib, ev.state), _state_name(lib, ev.previous),
                                    _dec(ev.reason) or "", sub, _dec(ev.topic), _dec(ev.group),
                                    int(ev.time_ms)))
            except BaseException:  # never into C
                _log.logger.exception("Bus.on_state callback raised")

        cfn = _lib.STATE_CB(trampoline)
        check(fn(p, cfn, None))
        self._state_cfn = cfn  # after install: the previous one may still be running

    def on_stats(self, callback: Optional[Callable[[Dict[str, Any]], Any]]) -> None:
        """Calls ``callback(snapshot)`` (a dict, as :meth:`stats`) every
        ``stats_interval_ms`` (a URL option, e.g.
        ``mem://?stats_interval_ms=1000``; without it never), on the thread
        that calls :meth:`poll`. None removes it. An exception the callback
        raises is logged to the "msgbus" logger, not raised."""
        if callback is not None:
            _check.function(callback, "callback")
        fn = _need("msgbus_set_stats_cb", "Bus.on_stats")
        p = self._p()
        if callback is None:
            check(fn(p, None, None))
            self._stats_cfn = None
            return

        def trampoline(_opaque: Any, text: Optional[bytes]) -> None:
            try:
                callback(dict(json.loads((text or b"{}").decode("utf-8"))))
            except BaseException:  # never into C
                _log.logger.exception("Bus.on_stats callback raised")

        cfn = _lib.STATS_CB(trampoline)
        check(fn(p, cfn, None))
        self._stats_cfn = cfn

    # -- event loops
    def fileno(self) -> int:
        """A descriptor that is readable while the bus has work: delivery
        callbacks for :meth:`poll` or messages for ``receive``. Register it
        with ``selectors`` or ``asyncio`` (``loop.add_reader``), then call
        ``poll(0)`` and ``receive(0)`` until they report nothing. Owned by
        the bus: do not close or read it."""
        return int(_lib.load().msgbus_fd(self._p()))

    # -- closing
    def close(self) -> None:
        """Closes the bus: waits up to ``close_timeout_ms`` for outstanding
        confirms (their deliveries are settled; still unconfirmed ones fail
        with :class:`ClosedError`), closes its subscriptions and releases
        received messages that were not freed yet (unsettled ones are
        delivered again), after closing outbox relays that publish into
        it. Idempotent."""
        if self._ptr is None:
            return
        with self._close_lock:  # see Subscription.close
            p = self._ptr
            if p is None:
                return
            lib = _lib.load()
            for dep in list(self._dependents):
                dep.close()  # a relay must stop before its bus closes
            for m in self._live_messages():
                m._release()
            for s in list(self._subs):
                s.close()
            self._ptr = None
            lib.msgbus_close(p)
        if self._rq is not None:
            _drain(self._rq)
        self._state_cfn = self._stats_cfn = None  # close served the last of them
        # Deliveries of this bus that close could not report (none expected).
        for token, d in list(_pending.items()):
            if d._bus is self:
                _pending.pop(token, None)
                d._finish(10, b"the bus was closed before the confirm arrived")

    def __enter__(self) -> "Bus":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        if self._ptr is None:
            return "<Bus closed>"
        return f"<Bus {self.url}>"
