"""OpenTelemetry tracing (msgbus.instrument, issue 18) with opentelemetry-sdk's
in-memory exporter: the consumer's span is the child of the producer's on
mem://, Kafka and RabbitMQ, through retries, and across outbox → C relay →
consumer; span names, kinds and attributes follow the messaging semantic
conventions; msgbus imports and runs without opentelemetry."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import msgbus
import msgbus.otel
from conftest import unique
from msgbus import outbox as mboutbox

SYSTEM = {"mem": "msgbus_mem", "kafka": "kafka", "amqp": "rabbitmq"}


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    msgbus.instrument(tracer_provider=provider)
    try:
        yield exporter, provider.get_tracer("app")
    finally:
        msgbus.uninstrument()
        provider.shutdown()


def _recv(sub, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = sub.receive(0.1)
        if m is not None:
            return m
    return None


def _by_name(exporter, name):
    return [s for s in exporter.get_finished_spans() if s.name == name]


def _tp_of(span) -> str:
    c = span.context
    return f"00-{c.trace_id:032x}-{c.span_id:016x}-"


def test_consumer_span_is_child_of_producer_span(url, topic, spans):
    exporter, app = spans
    group = unique("g")
    with msgbus.Bus(url) as bus:
        system = SYSTEM[bus.backend]
        bus.declare(topic, group)
        with app.start_as_current_span("handle request") as outer:
            d = bus.publish(topic, b"payload", key="order-7", headers={"app": "1"})
        d.result(30)
        (send,) = _by_name(exporter, f"send {topic}")  # ended at the confirm
        assert send.kind == SpanKind.PRODUCER
        assert send.parent.span_id == outer.get_span_context().span_id
        assert send.status.status_code == StatusCode.UNSET
        a = send.attributes
        assert a["messaging.system"] == system
        assert a["messaging.destination.name"] == topic
        assert a["messaging.operation.type"] == "send"
        assert a["messaging.operation.name"] == "send"
        assert a["messaging.message.id"] == d.message_id
        assert a["messaging.message.body.size"] == 7
        if system == "kafka":
            assert a["messaging.kafka.message.key"] == "order-7"
        if system != "msgbus_mem":
            assert a["server.address"] == "127.0.0.1" and a["server.port"] > 0
        else:
            assert "server.address" not in a
        with bus.subscribe(topic, group) as sub:
            m = _recv(sub)
            assert m is not None and m.id == d.message_id
            # the context travelled in the headers, next to the application's
            assert m.headers["app"] == "1"
            assert m.headers["traceparent"].startswith(_tp_of(send))
            assert msgbus.otel.span_of(m) is not None
            with msgbus.otel.use_span(m):
                with app.start_as_current_span("business logic"):
                    pass
            assert not _by_name(exporter, f"process {topic}")  # open until settled
            m.ack()
            assert msgbus.otel.span_of(m) is None
    (proc,) = _by_name(exporter, f"process {topic}")
    assert proc.kind == SpanKind.CONSUMER
    assert proc.context.trace_id == send.context.trace_id
    assert proc.parent.span_id == send.context.span_id
    assert [lk.context.span_id for lk in proc.links] == [send.context.span_id]
    a = proc.attributes
    assert a["messaging.system"] == system
    assert a["messaging.destination.name"] == topic
    assert a["messaging.operation.type"] == "process"
    assert a["messaging.consumer.group.name"] == group
    assert a["messaging.message.id"] == d.message_id
    assert a["msgbus.attempt"] == 1 and a["msgbus.settlement"] == "ack"
    assert proc.status.status_code == StatusCode.UNSET
    (logic,) = _by_name(exporter, "business logic")
    assert logic.parent.span_id == proc.context.span_id


def test_retry_and_dead_letter_keep_the_parent(url, topic, spans):
    """A nacked message comes back with the same traceparent: its second
    process span is the producer's child too; nack and dead_letter end
    their spans with status ERROR and the reason."""
    exporter, _ = spans
    group = unique("g")
    with msgbus.Bus(url) as bus:
        bus.declare(topic, group)
        with bus.subscribe(topic, group, options={"retry_initial_ms": 10,
                                                 "retry_jitter": 0}) as sub:
            bus.publish(topic, b"x").result(30)
            m = _recv(sub)
            m.nack(reason="flaky")
            m2 = _recv(sub)
            assert m2 is not None and m2.attempt == 2
            m2.dead_letter("poison")
    (send,) = _by_name(exporter, f"send {topic}")
    procs = sorted(_by_name(exporter, f"process {topic}"),
                   key=lambda s: s.attributes["msgbus.attempt"])
    assert [p.attributes["msgbus.attempt"] for p in procs] == [1, 2]
    assert all(p.parent.span_id == send.context.span_id for p in procs)
    assert [p.attributes["msgbus.settlement"] for p in procs] == ["nack", "dead_letter"]
    assert [p.attributes["msgbus.settlement.reason"] for p in procs] == ["flaky", "poison"]
    assert all(p.status.status_code == StatusCode.ERROR for p in procs)
    assert procs[0].status.description == "flaky"


def test_unsettled_message_span_ends_at_close(mem_url, topic, spans):
    exporter, _ = spans
    with msgbus.Bus(mem_url) as bus:
        bus.declare(topic, "g")
        bus.publish(topic, b"x").result(5)
        sub = bus.subscribe(topic, "g")
        m = _recv(sub)
        assert m is not None
    (proc,) = _by_name(exporter, f"process {topic}")
    assert proc.attributes["msgbus.settlement"] == "none"


def test_failed_delivery_span_is_error(mem_url, topic, spans):
    """A publish refused at the call ends its span at once, status ERROR."""
    exporter, _ = spans
    with msgbus.Bus(mem_url + "?max_message_bytes=100") as bus:
        with pytest.raises(msgbus.TooLargeError):
            bus.publish(topic, b"x" * 1000)
    (send,) = _by_name(exporter, f"send {topic}")
    assert send.status.status_code == StatusCode.ERROR
    assert any(e.name == "exception" for e in send.events)


def test_outbox_relay_consumer_chain(url, topic, spans, tmp_path):
    """outbox.put inside the application's transaction makes a "create" span
    and writes its context into the row; the C relay publishes the row with
    its headers; the consumer's span is the create span's child."""
    exporter, app = spans
    path = str(tmp_path / "app.db")
    conn = sqlite3.connect(path)
    mboutbox.create_table(conn)
    group = unique("g")
    with app.start_as_current_span("place order") as outer:
        mid = mboutbox.put(conn, topic, b"{}", key="o-1", headers={"app": "2"})
    conn.commit()
    (create,) = _by_name(exporter, f"create {topic}")
    assert create.kind == SpanKind.PRODUCER
    assert create.parent.span_id == outer.get_span_context().span_id
    assert create.attributes["messaging.operation.type"] == "create"
    assert create.attributes["messaging.message.id"] == mid
    assert create.attributes["messaging.system"] == "msgbus_outbox"
    assert create.attributes["msgbus.outbox.table"] == "msgbus_outbox"
    row = conn.execute("SELECT headers FROM msgbus_outbox").fetchone()[0]
    assert _tp_of(create) in row and '"app":"2"' in row
    with msgbus.Bus(url) as bus:
        bus.declare(topic, group)
        with bus.subscribe(topic, group) as sub, mboutbox.Relay.sqlite(path, bus) as relay:
            assert relay.run_once(100, 30) == 1
            m = _recv(sub)
            assert m is not None and m.id == mid and m.headers["app"] == "2"
            m.ack()
    conn.close()
    (proc,) = _by_name(exporter, f"process {topic}")
    assert proc.context.trace_id == outer.get_span_context().trace_id
    assert proc.parent.span_id == create.context.span_id
    # the relay publishes in C: no Python send span in between
    assert not _by_name(exporter, f"send {topic}")


def test_outbox_put_error_ends_span_with_error(tmp_path, topic, spans):
    exporter, _ = spans
    conn = sqlite3.connect(str(tmp_path / "x.db"))
    with pytest.raises(msgbus.StoreError):
        mboutbox.put(conn, topic, b"x", table="missing_table")
    (create,) = _by_name(exporter, f"create {topic}")
    assert create.status.status_code == StatusCode.ERROR
    conn.close()


def test_not_instrumented_headers_untouched(mem_url, topic):
    """Without instrument(): no span, no header added; a traceparent the
    application sets itself travels unchanged."""
    assert not msgbus.otel.is_instrumented()
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with msgbus.Bus(mem_url) as bus:
        bus.declare(topic, "g")
        bus.publish(topic, b"a").result(5)
        bus.publish(topic, b"b", headers={"traceparent": tp, "tracestate": "k=v"}).result(5)
        with bus.subscribe(topic, "g") as sub:
            a, b = _recv(sub), _recv(sub)
            assert "traceparent" not in a.headers
            assert (b.headers["traceparent"], b.headers["tracestate"]) == (tp, "k=v")
            assert msgbus.otel.span_of(b) is None
            a.ack()
            b.ack()


def test_instrument_with_a_custom_propagator(mem_url, topic):
    """instrument(propagator=…) injects and extracts with it instead of the
    global W3C one."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    class Recording:
        fields = {"x-ctx"}

        def __init__(self):
            self.injected = 0

        def inject(self, carrier, context=None, setter=None):
            self.injected += 1
            carrier["x-ctx"] = "1"

        def extract(self, carrier, context=None, getter=None):
            from opentelemetry.context import Context
            return Context()

    prop = Recording()
    msgbus.instrument(tracer_provider=provider, propagator=prop)
    try:
        with msgbus.Bus(mem_url) as bus:
            bus.declare(topic, "g")
            bus.publish(topic, b"a").result(5)
            with bus.subscribe(topic, "g") as sub:
                m = _recv(sub)
                assert m.headers["x-ctx"] == "1" and "traceparent" not in m.headers
                m.ack()
    finally:
        msgbus.uninstrument()
    assert prop.injected == 1
    (proc,) = _by_name(exporter, f"process {topic}")
    assert proc.parent is None  # the propagator found no context


