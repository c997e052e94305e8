#!/usr/bin/env bash
# Secrets never leave msgbus in clear: every CLI entry point (which calls
# every library entry point that prints: open, connect errors, the open
# log line, the config dump at debug level, msgbus_url) runs at debug
# level (-vv) with known secrets given every way — URL user:password@,
# secret options in the URL, MSGBUS_* variables — against the real brokers
# (where the secrets are wrong, so the error paths run too) and against
# mem:// (where the run succeeds). No secret may appear in stdout or stderr.
. "$(dirname "$0")/lib.sh"
need_env MSGBUS_TEST_KAFKA_URL
need_env MSGBUS_TEST_AMQP_URL
khost=${MSGBUS_TEST_KAFKA_URL#kafka://}
ahost=${MSGBUS_TEST_AMQP_URL#amqp://}
ahost=${ahost#*@}
ahost=${ahost%%/*}
all="$WORK/all"
: >"$all"

# run DESCRIPTION -- COMMAND...: any exit code; output collected.
run() {
  local what=$1; shift 2
  timeout 60 "$@" >"$WORK/out" 2>"$WORK/err" </dev/null
  local rc=$?
  [ "$rc" -ne 124 ] || fail "$what: did not finish in 60 s"
  cat "$WORK/out" "$WORK/err" >>"$all"
  [ -s "$WORK/out" ] || [ -s "$WORK/err" ] || fail "$what: printed nothing (the check would prove nothing)"
  if grep -n 'S3cr3t' "$WORK/out" "$WORK/err"; then fail "$what: a secret was printed"; fi
  pass "$what (exit $rc): no secret in $(cat "$WORK/out" "$WORK/err" | wc -l) lines"
}

urls=(
  "kafka://alice:S3cr3tUser@$khost?connect_timeout_ms=2000"
  "kafka://$khost?security.protocol=SASL_PLAINTEXT&sasl.mechanism=PLAIN&sasl.username=bob&sasl.password=S3cr3tOpt&connect_timeout_ms=2000"
  "kafka://$khost?ssl.key.password=S3cr3tKey&message.timeout.ms=3000"
  "amqp://guest:S3cr3tAmqp@$ahost/"
  "mem://secrets?queue_max=10"
)
for url in "${urls[@]}"; do
  run "doctor $url" -- "$MSGBUS" doctor -vv -u "$url"
  run "pub $url" -- "$MSGBUS" pub -vv -u "$url" secrets-topic hello
  run "sub $url" -- "$MSGBUS" sub -vv -u "$url" secrets-topic -n 1 -t 1000
  run "declare $url" -- "$MSGBUS" declare -vv -u "$url" secrets-topic g
  run "dlq replay $url" -- "$MSGBUS" dlq replay -vv -u "$url" --idle 500 secrets-topic.dlq
done
# Variables: the secret arrives through the environment, the URL is clean.
MSGBUS_KAFKA_SASL_USERNAME=carol MSGBUS_KAFKA_SASL_PASSWORD=S3cr3tEnv \
MSGBUS_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT MSGBUS_KAFKA_SASL_MECHANISM=PLAIN \
  run "doctor with MSGBUS_KAFKA_SASL_PASSWORD" -- "$MSGBUS" doctor -vv -u "kafka://$khost?connect_timeout_ms=2000"
MSGBUS_MEM_API_TOKEN=S3cr3tMem run "doctor with an unknown secret variable" -- "$MSGBUS" doctor -vv -u "mem://secrets"
# The redacted form is what was shown instead: the check looked at real output.
expect_grep 'alice:\*\*\*@' "$all" "user:password@ shown as user:***@"
expect_grep 'sasl.password=\*\*\*' "$all" "?sasl.password= shown as ***"
expect_grep 'MSGBUS_KAFKA_SASL_PASSWORD=\*\*\*' "$all" "the variable's value shown as ***"
echo "no secret printed by any entry point at debug level ($(wc -l <"$all") lines checked)"
