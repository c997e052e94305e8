"""CloudEvents attributes from Python on every backend: what a publish sets
arrives, the defaults (type = topic, source = the bus's ce_source) arrive
when none was set, and bad values are refused before anything is sent."""
from __future__ import annotations

import os
import socket

import pytest

import msgbus
from conftest import unique


def _one(bus, topic, group, **kw):
    with bus.subscribe(topic, group) as sub:
        bus.publish(topic, b"{}", headers={"content-type": "application/json"}, **kw)
        bus.flush(30)
        m = sub.receive(30)
        assert m is not None, "nothing received"
        m.ack()
        return m


def test_set_attributes_arrive(url, topic):
    with msgbus.Bus(url) as bus:
        m = _one(bus, topic, unique("g"), type="com.example.order.created",
                 source="//shop/orders", subject="order-42")
        assert (m.type, m.source, m.subject) == ("com.example.order.created", "//shop/orders",
                                                 "order-42")
        assert m.headers.get("content-type") == "application/json"


def test_defaults_arrive(url, topic):
    sep = "&" if "?" in url else "?"
    with msgbus.Bus(url) as bus:
        m = _one(bus, topic, unique("g"))
        assert m.type == topic
        host = socket.gethostname()
        assert m.source is not None and m.source.startswith(f"//{host}/"), m.source
        assert m.subject is None
    with msgbus.Bus(f"{url}{sep}ce_source=//test/py") as bus:
        m = _one(bus, topic, unique("g"))
        assert m.source == "//test/py"


def test_bad_values_are_refused(mem_url):
    with msgbus.Bus(mem_url) as bus:
        for bad in ("", "new\nline", "x" * 1025, "\x7f"):
            with pytest.raises(msgbus.InvalidError):
                bus.publish("t", b"p", type=bad)
        with pytest.raises(msgbus.InvalidError, match="CloudEvents attribute"):
            bus.publish("t", b"p", headers={"ce_type": "x"})
        with pytest.raises(msgbus.InvalidError):
            bus.publish("t", b"p", headers={"cloudEvents_id": "x"})
        assert bus.outstanding == 0
    with pytest.raises(msgbus.ConfigError, match="cloudevents"):
        msgbus.Bus(f"{mem_url}?cloudevents=sometimes")
    with pytest.raises(msgbus.ConfigError, match="ce_source"):
        msgbus.Bus(f"{mem_url}?ce_source=a%0Ab")

