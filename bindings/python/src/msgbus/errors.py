"""Exceptions mapped from msgbus_err_t.

Every failing C call raises the subclass of :class:`MsgbusError` for its
code. The exception carries the code, its symbolic name and the library's
detail text (``msgbus_last_error()``, read on the same thread right after
the failing call).
"""
from __future__ import annotations

import builtins
from typing import Dict, Optional, Type


class MsgbusError(Exception):
    """Base class of every error msgbus reports.

    Attributes: ``code`` (the ``msgbus_err_t`` value), ``name``
    (``"MSGBUS_ERR_TIMEOUT"``) and ``detail`` (the library's message).
    """

    code: int = -1
    err_name: str = "MSGBUS_ERR"

    def __init__(self, detail: str = "", code: Optional[int] = None, name: str = ""):
        if code is not None:
            self.code = code
        self.name = name or self.err_name
        self.detail = detail
        super().__init__(detail or self.name)

    def __str__(self) -> str:
        return f"{self.detail} [{self.name}]" if self.detail else self.name


class InvalidError(MsgbusError, ValueError):
    """MSGBUS_ERR_INVALID: a bad argument (NULL, bad name, bad value)."""
    code = 1
    err_name = "MSGBUS_ERR_INVALID"


class InvalidTypeError(InvalidError, TypeError):
    """An argument of the wrong type (None where a value is required, a str
    where a mapping is, something not callable where a callable is…),
    refused by the binding before any C call. Code ``MSGBUS_ERR_INVALID``
    like :class:`InvalidError`, and also a built-in ``TypeError``."""


class ConfigError(MsgbusError, ValueError):
    """MSGBUS_ERR_CONFIG: missing/malformed URL, unknown or bad option."""
    code = 2
    err_name = "MSGBUS_ERR_CONFIG"


class NoMemoryError(MsgbusError, MemoryError):
    """MSGBUS_ERR_NOMEM: out of memory."""
    code = 3
    err_name = "MSGBUS_ERR_NOMEM"


class TimeoutError(MsgbusError, builtins.TimeoutError):
    """MSGBUS_ERR_TIMEOUT: the time given ran out."""
    code = 4
    err_name = "MSGBUS_ERR_TIMEOUT"


class QueueFullError(MsgbusError):
    """MSGBUS_ERR_QUEUE_FULL: ``queue_max`` messages await confirms; poll or flush, then retry."""
    code = 5
    err_name = "MSGBUS_ERR_QUEUE_FULL"


class ConnectError(MsgbusError, ConnectionError):
    """MSGBUS_ERR_CONNECT: broker unreachable or connection lost."""
    code = 6
    err_name = "MSGBUS_ERR_CONNECT"


class AuthError(MsgbusError, PermissionError):
    """MSGBUS_ERR_AUTH: the broker refused the credentials."""
    code = 7
    err_name = "MSGBUS_ERR_AUTH"


class TooLargeError(MsgbusError, ValueError):
    """MSGBUS_ERR_TOO_LARGE: message larger than the broker accepts."""
    code = 8
    err_name = "MSGBUS_ERR_TOO_LARGE"


class BrokerError(MsgbusError):
    """MSGBUS_ERR_BROKER: the broker refused the request."""
    code = 9
    err_name = "MSGBUS_ERR_BROKER"


class ClosedError(MsgbusError):
    """MSGBUS_ERR_CLOSED: the bus or subscription is closed."""
    code = 10
    err_name = "MSGBUS_ERR_CLOSED"


class DuplicateError(MsgbusError):
    """MSGBUS_ERR_DUPLICATE: inbox: this message was already processed."""
    code = 11
    err_name = "MSGBUS_ERR_DUPLICATE"


class StateError(MsgbusError):
    """MSGBUS_ERR_STATE: the call is not valid now (e.g. ack twice)."""
    code = 12
    err_name = "MSGBUS_ERR_STATE"


class UnsupportedError(MsgbusError, NotImplementedError):
    """MSGBUS_ERR_UNSUPPORTED: the backend (or this library build) cannot do this."""
    code = 13
    err_name = "MSGBUS_ERR_UNSUPPORTED"


class DeliveryError(MsgbusError):
    """MSGBUS_ERR_DELIVERY: flush: some messages were not delivered (``failed`` says how many)."""
    code = 14
    err_name = "MSGBUS_ERR_DELIVERY"
    failed: int = 0


class StoreError(MsgbusError):
    """MSGBUS_ERR_STORE: outbox/inbox database error."""
    code = 15
    err_name = "MSGBUS_ERR_STORE"


class NotFoundError(MsgbusError, LookupError):
    """MSGBUS_ERR_NOT_FOUND: no such item."""
    code = 16
    err_name = "MSGBUS_ERR_NOT_FOUND"


class InternalError(MsgbusError):
    """MSGBUS_ERR_INTERNAL: a bug in msgbus."""
    code = 17
    err_name = "MSGBUS_ERR_INTERNAL"


_BY_CODE: Dict[int, Type[MsgbusError]] = {
    c.code: c for c in (InvalidError, ConfigError, NoMemoryError, TimeoutError,
                        QueueFullError, ConnectError, AuthError, TooLargeError, BrokerError,
                        ClosedError, DuplicateError, StateError, UnsupportedError,
                        DeliveryError, StoreError, NotFoundError, InternalError)
}


def error_class(code: int) -> Type[MsgbusError]:
    """The exception class for a ``msgbus_err_t`` value."""
    return _BY_CODE.get(code, MsgbusError)


def make_error(code: int, detail: Optional[str] = None) -> MsgbusError:
    """Builds the exception for `code`; `detail` defaults to ``msgbus_last_error()``."""
    from ._check import INT_MAX, integer
    from ._lib import load
    code = integer(code, "code", -INT_MAX - 1, INT_MAX)  # msgbus_err_t is a C int
    lib = load()
    if detail is None:
        detail = lib.msgbus_last_error().decode("utf-8", "replace")
    name = (lib.msgbus_err_name(code) or b"MSGBUS_ERR_?").decode()
    if not detail:
        detail = (lib.msgbus_strerror(code) or b"").decode()
    return error_class(code)(detail, code, name)


def check(code: int) -> None:
    """Raises the mapped exception when `code` is not MSGBUS_OK. Call it
    right after the C call, on the same thread (last_error is thread-local)."""
    if code != 0:
        raise make_error(code)
