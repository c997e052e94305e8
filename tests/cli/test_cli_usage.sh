#!/usr/bin/env bash
# Unit (no broker): the tool's answers to mistakes — one stderr line per
# mistake, "did you mean" for commands, subcommands and options, every
# command's --help (version too) — the checks `sub` makes before it
# consumes (--format, exclusive flags), and on mem:// the capability table
# of `doctor` (text and --json), `sub -e`, `ls` and `group reset`.
. "$(dirname "$0")/lib.sh"
export MSGBUS_URL=

# expect_one_line DESCRIPTION: the last command's stderr is exactly one line.
expect_one_line() {
  local n; n=$(wc -l < "$WORK/err")
  [ "$n" = 1 ] || { echo "--- stderr:"; cat "$WORK/err"; fail "$1: $n stderr lines, expected 1"; }
  pass "$1: one line"
}

for c in pub sub declare ls group outbox dlq bench doctor version; do
  expect_exit 0 "$c --help" -- "$MSGBUS" $c --help
  expect_grep "^usage: msgbus $c" "$WORK/out" "$c --help prints its usage"
done
expect_exit 0 "group reset --help" -- "$MSGBUS" group reset --help
expect_grep "^usage: msgbus group reset" "$WORK/out" "group reset --help"
expect_exit 0 "help version" -- "$MSGBUS" help version
expect_grep "^usage: msgbus version" "$WORK/out" "help version prints version's usage"
expect_exit 0 "version" -- "$MSGBUS" version
expect_grep "^msgbus [0-9]" "$WORK/out" "version prints the version"
expect_exit 1 "version with an argument" -- "$MSGBUS" version extra
expect_one_line "version extra"

# Typos: one line each, with the closest name.
expect_exit 1 "mistyped command" -- "$MSGBUS" sbu t
expect_grep "unknown command 'sbu'; did you mean 'sub'?" "$WORK/err" "command typo suggests sub"
expect_one_line "mistyped command"
expect_exit 1 "mistyped command 2" -- "$MSGBUS" doctr
expect_grep "did you mean 'doctor'?" "$WORK/err" "command typo suggests doctor"
expect_exit 1 "unknown command, nothing close" -- "$MSGBUS" frobnicate
expect_grep "unknown command 'frobnicate'" "$WORK/err" "unknown command named"
if grep -q "did you mean" "$WORK/err"; then fail "a suggestion for a word close to nothing"; fi
expect_one_line "unknown command"
expect_exit 1 "mistyped subcommand of outbox" -- "$MSGBUS" outbox rely x
expect_grep "did you mean 'relay'?" "$WORK/err" "outbox rely -> relay"
expect_one_line "outbox rely"
expect_exit 1 "mistyped subcommand of group" -- "$MSGBUS" group rest t g --to latest
expect_grep "did you mean 'reset'?" "$WORK/err" "group rest -> reset"
expect_exit 1 "mistyped subcommand of dlq" -- "$MSGBUS" dlq rpelay t
expect_grep "did you mean 'replay'?" "$WORK/err" "dlq rpelay -> replay"
expect_exit 1 "mistyped long option" -- "$MSGBUS" sub --from-begining t
expect_grep "unknown option '--from-begining'; did you mean '--from-beginning'?" "$WORK/err" \
  "option typo suggests --from-beginning"
expect_one_line "mistyped long option"
expect_exit 1 "mistyped long option of pub" -- "$MSGBUS" pub --hedaer a=b t x
expect_grep "did you mean '--header'?" "$WORK/err" "--hedaer -> --header"
expect_one_line "pub --hedaer (getopt's own message is not printed too)"
expect_exit 1 "unknown short option" -- "$MSGBUS" pub -Z t x
expect_grep "unknown option '-Z'" "$WORK/err" "short option named"
expect_one_line "unknown short option"
expect_exit 1 "ambiguous abbreviation" -- "$MSGBUS" sub --n t
expect_grep "ambiguous: --no-ack, --nack" "$WORK/err" "ambiguous abbreviation lists the candidates"
expect_one_line "ambiguous abbreviation"
expect_exit 1 "missing value" -- "$MSGBUS" sub t --count
expect_grep "option '--count' needs a value" "$WORK/err" "missing value said"
expect_one_line "missing value"
expect_exit 1 "value for a flag" -- "$MSGBUS" sub --json=yes t
expect_grep "option '--json' takes no value" "$WORK/err" "flag given a value"
expect_exit 1 "bad number" -- "$MSGBUS" sub t -t abc
expect_grep "must be an integer 0..86400000 ms, not 'abc'" "$WORK/err" "range and value named"
expect_one_line "bad --timeout (was two lines)"
expect_exit 1 "bad doctor timeout" -- "$MSGBUS" doctor -t 0
expect_one_line "doctor -t 0"
expect_exit 1 "missing topic" -- "$MSGBUS" sub
expect_one_line "missing TOPIC"

