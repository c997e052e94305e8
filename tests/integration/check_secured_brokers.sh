#!/usr/bin/env bash
# check_secured_brokers.sh — the secured listeners that `scripts/brokers up`
# starts really are secured, checked with real clients (kcat = librdkafka,
# openssl s_client), independently of msgbus:
#
#   Kafka SASL_SSL (SCRAM-SHA-512): one message produced and consumed with the
#   right password; a wrong password, an untrusted CA and a plaintext client
#   are refused, each with its own reason.
#   RabbitMQ TLS: a client with the test client certificate gets AMQP's
#   connection.start; no certificate and an expired one are refused with the
#   broker's TLS alert; the broker certificate verifies for localhost and
#   127.0.0.1 against the test CA and not against the unrelated CA.
#
# Reads MSGBUS_TEST_* from the environment, or sources .brokers/env (or
# $MSGBUS_BROKERS_DIR/env) when they are not set. A missing broker or file is
# a failure, never a skip. Ends with "N passed, N failed".
set -uo pipefail
export LC_ALL=C.UTF-8

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
envfile=${MSGBUS_BROKERS_DIR:-$here/../../.brokers}/env
if [[ -z ${MSGBUS_TEST_TLS_CA:-} && -f $envfile ]]; then
    # shellcheck disable=SC1090
    . "$envfile"
fi

passed=0 failed=0
ok() { passed=$((passed + 1)); printf 'ok   %s\n' "$1"; }
bad() { failed=$((failed + 1)); printf 'FAIL %s\n' "$1"; [[ -z ${2:-} ]] || printf '%s\n' "$2" | sed 's/^/     /' | tail -n 8; }
finish() { printf '%d passed, %d failed\n' "$passed" "$failed"; ((failed == 0)); exit; }

need=(MSGBUS_TEST_TLS_CA MSGBUS_TEST_TLS_OTHER_CA MSGBUS_TEST_TLS_CLIENT_CERT MSGBUS_TEST_TLS_CLIENT_KEY
    MSGBUS_TEST_TLS_EXPIRED_CERT MSGBUS_TEST_TLS_EXPIRED_KEY MSGBUS_TEST_KAFKA_SASL_USER
    MSGBUS_TEST_KAFKA_SASL_PASSWORD MSGBUS_TEST_KAFKA_SASL_HOST MSGBUS_TEST_KAFKA_SASL_URL
    MSGBUS_TEST_KAFKA_SASL_URL_EXPLICIT MSGBUS_TEST_AMQPS_URL)
