#!/usr/bin/env bash
# Integration: --metrics of `outbox relay` (SQLite outbox) and `sub -g` on a
# real broker, against known traffic: N rows put and relayed (relayed N,
# pending 0, published = confirmed = N, state UP), then N messages consumed
# (received = acked = N, unsettled 0, lag back to 0); every scrape passes
# `promtool check metrics`. Also `doctor -v` and `pub -v` show the state
# (UP) of a reachable broker. On RabbitMQ, failed passes (a topic with no
# group bound) are counted and the rows go out once it is declared.
# Argument: BACKEND (amqp|kafka).
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/metrics_lib.sh"
backend=${1:?}
case $backend in
  amqp) need_env MSGBUS_TEST_AMQP_URL; export MSGBUS_URL=$MSGBUS_TEST_AMQP_URL ;;
  kafka) need_env MSGBUS_TEST_KAFKA_URL; export MSGBUS_URL=$MSGBUS_TEST_KAFKA_URL ;;
  *) fail "unknown backend $backend" ;;
esac
N=40
topic=$(unique metrics)
st="sqlite://$WORK/app.db"

# doctor shows the state it found and the final one.
expect_exit 0 "doctor -v" -- "$MSGBUS" doctor -v --topic "$topic-doctor" --group d
expect_grep "^state        UP (" "$WORK/out" "doctor prints the bus's state UP"
expect_grep "^state        subscription $topic-doctor group d: CONNECTING -> UP" "$WORK/out" \
  "doctor prints the subscription's change to UP"
expect_grep "^final        state UP (.*), reconnects 0" "$WORK/out" "doctor's final state and reconnects"

expect_exit 0 "declare" -- "$MSGBUS" declare "$topic" g
seq 1 $N | "$MSGBUS" outbox put -q "$st" "$topic" || fail "outbox put"

