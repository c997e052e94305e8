#!/usr/bin/env bash
# Integration: `sub -v --metrics` sees the connection go away and come back.
# The sub talks to RabbitMQ through a TCP proxy of the test (tcp_proxy.py);
# killing the proxy cuts the link (the shared broker is not touched), and
# starting it again lets msgbus reconnect. Expected: -v prints
# UP -> RECONNECTING, then DOWN (the first attempt is refused), then UP
# again, as they happen; msgbus_state follows, msgbus_reconnects_total is 1,
# and the subscription consumes again.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/metrics_lib.sh"
need_env MSGBUS_TEST_AMQP_URL
direct=$MSGBUS_TEST_AMQP_URL
read -r host bport < <(python3 -c 'import sys, urllib.parse as u; p=u.urlsplit(sys.argv[1]); print(p.hostname or "127.0.0.1", p.port or 5672)' "$direct")
pport=$(free_port)
# The same URL with the proxy's port, and short reconnect delays.
proxied=$(python3 -c '
import sys, urllib.parse as u
p = u.urlsplit(sys.argv[1])
netloc = p.netloc.rsplit("@", 1)
hostport = "127.0.0.1:" + sys.argv[2]
netloc = netloc[0] + "@" + hostport if len(netloc) == 2 else hostport
q = (p.query + "&" if p.query else "") + "reconnect_backoff_max_ms=300"
print(u.urlunsplit((p.scheme, netloc, p.path or "/", q, "")))' "$direct" "$pport")

proxy_start() {
  python3 "$(dirname "$0")/tcp_proxy.py" "$pport" "$host" "$bport" >"$WORK/proxy.out" 2>&1 &
  PROXY=$!; PIDS+=($PROXY)
  for _ in $(seq 50); do grep -q listening "$WORK/proxy.out" && return 0; sleep 0.1; done
  fail "the proxy did not start"
}
# wait_line PATTERN FILE SECONDS: a line of FILE matches (grep -E).
wait_line() {
  for _ in $(seq $(($3 * 10))); do grep -qE -- "$1" "$2" && { pass "stderr: $1"; return 0; }; sleep 0.1; done
  cat "$2"; fail "no line matching '$1' within $3 s"
}

topic=$(unique state)
"$MSGBUS" declare -u "$direct" "$topic" g 2>/dev/null || fail "declare"
proxy_start
"$MSGBUS" sub -v -u "$proxied" -g g --metrics 127.0.0.1:0 "$topic" >"$WORK/got" 2>"$WORK/sub.err" &
sub=$!; PIDS+=($sub)
port=$(metrics_port "$WORK/sub.err" $sub)
expect_grep "msgbus sub: state UP" "$WORK/sub.err" "-v prints the state at open"
wait_line "msgbus sub: subscription '$topic' group g: CONNECTING -> UP" "$WORK/sub.err" 10
wait_value "$port" 'msgbus_state{state="UP"}' 1 10

kill -KILL $PROXY; wait $PROXY 2>/dev/null
wait_line "msgbus sub: state UP -> RECONNECTING" "$WORK/sub.err" 15
wait_line "msgbus sub: state RECONNECTING -> DOWN" "$WORK/sub.err" 15
wait_value "$port" 'msgbus_state{state="UP"}' 0 10
wait_value "$port" 'msgbus_state{state="DOWN"}' 1 10
scrape "$port" "$WORK/down.prom"
promtool_check "$WORK/down.prom"

proxy_start
wait_line "msgbus sub: state DOWN -> UP" "$WORK/sub.err" 20
wait_value "$port" 'msgbus_state{state="UP"}' 1 10
wait_value "$port" msgbus_reconnects_total 1 10

# The subscription consumes again after the reconnect.
"$MSGBUS" pub -q -u "$direct" "$topic" after-reconnect || fail "pub after the reconnect"
wait_value "$port" "msgbus_subscription_acked_total{topic=\"$topic\",group=\"g\"}" 1 20
grep -qx after-reconnect "$WORK/got" || fail "sub did not print the message"
pass "the subscription consumes after the reconnect"
kill -TERM $sub; wait $sub || fail "sub exit code after SIGTERM"
grep -E "state|subscription" "$WORK/sub.err"
echo "state changes through a cut link passed"