# sub's own checks, before any broker is asked.
expect_exit 1 "unknown --format conversion" -- "$MSGBUS" sub -u mem:// t --format '%s %x'
expect_grep "unknown conversion '%x'" "$WORK/err" "conversion named"
expect_one_line "--format conversion"
expect_exit 1 "unknown --format escape" -- "$MSGBUS" sub -u mem:// t --format '%s\q'
expect_grep "unknown escape" "$WORK/err" "escape named"
expect_exit 1 "--json and --format" -- "$MSGBUS" sub -u mem:// t --json --format '%s'
expect_exit 1 "--from-beginning and --since" -- "$MSGBUS" sub -u mem:// t --from-beginning --since -5m
expect_grep "exclude each other" "$WORK/err" "exclusive start flags"
expect_exit 1 "--from-beginning and start= in --options" -- \
  "$MSGBUS" sub -u mem:// t --from-beginning -o start=latest
expect_exit 1 "group reset without --to" -- "$MSGBUS" group reset -u mem:// t g
expect_grep "needs --to" "$WORK/err" "--to is required"

# doctor: the capability table of mem://, as text and as JSON.
expect_exit 0 "doctor on mem://" -- "$MSGBUS" doctor -u mem://doc
for cap in key_order replay durable shared positions redelivered no_duplicate_publish list delayed lag; do
  expect_grep "^cap  *$cap  *\(yes\|no\)  " "$WORK/out" "doctor shows capability $cap"
done
expect_grep "^cap  *durable  *no  " "$WORK/out" "mem:// is not durable"
expect_grep "all checks passed" "$WORK/out" "doctor still checks the broker"
expect_exit 0 "doctor --json on mem://" -- "$MSGBUS" doctor -u mem://doc --json
python3 - "$WORK/out" <<'PY' || fail "doctor --json"
import json, sys
lines = open(sys.argv[1]).read().splitlines()
assert len(lines) == 1, lines
r = json.loads(lines[0])
assert r["ok"] is True and r["url"] == "mem://doc" and r["url_source"] == "--url", r
assert [s["step"] for s in r["steps"]] == ["connect", "declare", "subscribe", "publish", "consume"], r["steps"]
assert all(s["ok"] for s in r["steps"]), r["steps"]
caps = r["capabilities"]
assert caps["backend"] == "mem", caps
names = [c["name"] for c in caps["capabilities"]]
assert names == ["key_order", "replay", "durable", "shared", "positions", "redelivered",
                 "no_duplicate_publish", "list", "delayed", "lag"], names
for c in caps["capabilities"]:
    assert c["supported"] or c["why_not"], c
assert r["final"]["state"] == "UP", r["final"]
print("doctor --json:", len(names), "capabilities,", len(r["steps"]), "steps")
PY
pass "doctor --json has the steps, the capabilities and the final state"
expect_exit 2 "doctor --json, broker unreachable" -- "$MSGBUS" doctor --json -u amqp://guest:guest@127.0.0.1:1/
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); assert r["ok"] is False and r["steps"][0]["error"]=="MSGBUS_ERR_CONNECT" and r["final"]["state"]=="DOWN", r' "$WORK/out" \
  || { cat "$WORK/out"; fail "doctor --json after a failed connect"; }
pass "doctor --json says what failed"

# sub -e on mem:// (no positions): the queue is drained after 1000 ms idle.
start=$(date +%s%N)
expect_exit 0 "sub -e on mem://" -- "$MSGBUS" sub -u mem:// t -g g -e
ms=$(( ($(date +%s%N) - start) / 1000000 ))
expect_grep "reached the end of 't'" "$WORK/err" "sub -e says it reached the end"
[ "$ms" -lt 10000 ] || fail "sub -e on an empty mem:// topic took $ms ms"
pass "sub -e ended after $ms ms"
expect_exit 0 "sub -e -t 200" -- "$MSGBUS" sub -u mem:// t -e -t 200

# ls and group reset on mem:// (a fresh process holds no topics).
expect_exit 0 "ls on mem://" -- "$MSGBUS" ls -u mem://
expect_grep "(no topics)" "$WORK/out" "ls says there is nothing"
expect_exit 0 "ls --json on mem://" -- "$MSGBUS" ls -u mem:// --json
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); assert r["topics"] == [], r' "$WORK/out" \
  || fail "ls --json on an empty mem://"
expect_exit 7 "ls of a missing topic" -- "$MSGBUS" ls -u mem:// nosuch
expect_grep "topic 'nosuch'" "$WORK/err" "ls names the missing topic"
expect_one_line "ls nosuch"
expect_exit 7 "group reset of a missing topic" -- "$MSGBUS" group reset -u mem:// nosuch g --to latest
expect_one_line "group reset nosuch"
echo "all CLI usage checks passed"
