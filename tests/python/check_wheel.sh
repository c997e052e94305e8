#!/usr/bin/env bash
# tests/python/check_wheel.sh [BUILD_DIR] — the Python package as a user
# installs it (docs/python.md, "Installing"):
#  1. `python -m build` makes an sdist and a wheel of bindings/python; the
#     wheel bundles BUILD_DIR's libmsgbus (default: build);
#  2. the wheel goes into a fresh venv, which then runs from a scratch
#     directory with no MSGBUS_LIBRARY, MSGBUS_BUILD_DIR or PYTHONPATH: it
#     must load the bundled library, use the compiled hot paths
#     (msgbus/_speedups, built by setup.py) and do a round trip (publish,
#     receive, ack, same payload and id) on mem://, Kafka and RabbitMQ.
# Broker URLs come from MSGBUS_TEST_KAFKA_URL / MSGBUS_TEST_AMQP_URL; a
# missing one fails the check. Uses a cached venv with the `build` package
# in .venv-pybuild (PyPI on first use).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
bdir=${1:-build}
case "$bdir" in /*) ;; *) bdir=$top/$bdir ;; esac
[ -e "$bdir/libmsgbus.so.0" ] || { echo "check_wheel: no $bdir/libmsgbus.so.0 (scripts/build first)" >&2; exit 1; }
for v in MSGBUS_TEST_KAFKA_URL MSGBUS_TEST_AMQP_URL; do
  [ -n "${!v:-}" ] || { echo "check_wheel: $v is not set (scripts/brokers up; . .brokers/env)" >&2; exit 1; }
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tools=$top/.venv-pybuild
cd "$tmp" # not the checkout: its build/ directory would pass for the `build` package
[ -x "$tools/bin/python" ] || python3 -m venv "$tools"
"$tools/bin/python" -c 'import build.__main__' 2>/dev/null ||
  "$tools/bin/python" -m pip install -q --disable-pip-version-check build
MSGBUS_BUILD_DIR=$bdir "$tools/bin/python" -m build --sdist --wheel --outdir "$tmp/dist" \
  "$top/bindings/python" >"$tmp/build.log" 2>&1 || { tail -30 "$tmp/build.log"; exit 1; }
# pip builds in the source tree; leave nothing behind there
rm -rf "$top/bindings/python/build" "$top/bindings/python/src/msgbus.egg-info"
ls "$tmp/dist"
sdist=$(ls "$tmp"/dist/msgbus-*.tar.gz) wheel=$(ls "$tmp"/dist/msgbus-*.whl)
python3 - "$wheel" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
assert "msgbus/libmsgbus.so.0" in names, f"the wheel bundles no library: {names}"
assert "msgbus/py.typed" in names
ext = [n for n in names if n.startswith("msgbus/_speedups.") and n.endswith(".so")]
assert ext, f"the wheel has no compiled msgbus/_speedups extension: {names}"
print("wheel: bundles msgbus/libmsgbus.so.0 and", ext[0] + ",", len(names), "files")
PY
listing=$(tar tzf "$sdist") # (grep -q on a pipe would cut tar short under pipefail)
grep -q 'msgbus-.*/src/msgbus/_core.py' <<<"$listing" || { echo "check_wheel: sdist lacks the package" >&2; exit 1; }
grep -q 'msgbus-.*/src/msgbus/_speedups.c' <<<"$listing" || { echo "check_wheel: sdist lacks _speedups.c" >&2; exit 1; }
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps "$wheel"
env -u MSGBUS_LIBRARY -u MSGBUS_BUILD_DIR -u MSGBUS_PREFIX -u PYTHONPATH \
  "$tmp/venv/bin/python" - <<'PY'
import os, sys, uuid
import msgbus
info = msgbus.library_info()
print("library:", info)
assert info.source == "bundled", f"loaded via {info.source}, not the bundled copy"
assert info.path.startswith(os.path.realpath(sys.prefix)), f"{info.path} is not in the venv"
with msgbus.Bus("mem://wheel-speedups"):
    assert msgbus.speedups() == "in use", f"compiled hot paths: {msgbus.speedups()}"
print("compiled hot paths: in use")
for url in ("mem://wheel", os.environ["MSGBUS_TEST_KAFKA_URL"], os.environ["MSGBUS_TEST_AMQP_URL"]):
    topic, group = f"wheel-{uuid.uuid4().hex[:10]}", "g"
    with msgbus.Bus(url) as bus, bus.subscribe(topic, group) as sub:
        d = bus.publish(topic, b"from the wheel", key=b"k")
        d.result(30)
        m = sub.receive(30)
        assert m is not None, f"{bus.backend}: nothing received"
        assert (m.payload, m.id) == (b"from the wheel", d.message_id), m
        m.ack()
        print(f"round trip on {bus.backend}: ok")
PY
