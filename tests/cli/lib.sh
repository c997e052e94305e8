# lib.sh — helpers for the CLI tests: sourced by each test script, which
# gets the msgbus binary as $1. Every check prints what it saw; the first
# failure ends the test with exit 1.
set -uo pipefail
MSGBUS=${1:?usage: $0 PATH/TO/msgbus}
shift
WORK=$(mktemp -d "${TMPDIR:-/tmp}/msgbus-cli-test-XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
pass() { echo "ok: $*"; }

# expect_exit CODE DESCRIPTION -- COMMAND... : runs COMMAND, output in
# $WORK/out and $WORK/err, and checks its exit code.
expect_exit() {
  local want=$1 what=$2; shift 3
  "$@" >"$WORK/out" 2>"$WORK/err"
  local got=$?
  if [ "$got" != "$want" ]; then
    echo "--- stdout"; cat "$WORK/out"; echo "--- stderr"; cat "$WORK/err"
    fail "$what: exit code $got, expected $want ($*)"
  fi
  pass "$what (exit $got)"
}

# expect_grep PATTERN FILE DESCRIPTION
expect_grep() {
  grep -q -- "$1" "$2" || { echo "--- $2:"; cat "$2"; fail "$3: no '$1' in $(basename "$2")"; }
  pass "$3"
}

# need_env NAME: integration tests fail, never skip, when a broker URL is missing.
need_env() {
  [ -n "${!1:-}" ] || fail "$1 is not set (run scripts/brokers up and source .brokers/env)"
}

unique() { echo "cli-$1-$$-$(date +%s%N | tail -c 10)"; }
