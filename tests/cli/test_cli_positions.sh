#!/usr/bin/env bash
# Integration (argument: amqp or kafka): issue 20 in the tool on a real
# broker — a missing topic is refused and not created (--create makes it),
# --format output byte for byte, -e exits with exactly what was there,
# ls shows the group's lag (Kafka, per partition) or ready count (RabbitMQ),
# --from-beginning / --since (Kafka: read again; RabbitMQ: one clear line),
# group reset (Kafka: earliest re-reads, latest skips, refused while a member
# is active; RabbitMQ: latest purges, earliest refused), doctor's
# capability table.
. "$(dirname "$0")/lib.sh"
backend=${1:?usage: $0 MSGBUS backend}
case $backend in
  amqp) need_env MSGBUS_TEST_AMQP_URL; export MSGBUS_URL=$MSGBUS_TEST_AMQP_URL ;;
  kafka) need_env MSGBUS_TEST_KAFKA_URL; export MSGBUS_URL=$MSGBUS_TEST_KAFKA_URL ;;
  *) fail "unknown backend $backend" ;;
esac

expect_one_line() {
  local n; n=$(wc -l < "$WORK/err")
  [ "$n" = 1 ] || { echo "--- stderr:"; cat "$WORK/err"; fail "$1: $n stderr lines, expected 1"; }
  pass "$1: one line"
}
# count_lines FILE N DESCRIPTION
count_lines() {
  local n; n=$(grep -c '' "$1")
  [ "$n" = "$2" ] || { echo "--- $1:"; cat "$1"; fail "$3: $n lines, expected $2"; }
  pass "$3: $n lines"
}
# json_check FILE PYTHON-EXPRESSION-ON-r DESCRIPTION
json_check() {
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); assert eval(sys.argv[2]), r' "$1" "$2" \
    || { cat "$1"; fail "$3"; }
  pass "$3"
}

# --- a mistyped topic is not created ----------------------------------
missing=$(unique missing)
expect_exit 1 "sub on a missing topic" -- "$MSGBUS" sub "$missing" -g g -n 1 -t 500
expect_grep "topic '$missing' does not exist" "$WORK/err" "the missing topic is named"
expect_grep "use --create or 'msgbus declare" "$WORK/err" "the way out is said"
expect_one_line "sub on a missing topic"
expect_exit 7 "still missing afterwards" -- "$MSGBUS" ls "$missing"
created=$(unique created)
expect_exit 5 "sub --create on a missing topic" -- "$MSGBUS" sub "$created" --create -n 1 -t 500
expect_exit 0 "--create made the topic" -- "$MSGBUS" ls "$created"
expect_grep "$created" "$WORK/out" "ls shows the created topic"

# --- publish, then --format, --json and -e -----------------------------
topic=$(unique pos)
for g in fmt json raw; do
  expect_exit 0 "declare group $g" -- "$MSGBUS" declare "$topic" "$g"
done
expect_exit 0 "pub keyed messages with a header" -- \
  "$MSGBUS" pub "$topic" -k k1 -H trace=t1 -H lang=en one two three
expect_exit 0 "pub more" -- "$MSGBUS" pub "$topic" -k k2 four five

expect_exit 0 "ls TOPIC GROUP" -- "$MSGBUS" ls "$topic" fmt
expect_grep "^$topic  *fmt  " "$WORK/out" "ls has a row for the group"
expect_exit 0 "ls --json" -- "$MSGBUS" ls "$topic" fmt --json
if [ "$backend" = kafka ]; then
  json_check "$WORK/out" 'r["topics"][0]["groups"][0]["lag"] == 5 and sum(p["lag"] for p in r["topics"][0]["groups"][0]["partitions"]) == 5' \
    "Kafka: the group's lag is 5, summed over its partitions"
  expect_grep "HIGH_WATERMARK" <("$MSGBUS" ls "$topic" fmt) "Kafka: ls prints the partitions table"
else
  json_check "$WORK/out" 'r["topics"][0]["groups"][0]["ready"] == 5' "RabbitMQ: 5 messages ready in the group's queue"
