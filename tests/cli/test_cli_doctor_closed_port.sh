#!/usr/bin/env bash
# `doctor` against a broker that is not there: a port on 127.0.0.1 where
# nothing listens (found by the test, so no shared broker is touched).
# Expected: exit code 2, a reason naming the address, and the final state
# DOWN (-v: the library's log lines on stderr do not change that).
. "$(dirname "$0")/lib.sh"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
for url in "amqp://guest:secret@127.0.0.1:$port/" "kafka://127.0.0.1:$port?connect_timeout_ms=2000"; do
  expect_exit 2 "doctor -v on $url" -- "$MSGBUS" doctor -v -u "$url"
  expect_grep "FAIL  connect" "$WORK/out" "doctor reports the failing step"
  expect_grep "127.0.0.1:$port" "$WORK/out" "the reason names the address"
  expect_grep "exit code 2" "$WORK/err" "stderr says the exit code"
  expect_grep "^final        state DOWN (never connected: cannot reach the broker), reconnects 0" \
    "$WORK/out" "doctor prints the failure state DOWN"
  if grep -q secret "$WORK/out" "$WORK/err"; then fail "password printed"; fi
done
echo "doctor against a closed port: clear error, exit 2"
