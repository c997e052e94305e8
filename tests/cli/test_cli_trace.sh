#!/usr/bin/env bash
# Integration: W3C trace context (traceparent, tracestate) given to the
# tool with -H comes out unchanged on every path the tool drives, on a real
# broker (first argument: amqp or kafka; then the outbox stores to try:
# sqlite and/or pg). Paths: pub → sub; outbox put → outbox relay --once →
# sub; sub --nack → redelivery (attempt 2) → dead letter; sub --dead-letter
# → dead letter → dlq replay → sub. docs/tracing.md.
. "$(dirname "$0")/lib.sh"
backend=${1:?usage: $0 MSGBUS backend [sqlite] [pg]}
shift
case $backend in
  amqp) need_env MSGBUS_TEST_AMQP_URL; export MSGBUS_URL=$MSGBUS_TEST_AMQP_URL ;;
  kafka) need_env MSGBUS_TEST_KAFKA_URL; export MSGBUS_URL=$MSGBUS_TEST_KAFKA_URL ;;
  *) fail "unknown backend $backend" ;;
esac
stores=("$@")

TP=00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01
TS='rojo=00f067aa0ba902b7,congo=t61rcWkgMzE, tenant1@vendor=opaque value 1 ,  xyz=5'
export TP TS

# check_trace FILE WHAT N [ATTEMPTS]: FILE has N JSON lines (sub --json),
# each with exactly the traceparent and tracestate sent; ATTEMPTS (e.g.
# "1 2") are the attempts expected in order.
check_trace() {
  python3 - "$1" "$3" "${4:-}" <<'PY' || fail "$2: trace headers"
import json, os, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
want = int(sys.argv[2])
assert len(rows) == want, "%d messages, want %d" % (len(rows), want)
for r in rows:
    h = r["headers"]
    assert h.get("traceparent") == os.environ["TP"], "traceparent %r" % h.get("traceparent")
    assert h.get("tracestate") == os.environ["TS"], "tracestate %r" % h.get("tracestate")
    assert "headers_base64" not in r, r
if sys.argv[3]:
    got = [r["attempt"] for r in rows]
    assert got == [int(a) for a in sys.argv[3].split()], "attempts %r" % got
print("%d message(s): traceparent=%s tracestate=%r" % (len(rows), os.environ["TP"], os.environ["TS"]))
PY
  pass "$2"
}

# pub → sub
topic=$(unique trace)
"$MSGBUS" declare "$topic" g 2>/dev/null || fail "declare"
expect_exit 0 "pub -H traceparent -H tracestate" -- \
  "$MSGBUS" pub -q "$topic" -k order-7 -H "traceparent=$TP" -H "tracestate=$TS" '{"order":7}'
expect_exit 0 "sub --json" -- "$MSGBUS" sub -q "$topic" -g g -n 1 -t 20000 --json
check_trace "$WORK/out" "pub → sub" 1 "1"

# outbox put → relay → sub, per store
for store in "${stores[@]}"; do
  case $store in
    sqlite) spec="sqlite://$WORK/trace.db"; table=msgbus_outbox ;;
    pg) need_env MSGBUS_TEST_PG_URL; spec=$MSGBUS_TEST_PG_URL; table="trace_cli_$$" ;;
    *) fail "unknown store $store" ;;
  esac
  expect_exit 0 "outbox put -H ($store)" -- "$MSGBUS" outbox put -q "$spec" --table "$table" "$topic" \
    -k order-8 -H "traceparent=$TP" -H "tracestate=$TS" '{"order":8}'
  expect_exit 0 "outbox relay --once ($store)" -- "$MSGBUS" outbox relay "$spec" --table "$table" --once
  if [ "$store" = pg ]; then
    psql -q "$MSGBUS_TEST_PG_URL" -c "DROP TABLE IF EXISTS $table" >/dev/null || fail "drop $table"
  fi
  expect_exit 0 "sub --json after the relay ($store)" -- "$MSGBUS" sub -q "$topic" -g g -n 1 -t 20000 --json
  check_trace "$WORK/out" "outbox ($store) → relay → sub" 1 "1"
done

# Dead letters go to a group of this run's own: on Kafka a group name is
# one consumer group across topics, so the default "dlq" would share
# rebalances with every other dead-letter consumer on the shared broker.
dg=$(unique dlq)

# nack → redelivery → dead letter
"$MSGBUS" pub -q "$topic" -H "traceparent=$TP" -H "tracestate=$TS" '{"order":9}' || fail "pub"
expect_exit 0 "sub --nack, retry_max_attempts=2" -- \
  "$MSGBUS" sub -q "$topic" -g g -n 2 -t 20000 --json --nack=bad -o "retry_max_attempts=2&retry_initial_ms=100&dlq_group=$dg"
check_trace "$WORK/out" "nack → redelivery" 2 "1 2"
expect_exit 0 "the nacked message's dead letter" -- "$MSGBUS" sub -q "$topic.dlq" -g "$dg" -n 1 -t 20000 --json
expect_grep '"msgbus-dlq-error":"bad"' "$WORK/out" "it is the nacked message's letter"
check_trace "$WORK/out" "nack past the last attempt → dead letter" 1

# sub --dead-letter → dead letter → dlq replay → sub
"$MSGBUS" pub -q "$topic" -H "traceparent=$TP" -H "tracestate=$TS" '{"order":10}' || fail "pub"
expect_exit 0 "sub --dead-letter" -- "$MSGBUS" sub -q "$topic" -g g -n 1 -t 20000 --dead-letter=poison -o "dlq_group=$dg"
expect_exit 0 "the letter, left for replay" -- "$MSGBUS" sub -q "$topic.dlq" -g "$dg" -n 1 -t 20000 --json --no-ack
check_trace "$WORK/out" "sub --dead-letter → dead letter" 1
expect_exit 0 "dlq replay" -- "$MSGBUS" dlq replay "$topic.dlq" -g "$dg" -t 3000
[ "$(cat "$WORK/out")" = 1 ] || fail "dlq replay printed '$(cat "$WORK/out")', expected 1"
expect_exit 0 "sub --json after the replay" -- "$MSGBUS" sub -q "$topic" -g g -n 1 -t 20000 --json
check_trace "$WORK/out" "dlq replay → sub" 1 "1"
echo "trace headers through the CLI on $backend (stores: ${stores[*]:-none}) passed"
