"""msgbus messages are CloudEvents to the real CloudEvents SDK, and the SDK's
events are msgbus messages — on Kafka and RabbitMQ, both ways, through the
brokers, with the stock clients in between (docs/interop.md, issue 21).

Peers (pinned in scripts/test-python): cloudevents 2.2.0 (its Kafka, AMQP
and RabbitMQ bindings and JSON format decide what a valid CloudEvent is),
confluent-kafka and pika to read and write the raw records.

- msgbus → SDK: a message msgbus published, read raw (confluent-kafka /
  pika basic_get) and decoded by the SDK's from_binary / from_structured,
  is a valid CloudEvent with msgbus's id, type (the topic by default, or
  the one set), source (ce_source, the host default, or the message's
  own), time (the msgbus timestamp), subject and datacontenttype.
- SDK → msgbus: the SDK's to_binary / to_structured events, produced raw,
  arrive in msgbus with the event's id (a MemoryInbox claims them), type,
  source, subject, time and data; on RabbitMQ also with the cloudEvents:
  prefix and the SDK's RabbitMQ (knative, ce-) binding.
- string-only readers: every header of a msgbus AMQP message — a first
  delivery, a retry copy and a dead letter — is an AMQP string, as
  Watermill's unmarshaler requires.
"""
from __future__ import annotations

import base64
import datetime as dt
import json
import socket
import time
import urllib.parse
from typing import Any, Dict, List, Optional, Tuple

import confluent_kafka
import pika
import pytest
from cloudevents.core.bindings import amqp as ce_amqp
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.bindings import rabbitmq as ce_rabbitmq
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

import msgbus
from msgbus.inbox import MemoryInbox
from conftest import figure, need_url, unique

FMT = JSONFormat()
UTC = dt.timezone.utc
# A fixed msgbus timestamp with milliseconds, so that "time" is checkable
# to the millisecond (2026-12-07T08:00:00.123Z).
TS = 1796630400123
TS_TIME = dt.datetime(2026, 12, 7, 8, 0, 0, 123000, tzinfo=UTC)
assert int(TS_TIME.timestamp() * 1000) == TS


def with_opts(url: str, **opts: str) -> str:
    q = urllib.parse.urlencode(opts, safe="/:")
    return f"{url}{'&' if '?' in url else '?'}{q}"


def ms(t: dt.datetime) -> int:
    return round(t.timestamp() * 1000)


# ------------------------------------------------------------ raw clients


def kafka_bootstrap(url: str) -> str:
    assert url.startswith("kafka://"), url
    return url[len("kafka://"):].split("?", 1)[0]


def kafka_read_raw(url: str, topic: str, n: int, timeout: float = 30.0) -> List[Any]:
    """n records of `topic` as confluent-kafka returns them (a fresh group
    from the beginning)."""
    c = confluent_kafka.Consumer({"bootstrap.servers": kafka_bootstrap(url),
                                  "group.id": unique("raw"), "auto.offset.reset": "earliest",
                                  "enable.auto.commit": False})
    out: List[Any] = []
    try:
        c.subscribe([topic])
        deadline = time.monotonic() + timeout
        while len(out) < n and time.monotonic() < deadline:
            r = c.poll(0.2)
            if r is None:
                continue
            assert r.error() is None, r.error()
            out.append(r)
    finally:
        c.close()
    assert len(out) == n, f"{len(out)} of {n} records read from {topic}"
    return out


def kafka_message(r: Any) -> ce_kafka.KafkaMessage:
    """The SDK's view of a confluent-kafka record (header names must be
    unique for it: a dict)."""
    hs = r.headers() or []
    names = [h for h, _ in hs]
    assert len(names) == len(set(names)), f"repeated Kafka headers: {names}"
    return ce_kafka.KafkaMessage(headers={h: v for h, v in hs}, key=r.key(), value=r.value())


def kafka_produce_raw(url: str, topic: str, msgs: List[ce_kafka.KafkaMessage]) -> None:
    p = confluent_kafka.Producer({"bootstrap.servers": kafka_bootstrap(url), "acks": "all"})
    errors: List[Any] = []
    for m in msgs:
        p.produce(topic, value=m.value, key=m.key, headers=list(m.headers.items()),
                  on_delivery=lambda err, _msg: errors.append(err) if err else None)
    assert p.flush(30) == 0, "confluent-kafka: records not delivered in 30 s"
    assert not errors, errors


