"""Per-subscription retry options, nack(reason), dead_letter and dlq_replay
(the core's retry API, docs/semantics.md "Retry and dead letters")."""
from __future__ import annotations

import os
import time

import pytest

import msgbus
from conftest import unique


def _sub(bus, topic, group, options):
    try:
        return bus.subscribe(topic, group, options=options)
    except msgbus.UnsupportedError as e:  # a libmsgbus older than the retry API
        if os.environ.get("MSGBUS_TEST_ALLOW_SKIP") == "1":
            pytest.skip(f"retry API not implemented in this libmsgbus: {e}")
        raise


def _recv(sub, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = sub.receive(0.1)
        if m is not None:
            return m
    return None


def test_nack_reason_then_dead_letter(mem_url, topic):
    with msgbus.Bus(mem_url) as bus:
        bus.declare(topic, "g")
        sub = _sub(bus, topic, "g", {"retry_max_attempts": 2, "retry_initial_ms": 10,
                                     "retry_jitter": 0})
        with sub, bus.subscribe(f"{topic}.dlq", "dlq") as dlq:
            bus.publish(topic, b"poison", key="k", headers={"app": "1"}).result(5)
            m = _recv(sub)
            assert m is not None and m.attempt == 1
            m.nack(reason="bad input")
            m2 = _recv(sub)
            assert m2 is not None and m2.attempt == 2 and m2.id == m.id
            m2.nack(reason="still bad")  # the last attempt: dead-lettered
            d = _recv(dlq)
            assert d is not None
            assert (d.payload, d.key, d.id) == (b"poison", b"k", m.id)
            assert d.headers["app"] == "1"
            assert d.headers["msgbus-dlq-error"] == "still bad"
            assert d.headers["msgbus-dlq-topic"] == topic
            assert d.headers["msgbus-dlq-group"] == "g"
            assert d.headers["msgbus-dlq-attempts"] == "2"
            d.ack()


def test_dead_letter_then_replay(url, topic):
    """dead_letter at once, then dlq_replay brings it back with its id, key,
    payload and application headers, attempt 1 — on every backend."""
    group = unique("g")
    with msgbus.Bus(url) as bus:
        bus.declare(topic, group)
        sub = _sub(bus, topic, group, {"dlq": True, "retry_initial_ms": 10})
        with sub:
            d = bus.publish(topic, b"p\x00", key=b"key-1", headers={"h": "v"})
            d.result(30)
            m = _recv(sub)
            assert m is not None and m.id == d.message_id
            m.dead_letter("poison")
            assert m.settled
            with pytest.raises(msgbus.StateError):
                m.ack()
            moved = 0
            deadline = time.monotonic() + 30
            while moved == 0 and time.monotonic() < deadline:  # the letter is on its way
                moved = bus.dlq_replay(f"{topic}.dlq", idle_timeout=1.0)
            assert moved == 1
            back = _recv(sub)
            assert back is not None
            assert (back.id, back.payload, back.key) == (d.message_id, b"p\x00", b"key-1")
            assert back.attempt == 1
            assert {k: v for k, v in back.headers.items() if not k.startswith("msgbus-")} == \
                {"h": "v"}
            assert not any(k.startswith("msgbus-dlq-") for k in back.headers)
            back.ack()


def test_bad_subscription_option_is_config_error(mem_url, topic):
    with msgbus.Bus(mem_url) as bus:
        with pytest.raises((msgbus.ConfigError, msgbus.UnsupportedError)) as ei:
            bus.subscribe(topic, "g", options={"retry_max_attemps": 3})
        if isinstance(ei.value, msgbus.UnsupportedError) and \
                os.environ.get("MSGBUS_TEST_ALLOW_SKIP") != "1":
            raise ei.value
        if isinstance(ei.value, msgbus.ConfigError):
            assert "retry_max_attemps" in ei.value.detail
        with pytest.raises(msgbus.ConfigError):
            bus.subscribe(topic, "g", options={"dlq": False, "retry_max_attempts": 3})
