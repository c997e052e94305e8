#!/usr/bin/env bash
# Unit (no broker): help on every command, usage and configuration errors
# with their exit codes, doctor and bench on mem://, the outbox commands
# on SQLite with a mem:// bus.
. "$(dirname "$0")/lib.sh"
export MSGBUS_URL=

expect_exit 0 "msgbus --help" -- "$MSGBUS" --help
expect_grep "outbox relay" "$WORK/out" "top-level help lists the commands"
for c in pub sub declare outbox dlq bench doctor; do
  expect_exit 0 "$c --help" -- "$MSGBUS" $c --help
  expect_grep "^usage: msgbus $c" "$WORK/out" "$c --help prints its usage"
  expect_grep "exit" "$WORK/out" "$c --help documents exit codes"
done
expect_exit 0 "msgbus help sub" -- "$MSGBUS" help sub
expect_grep "^usage: msgbus sub" "$WORK/out" "help COMMAND"

expect_exit 1 "unknown command" -- "$MSGBUS" frobnicate
expect_grep "unknown command 'frobnicate'" "$WORK/err" "unknown command is named"
expect_exit 1 "unknown option" -- "$MSGBUS" pub --bogus t x
expect_exit 1 "pub without a topic" -- "$MSGBUS" pub
expect_grep "missing TOPIC" "$WORK/err" "missing topic is said"
expect_exit 1 "bad --count" -- "$MSGBUS" sub t --count=abc
expect_grep "non-negative integer" "$WORK/err" "bad number is said"
expect_exit 1 "pub with MSGBUS_URL unset" -- "$MSGBUS" pub t hello
expect_grep "MSGBUS_URL is not set" "$WORK/err" "unset URL is said"
expect_exit 1 "unknown URL option" -- "$MSGBUS" pub -u "mem://?prefetsh=1" t hello
expect_grep "prefetsh" "$WORK/err" "unknown URL option is named"
expect_exit 1 "bad header" -- "$MSGBUS" pub -u mem:// t -H novalue x
expect_exit 1 "reserved header" -- "$MSGBUS" pub -u mem:// t -H msgbus-x=1 x
expect_grep "reserved\|msgbus-" "$WORK/err" "reserved header refused with its reason"

# pub on mem:// (nobody subscribed in this process: the broker confirms)
expect_exit 0 "pub arguments on mem://" -- "$MSGBUS" pub -u mem:// t a b c
expect_grep "3 published to 't', 3 confirmed" "$WORK/err" "pub counts what it published"
printf 'l1\nl2\n' > "$WORK/lines"
expect_exit 0 "pub stdin lines, --count cycles" -- sh -c "\"$MSGBUS\" pub -u mem:// t -n 5 < \"$WORK/lines\""
expect_grep "5 published" "$WORK/err" "--count 5 from 2 lines publishes 5"
expect_exit 5 "sub --count with --timeout and nothing to read" -- "$MSGBUS" sub -u mem:// t -g g -n 1 -t 300
expect_grep "0 of 1 messages received" "$WORK/err" "sub says how many it missed"

expect_exit 0 "doctor on mem://" -- "$MSGBUS" doctor -u mem://doc
expect_grep "all checks passed" "$WORK/out" "doctor passes on mem://"
expect_exit 0 "doctor redacts passwords" -- env MSGBUS_KAFKA_SASL_PASSWORD=hunter2 "$MSGBUS" doctor -u mem://doc
if grep -q hunter2 "$WORK/out" "$WORK/err"; then fail "doctor printed a password"; fi
expect_grep "MSGBUS_KAFKA_SASL_PASSWORD=\*\*\*" "$WORK/out" "doctor shows the variable, redacted"

expect_exit 0 "bench on mem:// (not a terminal: JSON)" -- "$MSGBUS" bench -u mem:// -n 2000 -s 64
python3 - "$WORK/out" <<'PY' || fail "bench JSON summary"
import json, sys
lines = open(sys.argv[1]).read().splitlines()
assert len(lines) == 1, lines
r = json.loads(lines[0])
assert r["count"] == 2000 and r["received"] == 2000, r
assert r["publish_msgs_per_s"] > 0 and r["consume_msgs_per_s"] > 0, r
assert 0 < r["p50_us"] <= r["p90_us"] <= r["p99_us"] <= r["max_us"], r
print("bench:", lines[0])
PY
pass "bench prints one JSON line with throughput and ordered percentiles"

# outbox commands: SQLite store, mem:// bus.
db="$WORK/app.db"
expect_exit 4 "relay on a missing database" -- "$MSGBUS" outbox relay -u mem:// "sqlite://$WORK/none.db" --once
expect_exit 1 "bad store string" -- "$MSGBUS" outbox relay -u mem:// "mysql://x" --once
expect_grep "STORE must be" "$WORK/err" "bad store is said"
expect_exit 0 "outbox put" -- "$MSGBUS" outbox put "sqlite://$db" orders -k c1 -n 300 one two
expect_exit 0 "outbox stats" -- "$MSGBUS" outbox stats "sqlite://$db"
expect_grep '"pending":300' "$WORK/out" "300 rows pending"
expect_exit 0 "relay --once" -- "$MSGBUS" outbox relay -u mem:// "sqlite://$db" --once
expect_grep "300 rows relayed" "$WORK/err" "relay --once relays all"
"$MSGBUS" outbox stats "sqlite://$db" > "$WORK/stats"
expect_grep '"pending":0' "$WORK/stats" "nothing pending after relay --once"

# The relay process: SIGTERM → finishes the pass, exits 0.
"$MSGBUS" outbox put -q "sqlite://$db" orders -n 5000 x || fail "put 5000"
"$MSGBUS" outbox relay -u mem:// "sqlite://$db" --batch 100 2>"$WORK/relay.err" &
relay=$!; PIDS+=($relay)
for _ in $(seq 100); do
  "$MSGBUS" outbox stats "sqlite://$db" | grep -q '"pending":0,' && break
  sleep 0.1
done
kill -TERM $relay
for _ in $(seq 100); do kill -0 $relay 2>/dev/null || break; sleep 0.1; done
kill -0 $relay 2>/dev/null && fail "relay still running 10 s after SIGTERM"
wait $relay; rc=$?
[ $rc = 0 ] || { cat "$WORK/relay.err"; fail "relay exit code $rc after SIGTERM"; }
expect_grep "SIGTERM: finishing the pass in flight" "$WORK/relay.err" "relay says it drains"
pass "relay exits 0 after SIGTERM"
"$MSGBUS" outbox stats "sqlite://$db" > "$WORK/stats"
expect_grep '"pending":0,"failed":0' "$WORK/stats" "relay process emptied the outbox"
echo "all CLI basics passed"
