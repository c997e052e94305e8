"""Errors map to exceptions carrying the library's message; bad input changes nothing."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import msgbus
from msgbus import errors


def test_config_errors_carry_the_library_message():
    with pytest.raises(msgbus.ConfigError) as ei:
        msgbus.Bus("nosuch://x")
    e = ei.value
    assert e.code == 2 and e.name == "MSGBUS_ERR_CONFIG"
    assert "unknown scheme 'nosuch'" in e.detail and "nosuch" in str(e)
    assert isinstance(e, msgbus.MsgbusError) and isinstance(e, ValueError)
    with pytest.raises(msgbus.ConfigError, match="unknown option 'prefetchh'"):
        msgbus.Bus("mem://?prefetchh=1")


def test_missing_url_is_config_error(monkeypatch):
    monkeypatch.delenv("MSGBUS_URL", raising=False)
    with pytest.raises(msgbus.ConfigError, match="MSGBUS_URL"):
        msgbus.Bus()


def test_connect_error():
    with pytest.raises(msgbus.ConnectError) as ei:
        msgbus.Bus("amqp://guest:guest@127.0.0.1:1/?connect_timeout_ms=2000")
    assert ei.value.code == 6 and isinstance(ei.value, ConnectionError)
    assert "guest:guest" not in str(ei.value)  # never a password


def test_invalid_arguments(mem_url, topic):
    with msgbus.Bus(mem_url) as bus:
        with pytest.raises(msgbus.InvalidError, match="invalid topic name"):
            bus.publish("bad topic!", b"x")
        with pytest.raises(msgbus.InvalidError, match="reserved"):
            bus.publish(topic, b"x", headers={"msgbus-attempt": "3"})
        with pytest.raises(msgbus.InvalidError):
            bus.publish(topic, b"x", headers={"bad name": "v"})
        with pytest.raises(msgbus.InvalidError):
            bus.publish(topic, b"x", id="has space")
        with pytest.raises(msgbus.InvalidError, match="payload must be bytes"):
            bus.publish(topic, 12)  # type: ignore[arg-type]
        with pytest.raises(msgbus.InvalidError, match="invalid group name"):
            bus.subscribe(topic, "bad group")
        with pytest.raises(msgbus.InvalidError):
            bus.poll(-1)
        assert bus.outstanding == 0  # nothing was published


def test_queue_full(broker_url, topic):
    """mem:// confirms at once, so only a real broker has confirms outstanding."""
    sep = "&" if "?" in broker_url else "?"
    with msgbus.Bus(f"{broker_url}{sep}queue_max=3") as bus:
        bus.declare(topic, "g")  # RabbitMQ reports a message no queue took as failed
        with pytest.raises(msgbus.QueueFullError, match="queue_max=3"):
            for _ in range(1000):  # a confirm takes a broker round trip; publish does not
                bus.publish(topic, b"x")
        bus.flush(30)
        assert bus.outstanding == 0
        bus.publish(topic, b"x").result(30)


def test_state_error_on_double_settle(mem_url, topic):
    with msgbus.Bus(mem_url) as bus, bus.subscribe(topic, "g") as sub:
        bus.publish(topic, b"x")
        bus.flush(5)
        m = sub.receive(2)
        m.ack()
        with pytest.raises(msgbus.StateError):
            m.nack()


def test_every_code_has_a_class():
    lib = msgbus._lib.load()
    for code in range(1, 18):
        cls = errors.error_class(code)
        assert cls is not msgbus.MsgbusError and cls.code == code
        assert cls.err_name == lib.msgbus_err_name(code).decode()
    assert issubclass(msgbus.TimeoutError, TimeoutError)


def test_subscribe_option_syntax_checked(mem_url, topic):
    with msgbus.Bus(mem_url) as bus:
        with pytest.raises(msgbus.InvalidError, match="subscription option"):
            bus.subscribe(topic, "g", options={"dlq_topic": "a&b"})


def _run(env_extra, unset=()):
    env = dict(os.environ)
    for k in unset:
        env.pop(k, None)
    env.update(env_extra)
    return subprocess.run([sys.executable, "-m", "msgbus"], env=env, capture_output=True,
                          text=True, cwd="/")


def test_library_found_and_reported():
    info = msgbus.library_info()
    assert os.path.exists(info.path) and info.version == "0.1.0"
    if os.environ.get("MSGBUS_LIBRARY"):
        assert info.source == "MSGBUS_LIBRARY"
    r = _run({})
    assert r.returncode == 0 and "libmsgbus 0.1.0 from" in r.stdout


def test_library_not_found_says_why():
    r = _run({"MSGBUS_LIBRARY": "/nonexistent/libmsgbus.so"})
    assert r.returncode == 1
    assert "MSGBUS_LIBRARY: /nonexistent/libmsgbus.so: no such file" in r.stderr


def test_library_that_does_not_load_says_why(tmp_path):
    bad = tmp_path / "libmsgbus.so"
    bad.write_text("not an ELF file")
    r = _run({"MSGBUS_LIBRARY": str(bad)})
    assert r.returncode == 1
    assert f"found {bad} (via MSGBUS_LIBRARY) but could not load it" in r.stderr


def test_library_from_build_tree_variable():
    bdir = os.path.dirname(msgbus.library_info().path)
    r = _run({"MSGBUS_BUILD_DIR": bdir, "MSGBUS_PREFIX": "/nonexistent"},
             unset=("MSGBUS_LIBRARY",))
    assert r.returncode == 0, r.stderr
    # an installed copy (install prefix) would be found first; else the build tree
    assert "found via build tree" in r.stdout or "found via install prefix" in r.stdout


def test_library_from_install_prefix(tmp_path):
    import shutil
    real = msgbus.library_info().path
    libdir = tmp_path / "prefix" / "lib"
    libdir.mkdir(parents=True)
    shutil.copy(real, libdir / "libmsgbus.so")
    r = _run({"MSGBUS_PREFIX": str(tmp_path / "prefix")}, unset=("MSGBUS_LIBRARY",))
    assert r.returncode == 0, r.stderr
    assert f"from {libdir}/libmsgbus.so (found via install prefix)" in r.stdout