fi

fmt='%t|%k|%s|%h|%p|%o|%T|%i|%S|%K|%%\n'
start=$(date +%s%N)
"$MSGBUS" sub "$topic" -g fmt -e --format "$fmt" > "$WORK/fmt.out" 2>"$WORK/fmt.err" \
  || { cat "$WORK/fmt.err"; fail "sub -e --format"; }
ms=$(( ($(date +%s%N) - start) / 1000000 ))
count_lines "$WORK/fmt.out" 5 "sub -e --format printed every message once"
expect_grep "reached the end of '$topic'" "$WORK/fmt.err" "-e says it reached the end"
echo "sub -e took $ms ms"
"$MSGBUS" sub "$topic" -g json -e --json > "$WORK/json.out" 2>"$WORK/json.err" \
  || { cat "$WORK/json.err"; fail "sub -e --json"; }
count_lines "$WORK/json.out" 5 "sub -e --json"
python3 - "$WORK/json.out" "$WORK/fmt.out" "$backend" <<'PY' || fail "--format output"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
backend = sys.argv[3]
want = set()
for r in rows:
    h = ",".join(f"{k}={v}" for k, v in r["headers"].items())
    p = -1 if r["partition"] is None else r["partition"]
    o = -1 if r["offset"] is None else r["offset"]
    if backend == "kafka":
        assert p >= 0 and o >= 0, r
    else:
        assert p == -1 and o == -1, r
    want.add(f'{r["topic"]}|{r["key"]}|{r["payload"]}|{h}|{p}|{o}|{r["timestamp"]}|{r["id"]}|'
             f'{len(r["payload"])}|{len(r["key"])}|%')
got = open(sys.argv[2], "rb").read().decode()
assert got.endswith("\n") and "\n\n" not in got, repr(got)
lines = got[:-1].split("\n")
# The two groups read the same messages: same partitions, offsets, ids.
assert {l.split("|")[7] for l in lines} == {r["id"] for r in rows}, (lines, rows)
assert set(lines) == want, (sorted(lines), sorted(want))
assert {l.split("|")[2] for l in lines} == {"one", "two", "three", "four", "five"}
print("--format lines equal what --json says of the same messages:", len(lines))
PY
pass "--format prints topic, key, payload, headers, partition, offset, timestamp, id, sizes exactly"
if [ "$backend" = kafka ]; then
  [ "$ms" -lt 5000 ] || fail "Kafka: -e took $ms ms (should end on the partitions' ends, not idle)"
  pass "Kafka: -e ended on the partitions' ends ($ms ms)"
fi
expect_exit 0 "sub -e on a drained group" -- "$MSGBUS" sub "$topic" -g fmt -e
[ ! -s "$WORK/out" ] || fail "a drained group printed $(cat "$WORK/out")"
expect_grep "0 messages received" "$WORK/err" "nothing more for the group"
expect_exit 0 "ls after consuming" -- "$MSGBUS" ls "$topic" fmt --json
if [ "$backend" = kafka ]; then
  json_check "$WORK/out" 'r["topics"][0]["groups"][0]["lag"] == 0' "Kafka: lag 0 after consuming"
else
  json_check "$WORK/out" 'r["topics"][0]["groups"][0]["ready"] == 0' "RabbitMQ: nothing ready after consuming"
fi

# --- start positions ---------------------------------------------------
if [ "$backend" = kafka ]; then
  expect_exit 0 "broadcast --from-beginning -e" -- "$MSGBUS" sub "$topic" --from-beginning -e
  count_lines "$WORK/out" 5 "--from-beginning reads the whole topic"
  expect_exit 0 "new group --since -1h -e" -- "$MSGBUS" sub "$topic" -g since1 --since -1h -e
  count_lines "$WORK/out" 5 "--since -1h reads the last hour"
  expect_exit 0 "new group --since 1h (kcat's form) -e" -- "$MSGBUS" sub "$topic" -g since2 --since 1h -e
  count_lines "$WORK/out" 5 "--since 1h is taken as -1h"
  expect_exit 0 "new group --since a future time -e" -- \
    "$MSGBUS" sub "$topic" -g since3 --since 2099-01-01T00:00:00Z -e -t 2000
  count_lines "$WORK/out" 0 "--since after the last message reads nothing"
  expect_exit 0 "a new group without a start position reads nothing old" -- "$MSGBUS" sub "$topic" -g latest1 -e
  count_lines "$WORK/out" 0 "default start is latest"
