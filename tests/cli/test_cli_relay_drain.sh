#!/usr/bin/env bash
# Integration: the `msgbus outbox relay` process on a real broker drains on
# SIGTERM: it stops in the middle of 20000 rows, exits 0, and every row it
# marked sent (= no longer pending) was published exactly once; a second
# relay publishes the rest. Arguments: BACKEND (amqp|kafka) STORE (sqlite|pg).
. "$(dirname "$0")/lib.sh"
backend=${1:?}; store=${2:?}
case $backend in
  amqp) need_env MSGBUS_TEST_AMQP_URL; export MSGBUS_URL=$MSGBUS_TEST_AMQP_URL ;;
  kafka) need_env MSGBUS_TEST_KAFKA_URL; export MSGBUS_URL=$MSGBUS_TEST_KAFKA_URL ;;
  *) fail "unknown backend $backend" ;;
esac
table=msgbus_outbox
case $store in
  sqlite) st="sqlite://$WORK/app.db" ;;
  pg) need_env MSGBUS_TEST_PG_URL; st=$MSGBUS_TEST_PG_URL
      table=$(unique ob | tr - _) ;;
  *) fail "unknown store $store" ;;
esac
N=20000
topic=$(unique drain)
"$MSGBUS" declare "$topic" g 2>/dev/null || fail "declare"
seq 1 $N | "$MSGBUS" outbox put -q --table "$table" "$st" "$topic" -k one-key || fail "outbox put"
pending() { "$MSGBUS" outbox stats --table "$table" "$st" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pending"])'; }
[ "$(pending)" = $N ] || fail "expected $N pending rows"

"$MSGBUS" outbox relay --table "$table" --batch 200 "$st" 2>"$WORK/relay.err" &
relay=$!; PIDS+=($relay)
# SIGTERM once the relay has started but is far from done.
for _ in $(seq 300); do
  p=$(pending); [ "$p" -lt $N ] && break; sleep 0.05
done
kill -TERM $relay
for _ in $(seq 300); do kill -0 $relay 2>/dev/null || break; sleep 0.1; done
kill -0 $relay 2>/dev/null && fail "relay still running 30 s after SIGTERM"
wait $relay; rc=$?
cat "$WORK/relay.err"
[ $rc = 0 ] || fail "relay exit code $rc after SIGTERM"
left=$(pending); sent=$((N - left))
echo "relay stopped by SIGTERM: $sent rows sent, $left pending"
[ "$left" -gt 0 ] || echo "note: the relay finished all rows before SIGTERM (machine fast)"

# What the stopped relay sent is on the broker, exactly once, in order.
if [ $sent -gt 0 ]; then
  "$MSGBUS" sub "$topic" -g g -n $sent -t 20000 -q > "$WORK/first" || fail "sub the $sent sent rows"
fi
expect_exit 5 "nothing beyond the rows marked sent" -- "$MSGBUS" sub "$topic" -g g -n 1 -t 3000 -q
[ "$(seq 1 $sent)" = "$(cat "$WORK/first" 2>/dev/null)" ] || fail "the first $sent messages are not 1..$sent in order"
pass "$sent messages received for $sent rows marked sent, in order"

expect_exit 0 "second relay --once" -- "$MSGBUS" outbox relay --table "$table" "$st" --once
"$MSGBUS" sub "$topic" -g g -n $left -t 20000 -q > "$WORK/rest" || fail "sub the rest"
[ "$(seq $((sent + 1)) $N)" = "$(cat "$WORK/rest")" ] || fail "the rest is not $((sent + 1))..$N"
pass "the rest arrived: $N messages in all, none twice"
if [ "$store" = pg ]; then
  psql "$MSGBUS_TEST_PG_URL" -qc "DROP TABLE IF EXISTS $table" >/dev/null 2>&1 || true
fi
echo "relay drain on $backend with $store passed"
