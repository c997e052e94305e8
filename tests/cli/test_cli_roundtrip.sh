#!/usr/bin/env bash
# Integration: `msgbus pub | msgbus sub` round trip on a real broker
# (argument: amqp or kafka). Messages from arguments, stdin lines and a
# binary file, with keys and headers, come out of `sub --json` as they went
# in; a second group gets its own copy; raw output is the payloads.
. "$(dirname "$0")/lib.sh"
backend=${1:?usage: $0 MSGBUS backend}
case $backend in
  amqp) need_env MSGBUS_TEST_AMQP_URL; export MSGBUS_URL=$MSGBUS_TEST_AMQP_URL ;;
  kafka) need_env MSGBUS_TEST_KAFKA_URL; export MSGBUS_URL=$MSGBUS_TEST_KAFKA_URL ;;
  *) fail "unknown backend $backend" ;;
esac
topic=$(unique rt)
expect_exit 0 "declare group a" -- "$MSGBUS" declare "$topic" a
expect_exit 0 "declare group b" -- "$MSGBUS" declare "$topic" b

expect_exit 0 "pub arguments with key and headers" -- \
  "$MSGBUS" pub "$topic" -k k1 -H content-type=text/plain -H trace=abc "héllo" "two words"
printf 'k2:line one\nk3:line two\n' > "$WORK/lines"
expect_exit 0 "pub stdin lines with -K" -- sh -c "\"$MSGBUS\" pub \"$topic\" -K : < \"$WORK/lines\""
printf '\x00\xff\xfebinary' > "$WORK/blob"
expect_exit 0 "pub a binary file" -- "$MSGBUS" pub "$topic" -f "$WORK/blob"

# A pipe: pub's stdin is another command's output.
seq 1 100 | "$MSGBUS" pub -q "$topic" -k seq || fail "seq | pub"
pass "seq 1 100 | msgbus pub"

"$MSGBUS" sub "$topic" -g a -n 105 -t 20000 --json > "$WORK/a.json" 2>"$WORK/a.err" \
  || { cat "$WORK/a.err"; fail "sub group a"; }
pass "sub --json received 105 on group a"
python3 - "$WORK/a.json" "$topic" <<'PY' || fail "JSON lines of group a"
import base64, json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
topic = sys.argv[2]
assert len(rows) == 105, len(rows)
for r in rows:
    assert set(r) >= {"topic", "group", "id", "key", "attempt", "timestamp", "headers", "payload"}, r
    assert r["topic"] == topic and r["group"] == "a" and r["attempt"] == 1, r
    assert r["id"] and r["timestamp"] > 0, r
by = {r["payload"]: r for r in rows}
assert by["héllo"]["key"] == "k1", by["héllo"]
assert by["héllo"]["headers"] == {"content-type": "text/plain", "trace": "abc"}, by["héllo"]
assert by["two words"]["key"] == "k1"
assert by["line one"]["key"] == "k2" and by["line two"]["key"] == "k3"
blob = [r for r in rows if r.get("payload_encoding") == "base64"]
assert len(blob) == 1 and base64.b64decode(blob[0]["payload"]) == b"\x00\xff\xfebinary", blob
seq = [int(r["payload"]) for r in rows if r["key"] == "seq"]
assert seq == list(range(1, 101)), seq  # one key: in order
assert len({r["id"] for r in rows}) == 105
print("group a: 105 messages, keys, headers, base64 payload and per-key order as published")
PY
pass "JSON lines match what was published"

"$MSGBUS" sub "$topic" -g b -n 105 -t 20000 > "$WORK/b.raw" 2>"$WORK/b.err" \
  || { cat "$WORK/b.err"; fail "sub group b"; }
grep -c . "$WORK/b.raw" >/dev/null
grep -qx "héllo" "$WORK/b.raw" && grep -qx "line two" "$WORK/b.raw" && grep -qx "100" "$WORK/b.raw" \
  || { cat "$WORK/b.raw"; fail "raw output of group b"; }
pass "group b got its own copy, raw payloads"

# Acked messages are gone: nothing more for group a.
expect_exit 5 "group a is empty after acking" -- "$MSGBUS" sub "$topic" -g a -n 1 -t 3000
# --no-ack leaves a message to be delivered again.
"$MSGBUS" pub -q "$topic" again || fail "pub again"
expect_exit 0 "sub --no-ack" -- "$MSGBUS" sub "$topic" -g a -n 1 -t 20000 --no-ack
expect_exit 0 "the unacked message comes again" -- "$MSGBUS" sub "$topic" -g a -n 1 -t 20000 --json
expect_grep '"payload":"again"' "$WORK/out" "redelivered message after --no-ack"
echo "round trip on $backend passed"
