#!/usr/bin/env bash
# Integration: dead letters from the shell on a real broker (argument: amqp
# or kafka). `sub --dead-letter` sends messages to <topic>.dlq with the
# msgbus-dlq-* headers; `dlq replay` moves them back (same ids, attempt 1,
# key kept, dlq headers gone); `sub --nack` with retry_max_attempts=2 gets a
# message twice, then finds it dead-lettered with the reason given.
. "$(dirname "$0")/lib.sh"
backend=${1:?usage: $0 MSGBUS backend}
case $backend in
  amqp) need_env MSGBUS_TEST_AMQP_URL; export MSGBUS_URL=$MSGBUS_TEST_AMQP_URL ;;
  kafka) need_env MSGBUS_TEST_KAFKA_URL; export MSGBUS_URL=$MSGBUS_TEST_KAFKA_URL ;;
  *) fail "unknown backend $backend" ;;
esac
topic=$(unique dlq)
"$MSGBUS" declare "$topic" g 2>/dev/null || fail "declare"
"$MSGBUS" pub -q "$topic" -k k1 -H trace=t1 m1 m2 || fail "pub"

expect_exit 0 "sub --dead-letter" -- "$MSGBUS" sub -q "$topic" -g g -n 2 -t 20000 --dead-letter=poison
# Look at the letters without taking them: --no-ack leaves them for replay.
expect_exit 0 "the letters are on $topic.dlq" -- \
  "$MSGBUS" sub -q "$topic.dlq" -g dlq -n 2 -t 20000 --json --no-ack
cp "$WORK/out" "$WORK/letters"
python3 - "$WORK/letters" "$topic" <<'PY' || fail "dead letters"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
topic = sys.argv[2]
assert [r["payload"] for r in rows] == ["m1", "m2"], rows
for r in rows:
    h = r["headers"]
    assert r["key"] == "k1" and h["trace"] == "t1", r
    assert h["msgbus-dlq-topic"] == topic and h["msgbus-dlq-group"] == "g", h
    assert h["msgbus-dlq-error"] == "poison" and h["msgbus-dlq-attempts"] == "1", h
print("dead letters carry payload, key, headers and the msgbus-dlq-* headers")
PY
pass "dead letters as documented"

expect_exit 0 "dlq replay" -- "$MSGBUS" dlq replay "$topic.dlq" -t 3000
[ "$(cat "$WORK/out")" = 2 ] || fail "dlq replay printed '$(cat "$WORK/out")', expected 2"
pass "dlq replay moved 2"
expect_exit 0 "replayed messages are back on $topic" -- "$MSGBUS" sub -q "$topic" -g g -n 2 -t 20000 --json
python3 - "$WORK/out" "$WORK/letters" <<'PY' || fail "replayed messages"
import json, sys
back = [json.loads(l) for l in open(sys.argv[1])]
letters = [json.loads(l) for l in open(sys.argv[2])]
assert [r["id"] for r in back] == [r["id"] for r in letters], (back, letters)
for r in back:
    assert r["attempt"] == 1 and r["key"] == "k1" and r["headers"] == {"trace": "t1"}, r
print("replayed: same ids, attempt 1, key and application headers kept, dlq headers gone")
PY
pass "replay as documented"
expect_exit 5 "the dead-letter topic is empty after replay" -- "$MSGBUS" sub -q "$topic.dlq" -g dlq -n 1 -t 3000

# nack: delivered again with attempt 2, then dead-lettered with the reason.
"$MSGBUS" pub -q "$topic" m3 || fail "pub m3"
expect_exit 0 "sub --nack with retry_max_attempts=2" -- \
  "$MSGBUS" sub -q "$topic" -g g -n 2 -t 20000 --json --nack=bad -o 'retry_max_attempts=2&retry_initial_ms=100'
python3 - "$WORK/out" <<'PY' || fail "nacked deliveries"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
assert [(r["payload"], r["attempt"]) for r in rows] == [("m3", 1), ("m3", 2)], rows
assert rows[0]["id"] == rows[1]["id"], rows
assert rows[1]["key"] is None, "a message without key came back with key %r" % rows[1]["key"]
print("nacked: the same message again with attempt 2, unchanged")
PY
pass "nack redelivers with attempt + 1"
expect_exit 0 "the nacked message is dead-lettered" -- "$MSGBUS" sub -q "$topic.dlq" -g dlq -n 1 -t 20000 --json
expect_grep '"msgbus-dlq-error":"bad"' "$WORK/out" "the letter has the nack reason"
expect_grep '"msgbus-dlq-attempts":"2"' "$WORK/out" "the letter counts 2 deliveries"
echo "dead letters and replay on $backend passed"