missing=()
for v in "${need[@]}"; do [[ -n ${!v:-} ]] || missing+=("$v"); done
if ((${#missing[@]})); then
    bad "environment" "not set: ${missing[*]} (run scripts/brokers up; . .brokers/env)"
    finish
fi
ok "environment: all ${#need[@]} MSGBUS_TEST_* names for the secured brokers are set"

for f in "$MSGBUS_TEST_TLS_CA" "$MSGBUS_TEST_TLS_OTHER_CA" "$MSGBUS_TEST_TLS_CLIENT_CERT" \
    "$MSGBUS_TEST_TLS_CLIENT_KEY" "$MSGBUS_TEST_TLS_EXPIRED_CERT" "$MSGBUS_TEST_TLS_EXPIRED_KEY"; do
    [[ $f == /* && -r $f ]] || bad "file $f" "not an absolute path to a readable file"
done
for t in kcat openssl; do command -v "$t" >/dev/null || bad "tool $t" "not installed (scripts/brokers up installs it)"; done
((failed == 0)) || finish

CA=$MSGBUS_TEST_TLS_CA
PW=$MSGBUS_TEST_KAFKA_SASL_PASSWORD

# ----------------------------------------------------------------- PKI ---
if out=$(openssl verify -CAfile "$CA" "$MSGBUS_TEST_TLS_CLIENT_CERT" 2>&1); then
    ok "pki: the client certificate chains to the test CA"
else bad "pki: client certificate" "$out"; fi
out=$(openssl verify -CAfile "$CA" "$MSGBUS_TEST_TLS_EXPIRED_CERT" 2>&1)
if [[ $? -ne 0 && $out == *"certificate has expired"* ]]; then
    ok "pki: the expired certificate chains to the test CA and has expired"
else bad "pki: expired certificate" "$out"; fi
out=$(openssl verify -CAfile "$MSGBUS_TEST_TLS_OTHER_CA" "$MSGBUS_TEST_TLS_CLIENT_CERT" 2>&1)
if [[ $? -ne 0 ]]; then ok "pki: the unrelated CA does not vouch for the test certificates"
else bad "pki: other CA" "$out"; fi

# --------------------------------------------------------------- Kafka ---
# The URL forms name the same listener, user and password as the parts.
[[ $MSGBUS_TEST_KAFKA_SASL_URL == "kafka://$MSGBUS_TEST_KAFKA_SASL_USER:$PW@$MSGBUS_TEST_KAFKA_SASL_HOST?ssl.ca.location=$CA" ]] &&
    [[ $MSGBUS_TEST_KAFKA_SASL_URL_EXPLICIT == "kafka://$MSGBUS_TEST_KAFKA_SASL_HOST?security.protocol=SASL_SSL&sasl.mechanism=SCRAM-SHA-512&sasl.username=$MSGBUS_TEST_KAFKA_SASL_USER&sasl.password=$PW&ssl.ca.location=$CA" ]] &&
    ok "kafka: MSGBUS_TEST_KAFKA_SASL_URL and _URL_EXPLICIT agree with the host, user, password and CA" ||
    bad "kafka: URL forms" "MSGBUS_TEST_KAFKA_SASL_URL or _URL_EXPLICIT do not match the other names"

sasl=(-b "$MSGBUS_TEST_KAFKA_SASL_HOST" -X security.protocol=SASL_SSL -X sasl.mechanisms=SCRAM-SHA-512
    -X sasl.username="$MSGBUS_TEST_KAFKA_SASL_USER" -X ssl.ca.location="$CA"
    -X ssl.endpoint.identification.algorithm=https)
topic=__msgbus_secured_check
token="secured $(date +%s%N) $$"
# Fixed partition + read back from the offset the produce got: only our line.
if out=$(printf '%s\n' "$token" | timeout 30 kcat "${sasl[@]}" -X sasl.password="$PW" -P -t "$topic" -p 0 \
    -X delivery.timeout.ms=20000 2>&1); then
    got=$(timeout 30 kcat "${sasl[@]}" -X sasl.password="$PW" -C -t "$topic" -p 0 -o -1 -c 1 -e -q 2>&1)
    if [[ $got == "$token" ]]; then ok "kafka: SASL_SSL SCRAM-SHA-512 produce + consume of one message"
    else bad "kafka: SASL_SSL consume" "expected '$token', got: $got"; fi
else bad "kafka: SASL_SSL produce" "$out"; fi

# Refusals: metadata requests that must fail, for the reason named.
refused() { # NAME EXPECTED-TEXT kcat-args...
    local name=$1 want=$2 out rc
    shift 2
    out=$(timeout 30 kcat "$@" -L -m 3 2>&1)
    rc=$?
    if ((rc != 0)) && [[ $out == *"$want"* ]]; then ok "kafka: $name is refused ($want)"
    else bad "kafka: $name" "exit $rc, expected a failure mentioning '$want'; got: ${out//$PW/****}"; fi
}
refused "a wrong password" "SASL authentication error" "${sasl[@]}" -X sasl.password="wrong-$PW"
refused "an unknown user" "SASL authentication error" "${sasl[@]/#sasl.username=*/sasl.username=nobody}" -X sasl.password="$PW"
refused "an untrusted CA" "certificate verify failed" "${sasl[@]/#ssl.ca.location=*/ssl.ca.location=$MSGBUS_TEST_TLS_OTHER_CA}" -X sasl.password="$PW"
refused "a plaintext client on the SASL_SSL listener" "Disconnected" -b "$MSGBUS_TEST_KAFKA_SASL_HOST"
if [[ -n ${MSGBUS_TEST_KAFKA_URL:-} ]]; then
    refused "a SASL_SSL client on the plaintext listener" "SSL handshake failed" \
        -b "${MSGBUS_TEST_KAFKA_URL#kafka://}" -X security.protocol=SASL_SSL -X sasl.mechanisms=SCRAM-SHA-512 \
        -X sasl.username="$MSGBUS_TEST_KAFKA_SASL_USER" -X sasl.password="$PW" -X ssl.ca.location="$CA"
fi

# ------------------------------------------------------------ RabbitMQ ---
amqps_port=$(sed -n 's#^amqps://[^@]*@localhost:\([0-9][0-9]*\)/.*#\1#p' <<<"$MSGBUS_TEST_AMQPS_URL")
[[ $MSGBUS_TEST_AMQPS_URL == "amqps://guest:guest@localhost:$amqps_port/?cacert=$CA&cert=$MSGBUS_TEST_TLS_CLIENT_CERT&key=$MSGBUS_TEST_TLS_CLIENT_KEY" ]] &&
    ok "amqps: MSGBUS_TEST_AMQPS_URL names port $amqps_port, the CA and the client certificate" ||
    bad "amqps: URL" "unexpected MSGBUS_TEST_AMQPS_URL format"

# amqps ARGS... — TLS handshake with s_client ARGS, then the AMQP 0-9-1
# header; prints the first 3 bytes back (hex) on stdout and s_client's errors
# to $errf (got=$(amqps ...) runs in a subshell). We end the connection
# after those bytes (RabbitMQ would wait 10 s for connection.start-ok).
errf=$(mktemp)
trap 'rm -f "$errf"' EXIT
amqps() {
    local fd pid
    exec {fd}< <(exec timeout 10 openssl s_client -quiet -connect "127.0.0.1:$amqps_port" -servername localhost \
        -verify_return_error "$@" < <(printf 'AMQP\x00\x00\x09\x01') 2>"$errf")
    pid=$!
    head -c 3 <&"$fd" | od -An -tx1 | tr -d ' \n'
    exec {fd}<&-
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
}
amqps_err() { grep -v -E '^(depth=|verify return:)' "$errf"; }
with_cert=(-cert "$MSGBUS_TEST_TLS_CLIENT_CERT" -key "$MSGBUS_TEST_TLS_CLIENT_KEY")

got=$(amqps -CAfile "$CA" -verify_hostname localhost "${with_cert[@]}")
if [[ $got == 010000 ]]; then ok "amqps: the client certificate gets connection.start (hostname localhost verified)"
else bad "amqps: with the client certificate" "first bytes '$got'; $(amqps_err)"; fi
got=$(amqps -CAfile "$CA" -verify_ip 127.0.0.1 "${with_cert[@]}")
if [[ $got == 010000 ]]; then ok "amqps: the broker certificate also verifies for IP 127.0.0.1"
else bad "amqps: IP 127.0.0.1" "first bytes '$got'; $(amqps_err)"; fi
got=$(amqps -CAfile "$MSGBUS_TEST_TLS_OTHER_CA" "${with_cert[@]}")
if [[ -z $got && $(amqps_err) == *"certificate verify failed"* ]]; then ok "amqps: a client trusting only the unrelated CA rejects the broker"
else bad "amqps: untrusted broker" "first bytes '$got'; $(amqps_err)"; fi
got=$(amqps -CAfile "$CA")
if [[ -z $got && $(amqps_err) == *"certificate required"* ]]; then ok "amqps: no client certificate is refused (TLS alert: certificate required)"
else bad "amqps: without a client certificate" "first bytes '$got'; $(amqps_err)"; fi
got=$(amqps -CAfile "$CA" -cert "$MSGBUS_TEST_TLS_EXPIRED_CERT" -key "$MSGBUS_TEST_TLS_EXPIRED_KEY")
if [[ -z $got && $(amqps_err) == *"certificate expired"* ]]; then ok "amqps: an expired client certificate is refused (TLS alert: certificate expired)"
else bad "amqps: expired client certificate" "first bytes '$got'; $(amqps_err)"; fi

finish