else
  expect_exit 6 "RabbitMQ refuses --from-beginning" -- "$MSGBUS" sub "$topic" -g raw --from-beginning -e
  expect_grep "^msgbus sub: --from-beginning: not supported" "$WORK/err" "the flag is named"
  expect_grep "replay" "$WORK/err" "the reason is given"
  expect_one_line "--from-beginning on RabbitMQ"
  expect_exit 6 "RabbitMQ refuses --since" -- "$MSGBUS" sub "$topic" -g raw --since -15m -e
  expect_grep "^msgbus sub: --since: not supported" "$WORK/err" "--since named"
  expect_one_line "--since on RabbitMQ"
fi

# --- -e stops at the end as of start (Kafka) ------------------------------
# Messages published while `sub -e` runs are past that end: not printed,
# not acked, so the group's next run gets them. `sub` is held mid-way by a
# pipe nobody reads for 3 s (40 kB lines fill it), while a message goes to a
# partition it has already finished.
if [ "$backend" = kafka ]; then
  probe=$(unique probe)
  expect_exit 0 "probe keys" -- "$MSGBUS" pub "$probe" -K : k0:x k1:x k2:x k3:x k4:x k5:x
  "$MSGBUS" sub -q "$probe" --from-beginning -e -f '%k %p\n' > "$WORK/probe" || fail "probe sub"
  ka=$(head -1 "$WORK/probe" | cut -d' ' -f1); pa=$(head -1 "$WORK/probe" | cut -d' ' -f2)
  kb=$(awk -v p="$pa" '$2 != p {print $1; exit}' "$WORK/probe")
  [ -n "$kb" ] || { cat "$WORK/probe"; fail "no two keys in different partitions"; }
  pass "key $ka and key $kb go to different partitions"
  late=$(unique late)
  expect_exit 0 "declare the late group" -- "$MSGBUS" declare "$late" g
  head -c 40000 /dev/zero | tr '\0' x > "$WORK/big"
  expect_exit 0 "pub a small one" -- "$MSGBUS" pub "$late" -k "$ka" a1
  expect_exit 0 "pub three big ones" -- "$MSGBUS" pub "$late" -k "$kb" -f "$WORK/big" -n 3
  { "$MSGBUS" sub "$late" -g g -e -f '%k|%s|%S\n' 2>"$WORK/late.err"; echo "exit $?" >"$WORK/late.rc"; } \
    | { sleep 3; cat; } > "$WORK/late.out" &
  latepipe=$!; PIDS+=($latepipe)
  sleep 1
  expect_exit 0 "pub during the run, to a finished partition" -- "$MSGBUS" pub "$late" -k "$ka" a2
  wait $latepipe
  grep -q "exit 0" "$WORK/late.rc" || { cat "$WORK/late.err"; fail "sub -e exit $(cat "$WORK/late.rc")"; }
  count_lines "$WORK/late.out" 4 "sub -e printed what was there at start"
  grep -q "|a2|" "$WORK/late.out" && fail "a message published during the run was printed"
  pass "a message past the end was not printed"
  expect_exit 0 "the next run" -- "$MSGBUS" sub "$late" -g g -e -f '%s\n'
  [ "$(cat "$WORK/out")" = a2 ] || { cat "$WORK/out"; fail "next run: expected only a2"; }
  pass "the message past the end is read by the group's next run"
fi

