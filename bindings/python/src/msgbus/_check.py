"""The argument rules of the binding, written once.

ctypes converts a Python int to a C integer by truncation: without these
checks ``timestamp=2**70`` reaches C as 0, ``max_rows=-1`` as SIZE_MAX and
``None`` as a NULL that C may read as "a temporary database". So every
value that reaches a C call (or a database row the C relay reads) goes
through one of these functions first, and a bad value raises before
anything happens:

- a value of the wrong type (None where one is required, a str where a
  mapping is, a bool or float where an int is, something not callable
  where a callable is) → :class:`~msgbus.InvalidTypeError` (an
  :class:`~msgbus.InvalidError` and a ``TypeError``), naming the argument;
- an int or a timeout outside what the C parameter means (negative sizes,
  more than the C type holds) → :class:`~msgbus.InvalidError` (a
  ``ValueError``), naming the argument and the allowed range.

docs/python.md, "Argument rules", is the user's copy of these rules.
"""
from __future__ import annotations

import ctypes
import math
import operator
import os
from collections.abc import Mapping
from typing import Any, Callable, Optional

from .errors import InvalidError, InvalidTypeError

INT_MAX = 2 ** 31 - 1                                 # C int (the *_ms parameters)
INT64_MAX = 2 ** 63 - 1                               # int64_t (timestamps, ttl, keep_ms)
SIZE_MAX = 2 ** (8 * ctypes.sizeof(ctypes.c_size_t)) - 1  # size_t (counts, capacities)

MAX_TIMEOUT_S = INT_MAX / 1000.0


def _tname(value: Any) -> str:
    return "None" if value is None else type(value).__name__


def integer(value: Any, name: str, lo: int, hi: int, hint: str = "") -> int:
    """`value` as an int in lo..hi. Takes ints and objects with __index__
    (numpy integers), never bool, float or str: ``int(2.7)`` silently
    choosing 2 is the kind of guess this module exists to refuse."""
    if type(value) is int:  # the common case, checked cheaply (publish is hot)
        if not lo <= value <= hi:
            raise InvalidError(f"{name} must be {lo}..{hi}{hint}, not {value}")
        return value
    if isinstance(value, bool) or value is None:
        raise InvalidTypeError(f"{name} must be an int, not {_tname(value)}")
    try:
        v = operator.index(value)
    except TypeError:
        raise InvalidTypeError(f"{name} must be an int, not {_tname(value)}") from None
    if not lo <= v <= hi:
        raise InvalidError(f"{name} must be {lo}..{hi}{hint}, not {v}")
    return v


def size(value: Any, name: str, lo: int = 0, hint: str = "") -> int:
    """A size_t argument (a count or capacity): lo..SIZE_MAX."""
    return integer(value, name, lo, SIZE_MAX, hint)


def c_int(value: Any, name: str, lo: int = 0, hint: str = "") -> int:
    """A C int argument (milliseconds): lo..INT_MAX."""
    return integer(value, name, lo, INT_MAX, hint)


def int64(value: Any, name: str, lo: int = 0, hint: str = "") -> int:
    """An int64_t argument: lo..INT64_MAX."""
    return integer(value, name, lo, INT64_MAX, hint)


def timeout_ms(value: Any, name: str = "timeout", forever: bool = True) -> int:
    """A timeout in seconds → C milliseconds. None means forever (-1 in C)
    where `forever`; otherwise 0 .. INT_MAX ms (about 24.8 days). Negative,
    NaN, infinite and larger values are refused: C would read them as
    garbage (ctypes truncates), and Python's spelling of forever is None."""
    if value is None:
        if forever:
            return -1
        raise InvalidTypeError(f"{name} must be a number of seconds (this call needs a "
                               "limit), not None")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            if isinstance(value, bool):
                raise TypeError
            value = operator.index(value)  # numpy integers
        except TypeError:
            raise InvalidTypeError(f"{name} must be a number of seconds"
                                   f"{' or None' if forever else ''}, "
                                   f"not {_tname(value)}") from None
    forever_hint = "; None waits forever" if forever else ""
    if isinstance(value, float) and not math.isfinite(value):
        if math.isnan(value):
            raise InvalidError(f"{name} must be a number of seconds, not NaN")
        if value < 0:
            raise InvalidError(f"{name} must be >= 0 seconds{forever_hint}, not {value}")
        raise InvalidError(f"{name} must be at most {MAX_TIMEOUT_S} seconds"
                           f"{forever_hint}, not {value}")
    if value < 0:
        raise InvalidError(f"{name} must be >= 0 seconds{forever_hint}, not {value}")
    ms = int(value * 1000 + 0.5)
    if ms > INT_MAX:
        raise InvalidError(f"{name} must be at most {MAX_TIMEOUT_S} seconds"
                           f"{forever_hint}, not {value}")
    return ms


def text(value: Any, name: str, optional: bool = False) -> Optional[bytes]:
    """A C string: a str without NUL, as UTF-8. None only when `optional`."""
    if value is None:
        if optional:
            return None
        raise InvalidTypeError(f"{name} must be a str, not None")
    if not isinstance(value, str):
        raise InvalidTypeError(f"{name} must be a str{' or None' if optional else ''}, "
                               f"not {_tname(value)}")
    b = value.encode("utf-8")
    if b"\0" in b:
        raise InvalidError(f"{name} must not contain NUL characters")
    return b


def data(value: Any, name: str) -> bytes:
    """Bytes for a payload or key: bytes, bytearray, memoryview, or a str
    (encoded as UTF-8)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise InvalidTypeError(f"{name} must be bytes or str, not {_tname(value)}")


def path(value: Any, name: str = "path") -> bytes:
    """A database file name: a str or os.PathLike, never None, "" or
    ":memory:" (SQLite opens a private temporary database for each, which
    no other connection can see)."""
    if value is None:
        raise InvalidTypeError(f"{name} must be a file name (str or os.PathLike), not None")
    try:
        p = os.fsencode(value)
    except TypeError:
        raise InvalidTypeError(f"{name} must be a file name (str or os.PathLike), "
                               f"not {_tname(value)}") from None
    if not p or p == b":memory:":
        raise InvalidError(f"{name} must name a database file, not {os.fsdecode(p)!r} "
                           "(SQLite would open a private temporary database that no "
                           "other connection sees)")
    if b"\0" in p:
        raise InvalidError(f"{name} must not contain NUL characters")
    return p


def mapping(value: Any, name: str) -> Optional[Mapping]:
    """None, or a Mapping (dict-like). A str, list of pairs or anything else
    is refused: ``headers="a=b"`` is a mistake, not an empty header set."""
    if value is None or type(value) is dict:
        return value
    if not isinstance(value, Mapping):
        raise InvalidTypeError(f"{name} must be a mapping (e.g. a dict) or None, "
                               f"not {_tname(value)}")
    return value


def function(value: Any, name: str) -> Callable[..., Any]:
    """A callable."""
    if not callable(value):
        raise InvalidTypeError(f"{name} must be callable, not {_tname(value)}")
    return value  # type: ignore[no-any-return]


def instance(value: Any, cls: type, name: str) -> Any:
    """An instance of `cls`."""
    if not isinstance(value, cls):
        raise InvalidTypeError(f"{name} must be a {cls.__module__.split('.')[0]}."
                               f"{cls.__name__}, not {_tname(value)}")
    return value


def flag(value: Any, name: str) -> bool:
    """A bool (not any truthy value: ``create="no"`` would be True)."""
    if not isinstance(value, bool):
        raise InvalidTypeError(f"{name} must be a bool, not {_tname(value)}")
    return value
