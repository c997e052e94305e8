#!/usr/bin/env bash
# check_cluster_script.sh MSGBUS_CLI — what `scripts/brokers cluster` promises
# the cluster tests, checked against the running clusters with kcat and
# rabbitmqctl (docs/brokers.md#clusters):
#
#   `. .brokers/env` exports both cluster URLs (three hosts each); status lists
#   six running nodes and the private epmd; port / node-of / pid agree with the
#   URLs; Kafka metadata lists 3 brokers, rabbitmqctl 3 running nodes; `up` on
#   a running cluster leaves it alone.
#   Kafka: `leader` names the leader kcat sees (and does not create a missing
#   topic); SIGKILL of that leader (`kill`) moves the leadership, acks=all
#   writes go on, `start` prints "kN: rejoined in S s" and leaves no partition
#   under-replicated; nothing written is lost.
#   RabbitMQ: `leader` names the quorum queue's leader; after `kill` another
#   node leads; `start` prints "rN: rejoined in S s" with 3 nodes running.
#
# Needs `scripts/brokers cluster up` (a missing cluster is a failure, never a
# skip). Kills and restarts nodes: runs alone (label cluster, lock brokers).
# Ends with "N passed, N failed".
set -uo pipefail
export LC_ALL=C.UTF-8

cli=${1:?usage: check_cluster_script.sh PATH_TO_MSGBUS_CLI}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
repo=$(cd "$here/../.." && pwd -P)
B=${MSGBUS_BROKERS_DIR:-$repo/.brokers}
cluster=$repo/scripts/cluster

passed=0 failed=0
ok() { passed=$((passed + 1)); printf 'ok   %s\n' "$1"; }
bad() { failed=$((failed + 1)); printf 'FAIL %s\n' "$1"; [[ -z ${2:-} ]] || printf '%s\n' "$2" | sed 's/^/     /' | tail -n 12; }
finish() { printf '%d passed, %d failed\n' "$passed" "$failed"; ((failed == 0)); exit; }
check() { # NAME COMMAND... — ok when COMMAND succeeds
    local name=$1 out
    shift
    if out=$("$@" 2>&1); then ok "$name"; else bad "$name" "$out"; fi
}

# ------------------------------------------------------------- the env file
# Sourced under set -e, as test scripts do: it must not fail the caller.
if out=$(bash -ec '. "$1"; printf "%s\n%s\n" "$MSGBUS_TEST_KAFKA_CLUSTER_URL" "$MSGBUS_TEST_AMQP_CLUSTER_URL"' _ "$B/env" 2>&1); then
    kurl=$(sed -n 1p <<<"$out")
    aurl=$(sed -n 2p <<<"$out")
    ok ". .brokers/env exports the cluster URLs"
else
    bad ". .brokers/env exports the cluster URLs" "$out (run scripts/brokers cluster up)"
    finish