# --- group reset -------------------------------------------------------
if [ "$backend" = kafka ]; then
  expect_exit 0 "reset to earliest" -- "$MSGBUS" group reset "$topic" fmt --to earliest
  expect_grep "moved to earliest" "$WORK/err" "reset says what it did"
  expect_exit 0 "ls shows the lag back" -- "$MSGBUS" ls "$topic" fmt --json
  json_check "$WORK/out" 'r["topics"][0]["groups"][0]["lag"] == 5' "lag 5 after reset to earliest"
  expect_exit 0 "the group reads again" -- "$MSGBUS" sub "$topic" -g fmt -e
  count_lines "$WORK/out" 5 "earliest: every message again"
  expect_exit 0 "reset to -1h" -- "$MSGBUS" group reset "$topic" fmt --to -1h
  expect_exit 0 "reset to latest" -- "$MSGBUS" group reset "$topic" fmt --to latest
  expect_exit 0 "nothing after latest" -- "$MSGBUS" sub "$topic" -g fmt -e
  count_lines "$WORK/out" 0 "latest: nothing to read"
  # A member is active: refused, naming it.
  "$MSGBUS" sub "$topic" -g fmt >/dev/null 2>"$WORK/member.err" &
  member=$!; PIDS+=($member)
  for _ in $(seq 150); do grep -q "subscribed to" "$WORK/member.err" && break; sleep 0.1; done
  grep -q "subscribed to" "$WORK/member.err" || { cat "$WORK/member.err"; fail "member did not subscribe"; }
  expect_exit 7 "reset while a member is active" -- "$MSGBUS" group reset "$topic" fmt --to earliest
  expect_grep "active member" "$WORK/err" "the active member is named"
  expect_one_line "reset refused"
  kill -TERM $member; wait $member
else
  expect_exit 0 "pub 3 for the purge" -- "$MSGBUS" pub "$topic" p1 p2 p3
  expect_exit 0 "ls: 3 ready" -- "$MSGBUS" ls "$topic" raw --json
  json_check "$WORK/out" 'r["topics"][0]["groups"][0]["ready"] == 3 + 5' "RabbitMQ: 8 ready in group raw"
  expect_exit 6 "RabbitMQ refuses earliest" -- "$MSGBUS" group reset "$topic" raw --to earliest
  expect_grep "not supported" "$WORK/err" "refusal said"
  expect_one_line "reset to earliest on RabbitMQ"
  expect_exit 0 "RabbitMQ: latest purges" -- "$MSGBUS" group reset "$topic" raw --to latest
  expect_exit 0 "ls after the purge" -- "$MSGBUS" ls "$topic" raw --json
  json_check "$WORK/out" 'r["topics"][0]["groups"][0]["ready"] == 0' "RabbitMQ: nothing ready after the purge"
  expect_exit 0 "nothing to read after the purge" -- "$MSGBUS" sub "$topic" -g raw -e
  count_lines "$WORK/out" 0 "purged group reads nothing"
  expect_exit 6 "RabbitMQ cannot list every topic" -- "$MSGBUS" ls
  expect_one_line "ls without a topic on RabbitMQ"
fi

# --- doctor: the capability table --------------------------------------
expect_exit 0 "doctor" -- "$MSGBUS" doctor -t 30000
if [ "$backend" = kafka ]; then
  expect_grep "^cap  *replay  *yes" "$WORK/out" "Kafka can replay"
  expect_grep "^cap  *positions  *yes" "$WORK/out" "Kafka has positions"
  expect_grep "^cap  *delayed  *no  .*Kafka" "$WORK/out" "Kafka's no says why"
else
  expect_grep "^cap  *replay  *no  .*RabbitMQ" "$WORK/out" "RabbitMQ cannot replay, and says why"
  expect_grep "^cap  *redelivered  *yes" "$WORK/out" "RabbitMQ has the redelivered flag"
fi
expect_exit 0 "doctor --json" -- "$MSGBUS" doctor -t 30000 --json
json_check "$WORK/out" "r['ok'] and r['capabilities']['backend'] == '$backend' and len(r['capabilities']['capabilities']) == 10" \
  "doctor --json carries the capability table"
echo "positions, ls, group reset and doctor on $backend passed"