def amqp_params(url: str) -> pika.URLParameters:
    return pika.URLParameters(url.split("?", 1)[0])


def amqp_get_raw(url: str, queue: str, n: int,
                 timeout: float = 30.0) -> List[Tuple[Any, pika.BasicProperties, bytes]]:
    """n messages taken (and acked) from `queue` with basic.get."""
    out: List[Tuple[Any, pika.BasicProperties, bytes]] = []
    conn = pika.BlockingConnection(amqp_params(url))
    try:
        ch = conn.channel()
        deadline = time.monotonic() + timeout
        while len(out) < n and time.monotonic() < deadline:
            method, props, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                conn.sleep(0.1)
                continue
            out.append((method, props, body))
    finally:
        conn.close()
    assert len(out) == n, f"{len(out)} of {n} messages in queue {queue}"
    return out


def amqp_message(props: pika.BasicProperties, body: bytes) -> ce_amqp.AMQPMessage:
    """The SDK's AMQP view of a pika delivery: basic properties as AMQP
    properties, the headers table as application properties."""
    p = {"content-type": props.content_type} if props.content_type else {}
    return ce_amqp.AMQPMessage(properties=p, application_properties=dict(props.headers or {}),
                               application_data=body)


def amqp_publish_raw(url: str, exchange: str,
                     msgs: List[Tuple[str, Dict[str, Any], Optional[str], bytes]]) -> None:
    """(routing key, headers, content type, body) to `exchange`, confirmed."""
    conn = pika.BlockingConnection(amqp_params(url))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        for rk, headers, ctype, body in msgs:
            ch.basic_publish(exchange, rk, body,
                             pika.BasicProperties(headers=headers, content_type=ctype,
                                                  delivery_mode=2),
                             mandatory=True)
    finally:
        conn.close()


def receive_all(sub: msgbus.Subscription, n: int, timeout: float = 30.0) -> List[msgbus.Message]:
    out: List[msgbus.Message] = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        m = sub.receive(0.2)
        if m is not None:
            out.append(m)
    assert len(out) == n, f"{len(out)} of {n} messages received"
    return out


# ------------------------------------------------- what msgbus publishes


def publish_three(url: str, topic: str, declare_group: Optional[str]) -> Dict[str, Dict[str, Any]]:
    """Three messages that cover the attributes: (a) type/source/subject set,
    JSON data, the fixed timestamp; (b) the defaults on a bus with
    ce_source (type = the topic), bytes; (c) the defaults on a bus without
    (source //HOST/PROGRAM), text, the time msgbus takes. Returns what each
    must decode to, by payload."""
    want: Dict[str, Dict[str, Any]] = {}
    with msgbus.Bus(url) as bus:
        if declare_group:
            bus.declare(topic, declare_group)
        d = bus.publish(topic, b'{"order": 42, "total": "9.90"}', key=b"k1",
                        headers={"content-type": "application/json", "ce_tenant": "acme"},
                        timestamp=TS, type="com.example.order.created",
                        source="//shop/orders", subject="order/42 é")
        want["a"] = dict(id=d.message_id, type="com.example.order.created",
                         source="//shop/orders", subject="order/42 é", time=TS,
                         datacontenttype="application/json",
                         data={"order": 42, "total": "9.90"}, tenant="acme", key="k1")
        bus.flush(30)
    with msgbus.Bus(with_opts(url, ce_source="//interop21/tests")) as bus:
        d = bus.publish(topic, b"\x00\x01\xfe\xffraw", key=b"k1", timestamp=TS + 1)
        want["b"] = dict(id=d.message_id, type=topic, source="//interop21/tests", subject=None,
                         time=TS + 1, datacontenttype=None, data=b"\x00\x01\xfe\xffraw",
                         key="k1")
        bus.flush(30)
    with msgbus.Bus(url) as bus:
        before = int(time.time() * 1000)
        d = bus.publish(topic, "plain text, no content type", key=b"k1")
        want["c"] = dict(id=d.message_id, type=topic, source=f"//{socket.gethostname()}/",
                         subject=None, time=(before, int(time.time() * 1000) + 1),
                         datacontenttype=None, data="plain text, no content type", key="k1")
        bus.flush(30)
    return want


