#!/usr/bin/env bash
# The CloudEvents attributes in the tool (issue 21, docs/interop.md).
#   mem (unit): pub --type/--source/--subject are checked before anything
#   is opened (one line naming the flag), -H refuses the attribute names,
#   --help and --format know the flags and %y %u %j.
#   amqp | kafka (integration): what pub sets comes out of sub --json and
#   --format; unset, type is the topic and source the URL's ce_source; a
#   structured publish (cloudevents=structured) arrives unpacked; on Kafka
#   kcat sees the ce_ headers and the structured JSON as msgbus wrote them;
#   CloudEvents written by hand with kcat -P / amqp-publish are read; with
#   sqlite, outbox put --type/--source/--subject survive the relay.
. "$(dirname "$0")/lib.sh"
mode=${1:?usage: $0 MSGBUS mem|amqp|kafka [sqlite]}
store=${2:-}  # "sqlite": the build has the SQLite outbox (outbox put → relay)

expect_one_line() {
  local n; n=$(wc -l < "$WORK/err")
  [ "$n" = 1 ] || { echo "--- stderr:"; cat "$WORK/err"; fail "$1: $n stderr lines, expected 1"; }
  pass "$1: one line"
}
# with_opt URL OPT=VALUE: the URL with one more query option.
with_opt() {
  case $1 in *\?*) echo "$1&$2" ;; *) echo "$1?$2" ;; esac
}

if [ "$mode" = mem ]; then
  export MSGBUS_URL=
  expect_exit 0 "pub --help" -- "$MSGBUS" pub --help
  for f in --type --source --subject; do
    expect_grep "  *$f " "$WORK/out" "pub --help documents $f"
  done
  expect_exit 0 "sub --help" -- "$MSGBUS" sub --help
  expect_grep "%y type, %u source, %j subject" "$WORK/out" "sub --help documents %y %u %j"
  expect_grep "timestamp, type, source, subject" "$WORK/out" "sub --help: --json has them"

  expect_exit 0 "pub --type --source --subject on mem://" -- \
    "$MSGBUS" pub -u mem:// t --type com.example.order.created --source //shop/orders \
    --subject "order/é 42" a b
  expect_grep "2 published to 't', 2 confirmed" "$WORK/err" "both messages confirmed"

  # Each bad value: exit 1, one line that names the flag and the rule.
  expect_exit 1 "--type with a control character" -- \
    "$MSGBUS" pub -u mem:// t --type "$(printf 'a\001b')" x
  expect_one_line "--type with a control character"
  expect_grep "^msgbus pub: --type: invalid CloudEvents type" "$WORK/err" "the flag is named"
  expect_exit 1 "empty --subject" -- "$MSGBUS" pub -u mem:// t --subject "" x
  expect_grep "^msgbus pub: --subject: .*1..1024 bytes" "$WORK/err" "the rule is said"
  long=$(printf 's%.0s' $(seq 1025))
  expect_exit 1 "--source of 1025 bytes" -- "$MSGBUS" pub -u mem:// t --source "$long" x
  expect_one_line "--source of 1025 bytes"
  expect_exit 0 "--source of 1024 bytes" -- "$MSGBUS" pub -u mem:// t --source "${long:1}" x
  expect_exit 1 "--type that is not UTF-8" -- "$MSGBUS" pub -u mem:// t --type "$(printf '\xff')" x
  # Checked before the URL: a bad value is a usage error even without a bus.
  expect_exit 1 "bad --type without a URL" -- "$MSGBUS" pub t --type "" x
  expect_grep "^msgbus pub: --type:" "$WORK/err" "the value is checked before connecting"
  expect_exit 1 "ambiguous --s" -- "$MSGBUS" pub -u mem:// t --s x y
  expect_grep "ambiguous: --source, --subject" "$WORK/err" "--s names both candidates"

  # The attribute names under every binding's prefix belong to msgbus.
  for h in ce_type cloudEvents_source cloudEvents:id ce-subject ce_time ce_specversion; do
    expect_exit 1 "-H $h refused" -- "$MSGBUS" pub -u mem:// t -H "$h=x" y
    expect_one_line "-H $h refused"
    expect_grep "^msgbus pub: -H $h: .*CloudEvents attribute" "$WORK/err" "-H $h: the reason"
  done
  # An extension attribute is an ordinary header.
  expect_exit 0 "-H ce_tenant (an extension) allowed" -- "$MSGBUS" pub -u mem:// t -H ce_tenant=acme y

  # outbox put checks them the same way, before the store is opened.
  expect_exit 1 "outbox put --type ''" -- "$MSGBUS" outbox put sqlite:///nonexistent/x.db t --type "" x
  expect_grep "^msgbus outbox put: --type:" "$WORK/err" "outbox put names the flag"
  expect_exit 1 "outbox relay --type" -- "$MSGBUS" outbox relay -u mem:// sqlite:///nonexistent/x.db --type t
  expect_grep "are for 'outbox put'" "$WORK/err" "a message option on relay is refused, not ignored"

  expect_exit 0 "--format with %y %u %j" -- \
    "$MSGBUS" sub -u mem:// t -g g -e -t 100 --format '%i %y %u %j\n'
  expect_exit 1 "--format %x still unknown" -- "$MSGBUS" sub -u mem:// t --format '%x'
  expect_grep "%y %u %j" "$WORK/err" "the known conversions list the CloudEvents ones"
  echo "cli cloudevents (mem) passed"
  exit 0
