"""examples/python runs: the one-process demo on mem://, and the producer
(outbox) and consumer (inbox) as separate processes on each real broker."""
from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT, unique

EX = os.path.join(ROOT, "examples", "python")


def run(args, tmp_path, **env):
    e = dict(os.environ)
    e.update(env)
    return subprocess.run([sys.executable, *args], cwd=str(tmp_path), env=e,
                          capture_output=True, text=True, timeout=120)


def test_demo_on_mem(tmp_path):
    r = run([os.path.join(EX, "demo.py"), str(tmp_path)], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "billing: applied=5 duplicates=1 ledger_rows=5 total_cents=3750" in r.stdout


def test_producer_and_consumer_processes(broker_url, tmp_path):
    topic = unique("pyex")
    p = run([os.path.join(EX, "producer_outbox.py"), "--topic", topic, "--orders", "40"],
            tmp_path, MSGBUS_URL=broker_url)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "producer: 40 orders committed, outbox pending=0 failed=0" in p.stdout
    c = run([os.path.join(EX, "consumer_inbox.py"), "--topic", topic, "--idle-exit", "2"],
            tmp_path, MSGBUS_URL=broker_url)
    assert c.returncode == 0, c.stdout + c.stderr
    assert "applied=40 duplicates=0 rejected=0 ledger_rows=40 distinct_orders=40" in c.stdout


def test_package_docstring_example_passes_doctest():
    """The example in msgbus.__doc__ (help(msgbus)) runs as written."""
    import doctest

    import msgbus
    from msgbus import _check, _core, _sql, errors, inbox, outbox
    r = doctest.testmod(msgbus, report=True)
    assert r.attempted >= 3 and r.failed == 0, r
    for mod in (_core, _check, _sql, errors, inbox, outbox):  # any example elsewhere too
        r = doctest.testmod(mod, report=True)
        assert r.failed == 0, (mod.__name__, r)