"$MSGBUS" outbox relay --metrics 127.0.0.1:0 "$st" 2>"$WORK/relay.err" &
relay=$!; PIDS+=($relay)
port=$(metrics_port "$WORK/relay.err" $relay)
# Wait with `outbox stats`, not by scraping: the latency quantiles cover
# the time since the previous scrape, so the first scrape sees all N.
pending() { "$MSGBUS" outbox stats "$st" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pending"])'; }
for _ in $(seq 600); do [ "$(pending)" = 0 ] && break; sleep 0.1; done
[ "$(pending)" = 0 ] || fail "rows still pending after 60 s"
sleep 1 # the pass returns right after it marked the rows
scrape "$port" "$WORK/relay.prom"
promtool_check "$WORK/relay.prom"
expect_value "$WORK/relay.prom" msgbus_outbox_rows_relayed_total $N
expect_value "$WORK/relay.prom" msgbus_outbox_pending_rows 0
expect_value "$WORK/relay.prom" msgbus_outbox_failed_rows 0
expect_value "$WORK/relay.prom" msgbus_outbox_relay_failures_total 0
expect_value "$WORK/relay.prom" msgbus_published_total $N
expect_value "$WORK/relay.prom" msgbus_confirmed_total $N
expect_value "$WORK/relay.prom" msgbus_failed_total 0
expect_value "$WORK/relay.prom" msgbus_outstanding 0
expect_value "$WORK/relay.prom" msgbus_confirm_latency_seconds_count $N
expect_value "$WORK/relay.prom" 'msgbus_state{state="UP"}' 1
expect_value "$WORK/relay.prom" msgbus_reconnects_total 0
grep -q "^msgbus_info{.*backend=\"$backend\"} 1" "$WORK/relay.prom" || fail "msgbus_info names backend $backend"
pass "msgbus_info names backend $backend"
p50=$(value "$WORK/relay.prom" 'msgbus_confirm_latency_seconds{quantile="0.5"}')
python3 -c "import sys; v=float('$p50'); sys.exit(0 if 0 < v < 10 else 1)" ||
  fail "confirm latency p50 '$p50' is not a number of seconds in (0, 10)"
pass "confirm latency p50 is $p50 s"
kill -TERM $relay; wait $relay || fail "relay exit code after SIGTERM"

# RabbitMQ refuses messages for a topic no group is bound to (unroutable):
# every pass fails and the rows stay pending — counted — until the group
# is declared; then they go out.
if [ "$backend" = amqp ]; then
  t2=$(unique unbound)
  st2="sqlite://$WORK/unbound.db"
  seq 1 3 | "$MSGBUS" outbox put -q "$st2" "$t2" || fail "outbox put (unbound)"
  "$MSGBUS" outbox relay --metrics 127.0.0.1:0 "$st2" 2>"$WORK/relay2.err" &
  relay2=$!; PIDS+=($relay2)
  port2=$(metrics_port "$WORK/relay2.err" $relay2)
  for _ in $(seq 100); do
    scrape "$port2" "$WORK/unbound.prom"
    [ "$(value "$WORK/unbound.prom" msgbus_outbox_relay_failures_total)" -ge 2 ] 2>/dev/null && break
    sleep 0.1
  done
  promtool_check "$WORK/unbound.prom"
  f=$(value "$WORK/unbound.prom" msgbus_outbox_relay_failures_total)
  [ "$f" -ge 2 ] || fail "failed passes not counted ($f)"
  pass "$f failed passes counted"
  expect_value "$WORK/unbound.prom" msgbus_outbox_rows_relayed_total 0
  expect_value "$WORK/unbound.prom" msgbus_outbox_pending_rows 3
  expect_value "$WORK/unbound.prom" msgbus_outbox_relay_last_success_timestamp_seconds 0
  expect_value "$WORK/unbound.prom" msgbus_confirmed_total 0
  nf=$(value "$WORK/unbound.prom" 'msgbus_failed_by_error_total{error="MSGBUS_ERR_BROKER"}')
  [ -n "$nf" ] && [ "$nf" -ge 3 ] || fail "failed publishes by MSGBUS_ERR_BROKER: '$nf', expected >= 3"
  pass "failed publishes by error: MSGBUS_ERR_BROKER $nf"
  age=$(value "$WORK/unbound.prom" msgbus_outbox_oldest_pending_age_seconds)
  python3 -c "import sys; sys.exit(0 if 0 < float('$age') < 60 else 1)" || fail "oldest pending age '$age'"
  pass "oldest pending age $age s"
  expect_exit 0 "declare the group" -- "$MSGBUS" declare "$t2" g
  wait_value "$port2" msgbus_outbox_rows_relayed_total 3 60
  scrape "$port2" "$WORK/unbound2.prom"
  expect_value "$WORK/unbound2.prom" msgbus_outbox_pending_rows 0
  expect_value "$WORK/unbound2.prom" msgbus_outbox_oldest_pending_age_seconds 0
  kill -TERM $relay2; wait $relay2 || fail "relay exit code after SIGTERM"
fi

# The consumer: its subscription's figures.
"$MSGBUS" sub -g g --metrics 127.0.0.1:0 "$topic" >"$WORK/got" 2>"$WORK/sub.err" &
sub=$!; PIDS+=($sub)
port=$(metrics_port "$WORK/sub.err" $sub)
labels="topic=\"$topic\",group=\"g\""
wait_value "$port" "msgbus_subscription_acked_total{$labels}" $N 60
wait_value "$port" "msgbus_subscription_lag{$labels}" 0 30
scrape "$port" "$WORK/sub.prom"
promtool_check "$WORK/sub.prom"
expect_value "$WORK/sub.prom" "msgbus_subscription_received_total{$labels}" $N
expect_value "$WORK/sub.prom" "msgbus_subscription_acked_total{$labels}" $N
expect_value "$WORK/sub.prom" "msgbus_subscription_nacked_total{$labels}" 0
expect_value "$WORK/sub.prom" "msgbus_subscription_dead_lettered_total{$labels}" 0
expect_value "$WORK/sub.prom" "msgbus_subscription_unsettled{$labels}" 0
expect_value "$WORK/sub.prom" "msgbus_subscription_queued{$labels}" 0
expect_value "$WORK/sub.prom" "msgbus_subscription_state{$labels,state=\"UP\"}" 1
expect_value "$WORK/sub.prom" msgbus_published_total 0
kill -TERM $sub; wait $sub || fail "sub exit code after SIGTERM"
[ "$(seq 1 $N)" = "$(sort -n "$WORK/got")" ] || fail "sub did not print 1..$N"
pass "sub printed the $N messages"

# -v on a command that publishes shows the state too.
expect_exit 0 "pub -v" -- "$MSGBUS" pub -v "$topic" one-more
expect_grep "msgbus pub: state UP" "$WORK/err" "pub -v prints the bus's state"
echo "--metrics on $backend passed"
