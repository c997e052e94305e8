"""OpenTelemetry tracing of msgbus, turned on by :func:`msgbus.instrument`.

Spans follow the OpenTelemetry messaging semantic conventions (1.27 and
later, the ``messaging.operation.type`` / ``messaging.consumer.group.name``
generation):

* ``send <topic>`` — PRODUCER, one per :meth:`Bus.publish`, from the call to
  the broker's confirm (its status is ERROR when the delivery failed).
* ``create <topic>`` — PRODUCER, one per :func:`msgbus.outbox.put`, around
  the INSERT (the relay, in C, publishes the row later with its headers).
* ``process <topic>`` — CONSUMER, one per message a subscription receives,
  from ``receive`` until it is acked, nacked or dead-lettered (or freed
  unsettled); its parent is the producer's span, read from the message's
  ``traceparent``/``tracestate`` headers, and it links to it as well.

The producer spans write their context into the message headers through
the propagator (OpenTelemetry's global one by default: W3C trace context
and baggage), so the chain holds across every path msgbus carries headers
on (outbox rows, retries, dead letters, ``dlq replay``).

Needs ``opentelemetry-api`` (the ``otel`` extra); ``import msgbus`` works
without it and this module is only imported by :func:`msgbus.instrument`.
"""
from __future__ import annotations

import contextlib
from ctypes import byref, c_size_t
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import Link, SpanKind, Status, StatusCode
except ImportError as e:  # pragma: no cover - tested in a subprocess
    raise ImportError("msgbus tracing needs opentelemetry-api: "
                      "pip install 'msgbus[otel]' (or opentelemetry-api)") from e

from . import _core, _lib
from .errors import check

SCHEMA_URL = "https://opentelemetry.io/schemas/1.27.0"

# msgbus_backend() → messaging.system (the conventions' names where they
# have one; mem:// is msgbus's own)
SYSTEMS = {"kafka": "kafka", "amqp": "rabbitmq", "mem": "msgbus_mem"}
OUTBOX_SYSTEM = "msgbus_outbox"


def _server(url: str) -> Tuple[Optional[str], Optional[int]]:
    """server.address / server.port of a (redacted) bus URL: its first host."""
    if "://" not in url:
        return None, None
    rest = url.split("://", 1)[1]
    for sep in "?/":
        rest = rest.split(sep, 1)[0]
    rest = rest.rsplit("@", 1)[-1].split(",", 1)[0]
    if not rest:
        return None, None
    host, port = rest, None
    if rest.startswith("["):  # [v6]:port
        end = rest.find("]")
        host = rest[1:end] if end > 0 else rest
        tail = rest[end + 1:] if end > 0 else ""
        if tail.startswith(":") and tail[1:].isdigit():
            port = int(tail[1:])
    elif rest.count(":") == 1:
        h, p = rest.split(":")
        host = h
        port = int(p) if p.isdigit() else None
    return (host or None), port


def _bus_attrs(bus: Any) -> Dict[str, Any]:
    attrs = bus._otel_attrs
    if attrs is None:
        backend = bus.backend
        attrs = {"messaging.system": SYSTEMS.get(backend, f"msgbus_{backend}")}
        if backend != "mem":
            host, port = _server(bus.url)
            if host:
                attrs["server.address"] = host
            if port is not None:
                attrs["server.port"] = port
        bus._otel_attrs = attrs
    return attrs


def _key_text(key: Any) -> Optional[str]:
    if key is None:
        return None
    if isinstance(key, str):
        return key
    try:
        return bytes(key).decode("utf-8")
    except (UnicodeDecodeError, TypeError):
        return None


