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

from ._core import Bus, Delivery, Message, Subscription
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


def set_log_level(level: int) -> None:
    """The most verbose level msgbus writes to stderr: 0 error, 1 warn
    (default), 2 info, 3 debug. Another value is :class:`InvalidError`, a
    non-int (bool included) :class:`InvalidTypeError`."""
    from . import _check, _lib
    _lib.load().msgbus_set_log(None, None, _check.integer(level, "level", 0, 3))


__all__ = [
    "Bus", "Delivery", "Message", "Subscription", "inbox", "outbox", "LibraryInfo", "LibraryNotFoundError",
    "library_info", "version", "set_log_level",
    "MsgbusError", "InvalidError", "InvalidTypeError", "ConfigError", "NoMemoryError", "TimeoutError",
    "QueueFullError", "ConnectError", "AuthError", "TooLargeError", "BrokerError",
    "ClosedError", "DuplicateError", "StateError", "UnsupportedError", "DeliveryError",
    "StoreError", "NotFoundError", "InternalError",
]