fi

case $mode in
  amqp) need_env MSGBUS_TEST_AMQP_URL; base=$MSGBUS_TEST_AMQP_URL ;;
  kafka) need_env MSGBUS_TEST_KAFKA_URL; base=$MSGBUS_TEST_KAFKA_URL ;;
  *) fail "unknown mode $mode" ;;
esac
export MSGBUS_URL=$base
topic=$(unique ce)
src_opt="//cli-test/$mode"
expect_exit 0 "declare group a" -- "$MSGBUS" declare "$topic" a
expect_exit 0 "declare group b" -- "$MSGBUS" declare "$topic" b

# 1: all three set; 2: none (type = topic, source = ce_source of the URL);
# 3: none, plain URL (source //HOST/msgbus); 4: structured, all three set.
expect_exit 0 "pub --type --source --subject" -- "$MSGBUS" pub "$topic" -k k1 \
  --type com.example.order.created --source //shop/orders --subject "order/é 42" \
  -H content-type=application/json '{"n":1}'
expect_exit 0 "pub with ce_source in the URL" -- \
  "$MSGBUS" pub -u "$(with_opt "$base" "ce_source=$src_opt")" "$topic" -k k1 two
expect_exit 0 "pub with the defaults" -- "$MSGBUS" pub "$topic" -k k1 three
expect_exit 0 "pub cloudevents=structured" -- \
  "$MSGBUS" pub -u "$(with_opt "$base" cloudevents=structured)" "$topic" -k k1 \
  --type com.example.s --source //shop/s --subject sub-4 -H content-type=text/plain four

"$MSGBUS" sub "$topic" -g a -n 4 -t 20000 --json > "$WORK/a.json" 2>"$WORK/a.err" \
  || { cat "$WORK/a.err"; fail "sub --json"; }
pass "sub --json received 4"
python3 - "$WORK/a.json" "$topic" "$src_opt" "$(hostname)" <<'PY' || fail "sub --json attributes"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
topic, src_opt, host = sys.argv[2:5]
by = {r["payload"]: r for r in rows}
assert len(by) == 4, rows
want = {
    '{"n":1}': ("com.example.order.created", "//shop/orders", "order/é 42"),
    "two": (topic, src_opt, None),
    "three": (topic, f"//{host}/msgbus", None),
    "four": ("com.example.s", "//shop/s", "sub-4"),
}
for payload, (t, s, j) in want.items():
    r = by[payload]
    got = (r["type"], r["source"], r["subject"])
    assert got == (t, s, j), (payload, got, (t, s, j))
    # The attributes are fields, not headers: no ce_/cloudEvents_ names leak.
    leak = [h for h in r["headers"] if h.lower().startswith(("ce_", "ce-", "cloudevents"))]
    assert not leak, (payload, r["headers"])