def check_event(ev: Any, w: Dict[str, Any], what: str) -> None:
    """The SDK's event `ev` carries what msgbus published (`w`)."""
    assert isinstance(ev, CloudEvent), (what, type(ev))
    assert ev.get_specversion() == "1.0", what
    assert ev.get_id() == w["id"], (what, ev.get_id(), w["id"])
    assert ev.get_type() == w["type"], (what, ev.get_type())
    if w["source"].endswith("/") and w["source"].startswith("//"):  # host default
        assert ev.get_source().startswith(w["source"]) and len(ev.get_source()) > len(w["source"]), \
            (what, ev.get_source())
    else:
        assert ev.get_source() == w["source"], (what, ev.get_source())
    assert ev.get_subject() == w["subject"], (what, ev.get_subject())
    t = ev.get_time()
    assert t is not None and t.tzinfo is not None, (what, t)
    if isinstance(w["time"], tuple):
        assert w["time"][0] <= ms(t) <= w["time"][1], (what, t, w["time"])
    else:
        assert ms(t) == w["time"], (what, t, w["time"])
    assert ev.get_datacontenttype() == w["datacontenttype"], (what, ev.get_datacontenttype())
    assert ev.get_data() == w["data"], (what, ev.get_data())
    if "tenant" in w:
        assert ev.get_extension("tenant") == w["tenant"], (what, ev.get_attributes())


def by_payload_name(payload: bytes) -> str:
    """Which of publish_three's messages a payload is."""
    for prefix, name in ((b'{"order"', "a"), (b"\x00\x01\xfe\xff", "b"), (b"plain te", "c")):
        if payload.startswith(prefix):
            return name
    raise AssertionError(f"not one of publish_three's payloads: {payload!r}")


def test_msgbus_to_sdk_kafka_binary():
    url, topic = need_url("kafka"), unique("ce-k")
    want = publish_three(url, topic, None)
    recs = kafka_read_raw(url, topic, 3)
    for r in recs:
        name = by_payload_name(r.value())
        w = want[name]
        km = kafka_message(r)
        ev = ce_kafka.from_binary(km, FMT)
        check_event(ev, w, f"kafka binary {name}")
        assert ce_kafka.from_kafka(km, FMT).get_id() == w["id"]  # detected as binary
        assert ev.get_extension("partitionkey") == w["key"]
        # The binding's headers, byte for byte where msgbus chose them.
        h = km.headers
        assert h["ce_specversion"] == b"1.0" and h["ce_id"] == w["id"].encode(), h
        assert "ce_datacontenttype" not in h, h  # the binding says content-type
        # time is the record's own timestamp too (CreateTime = msgbus's)
        tstype, tsval = r.timestamp()
        assert tstype == confluent_kafka.TIMESTAMP_CREATE_TIME and ms(ev.get_time()) == tsval, \
            (name, r.timestamp(), ev.get_time())
    figure(f"cloudevents kafka binary: 3 msgbus records decoded by the SDK (topic {topic})")


def test_msgbus_to_sdk_kafka_structured():
    url, topic = need_url("kafka"), unique("ce-ks")
    want = publish_three(with_opts(url, cloudevents="structured"), topic, None)
    recs = kafka_read_raw(url, topic, 3)
    for r in recs:
        km = kafka_message(r)
        assert km.headers.get("content-type") == b"application/cloudevents+json", km.headers
        assert not [h for h in km.headers if h.startswith("ce_")], km.headers
        assert r.key() == b"k1"
        ev = ce_kafka.from_structured(km, FMT)
        assert ce_kafka.from_kafka(km, FMT).get_id() == ev.get_id()  # detected as structured
        name = {"com.example.order.created": "a"}.get(ev.get_type()) or \
            ("b" if isinstance(ev.get_data(), bytes) else "c")
        check_event(ev, want[name], f"kafka structured {name}")
        raw = json.loads(r.value())
        if name == "b":  # bytes travel as data_base64
            assert base64.b64decode(raw["data_base64"]) == want["b"]["data"], raw
        if name == "a":  # JSON data is JSON, not a string
            assert raw["data"] == want["a"]["data"] and raw["tenant"] == "acme", raw
    figure(f"cloudevents kafka structured: 3 msgbus records decoded by the SDK")


