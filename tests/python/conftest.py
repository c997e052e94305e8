"""Fixtures of the Python suite.

Broker URLs come from MSGBUS_TEST_AMQP_URL, MSGBUS_TEST_KAFKA_URL and
MSGBUS_TEST_PG_URL. A missing URL FAILS the tests that need it, unless
MSGBUS_TEST_ALLOW_SKIP=1 (local use), which turns those into skips.
MSGBUS_TEST_BUILD_DIR names the build tree (for the C interop peer).
"""
from __future__ import annotations

import os
import subprocess
import uuid
from typing import Dict, List

import pytest

import msgbus

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIGURES: List[str] = []

URL_VARS = {"amqp": "MSGBUS_TEST_AMQP_URL", "kafka": "MSGBUS_TEST_KAFKA_URL",
            "pg": "MSGBUS_TEST_PG_URL"}


def need_url(kind: str) -> str:
    var = URL_VARS[kind]
    url = os.environ.get(var)
    if url:
        return url
    msg = f"{var} is not set (run the brokers: scripts/brokers up; . .brokers/env)"
    if os.environ.get("MSGBUS_TEST_ALLOW_SKIP") == "1":
        pytest.skip(msg)
    pytest.fail(msg + " — set MSGBUS_TEST_ALLOW_SKIP=1 to skip locally", pytrace=False)
    raise AssertionError  # unreachable


# Every name the suite makes carries this run's marker, so that at the end
# the run deletes what it made on the shared brokers (pytest_sessionfinish).
RUN_MARKER = f"-s{os.getpid()}-"


def unique(prefix: str = "py") -> str:
    return f"{prefix}{RUN_MARKER}{uuid.uuid4().hex[:12]}"


def _cleanup_kafka(url: str) -> str:
    from confluent_kafka.admin import AdminClient
    hosts = url.split("://", 1)[-1].split("?", 1)[0].split("/", 1)[0]
    if "@" in hosts:
        return "kafka: URL with credentials, left alone"
    admin = AdminClient({"bootstrap.servers": hosts, "log_level": 3})
    topics = [t for t in admin.list_topics(timeout=10).topics if RUN_MARKER in t]
    groups = [g.group_id for g in admin.list_consumer_groups().result(timeout=10).valid
              if RUN_MARKER in g.group_id]
    for f in (admin.delete_consumer_groups(groups).values() if groups else []):
        try:
            f.result(timeout=10)
        except Exception:  # a group still in use by a straggler: left to the broker
            pass
    for f in (admin.delete_topics(topics, operation_timeout=10).values() if topics else []):
        try:
            f.result(timeout=30)
        except Exception:
            pass
    return f"kafka: deleted {len(topics)} topics and {len(groups)} groups"


def _cleanup_amqp(url: str) -> str:
    import pika
    env = os.path.join(ROOT, ".brokers", "rabbitmq", "env")
    if not os.path.exists(env):
        return "amqp: no .brokers/rabbitmq/env to list with, left alone"
    r = subprocess.run(["bash", "-c", f". '{env}' && rabbitmqctl -q list_queues name && "
                        "echo --- && rabbitmqctl -q list_exchanges name"],
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        return f"amqp: rabbitmqctl failed: {r.stderr.strip()[:200]}"
    queues, _, exchanges = r.stdout.partition("---")
    qs = [q.strip() for q in queues.splitlines() if RUN_MARKER in q]
    xs = [x.strip() for x in exchanges.splitlines() if RUN_MARKER in x]
    conn = pika.BlockingConnection(pika.URLParameters(url.split("?", 1)[0]))
    ch = conn.channel()
    for q in qs:
        ch.queue_delete(q)
    for x in xs:
        ch.exchange_delete(x)
    conn.close()
    return f"amqp: deleted {len(qs)} queues and {len(xs)} exchanges"


def pytest_sessionfinish(session, exitstatus):
    """Deletes what this run made on the shared Kafka and RabbitMQ (names
    with RUN_MARKER); a broker it cannot reach gets a line, never a failure."""
    for kind, fn in (("kafka", _cleanup_kafka), ("amqp", _cleanup_amqp)):
        url = os.environ.get(URL_VARS[kind])
        if not url:
            continue
        try:
            FIGURES.append("cleanup: " + fn(url))
        except Exception as e:
            FIGURES.append(f"cleanup: {kind}: {type(e).__name__}: {e}")


@pytest.fixture(params=["mem", "amqp", "kafka"])
def url(request) -> str:
    """Each backend in turn: mem://, then the real brokers."""
    if request.param == "mem":
        return f"mem://{unique('pymem')}"
    return need_url(request.param)


@pytest.fixture(params=["amqp", "kafka"])
def broker_url(request) -> str:
    return need_url(request.param)


@pytest.fixture
def mem_url() -> str:
    return f"mem://{unique('pymem')}"


@pytest.fixture
def pg_url() -> str:
    return need_url("pg")


@pytest.fixture
def topic() -> str:
    return unique("pyt")


def build_dir() -> str:
    d = os.environ.get("MSGBUS_TEST_BUILD_DIR")
    if d:
        return os.path.abspath(d)
    lib = msgbus.library_info().path
    return os.path.dirname(lib)


@pytest.fixture(scope="session")
def interop_peer(tmp_path_factory) -> str:
    """tests/python/interop_peer.c compiled against the build tree's libmsgbus.so."""
    bdir = build_dir()
    lib = os.path.join(bdir, "libmsgbus.so")
    if not os.path.exists(lib):
        pytest.fail(f"no {lib}: set MSGBUS_TEST_BUILD_DIR to a build tree", pytrace=False)
    out = str(tmp_path_factory.mktemp("peer") / "interop_peer")
    cmd = [os.environ.get("CC", "cc"), "-std=c11", "-D_POSIX_C_SOURCE=200809L", "-Wall",
           "-Wextra", "-Werror", "-O1", "-I", os.path.join(ROOT, "include"),
           os.path.join(ROOT, "tests", "python", "interop_peer.c"), "-o", out,
           "-L", bdir, f"-Wl,-rpath,{bdir}", "-lmsgbus"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail("compiling interop_peer failed:\n" + " ".join(cmd) + "\n" + r.stderr,
                    pytrace=False)
    return out


def figure(line: str) -> None:
    """A measured figure, printed in pytest's terminal summary."""
    FIGURES.append(line)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if FIGURES:
        terminalreporter.section("msgbus figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
    try:
        terminalreporter.write_line(f"library: {msgbus.library_info()}")
    except Exception as e:  # pragma: no cover
        terminalreporter.write_line(f"library: not loaded ({e})")


def hexline(mid: str, key, payload: bytes, headers: Dict[str, str]) -> str:
    """The interop line format (see interop_peer.c)."""
    def hx(b: bytes) -> str:
        return b.hex() if b else "-"
    parts = [mid, "-" if key is None else (key.hex() if key else "-"), hx(payload),
             str(len(headers))]
    parts += [f"{n.encode().hex()}={hx(v.encode())}" for n, v in headers.items()]
    return " ".join(parts)


def parse_line(line: str):
    f = line.split(" ")
    mid, key, payload, n = f[0], f[1], f[2], int(f[3])
    headers = {}
    for kv in f[4:4 + n]:
        a, b = kv.split("=")
        headers[bytes.fromhex(a).decode()] = "" if b == "-" else bytes.fromhex(b).decode()
    attempt = int(f[4 + n])
    return (mid, None if key == "-" else bytes.fromhex(key),
            b"" if payload == "-" else bytes.fromhex(payload), headers, attempt)