assert by['{"n":1}']["headers"].get("content-type") == "application/json", by['{"n":1}']
# structured: the envelope is gone, the data's own content type is back
assert by["four"]["headers"].get("content-type") == "text/plain", by["four"]
assert len({r["id"] for r in rows}) == 4 and all(r["id"] for r in rows)
for p in want:
    print(f"{p!r}: type={by[p]['type']!r} source={by[p]['source']!r} subject={by[p]['subject']!r}")
PY
pass "sub --json: type, source, subject as published (set, URL default, host default, structured)"

"$MSGBUS" sub "$topic" -g b -n 4 -t 20000 --format '%s|%y|%u|%j\n' > "$WORK/b.txt" \
  2>"$WORK/b.err" || { cat "$WORK/b.err"; fail "sub --format"; }
sort "$WORK/b.txt" > "$WORK/b.sorted"
printf '%s\n' "four|com.example.s|//shop/s|sub-4" "three|$topic|//$(hostname)/msgbus|" \
  "two|$topic|$src_opt|" '{"n":1}|com.example.order.created|//shop/orders|order/é 42' \
  | sort > "$WORK/b.want"
diff "$WORK/b.want" "$WORK/b.sorted" || fail "sub --format '%s|%y|%u|%j' output"
pass "sub --format %y %u %j byte for byte (a missing subject prints as nothing)"