def test_msgbus_to_sdk_amqp_binary():
    url, topic, group = need_url("amqp"), unique("ce-a"), unique("g")
    want = publish_three(url, topic, group)
    got = amqp_get_raw(url, f"{topic}.{group}", 3)
    for method, props, body in got:
        name = by_payload_name(body)
        w = want[name]
        am = amqp_message(props, body)
        ev = ce_amqp.from_binary(am, FMT)
        check_event(ev, w, f"amqp binary {name}")
        assert ce_amqp.from_amqp(am, FMT).get_id() == w["id"]
        h = props.headers
        assert h["cloudEvents_specversion"] == "1.0" and h["cloudEvents_id"] == w["id"], h
        assert props.message_id == w["id"], props
        assert method.routing_key == w["key"], method
        # RFC 3339 text, not an AMQP timestamp: readers that know only
        # strings (Watermill) keep working.
        assert isinstance(h["cloudEvents_time"], str), h
        # The old prefix is not written any more.
        assert not [k for k in h if k.startswith("cloudEvents:")], h
    figure(f"cloudevents amqp binary: 3 msgbus messages decoded by the SDK (queue {topic}.{group})")


def test_msgbus_to_sdk_amqp_structured():
    url, topic, group = need_url("amqp"), unique("ce-as"), unique("g")
    want = publish_three(with_opts(url, cloudevents="structured"), topic, group)
    got = amqp_get_raw(url, f"{topic}.{group}", 3)
    for method, props, body in got:
        assert props.content_type == "application/cloudevents+json", props
        assert not [k for k in (props.headers or {}) if k.lower().startswith(("cloudevents", "ce-"))], \
            props.headers
        am = amqp_message(props, body)
        ev = ce_amqp.from_structured(am, FMT)
        assert ce_amqp.from_amqp(am, FMT).get_id() == ev.get_id()
        name = {"com.example.order.created": "a"}.get(ev.get_type()) or \
            ("b" if isinstance(ev.get_data(), bytes) else "c")
        check_event(ev, want[name], f"amqp structured {name}")
        assert props.message_id == want[name]["id"], props  # the backend's own id too
    figure("cloudevents amqp structured: 3 msgbus messages decoded by the SDK")


# ------------------------------------------------- what the SDK publishes


def sdk_events(tag: str) -> List[CloudEvent]:
    """(1) JSON data with every attribute and an extension, (2) text data,
    (3) bytes data (data_base64 in structured mode)."""
    t = TS_TIME
    return [
        CloudEvent({"id": f"{tag}-1-{unique('e')}", "source": "//sdk/orders",
                    "type": "com.example.sdk.created", "subject": "order/7",
                    "time": t, "datacontenttype": "application/json", "tenant": "acme"},
                   {"order": 7, "items": ["a", "b"]}),
        CloudEvent({"id": f"{tag}-2-{unique('e')}", "source": "urn:sdk:text",
                    "type": "com.example.sdk.text", "time": t + dt.timedelta(milliseconds=1),
                    "datacontenttype": "text/plain"}, "héllo"),
        CloudEvent({"id": f"{tag}-3-{unique('e')}", "source": "//sdk/bytes",
                    "type": "com.example.sdk.bytes", "time": t + dt.timedelta(milliseconds=2)},
                   b"\x00\xffbin"),
    ]


