"""Python and C agree byte for byte on payload, key, headers and id, on each
real broker: a Python producer with the C consumer, and the reverse."""
from __future__ import annotations

import os
import subprocess
import time

import msgbus
from conftest import hexline, parse_line, unique


def _messages():
    """(payload, key, headers) covering every byte value, NULs, UTF-8 and size."""
    return [
        (bytes(range(256)), b"\x00key\xff", {"content-type": "application/octet-stream",
                                              "utf8": "é€😀", "empty": ""}),
        (b"", b"k2", {}),
        (b"\x00" * 10, None, {"trace-id": "t-1", "a.b:c_d-e": "x"}),
        (os.urandom(100_000), b"big", {"n": "3"}),
        ("plain text".encode(), b"k2", {"x": "y"}),
    ]


def test_python_producer_c_consumer(broker_url, interop_peer, tmp_path):
    topic, group = unique("pyi"), unique("g")
    sent = {}
    with msgbus.Bus(broker_url) as bus:
        bus.declare(topic, group)
        for p, k, h in _messages():
            d = bus.publish(topic, p, key=k, headers=h)
            sent[d.message_id] = (k, p, h)
        bus.flush(30)
    r = subprocess.run([interop_peer, "consume", broker_url, topic, group, str(len(sent)),
                        "30000"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"C consumer failed ({r.returncode}): {r.stderr}\n{r.stdout}"
    got = {}
    for line in r.stdout.splitlines():
        mid, key, payload, headers, attempt = parse_line(line)
        got[mid] = (key, payload, headers)
        assert attempt == 1
    assert got == sent


def test_c_producer_python_consumer(broker_url, interop_peer, tmp_path):
    topic, group = unique("pyi"), unique("g")
    spec, want = [], {}
    for i, (p, k, h) in enumerate(_messages()):
        mid = f"c-{unique('id')}-{i}"
        spec.append(hexline(mid, k, p, h))
        want[mid] = (k, p, h)
    specfile = tmp_path / "spec.txt"
    specfile.write_text("\n".join(spec) + "\n")
    with msgbus.Bus(broker_url) as bus:
        bus.declare(topic, group)
        with bus.subscribe(topic, group) as sub:
            r = subprocess.run([interop_peer, "produce", broker_url, topic, str(specfile)],
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, f"C producer failed: {r.stderr}"
            assert r.stdout.strip() == f"published {len(spec)}"
            got, deadline = {}, time.monotonic() + 30
            while len(got) < len(want) and time.monotonic() < deadline:
                m = sub.receive(0.2)
                if m is not None:
                    got[m.id] = (m.key, m.payload, m.headers)
                    assert m.attempt == 1
                    m.ack()
    assert got == want
