"""libmsgbus's log lines → ``logging.getLogger("msgbus")``.

When the binding loads the library it installs a log hook
(``msgbus_set_log``) that hands every line to the "msgbus" logger, so
nothing goes to stderr unless the application's logging configuration
sends it there. The library adds a ``NullHandler`` to that logger, as
libraries do: an application that configures no logging sees nothing
(Python's last-resort stderr handler is not used).

Which lines the C library formats at all is its "max level"; it follows the
logger's effective level (DEBUG → debug, INFO → info, WARNING → warn,
ERROR and above → error), read when the library loads and again whenever a
:class:`~msgbus.Bus` opens, so configure logging before opening buses or
call :func:`msgbus.sync_log_level` after changing it. :func:`msgbus.set_log_level`
pins a level instead.

The hook runs on whatever thread logs, msgbus's own I/O threads included;
ctypes takes the GIL for it. Before the interpreter shuts down (``atexit``)
the hook is replaced by the library's default (errors only, to stderr): a
C thread must never call into Python while the interpreter finalizes.
"""
from __future__ import annotations

import atexit
import logging
import threading
from typing import Any, Optional

logger = logging.getLogger("msgbus")
logger.addHandler(logging.NullHandler())

# msgbus_log_level_t → logging level
_TO_LOGGING = {0: logging.ERROR, 1: logging.WARNING, 2: logging.INFO, 3: logging.DEBUG}

_lock = threading.Lock()
_real: Any = None        # the CDLL, once installed
_cb: Any = None          # the ctypes callback object: alive while installed
_pinned: Optional[int] = None
_current: Optional[int] = None
_closed = False


def _on_line(_opaque: Any, level: int, line: Optional[bytes]) -> None:
    # May run on a C thread; must never raise into C.
    try:
        if _closed:
            return
        lvl = _TO_LOGGING.get(level, logging.ERROR)
        if logger.isEnabledFor(lvl):
            # the record's origin is the C library, not this file
            logger.handle(logger.makeRecord(logger.name, lvl, "libmsgbus", 0,
                                            (line or b"").decode("utf-8", "replace"),
                                            None, None))
    except BaseException:  # pragma: no cover
        pass


def level_from_logger() -> int:
    """The msgbus level matching the "msgbus" logger's effective level."""
    eff = logger.getEffectiveLevel()
    if eff <= logging.DEBUG:
        return 3
    if eff <= logging.INFO:
        return 2
    if eff <= logging.WARNING:
        return 1
    return 0


def _load() -> Any:
    # Through _lib.load(), not the CDLL kept here: a stand-in library (the
    # tests spy on C calls) must see these calls. Never under _lock: the
    # first load installs the hook, which takes it.
    from . import _lib as libmod
    return libmod.load()


def _set(lib: Any, level: int, force: bool = False) -> None:
    """Gives msgbus `level` when it changed (call with _lock held)."""
    global _current
    if _closed or _cb is None:
        return
    if force or level != _current:
        lib.msgbus_set_log(_cb, None, level)
        _current = level


def install(lib: Any) -> None:
    """Installs the hook (once; called by _lib.load with the library)."""
    global _real, _cb, _current
    with _lock:
        if _real is not None:
            return
        from ._lib import LOG_CB
        _real, _cb = lib, LOG_CB(_on_line)
        _current = level_from_logger()
        lib.msgbus_set_log(_cb, None, _current)
        atexit.register(_shutdown)


def sync() -> None:
    """Re-reads the logger's effective level (unless a level is pinned) and
    tells msgbus when it changed."""
    lib = _load()
    with _lock:
        _set(lib, _pinned if _pinned is not None else level_from_logger())


def pin(level: Optional[int]) -> None:
    """Fixes the max level (None: follow the logger again)."""
    global _pinned
    lib = _load()
    with _lock:
        _pinned = level
        _set(lib, level if level is not None else level_from_logger(), force=True)


def current_level() -> Optional[int]:
    """The max level msgbus was last given (None before the library loads)."""
    return _current


def _shutdown() -> None:
    global _closed
    with _lock:
        if _closed or _real is None:
            return
        _closed = True
        # Taken under msgbus's log lock: when it returns no thread is inside
        # the hook, and none will enter it again.
        _real.msgbus_set_log(None, None, 0)
