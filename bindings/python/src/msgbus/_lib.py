"""Finding, loading and declaring libmsgbus.so (ctypes, ABI mode).

Search order (the first place that has a library wins; a library that is
found but fails to load is an error, never a reason to try the next one):

1. ``$MSGBUS_LIBRARY`` — the path of the library file. When set, it is the
   only candidate.
2. The copy bundled in this package (``msgbus/libmsgbus.so.0``): a wheel
   built by ``pip install ./bindings/python`` or ``python -m build`` carries
   the library it was built with (setup.py).
3. The install prefix: ``$MSGBUS_PREFIX/lib*`` if set, then the Python
   prefix (``sys.prefix/lib*``), ``/usr/local/lib*``, then the dynamic
   linker's own search (``ldconfig`` cache, as ``ctypes.util.find_library``).
4. The build tree: ``$MSGBUS_BUILD_DIR``, then ``build/`` of the source
   checkout this package was installed from.

:func:`library_info` says which file was loaded and why; when none is found
:class:`LibraryNotFoundError` lists every place tried.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import sys
import threading
from ctypes import (CFUNCTYPE, POINTER, c_char_p, c_double, c_int, c_int64, c_size_t,
                    c_uint64, c_void_p)
from dataclasses import dataclass
from typing import List, Optional, Tuple

LIBNAME = "libmsgbus.so"


class LibraryNotFoundError(ImportError):
    """No usable libmsgbus.so was found (the message lists every place tried)."""


@dataclass(frozen=True)
class LibraryInfo:
    """Which libmsgbus.so the binding loaded."""

    path: str
    """The file that was loaded."""
    source: str
    """How it was found: ``"MSGBUS_LIBRARY"``, ``"install prefix"`` or ``"build tree"``."""
    version: str
    """``msgbus_version()`` of the loaded library."""

    def __str__(self) -> str:
        return f"libmsgbus {self.version} from {self.path} (found via {self.source})"


class Report(ctypes.Structure):
    _fields_ = [("topic", c_char_p), ("msg_id", c_char_p), ("status", c_int),
                ("error", c_char_p)]


class OutboxRelayOpts(ctypes.Structure):
    _fields_ = [("batch_max", c_size_t), ("confirm_timeout_ms", c_int),
                ("poll_interval_ms", c_int), ("backoff_min_ms", c_int),
                ("backoff_max_ms", c_int)]


class OutboxStats(ctypes.Structure):
    _fields_ = [("pending", c_uint64), ("failed", c_uint64), ("sent", c_uint64),
                ("oldest_pending_age_ms", c_int64)]


class StateEvent(ctypes.Structure):
    """msgbus_state_event_t."""
    _fields_ = [("state", c_int), ("previous", c_int), ("reason", c_char_p),
                ("sub", c_void_p), ("topic", c_char_p), ("group", c_char_p),
                ("time_ms", c_int64)]


DELIVERY_CB = CFUNCTYPE(None, c_void_p, POINTER(Report))
LOG_CB = CFUNCTYPE(None, c_void_p, c_int, c_char_p)
STATE_CB = CFUNCTYPE(None, c_void_p, POINTER(StateEvent))
STATS_CB = CFUNCTYPE(None, c_void_p, c_char_p)

P = c_void_p
PP = POINTER(c_void_p)
E = c_int  # msgbus_err_t

# name: (restype, argtypes)
_PROTOTYPES = {
    "msgbus_version": (c_char_p, []),
    "msgbus_strerror": (c_char_p, [E]),
    "msgbus_err_name": (c_char_p, [E]),
    "msgbus_last_error": (c_char_p, []),
    "msgbus_set_log": (None, [P, P, c_int]),  # cb: a LOG_CB object or None
    "msgbus_msg_new": (E, [PP, c_char_p, c_size_t]),
    "msgbus_msg_free": (None, [P]),
    "msgbus_msg_payload": (P, [P, POINTER(c_size_t)]),
    "msgbus_msg_set_payload": (E, [P, c_char_p, c_size_t]),
    "msgbus_msg_set_key": (E, [P, c_char_p, c_size_t]),
    "msgbus_msg_key": (P, [P, POINTER(c_size_t)]),
    "msgbus_msg_set_header": (E, [P, c_char_p, c_char_p]),
    "msgbus_msg_del_header": (E, [P, c_char_p]),
    "msgbus_msg_header": (c_char_p, [P, c_char_p]),
    "msgbus_msg_header_count": (c_size_t, [P]),
    "msgbus_msg_header_at": (E, [P, c_size_t, POINTER(c_char_p), POINTER(c_char_p)]),
    "msgbus_msg_id": (c_char_p, [P]),
    "msgbus_msg_set_id": (E, [P, c_char_p]),
    "msgbus_msg_timestamp": (c_int64, [P]),
    "msgbus_msg_set_timestamp": (E, [P, c_int64]),
    "msgbus_msg_topic": (c_char_p, [P]),
    "msgbus_msg_group": (c_char_p, [P]),
    "msgbus_msg_attempt": (c_int, [P]),
    "msgbus_msg_partition": (ctypes.c_int32, [P]),
    "msgbus_msg_offset": (c_int64, [P]),
    "msgbus_msg_redelivered": (c_int, [P]),
    "msgbus_msg_set_type": (E, [P, c_char_p]),
    "msgbus_msg_set_source": (E, [P, c_char_p]),
    "msgbus_msg_set_subject": (E, [P, c_char_p]),
    "msgbus_msg_type": (c_char_p, [P]),
    "msgbus_msg_source": (c_char_p, [P]),
    "msgbus_msg_subject": (c_char_p, [P]),
    "msgbus_open": (E, [PP, c_char_p, P]),
    "msgbus_close": (None, [P]),
    "msgbus_url": (c_char_p, [P]),
    "msgbus_backend": (c_char_p, [P]),
    "msgbus_publish": (E, [P, c_char_p, P, DELIVERY_CB, P]),
    "msgbus_flush": (E, [P, c_int, POINTER(c_size_t)]),
    "msgbus_outstanding": (c_size_t, [P]),
    "msgbus_declare": (E, [P, c_char_p, c_char_p]),
    "msgbus_subscribe": (E, [P, c_char_p, c_char_p, PP]),
    "msgbus_subscribe_ex": (E, [P, c_char_p, c_char_p, c_char_p, PP]),
    "msgbus_receive": (E, [P, c_int, PP]),
    "msgbus_ack": (E, [P]),
    "msgbus_nack": (E, [P]),
    "msgbus_nack_reason": (E, [P, c_char_p]),
    "msgbus_dead_letter": (E, [P, c_char_p]),
    "msgbus_dlq_replay": (E, [P, c_char_p, c_char_p, c_size_t, c_int, POINTER(c_size_t)]),
    "msgbus_sub_close": (None, [P]),
    "msgbus_poll": (E, [P, c_int, POINTER(c_int)]),
    "msgbus_fd": (c_int, [P]),
    # observability (docs/stats.md): the text of msgbus_stats_json is read
    # through a void pointer, so it can be given back to msgbus_stats_free
    "msgbus_state_name": (c_char_p, [c_int]),
    "msgbus_state": (c_int, [P, c_char_p, c_size_t]),
    "msgbus_sub_state": (c_int, [P, c_char_p, c_size_t]),
    "msgbus_set_state_cb": (E, [P, P, P]),  # cb: a STATE_CB object or None
    "msgbus_stats_json": (E, [P, PP]),
    "msgbus_stats_free": (None, [P]),
    "msgbus_set_stats_cb": (E, [P, P, P]),  # cb: a STATS_CB object or None
    # positions, inspection, capabilities (docs/semantics.md); texts are read
    # through a void pointer and given back to msgbus_free
    "msgbus_receive_batch": (E, [P, c_size_t, c_int, P, POINTER(c_size_t)]),
    "msgbus_sub_pause": (E, [P]),
    "msgbus_sub_resume": (E, [P]),
    "msgbus_group_reset": (E, [P, c_char_p, c_char_p, c_char_p]),
    "msgbus_inspect_json": (E, [P, c_char_p, c_char_p, c_int, PP]),
    "msgbus_free": (None, [P]),
    "msgbus_caps": (ctypes.c_uint64, [P]),
    "msgbus_cap_name": (c_char_p, [ctypes.c_uint64]),
    "msgbus_caps_json": (E, [P, PP]),
    "msgbus_max_message_size": (c_size_t, [P]),
    # outbox.h
    "msgbus_outbox_open_sqlite": (E, [PP, P, c_char_p]),
    "msgbus_outbox_open_pg": (E, [PP, P, c_char_p]),
    "msgbus_outbox_close": (None, [P]),
    "msgbus_outbox_put": (E, [P, c_char_p, P]),
    "msgbus_outbox_relay": (E, [P, P, c_size_t, c_int, POINTER(c_size_t)]),
    "msgbus_outbox_relay_start": (E, [P, P, POINTER(OutboxRelayOpts)]),
    "msgbus_outbox_relay_wake": (None, [P]),
    "msgbus_outbox_relay_stop": (E, [P]),
    "msgbus_outbox_set_retention": (E, [P, c_int64]),
    "msgbus_outbox_purge": (E, [P, POINTER(c_size_t)]),
    "msgbus_outbox_retry_failed": (E, [P, POINTER(c_size_t)]),
    "msgbus_outbox_stats": (E, [P, POINTER(OutboxStats)]),
    # inbox.h (Python code claims in SQL itself; these serve MemoryInbox and tests)
    "msgbus_inbox_open_sqlite": (E, [PP, P, c_char_p, c_char_p]),
    "msgbus_inbox_open_pg": (E, [PP, P, c_char_p, c_char_p]),
    "msgbus_inbox_open_memory": (E, [PP, c_char_p, c_size_t, c_int64]),
    "msgbus_inbox_close": (None, [P]),
    "msgbus_inbox_claim": (E, [P, P]),
    "msgbus_inbox_claim_id": (E, [P, c_char_p]),
    "msgbus_inbox_forget": (E, [P, P]),
    "msgbus_inbox_purge": (E, [P, c_int64, POINTER(c_size_t)]),
}

# Functions the binding can live without (newer API); absent → UnsupportedError.
_OPTIONAL = {"msgbus_subscribe_ex", "msgbus_nack_reason", "msgbus_dead_letter",
             "msgbus_dlq_replay", "msgbus_state_name", "msgbus_state", "msgbus_sub_state",
             "msgbus_set_state_cb", "msgbus_stats_json", "msgbus_stats_free",
             "msgbus_set_stats_cb", "msgbus_receive_batch", "msgbus_sub_pause",
             "msgbus_sub_resume", "msgbus_group_reset", "msgbus_inspect_json", "msgbus_free",
             "msgbus_caps", "msgbus_cap_name", "msgbus_caps_json", "msgbus_max_message_size"}

_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_info: Optional[LibraryInfo] = None


def _source_tree() -> Optional[str]:
    """The source checkout this package was installed from, if known."""
    try:
        from . import _origin  # type: ignore[attr-defined]  # written by setup.py
        root = getattr(_origin, "SOURCE_TREE", None)
    except ImportError:
        root = None
    if not root:
        # Running from the source tree itself (PYTHONPATH=bindings/python/src).
        here = os.path.dirname(os.path.abspath(__file__))
        cand = os.path.normpath(os.path.join(here, "..", "..", "..", ".."))
        if os.path.isfile(os.path.join(cand, "include", "msgbus", "msgbus.h")):
            root = cand
    return root


def _lib_dirs(prefix: str) -> List[str]:
    out = []
    for sub in ("lib", "lib64", "lib/x86_64-linux-gnu", "lib/aarch64-linux-gnu"):
        out.append(os.path.join(prefix, sub))
    out.extend(sorted(glob.glob(os.path.join(prefix, "lib", "*-linux-gnu"))))
    seen, res = set(), []
    for d in out:
        if d not in seen:
            seen.add(d)
            res.append(d)
    return res


def _candidates() -> Tuple[List[Tuple[str, str]], List[str]]:
    """(source, path) pairs to try in order, and notes on places skipped."""
    notes: List[str] = []
    env = os.environ.get("MSGBUS_LIBRARY")
    if env:
        return [("MSGBUS_LIBRARY", env)], notes
    notes.append("$MSGBUS_LIBRARY: not set")
    cands: List[Tuple[str, str]] = []
    # The copy the wheel bundles (setup.py), next to this file.
    bundled = os.path.join(os.path.dirname(os.path.abspath(__file__)), LIBNAME + ".0")
    if os.path.isfile(bundled):
        cands.append(("bundled", bundled))
    else:
        notes.append("bundled: none in this package")
    prefixes = []
    if os.environ.get("MSGBUS_PREFIX"):
        prefixes.append(os.environ["MSGBUS_PREFIX"])
    else:
        notes.append("$MSGBUS_PREFIX: not set")
    prefixes += [sys.prefix, "/usr/local"]
    for p in prefixes:
        for d in _lib_dirs(p):
            cands.append(("install prefix", os.path.join(d, LIBNAME)))
    found = ctypes.util.find_library("msgbus")
    if found:
        cands.append(("install prefix", found))
    else:
        notes.append("dynamic linker search (ldconfig): no libmsgbus")
    bdir = os.environ.get("MSGBUS_BUILD_DIR")
    if bdir:
        cands.append(("build tree", os.path.join(bdir, LIBNAME)))
    else:
        notes.append("$MSGBUS_BUILD_DIR: not set")
    root = _source_tree()
    if root:
        cands.append(("build tree", os.path.join(root, "build", LIBNAME)))
    else:
        notes.append("build tree: the source checkout is unknown")
    return cands, notes


def _declare(lib: ctypes.CDLL) -> None:
    for name, (res, args) in _PROTOTYPES.items():
        try:
            fn = getattr(lib, name)
        except AttributeError:
            if name in _OPTIONAL:
                continue
            raise
        fn.restype = res
        fn.argtypes = args


def load() -> ctypes.CDLL:
    """Loads libmsgbus once (thread-safe) and returns it."""
    global _lib, _info
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is not None:
            return _lib
        cands, notes = _candidates()
        tried: List[str] = []
        for source, path in cands:
            is_name = os.sep not in path  # a bare soname from find_library
            if not is_name and not os.path.exists(path):
                tried.append(f"{source}: {path}: no such file")
                continue
            try:
                lib = ctypes.CDLL(path)
                lib.msgbus_version.restype = c_char_p
                version = lib.msgbus_version().decode()
                _declare(lib)
                from . import _log
                _log.install(lib)  # library log lines go to logging.getLogger("msgbus")
            except (OSError, AttributeError) as e:
                raise LibraryNotFoundError(
                    f"msgbus: found {path} (via {source}) but could not load it: {e}") from e
            if is_name:
                path = _resolve_soname(path) or path
            _lib, _info = lib, LibraryInfo(os.path.realpath(path) if os.sep in path else path,
                                           source, version)
            import logging
            logging.getLogger("msgbus").info("loaded %s", _info)
            return lib
        raise LibraryNotFoundError(
            "msgbus: libmsgbus.so not found. Set MSGBUS_LIBRARY to its path, install msgbus "
            "(cmake --install) or set MSGBUS_BUILD_DIR to a build tree. Tried:\n  "
            + "\n  ".join(notes + tried))


def _resolve_soname(name: str) -> Optional[str]:
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                if name.split(".so")[0] in line and "/" in line:
                    return line[line.index("/"):].strip()
    except OSError:
        pass
    return None


def info() -> LibraryInfo:
    """Loads the library if needed and says which one it is."""
    load()
    assert _info is not None
    return _info


def has(name: str) -> bool:
    return hasattr(load(), name)


__all__ = ["load", "info", "has", "LibraryInfo", "LibraryNotFoundError", "Report",
           "DELIVERY_CB", "LOG_CB", "STATE_CB", "STATS_CB", "StateEvent", "OutboxRelayOpts",
           "OutboxStats", "c_double"]