fi
hosts() { local h=${1#*://}; h=${h#*@}; h=${h%%/*}; h=${h%%\?*}; tr ',' '\n' <<<"$h"; }
mapfile -t khosts < <(hosts "$kurl")
mapfile -t ahosts < <(hosts "$aurl")
check "three hosts in each URL (${#khosts[@]} kafka, ${#ahosts[@]} amqp)" test "${#khosts[@]}" = 3 -a "${#ahosts[@]}" = 3
kboot=$(IFS=,; echo "${khosts[*]}")

# --------------------------------------------------------- status, mapping
out=$("$cluster" status 2>&1)
check "status: 6 nodes running" test "$(grep -cE '^[kr][123]: running \(pid [0-9]+, 127\.0\.0\.1:[0-9]+, RSS [0-9]+ MiB\)$' <<<"$out")" = 6
check "status: epmd running" grep -q '^epmd: running' <<<"$out"
for i in 0 1 2; do
    k=k$((i + 1)) r=r$((i + 1))
    check "port $k = ${khosts[$i]##*:}, node-of back" test "$("$cluster" port $k)" = "${khosts[$i]##*:}" -a "$("$cluster" node-of "${khosts[$i]##*:}")" = $k
    check "port $r = ${ahosts[$i]##*:}, node-of back" test "$("$cluster" port $r)" = "${ahosts[$i]##*:}" -a "$("$cluster" node-of "${ahosts[$i]##*:}")" = $r
done
check "pid k1 is a live java" grep -q java "/proc/$("$cluster" pid k1)/cmdline"
check "pid r1 is a live beam" grep -q beam "/proc/$("$cluster" pid r1)/cmdline"
out=$("$cluster" kill k9 2>&1) && bad "kill k9 is refused" "$out" || check "kill k9 is refused, naming the nodes" grep -q "unknown node 'k9' (k1 k2 k3 r1 r2 r3)" <<<"$out"

meta() { timeout 20 kcat -L -b "$kboot" -m 10 "$@" 2>&1; }
check "kcat -L: 3 brokers" grep -q '^ 3 brokers:' <<<"$(meta)"
rctl() { "$B/cluster/rabbitmq/r$1/bin/rabbitmqctl" -q "${@:2}" </dev/null 2>&1; }
running_nodes() { rctl "$1" cluster_status --formatter json | grep -o '"running_nodes":\[[^]]*\]' | grep -o 'msgbus-r[123]@localhost' | sort | tr '\n' ' '; }
check "rabbitmqctl cluster_status: 3 running nodes" test "$(running_nodes 1)" = "msgbus-r1@localhost msgbus-r2@localhost msgbus-r3@localhost "

t0=$EPOCHREALTIME
out=$("$cluster" up 2>&1)
check "up on running clusters leaves them alone" grep -q 'kafka cluster: already running' <<<"$out"
check "  (rabbitmq too)" grep -q 'rabbitmq cluster: already running' <<<"$out"
printf '     (up took %s s)\n' "$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')"

# ------------------------------------------------------------------- Kafka
topic=ckscript_$$_$RANDOM
out=$("$cluster" leader kafka "$topic" 0 2>&1) && bad "leader of a missing topic fails" "$out" ||
    check "leader of a missing topic fails, naming it" grep -q "no partition 0 of topic '$topic'" <<<"$out"
check "  and does not create it" bash -c '! grep -q "topic \"$1\"" <<<"$2"' _ "$topic" "$(meta)"

produce() { # FROM TO — keyed messages FROM..TO, acks=all + idempotence
    seq "$1" "$2" | sed 's/^/k:/' | timeout 90 kcat -P -b "$kboot" -t "$topic" -p 0 -K: \
        -X acks=all -X enable.idempotence=true -X message.timeout.ms=60000 2>&1
}
check "produce 1..5000 (acks=all) to a new topic" produce 1 5000
leader=$("$cluster" leader kafka "$topic" 0 2>&1)
seen=$(meta -t "$topic" | awk '$1 == "partition" && $2 == "0," { l = $4; sub(/,/, "", l); print "k" l }')
check "leader kafka $topic 0 = $leader, as kcat sees it" test "$leader" = "$seen"
check "  with 3 replicas" bash -c 'grep -q "partition 0, leader [123], replicas: [123],[123],[123], isrs: [123],[123],[123]$" <<<"$1"' _ "$(meta -t "$topic")"
t0=$EPOCHREALTIME
out=$("$cluster" kill "$leader" 2>&1)
took=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }')
check "kill $leader returns at once ($took s)" awk -v t="$took" 'BEGIN { exit !(t < 3) }'
check "  and says so" grep -q "^$leader: killed (pid [0-9]*)$" <<<"$out"
check "  status shows it stopped" grep -q "^$leader: stopped" <<<"$("$cluster" status)"
out=$("$cluster" pid "$leader" 2>&1) && bad "pid of a killed node fails" "$out" || ok "pid of a killed node fails"
check "acks=all writes go on with a node down (5001..10000)" produce 5001 10000
new=
for ((i = 0; i < 60; i++)); do
    new=$("$cluster" leader kafka "$topic" 0 2>/dev/null) && [[ $new != "$leader" ]] && break
    sleep 0.5
done
check "leadership moved off $leader (now ${new:-none})" test -n "$new" -a "$new" != "$leader"
out=$("$cluster" start "$leader" 2>&1)
check "start $leader: ${out##*$'\n'}" grep -Eq "^$leader: rejoined in [0-9]+\.[0-9] s$" <<<"$out"
under_replicated() { awk '
    $1 == "partition" { r = $0; sub(/.*replicas: /, "", r); sub(/,? isrs:.*/, "", r)
                        i = $0; sub(/.*isrs: /, "", i); sub(/[^0-9,].*/, "", i)
                        if (split(r, a, ",") != split(i, b, ",")) { print; bad = 1 } }
    END { exit !bad }' <<<"$1"; }
# start waited for the ISRs; a broker's metadata may still lag them for a
# moment (kcat asks any broker), so look again for up to 20 s.
for ((i = 0; i < 40; i++)); do
    m=$(meta)
    under_replicated "$m" >/dev/null || break
    sleep 0.5
done
check "  3 brokers again" grep -q '^ 3 brokers:' <<<"$m"
check "  no partition under-replicated" awk '
    $1 == "partition" { r = $0; sub(/.*replicas: /, "", r); sub(/,? isrs:.*/, "", r)
                        i = $0; sub(/.*isrs: /, "", i); sub(/[^0-9,].*/, "", i)
                        if (split(r, a, ",") != split(i, b, ",")) { print; bad = 1 } }
    END { exit bad }' <<<"$m"
n=$(timeout 60 kcat -C -b "$kboot" -t "$topic" -p 0 -o beginning -e -q 2>/dev/null | sort -u | wc -l)
check "all 10000 messages there ($n)" test "$n" = 10000

# ---------------------------------------------------------------- RabbitMQ
q=ckscript_$$_$RANDOM
check "declare quorum queue $q.g (msgbus CLI)" "$cli" declare "$q" g --url "$aurl?queue_type=quorum"
leader=$("$cluster" leader rabbitmq "$q.g" 2>&1)
check "leader rabbitmq $q.g = $leader" grep -Eq '^r[123]$' <<<"$leader"
# (the same through the default vhost given explicitly)
check "leader rabbitmq $q.g / = $leader" test "$("$cluster" leader rabbitmq "$q.g" / 2>&1)" = "$leader"
out=$("$cluster" leader rabbitmq "$q.nope" 2>&1) && bad "leader of a missing queue fails" "$out" ||
    check "leader of a missing queue fails, naming it" grep -q "no queue '$q.nope'" <<<"$out"
check "kill $leader" "$cluster" kill "$leader"
new=
for ((i = 0; i < 60; i++)); do
    new=$("$cluster" leader rabbitmq "$q.g" 2>/dev/null) && [[ $new != "$leader" ]] && break
    sleep 0.5
done
check "quorum queue leader moved off $leader (now ${new:-none})" test -n "$new" -a "$new" != "$leader"
out=$("$cluster" start "$leader" 2>&1)
check "start $leader: ${out##*$'\n'}" grep -Eq "^$leader: rejoined in [0-9]+\.[0-9] s$" <<<"$out"
check "  3 running nodes again (seen by $new)" test "$(running_nodes "${new#r}")" = "msgbus-r1@localhost msgbus-r2@localhost msgbus-r3@localhost "
rctl "${new#r}" delete_queue "$q.g" >/dev/null || true

finish