def check_received(m: msgbus.Message, ev: CloudEvent, what: str,
                   inbox: MemoryInbox) -> None:
    """msgbus's message `m` is the SDK's event `ev`."""
    assert m.id == ev.get_id(), (what, m.id, m.headers)
    assert inbox.claim(m) is True, (what, "the inbox refused the first delivery")
    assert m.type == ev.get_type(), (what, m.type)
    assert m.source == ev.get_source(), (what, m.source)
    assert m.subject == ev.get_subject(), (what, m.subject)
    assert m.timestamp == ms(ev.get_time()), (what, m.timestamp, ev.get_time())
    ct = ev.get_datacontenttype()
    data = ev.get_data()
    if isinstance(data, dict):
        assert json.loads(m.payload) == data, (what, m.payload)
        assert m.headers.get("content-type") == ct, (what, m.headers)
    elif isinstance(data, str):
        assert m.payload == data.encode(), (what, m.payload)
        assert m.headers.get("content-type") == ct, (what, m.headers)
    else:
        assert m.payload == data, (what, m.payload)
    if ev.get_extension("tenant") is not None:
        assert m.headers.get("ce_tenant") == "acme", (what, m.headers)
    # No attribute is left behind as a header under a binding's prefix
    # (extensions are ce_<name> on every backend).
    left = [h for h in m.headers
            if h.lower().startswith(("cloudevents", "ce-")) or
            h in ("ce_id", "ce_type", "ce_source", "ce_time", "ce_specversion", "ce_subject")]
    assert not left, (what, m.headers)
    assert "msgbus-invalid-cloudevent" not in m.headers, (what, m.headers)
    assert "msgbus-invalid-id" not in m.headers, (what, m.headers)


def test_sdk_to_msgbus_kafka():
    url, topic, group = need_url("kafka"), unique("ce-sk"), unique("g")
    binary, structured = sdk_events("kb"), sdk_events("ks")
    msgs = [ce_kafka.to_binary(e, FMT) for e in binary] + \
        [ce_kafka.to_structured(e, FMT) for e in structured]
    assert msgs[0].headers["ce_time"] == b"2026-12-07T08:00:00.123000Z", msgs[0].headers
    with msgbus.Bus(url) as bus:
        bus.declare(topic, group)
        kafka_produce_raw(url, topic, msgs)
        inbox = MemoryInbox("interop21")
        try:
            with bus.subscribe(topic, group, options={"start": "earliest"}) as sub:
                got = {m.id: m for m in receive_all(sub, len(msgs))}
                for mode, evs in (("binary", binary), ("structured", structured)):
                    for ev in evs:
                        assert ev.get_id() in got, (mode, ev.get_id(), sorted(got))
                        check_received(got[ev.get_id()], ev, f"kafka {mode} {ev.get_type()}", inbox)
                for m in got.values():
                    assert inbox.claim(m) is False  # a second delivery is a duplicate
                    m.ack()
        finally:
            inbox.close()
    figure(f"cloudevents kafka: {len(msgs)} SDK events (binary, structured) received by msgbus")


def test_sdk_to_msgbus_amqp():
    url, topic, group = need_url("amqp"), unique("ce-sa"), unique("g")
    b, s, colon, rb, rs = (sdk_events(t) for t in ("ab", "as", "ac", "rb", "rs"))
    raw: List[Tuple[str, Dict[str, Any], Optional[str], bytes]] = []
    for e in b:  # the AMQP binding: cloudEvents_*, time as an AMQP integer (ms)
        am = ce_amqp.to_binary(e, FMT)
        assert isinstance(am.application_properties["cloudEvents_time"], int)
        raw.append(("k", am.application_properties, am.properties.get("content-type"),
                    am.application_data))
    for e in s:
        am = ce_amqp.to_structured(e, FMT)
        raw.append(("k", am.application_properties, am.properties.get("content-type"),
                    am.application_data))
    for e in colon:  # the prefix the spec text names, time as RFC 3339 text
        am = ce_amqp.to_binary(e, FMT)
        hs = {k.replace("cloudEvents_", "cloudEvents:", 1): v
              for k, v in am.application_properties.items()}
        hs["cloudEvents:time"] = e.get_time().isoformat().replace("+00:00", "Z")
        raw.append(("k", hs, am.properties.get("content-type"), am.application_data))
    for e in rb:  # the SDK's RabbitMQ (knative) binding: ce-* strings
        rm = ce_rabbitmq.to_binary(e, FMT)
        raw.append(("k", dict(rm.headers), rm.content_type, rm.body))
    for e in rs:
        rm = ce_rabbitmq.to_structured(e, FMT)
        raw.append(("k", dict(rm.headers), rm.content_type, rm.body))
    with msgbus.Bus(url) as bus:
        bus.declare(topic, group)
        amqp_publish_raw(url, topic, raw)
        inbox = MemoryInbox("interop21")
        try:
            with bus.subscribe(topic, group) as sub:
                got = {m.id: m for m in receive_all(sub, len(raw))}
                for mode, evs in (("amqp binary", b), ("amqp structured", s),
                                  ("amqp cloudEvents:", colon), ("rabbitmq ce-", rb),
                                  ("rabbitmq structured", rs)):
                    for ev in evs:
                        assert ev.get_id() in got, (mode, ev.get_id(), sorted(got))
                        check_received(got[ev.get_id()], ev, f"{mode} {ev.get_type()}", inbox)
                for m in got.values():
                    m.ack()
        finally:
            inbox.close()
    figure(f"cloudevents amqp: {len(raw)} SDK events (AMQP binary/structured, cloudEvents:, "
           f"RabbitMQ ce-/structured) received by msgbus")


