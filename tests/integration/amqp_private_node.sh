#!/usr/bin/env bash
# amqp_private_node.sh — a second, private RabbitMQ node on loopback, for
# tests that need a broker of their own: TLS (test_amqp_tls.c), or a plain
# listener to freeze and starve (test_amqp_node_faults.c). It never touches
# the shared test node started by scripts/brokers: its own node name, epmd
# port, distribution ports, cookie and data directory (under .brokers/),
# stopped by its own pids.
#
#   amqp_private_node.sh start DIR PORT [tls|plain]
#                                     tls (default): make a CA, a server
#                                     certificate for "localhost", a second
#                                     unrelated CA, listen with TLS on PORT;
#                                     plain: listen on PORT without TLS.
#                                     Prints nothing on success.
#   amqp_private_node.sh ctl DIR ARGS...  rabbitmqctl ARGS... against the node
#   amqp_private_node.sh pid DIR        the node's OS pid
#   amqp_private_node.sh stop DIR       stop the node and its epmd, by pid
#
# Files left in DIR: ca.pem (signs the server), other-ca.pem (does not),
# server.pem / server.key, log/.
# Ports, all in one block of 20 (the test picks 21000 + 20*k, below the
# ephemeral range and away from scripts/brokers' ports): TLS_PORT; epmd
# TLS_PORT+1; Erlang distribution TLS_PORT+2; rabbitmqctl TLS_PORT+3..+13.
set -euo pipefail
export LC_ALL=C.UTF-8

RMQ_BIN=/usr/lib/rabbitmq/bin
cmd=${1:?start|stop}
D=${2:?directory}

node_env() {
    local port=$1
    export RABBITMQ_NODENAME="msgbustls$port@localhost"
    export RABBITMQ_CONFIG_FILE=$D/rabbitmq.conf
    export RABBITMQ_ADVANCED_CONFIG_FILE=$D/advanced.config
    export RABBITMQ_ENABLED_PLUGINS_FILE=$D/enabled_plugins
    export RABBITMQ_CONF_ENV_FILE=$D/rabbitmq-env.conf
    export RABBITMQ_MNESIA_BASE=$D/mnesia
    export RABBITMQ_LOG_BASE=$D/log
    export RABBITMQ_PID_FILE=$D/rabbitmq.pid
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_DIST_PORT=$((port + 2))
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    export RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    export RABBITMQ_CTL_DIST_PORT_MIN=$((port + 3))
    export RABBITMQ_CTL_DIST_PORT_MAX=$((port + 13))
    export ERL_EPMD_ADDRESS=127.0.0.1
    export ERL_EPMD_PORT=$((port + 1))
    export HOME=$D/home
}

make_certs() {
    cd "$D"
    # CA that signs the server, and an unrelated CA a "wrong" client trusts.
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=msgbus test CA" \
        -keyout ca.key -out ca.pem 2>/dev/null
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=some other CA" \
        -keyout other-ca.key -out other-ca.pem 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
        -keyout server.key -out server.csr 2>/dev/null
    # The certificate names "localhost" only, so connecting to 127.0.0.1
    # exercises hostname verification.
    printf 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n' >server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
        -extfile server.ext -out server.pem 2>/dev/null
    chmod 0644 server.key
    cd - >/dev/null
}

start() {
    local port=${1:?port} mode=${2:-tls}
    rm -rf "$D"
    mkdir -p "$D/home" "$D/mnesia" "$D/log"
    [[ $mode == tls ]] && make_certs
    (umask 077 && printf 'MSGBUSTLS%s' "$RANDOM$RANDOM" >"$D/home/.erlang.cookie")
    chmod 0400 "$D/home/.erlang.cookie"
    printf '[].\n' >"$D/enabled_plugins"
    printf '[].\n' >"$D/advanced.config"
    : >"$D/rabbitmq-env.conf"
    if [[ $mode == plain ]]; then
        cat >"$D/rabbitmq.conf" <<EOF
loopback_users.guest = true
listeners.tcp.default = 127.0.0.1:$port
log.file.level = info
log.console = false
EOF
    else
        cat >"$D/rabbitmq.conf" <<EOF
loopback_users.guest = true
listeners.tcp = none
listeners.ssl.default = 127.0.0.1:$port
ssl_options.cacertfile = $D/ca.pem
ssl_options.certfile = $D/server.pem
ssl_options.keyfile = $D/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
log.file.level = info
log.console = false
EOF
    fi
    node_env "$port"
    echo "$port" >"$D/port"
    ERL_EPMD_ADDRESS=127.0.0.1 setsid nohup epmd -port "$ERL_EPMD_PORT" </dev/null >>"$D/log/epmd.log" 2>&1 &
    echo $! >"$D/epmd.pid"
    local i
    for ((i = 0; i < 50; i++)); do
        timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$ERL_EPMD_PORT" 2>/dev/null && break
        sleep 0.1
    done
    "$RMQ_BIN/rabbitmq-server" -detached </dev/null >>"$D/log/startup.log" 2>&1
    if ! "$RMQ_BIN/rabbitmqctl" -q wait --timeout 90 "$D/rabbitmq.pid" </dev/null >>"$D/log/startup.log" 2>&1; then
        tail -n 30 "$D/log/startup.log" "$D/log/"*.log >&2 || true
        stop
        echo "amqp_private_node: the node did not start" >&2
        exit 1
    fi
    for ((i = 0; i < 100; i++)); do
        timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "amqp_private_node: nothing listens on 127.0.0.1:$port" >&2
    stop
    exit 1
}

stop() {
    local port pid
    port=$(cat "$D/port" 2>/dev/null || echo 0)
    node_env "$port"
    if [[ -s $D/rabbitmq.pid ]]; then
        pid=$(tr -dc 0-9 <"$D/rabbitmq.pid")
        "$RMQ_BIN/rabbitmqctl" -q stop "$D/rabbitmq.pid" </dev/null >>"$D/log/startup.log" 2>&1 || true
        if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid" 2>/dev/null || true; sleep 1; kill -KILL "$pid" 2>/dev/null || true; fi
    fi
    if [[ -s $D/epmd.pid ]]; then
        pid=$(tr -dc 0-9 <"$D/epmd.pid")
        [[ -n $pid ]] && kill -TERM "$pid" 2>/dev/null || true
    fi
    rm -f "$D/rabbitmq.pid" "$D/epmd.pid"
}

ctl() {
    node_env "$(cat "$D/port")"
    "$RMQ_BIN/rabbitmqctl" -q "$@" </dev/null
}

case $cmd in
start) start "${3:?port}" "${4:-tls}" ;;
ctl) shift 2; ctl "$@" ;;
pid) tr -dc 0-9 <"$D/rabbitmq.pid"; echo ;;
stop) stop ;;
*) echo "usage: $0 start DIR PORT [tls|plain] | ctl DIR ARGS... | pid DIR | stop DIR" >&2; exit 2 ;;
esac