# The reverse: a CloudEvent written by hand with the broker's stock tool
# (kcat -P / amqp-publish -H, string headers) arrives with its id, type,
# source, subject and time. Group c is declared now, after msgbus's four.
expect_exit 0 "declare group c" -- "$MSGBUS" declare "$topic" c
if [ "$mode" = kafka ]; then
  brokers=${base#kafka://}; brokers=${brokers%%\?*}
  printf 'from kcat' | kcat -P -b "$brokers" -t "$topic" -k k9 -H ce_specversion=1.0 \
    -H ce_id=kcat-1 -H ce_type=com.example.kcat -H ce_source=//kcat -H ce_subject=s9 \
    -H ce_time=2026-12-07T08:00:00.5Z -H content-type=text/plain 2>"$WORK/kcatp.err" \
    || { cat "$WORK/kcatp.err"; fail "kcat -P"; }
  printf 'from kcat, ce-' | kcat -P -b "$brokers" -t "$topic" -k k9 -H ce-id=not-kafka \
    2>"$WORK/kcatp.err" || { cat "$WORK/kcatp.err"; fail "kcat -P"; }
  peers="kcat"
else
  # amqp-tools read a trailing '/' as the vhost "" (docs/interop.md).
  aurl=${base%%\?*}; aurl=${aurl%/}
  amqp-publish -u "$aurl" -e "$topic" -r k9 -C text/plain -H "cloudEvents_specversion: 1.0" \
    -H "cloudEvents_id: amqptools-1" -H "cloudEvents_type: com.example.amqptools" \
    -H "cloudEvents_source: //amqp-publish" -H "cloudEvents_subject: s9" \
    -H "cloudEvents_time: 2026-12-07T08:00:00.5Z" -b "from amqp-publish" \
    2>"$WORK/ap.err" || { cat "$WORK/ap.err"; fail "amqp-publish"; }
  amqp-publish -u "$aurl" -e "$topic" -r k9 -H "ce-specversion: 1.0" -H "ce-id: amqptools-2" \
    -H "ce-type: com.example.knative" -H "ce-source: //knative" -b "from amqp-publish, ce-" \
    2>"$WORK/ap.err" || { cat "$WORK/ap.err"; fail "amqp-publish ce-"; }
  peers="amqp-publish"
fi
"$MSGBUS" sub "$topic" -g c -n 2 -t 20000 --json > "$WORK/c.json" 2>"$WORK/c.err" \
  || { cat "$WORK/c.err"; fail "sub group c"; }
python3 - "$WORK/c.json" "$mode" <<'PY' || fail "what the stock tool's CloudEvents became"
import json, sys
rows = {json.loads(l)["payload"]: json.loads(l) for l in open(sys.argv[1])}
if sys.argv[2] == "kafka":
    r = rows["from kcat"]
    assert r["id"] == "kcat-1" and r["type"] == "com.example.kcat", r
    assert r["source"] == "//kcat" and r["subject"] == "s9", r
    # ce- is not the Kafka binding's prefix: a header, and no id
    o = rows["from kcat, ce-"]
    assert o["id"] is None and o["headers"].get("ce-id") == "not-kafka" and o["type"] is None, o
else:
    r = rows["from amqp-publish"]
    assert r["id"] == "amqptools-1" and r["type"] == "com.example.amqptools", r
    assert r["source"] == "//amqp-publish" and r["subject"] == "s9", r
    o = rows["from amqp-publish, ce-"]
    assert o["id"] == "amqptools-2" and o["type"] == "com.example.knative", o
    assert o["source"] == "//knative" and o["subject"] is None, o
assert r["timestamp"] == 1796630400500, r  # ce_time / cloudEvents_time
assert r["headers"] == {"content-type": "text/plain"}, r
print(json.dumps(r, ensure_ascii=False))
PY
pass "$peers's hand-written CloudEvents arrive with id, type, source, subject and time"

if [ "$store" = sqlite ]; then
  # The outbox keeps a row's attributes; the relay writes them.
  expect_exit 0 "declare group d" -- "$MSGBUS" declare "$topic" d
  db="$WORK/outbox.db"
  expect_exit 0 "outbox put --type --source --subject" -- "$MSGBUS" outbox put "sqlite://$db" \
    "$topic" -k k1 --type com.example.outbox --source //outbox/cli --subject o-1 "from the outbox"
  expect_exit 0 "outbox relay --once" -- "$MSGBUS" outbox relay "sqlite://$db" --once
  expect_exit 0 "sub group d" -- "$MSGBUS" sub "$topic" -g d -n 1 -t 20000 --json
  python3 - "$WORK/out" <<'PY' || fail "the relayed message's attributes"
import json, sys
r = json.loads(open(sys.argv[1]).readline())
assert r["payload"] == "from the outbox", r
assert (r["type"], r["source"], r["subject"]) == ("com.example.outbox", "//outbox/cli", "o-1"), r
assert not [h for h in r["headers"] if h.startswith("ce_")], r
print("relayed:", r["type"], r["source"], r["subject"])
PY
  pass "outbox put --type/--source/--subject → relay → sub: the attributes as put"
fi

if [ "$mode" = kafka ]; then
  # A stock Kafka tool sees the binding's headers as msgbus wrote them.
  brokers=${base#kafka://}; brokers=${brokers%%\?*}
  kcat -C -b "$brokers" -t "$topic" -e -q -f '%s\t%h\n' > "$WORK/kcat.txt" 2>"$WORK/kcat.err" \
    || { cat "$WORK/kcat.err"; fail "kcat -C"; }
  python3 - "$WORK/kcat.txt" "$topic" <<'PY' || fail "kcat's view of the records"
import json, re, sys
topic = sys.argv[2]
recs = {}
for line in open(sys.argv[1], encoding="utf-8"):
    payload, _, hdrs = line.rstrip("\n").partition("\t")
    recs[payload] = dict(kv.split("=", 1) for kv in hdrs.split(",") if kv)
h = recs['{"n":1}']
assert h["ce_specversion"] == "1.0" and h["ce_type"] == "com.example.order.created", h
assert h["ce_source"] == "//shop/orders" and h["ce_subject"] == "order/é 42", h
assert h["content-type"] == "application/json" and h["ce_id"], h
assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", h["ce_time"]), h
assert recs["two"]["ce_type"] == topic and "ce_subject" not in recs["two"], recs["two"]
structured = [p for p in recs if p.startswith("{") and p != '{"n":1}']
assert len(structured) == 1, recs
ev, hs = json.loads(structured[0]), recs[structured[0]]
assert hs.get("content-type") == "application/cloudevents+json", hs
assert not [k for k in hs if k.startswith("ce_")], hs
assert ev["specversion"] == "1.0" and ev["type"] == "com.example.s" and ev["subject"] == "sub-4", ev
assert ev["data"] == "four" and ev["datacontenttype"] == "text/plain", ev
print("kcat:", h)
print("kcat structured:", structured[0])
PY
  pass "kcat -f '%h' shows ce_specversion, ce_id, ce_type, ce_source, ce_subject, ce_time; structured JSON"
fi
echo "cli cloudevents ($mode) passed"
