#!/usr/bin/env bash
# `outbox relay --metrics` on mem:// with a SQLite outbox (no broker): the
# exposition passes `promtool check metrics`, its figures are exact against
# known traffic (N rows put and relayed, then M more while it runs; a row
# too large for the bus counted as failed, not relayed), the
# HTTP side answers 404 / 405 / 431 as it should and a bad ADDR:PORT is a
# usage error; -v shows the bus's state. Arguments: BUILD_DIR (for
# Prometheus's data directory).
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/metrics_lib.sh"
blddir=${1:?usage: $0 MSGBUS BUILD_DIR}
st="sqlite://$WORK/app.db"
N=25 M=7

expect_exit 1 "--metrics without a port" -- "$MSGBUS" outbox relay -u mem:// --metrics 127.0.0.1 "$st"
expect_grep "ADDR:PORT" "$WORK/err" "the error names the form"
expect_exit 1 "--metrics with a port above 65535" -- "$MSGBUS" outbox relay -u mem:// --metrics 127.0.0.1:70000 "$st"
expect_exit 1 "--metrics on outbox stats" -- "$MSGBUS" outbox stats --metrics 127.0.0.1:0 "$st"

seq 1 $N | "$MSGBUS" outbox put -q "$st" orders || fail "outbox put"
"$MSGBUS" outbox relay -v -u mem:// --poll-interval 100 --metrics 127.0.0.1:0 "$st" \
  2>"$WORK/relay.err" &
relay=$!; PIDS+=($relay)
port=$(metrics_port "$WORK/relay.err" $relay)
expect_grep "msgbus outbox relay: state UP" "$WORK/relay.err" "-v shows the bus's state"

wait_value "$port" msgbus_outbox_rows_relayed_total $N
scrape "$port" "$WORK/a.prom"
promtool_check "$WORK/a.prom"
expect_value "$WORK/a.prom" msgbus_outbox_rows_relayed_total $N
expect_value "$WORK/a.prom" msgbus_outbox_pending_rows 0
expect_value "$WORK/a.prom" msgbus_outbox_failed_rows 0
expect_value "$WORK/a.prom" msgbus_outbox_oldest_pending_age_seconds 0
expect_value "$WORK/a.prom" msgbus_outbox_relay_failures_total 0
expect_value "$WORK/a.prom" msgbus_published_total $N
expect_value "$WORK/a.prom" msgbus_confirmed_total $N
expect_value "$WORK/a.prom" msgbus_failed_total 0
expect_value "$WORK/a.prom" msgbus_outstanding 0
expect_value "$WORK/a.prom" msgbus_confirm_latency_seconds_count $N
expect_value "$WORK/a.prom" 'msgbus_state{state="UP"}' 1
expect_value "$WORK/a.prom" 'msgbus_state{state="DOWN"}' 0
expect_value "$WORK/a.prom" 'msgbus_info{version="'"$("$MSGBUS" version | cut -d' ' -f2)"'",backend="mem"}' 1
passes=$(value "$WORK/a.prom" msgbus_outbox_relay_passes_total)
[ "${passes:-0}" -ge 1 ] || fail "msgbus_outbox_relay_passes_total is '$passes'"
pass "passes counted ($passes)"
for f in msgbus_outbox_rows_relayed_total msgbus_outbox_relay_passes_total msgbus_published_total; do
  expect_grep "^# TYPE $f counter" "$WORK/a.prom" "$f is a counter"
done
expect_grep '^# TYPE msgbus_outbox_pending_rows gauge' "$WORK/a.prom" "pending rows is a gauge"

# Rows committed while the relay runs: the counters follow exactly.
seq 1 $M | "$MSGBUS" outbox put -q "$st" orders || fail "outbox put (second batch)"
wait_value "$port" msgbus_outbox_rows_relayed_total $((N + M))
scrape "$port" "$WORK/b.prom"
promtool_check "$WORK/b.prom"
expect_value "$WORK/b.prom" msgbus_outbox_pending_rows 0
expect_value "$WORK/b.prom" msgbus_published_total $((N + M))
expect_value "$WORK/b.prom" msgbus_confirmed_total $((N + M))
expect_value "$WORK/b.prom" msgbus_confirm_latency_seconds_count $((N + M))
passes2=$(value "$WORK/b.prom" msgbus_outbox_relay_passes_total)
[ "$passes2" -gt "$passes" ] || fail "passes did not grow ($passes -> $passes2)"
pass "passes grow while idle polling ($passes -> $passes2)"