class _Tracer:
    """What _core and outbox call while instrumented (see _core._tracer)."""

    def __init__(self, tracer: Any, propagator: Any):
        self.tracer = tracer
        self.propagator = propagator

    def _inject(self, span: Any) -> Dict[str, str]:
        carrier: Dict[str, str] = {}
        ctx = trace.set_span_in_context(span)
        if self.propagator is not None:
            self.propagator.inject(carrier, context=ctx)
        else:
            propagate.inject(carrier, context=ctx)
        return carrier

    def _extract(self, headers: Mapping[str, str]) -> Any:
        if self.propagator is not None:
            return self.propagator.extract(headers)
        return propagate.extract(headers)

    # -- publish
    def publish(self, bus: Any, topic: str, m: int, msg_id: str, payload: Any,
                key: Any) -> Any:
        lib = _lib.load()
        size = c_size_t()
        lib.msgbus_msg_payload(m, byref(size))
        attrs = dict(_bus_attrs(bus))
        attrs.update({"messaging.operation.type": "send", "messaging.operation.name": "send",
                      "messaging.destination.name": topic, "messaging.message.id": msg_id,
                      "messaging.message.body.size": size.value})
        if attrs["messaging.system"] == "kafka":
            k = _key_text(key)
            if k is not None:
                attrs["messaging.kafka.message.key"] = k
        span = self.tracer.start_span(f"send {topic}", kind=SpanKind.PRODUCER,
                                      attributes=attrs)
        try:
            for name, value in self._inject(span).items():
                check(lib.msgbus_msg_set_header(m, name.encode(), value.encode()))
        except BaseException:
            span.end()
            raise
        return span

    def publish_failed(self, span: Any, exc: BaseException) -> None:
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        span.end()

    def confirmed(self, span: Any, exc: Optional[BaseException]) -> None:
        if exc is not None:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        span.end()

    # -- outbox
    def outbox_put(self, topic: str, msg_id: str, size: int, key: Any,
                   store: str, table: str) -> Tuple[Any, Dict[str, str]]:
        attrs: Dict[str, Any] = {
            "messaging.system": OUTBOX_SYSTEM, "messaging.operation.type": "create",
            "messaging.operation.name": "create", "messaging.destination.name": topic,
            "messaging.message.id": msg_id, "messaging.message.body.size": size,
            "msgbus.outbox.store": store, "msgbus.outbox.table": table}
        span = self.tracer.start_span(f"create {topic}", kind=SpanKind.PRODUCER,
                                      attributes=attrs)
        try:
            return span, self._inject(span)
        except BaseException:
            span.end()
            raise

    def outbox_done(self, span: Any, exc: Optional[BaseException]) -> None:
        self.confirmed(span, exc)

    # -- consume
    def received(self, bus: Any, m: Any) -> Any:
        parent = self._extract(m.headers)
        pctx = trace.get_current_span(parent).get_span_context()
        attrs = dict(_bus_attrs(bus))
        attrs.update({"messaging.operation.type": "process",
                      "messaging.operation.name": "process",
                      "messaging.destination.name": m.topic or "",
                      "messaging.message.body.size": len(m.payload),
                      "msgbus.attempt": m.attempt})
        if m.id:
            attrs["messaging.message.id"] = m.id
        if m.group is not None:
            attrs["messaging.consumer.group.name"] = m.group
        if attrs["messaging.system"] == "kafka":
            k = _key_text(m.key)
            if k is not None:
                attrs["messaging.kafka.message.key"] = k
        return self.tracer.start_span(f"process {m.topic}", context=parent,
                                      kind=SpanKind.CONSUMER, attributes=attrs,
                                      links=[Link(pctx)] if pctx.is_valid else None)

    def settled(self, m: Any, span: Any, how: str, reason: Optional[str],
                exc: Optional[BaseException]) -> None:
        span.set_attribute("msgbus.settlement", how)
        if reason:
            span.set_attribute("msgbus.settlement.reason", reason)
        if exc is not None:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{how} failed: {exc}"))
        elif how in ("nack", "dead_letter"):
            span.set_status(Status(StatusCode.ERROR, reason or how))
        span.end()


def instrument(tracer_provider: Any = None, propagator: Any = None) -> None:
    """See :func:`msgbus.instrument`. Calling it again replaces the tracer."""
    from . import __version__
    tracer = trace.get_tracer("msgbus", __version__, tracer_provider=tracer_provider,
                              schema_url=SCHEMA_URL)
    t = _Tracer(tracer, propagator)
    _core._span_ops = t  # before _tracer: a span started must find what ends it
    _core._tracer = t


def uninstrument() -> None:
    """See :func:`msgbus.uninstrument`."""
    _core._tracer = None


def is_instrumented() -> bool:
    return _core._tracer is not None


def span_of(message: Any) -> Any:
    """The ``process`` span of a received message while it is unsettled
    (None when tracing was off at receipt, or once settled)."""
    return getattr(message, "_span", None)


@contextlib.contextmanager
def use_span(message: Any) -> Iterator[Any]:
    """Makes the message's ``process`` span the current span inside the
    ``with`` block, so spans the handler starts are its children. The span
    still ends when the message is settled (inside or after the block)."""
    span = span_of(message)
    if span is None:
        yield None
        return
    with trace.use_span(span, end_on_exit=False):
        yield span


__all__ = ["instrument", "uninstrument", "is_instrumented", "span_of", "use_span",
           "SYSTEMS", "OUTBOX_SYSTEM"]