def test_msgbus_works_without_opentelemetry(mem_url):
    """opentelemetry is optional: blocked at import, msgbus still imports and
    runs; instrument() says what to install."""
    code = f"""
        import sys
        sys.modules["opentelemetry"] = None  # as if not installed
        import msgbus
        with msgbus.Bus({mem_url!r}) as bus:
            bus.declare("t", "g")
            bus.publish("t", b"x").result(5)
            with bus.subscribe("t", "g") as sub:
                m = sub.receive(5)
                assert "traceparent" not in m.headers
                m.ack()
        try:
            msgbus.instrument()
        except ImportError as e:
            print("ImportError:", e)
    """
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                       text=True, timeout=60, env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    assert "ImportError: msgbus tracing needs opentelemetry-api" in r.stdout, r.stdout
    assert "msgbus[otel]" in r.stdout


def test_spans_started_before_uninstrument_still_end(mem_url, topic, spans):
    exporter, _ = spans
    with msgbus.Bus(mem_url) as bus:
        bus.declare(topic, "g")
        d = bus.publish(topic, b"x")
        with bus.subscribe(topic, "g") as sub:
            m = _recv(sub)  # its process span is open
            msgbus.uninstrument()
            d.result(5)
            m.ack()
            bus.publish(topic, b"y").result(5)  # not traced any more
            m2 = _recv(sub)
            assert "traceparent" not in m2.headers and msgbus.otel.span_of(m2) is None
            m2.ack()
    assert len(_by_name(exporter, f"send {topic}")) == 1
    (proc,) = _by_name(exporter, f"process {topic}")
    assert proc.attributes["msgbus.settlement"] == "ack"