# A row the bus will never take (over max_message_bytes) is moved aside:
# a failed row, not a failed pass; the rows around it go out.
st3="sqlite://$WORK/poison.db"
seq 1 2 | "$MSGBUS" outbox put -q "$st3" orders || fail "outbox put"
head -c 500 /dev/zero | tr '\0' x | "$MSGBUS" outbox put -q "$st3" orders -k big || fail "outbox put (big)"
seq 3 4 | "$MSGBUS" outbox put -q "$st3" orders || fail "outbox put"
"$MSGBUS" outbox relay -u 'mem://?max_message_bytes=100' --metrics 127.0.0.1:0 "$st3" 2>"$WORK/relay3.err" &
relay3=$!; PIDS+=($relay3)
port3=$(metrics_port "$WORK/relay3.err" $relay3)
wait_value "$port3" msgbus_outbox_failed_rows 1
wait_value "$port3" msgbus_outbox_rows_relayed_total 4
scrape "$port3" "$WORK/poison.prom"
promtool_check "$WORK/poison.prom"
expect_value "$WORK/poison.prom" msgbus_outbox_pending_rows 0
expect_value "$WORK/poison.prom" msgbus_outbox_relay_failures_total 0
expect_value "$WORK/poison.prom" msgbus_confirmed_total 4
kill -TERM $relay3; wait $relay3 || fail "relay exit code after SIGTERM"

# The HTTP side: only GET/HEAD /metrics.
code() { curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$@"; }
[ "$(code "http://127.0.0.1:$port/")" = 404 ] || fail "GET / is not 404"
pass "GET / -> 404"
[ "$(code "http://127.0.0.1:$port/metricsx")" = 404 ] || fail "GET /metricsx is not 404"
pass "GET /metricsx -> 404"
[ "$(code "http://127.0.0.1:$port/metrics?x=1")" = 200 ] || fail "GET /metrics?x=1 is not 200"
pass "GET /metrics?query -> 200"
[ "$(code -X POST -d x=1 "http://127.0.0.1:$port/metrics")" = 405 ] || fail "POST is not 405"
pass "POST -> 405"
[ "$(code -I "http://127.0.0.1:$port/metrics")" = 200 ] || fail "HEAD is not 200"
pass "HEAD -> 200"
big=$(head -c 9000 /dev/zero | tr '\0' a)
[ "$(code -H "X-Big: $big" "http://127.0.0.1:$port/metrics")" = 431 ] || fail "a 9 KB request is not refused"
pass "a request over 8 KiB -> 431"
# A client that sends half a request and stays does not stop the server
# for good (5 s socket timeout).
python3 - "$port" <<'EOF' &
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"GET /metr")
time.sleep(8)
EOF
PIDS+=($!)
sleep 0.3
[ "$(code --max-time 15 "http://127.0.0.1:$port/metrics")" = 200 ] || fail "scrape after a stalled client"
pass "a stalled client delays, but does not block, the next scrape"
curl -s --max-time 10 "http://127.0.0.1:$port/metrics" -D "$WORK/headers" -o /dev/null
expect_grep "Content-Type: text/plain; version=0.0.4" "$WORK/headers" "the exposition's content type"

# A real Prometheus server scrapes it.
start_prometheus "$port" "$blddir/cli_metrics_prometheus"
wait_prom 'up{job="msgbus"}' 1
wait_prom msgbus_outbox_rows_relayed_total $((N + M))
wait_prom msgbus_outbox_pending_rows 0

kill -TERM $relay
wait $relay; rc=$?
[ $rc = 0 ] || { cat "$WORK/relay.err"; fail "relay exit code $rc after SIGTERM"; }
expect_grep "stopped; $((N + M)) rows relayed" "$WORK/relay.err" "the relay's summary"
rm -rf "$blddir/cli_metrics_prometheus"
echo "relay --metrics on mem:// passed"
