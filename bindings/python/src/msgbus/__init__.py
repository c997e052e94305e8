"""msgbus for Python: one publish/subscribe API over Kafka, RabbitMQ and
mem://, with the transactional outbox and the idempotent inbox — a ctypes
binding of libmsgbus.so with the same semantics as the C library.

>>> import msgbus
>>> with msgbus.Bus("mem://") as bus:
...     bus.declare("orders", "billing")
...     msg_id = bus.publish("orders", b"{}", key="order-1").result()
...     with bus.subscribe("orders", "billing") as sub:
...         m = sub.receive(timeout=1)
...         m.ack()
>>> (m.payload, m.key, m.id == msg_id, m.attempt)
(b'{}', b'order-1', True, 1)

See docs/python.md in the msgbus repository.
"""
from __future__ import annotations

from ._core import Bus, Delivery, Message, State, StateEvent, Subscription
from ._lib import LibraryInfo, LibraryNotFoundError
from . import inbox, outbox  # noqa: E402  (msgbus.outbox.put, msgbus.inbox.Inbox)
from .errors import (AuthError, BrokerError, ClosedError, ConfigError, ConnectError,
                     DeliveryError, DuplicateError, InternalError, InvalidError, InvalidTypeError,
                     MsgbusError,
                     NoMemoryError, NotFoundError, QueueFullError, StateError, StoreError,
                     TimeoutError, TooLargeError, UnsupportedError)

__version__ = "0.1.0"


def library_info() -> LibraryInfo:
    """Loads libmsgbus.so if not done yet and says which file was loaded and
    how it was found. Raises :class:`LibraryNotFoundError` (listing every
    place tried) when there is none."""
    from . import _lib
    return _lib.info()


def version() -> str:
    """The loaded library's version string (``msgbus_version()``)."""
    return library_info().version


def speedups() -> str:
    """Whether the compiled hot paths (``msgbus._speedups``) serve publish,
    receive, ack and delivery reports: ``"in use"``, or why not (``"not
    built (…)"``, ``"turned off by MSGBUS_PY_NO_SPEEDUPS=1"``). Decided when
    the first :class:`Bus` opens (``"not tried yet"`` before). Both paths
    behave the same; the compiled one is faster."""
    from . import _core
    return _core.speedups()


def set_log_level(level: int) -> None:
    """Pins the most verbose level of the lines libmsgbus hands to the
    ``logging.getLogger("msgbus")`` logger: 0 error, 1 warn, 2 info,
    3 debug (by default it follows that logger's effective level, see
    :func:`sync_log_level`). The logger's own level and handlers still
    decide what is shown. Another value is :class:`InvalidError`, a non-int
    (bool included) :class:`InvalidTypeError`."""
    from . import _check, _log
    _log.pin(_check.integer(level, "level", 0, 3))


def sync_log_level() -> None:
    """Makes libmsgbus's level follow the "msgbus" logger's effective level
    again (undoing :func:`set_log_level`) and reads that level now. It is
    read anyway when the library loads and each time a :class:`Bus` opens;
    call this after changing the logging configuration while buses are
    open."""
    from . import _log
    _log.pin(None)


def instrument(tracer_provider=None, propagator=None) -> None:
    """Turns on OpenTelemetry tracing of every bus in the process: a
    PRODUCER span per publish (and per :func:`msgbus.outbox.put`), a
    CONSUMER span per received message ending when it is settled, the
    context carried in the ``traceparent``/``tracestate`` headers. Needs
    ``opentelemetry-api`` (``pip install 'msgbus[otel]'``), else
    ImportError. `tracer_provider` and `propagator` default to
    OpenTelemetry's global ones. See docs/python.md, "OpenTelemetry"."""
    from . import otel
    otel.instrument(tracer_provider=tracer_provider, propagator=propagator)


def __getattr__(name: str):  # PEP 562: msgbus.aio loads asyncio only when used
    if name == "aio":
        import importlib
        return importlib.import_module(".aio", __name__)
    raise AttributeError(f"module 'msgbus' has no attribute '{name}'")


def uninstrument() -> None:
    """Turns tracing off again (spans already started still end)."""
    from . import otel
    otel.uninstrument()


__all__ = [
    "Bus", "Delivery", "Message", "Subscription", "aio", "inbox", "outbox", "LibraryInfo", "LibraryNotFoundError",
    "library_info", "version", "speedups", "set_log_level", "sync_log_level", "instrument", "uninstrument",
    "State", "StateEvent",
    "MsgbusError", "InvalidError", "InvalidTypeError", "ConfigError", "NoMemoryError", "TimeoutError",
    "QueueFullError", "ConnectError", "AuthError", "TooLargeError", "BrokerError",
    "ClosedError", "DuplicateError", "StateError", "UnsupportedError", "DeliveryError",
    "StoreError", "NotFoundError", "InternalError",
]