# --------------------------------------------- string-only AMQP readers


def assert_all_strings(props: pika.BasicProperties, what: str) -> Dict[str, Any]:
    h = dict(props.headers or {})
    bad = {k: (type(v).__name__, v) for k, v in h.items() if not isinstance(v, str)}
    assert not bad, f"{what}: headers that are not AMQP strings: {bad}"
    return h


def test_amqp_headers_are_strings_for_string_only_readers():
    """Watermill's AMQP unmarshaler nacks forever a message with a header
    that is not a string; pika shows each header's AMQP type as a Python
    type (str for a long string). A first delivery, an empty key (which
    rides in msgbus-key), a retry copy (msgbus-attempt) and a dead letter
    (msgbus-dlq-*): every header is a string."""
    url, topic, group = need_url("amqp"), unique("ce-str"), unique("g")
    with msgbus.Bus(url) as bus:
        bus.declare(topic, group)
        bus.declare(f"{topic}.dlq", "dlq")
        bus.publish(topic, b"first", key=b"k", headers={"content-type": "text/plain", "n": "1"},
                    subject="s-1", timestamp=TS)
        bus.publish(topic, b"empty key", key=b"")
        bus.flush(30)
        got = amqp_get_raw(url, f"{topic}.{group}", 2)
        seen: Dict[str, Any] = {}
        for _, props, body in got:
            h = assert_all_strings(props, f"first delivery {body!r}")
            seen.update(h)
        assert {"cloudEvents_specversion", "cloudEvents_id", "cloudEvents_type",
                "cloudEvents_source", "cloudEvents_time", "msgbus-timestamp-ms",
                "msgbus-key", "n"} <= set(seen), sorted(seen)

        # A retry copy and a dead letter, published by msgbus itself.
        bus.publish(topic, b"retry me", key=b"k")
        bus.publish(topic, b"dead", key=b"k")
        bus.flush(30)
        with bus.subscribe(topic, group, options={"retry_initial_ms": 200,
                                                  "retry_jitter": 0}) as sub:
            ms_ = {m.payload: m for m in receive_all(sub, 2)}
            sub.pause()  # the retry copy stays in the queue for pika to read
            ms_[b"retry me"].nack("try again")
            ms_[b"dead"].dead_letter("for the string check")
            bus.flush(30)
            (_, rprops, rbody), = amqp_get_raw(url, f"{topic}.{group}", 1)
            assert rbody == b"retry me"
            h = assert_all_strings(rprops, "retry copy")
            assert h.get("msgbus-attempt") == "2", h
            (_, dprops, dbody), = amqp_get_raw(url, f"{topic}.dlq.dlq", 1)
            assert dbody == b"dead"
            h = assert_all_strings(dprops, "dead letter")
            assert h.get("msgbus-dlq-topic") == topic, h
            assert h.get("cloudEvents_id"), h
    figure("amqp string-only readers: first delivery, empty key, retry copy and dead letter "
           "carry only string headers")
