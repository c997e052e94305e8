# metrics_lib.sh — helpers for the --metrics tests, sourced after lib.sh:
# reading the address a command serves on, scraping, picking one series'
# value, and a real Prometheus server on loopback. A missing promtool,
# prometheus or curl fails the test (scripts/deps installs them).
for tool in promtool prometheus curl python3; do
  command -v $tool >/dev/null || fail "$tool is not installed (run scripts/deps: Debian package prometheus, curl)"
done

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# metrics_port ERRFILE PID: the port printed as "metrics on http://127.0.0.1:PORT/metrics"
# (the command was given --metrics 127.0.0.1:0); waits up to 20 s.
metrics_port() {
  local p
  for _ in $(seq 200); do
    p=$(grep -o 'metrics on http://127.0.0.1:[0-9]*' "$1" | sed 's/.*://')
    [ -n "$p" ] && { echo "$p"; return 0; }
    kill -0 "$2" 2>/dev/null || break
    sleep 0.1
  done
  cat "$1" >&2
  fail "no 'metrics on http://127.0.0.1:PORT' line"
}

# scrape PORT FILE: GET /metrics into FILE (fails the test on an HTTP error).
scrape() {
  curl -sSf --max-time 10 "http://127.0.0.1:$1/metrics" -o "$2" || fail "GET /metrics on port $1"
}

# value FILE SERIES: the value of one series, e.g. 'msgbus_state{state="UP"}' (empty if absent).
value() {
  awk -v s="$2" '$1 == s { print $2; exit }' "$1"
}

# expect_value FILE SERIES WANT
expect_value() {
  local got; got=$(value "$1" "$2")
  [ "$got" = "$3" ] || { grep -v '^#' "$1" >&2; fail "$2 is '$got', expected $3"; }
  pass "$2 = $3"
}

# wait_value PORT SERIES WANT [SECONDS]: scrapes until SERIES has WANT.
wait_value() {
  local port=$1 series=$2 want=$3 secs=${4:-30} got=
  for _ in $(seq $((secs * 5))); do
    scrape "$port" "$WORK/wait.prom"
    got=$(value "$WORK/wait.prom" "$series")
    [ "$got" = "$want" ] && { pass "$series reached $want"; return 0; }
    sleep 0.2
  done
  grep -v '^#' "$WORK/wait.prom" >&2
  fail "$series is '$got' after ${secs}s, expected $want"
}

# promtool_check FILE: the exposition passes promtool's parser and lint.
promtool_check() {
  promtool check metrics <"$1" >"$WORK/promtool.out" 2>&1 ||
    { cat "$WORK/promtool.out"; fail "promtool check metrics on $(basename "$1")"; }
  pass "promtool check metrics: $(basename "$1") is valid"
}

# start_prometheus TARGET_PORT DATADIR: a Prometheus server on a free
# loopback port scraping 127.0.0.1:TARGET_PORT every second, its storage in
# DATADIR (emptied first). Sets PROM_PORT; the server is killed at exit.
start_prometheus() {
  local target=$1 dir=$2
  rm -rf "$dir"; mkdir -p "$dir"
  cat >"$dir/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: msgbus
    static_configs:
      - targets: ['127.0.0.1:$target']
EOF
  PROM_PORT=$(free_port)
  prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/data" \
    --web.listen-address="127.0.0.1:$PROM_PORT" >"$dir/prometheus.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$PROM_PORT/-/ready" >/dev/null && { pass "prometheus ready on port $PROM_PORT"; return 0; }
    sleep 0.1
  done
  tail -20 "$dir/prometheus.log"
  fail "prometheus did not become ready in 10 s"
}

# prom_query EXPR: the value of an instant query's first sample (empty if none).
prom_query() {
  curl -sSf --max-time 5 -G "http://127.0.0.1:$PROM_PORT/api/v1/query" --data-urlencode "query=$1" |
    python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "")'
}

# wait_prom EXPR WANT [SECONDS]: queries until EXPR has WANT.
wait_prom() {
  local got=
  for _ in $(seq $((${3:-30} * 2))); do
    got=$(prom_query "$1")
    [ "$got" = "$2" ] && { pass "prometheus: $1 = $2"; return 0; }
    sleep 0.5
  done
  fail "prometheus: $1 is '$got' after ${3:-30}s, expected $2"
}
