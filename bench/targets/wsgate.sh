# Target: wsgate itself (this repository's release binary), with permessage-deflate off.
# (Variables are GATE_*, not WSGATE_*: wsgate reads WSGATE_* from its environment as config.)
# Subscribers join the chat app's room on /sub; messages are published through the
# control API. One worker thread by default, like the peers' one worker process.
#   GATE_BIN (target/release/wsgate of this repository), GATE_THREADS (1),
#   GATE_PORT (18094) and GATE_ADMIN_PORT (18095); not 18090/18091, which the
#   candidate examples use
# The companion target wsgate-deflate (targets/wsgate-deflate.sh) runs a second instance
# with compression on, so both can alternate in one run.
GATE_BIN=${GATE_BIN:-$TOOLS_DIR/target/release/wsgate}
GATE_THREADS=${GATE_THREADS:-1}
GATE_PORT=${GATE_PORT:-18094}
GATE_ADMIN_PORT=${GATE_ADMIN_PORT:-18095}

# wsgate_launch NAME PORT ADMIN_PORT COMPRESSION: render the config and start it.
wsgate_launch() {
    local name=$1 P=$RUN_DIR/$1
    [ -x "$GATE_BIN" ] || die "$GATE_BIN not found (cargo build --release)"
    port_free "$2" && port_free "$3" || die "$name: port $2 or $3 in use"
    mkdir -p "$P"
    PORT=$2 ADMIN_PORT=$3 COMPRESSION=$4 BACKEND_PORT=$BACKEND_PORT render "$BENCH_DIR/conf/wsgate.toml.in" "$P/wsgate.toml"
    TOKIO_WORKER_THREADS=$GATE_THREADS setsid "$GATE_BIN" run --config "$P/wsgate.toml" >"$P/log" 2>&1 &
    echo $! >"$P/pid"
    wait_port "$2" 20 && wait_port "$3" 10 || die "$name did not start (see $P/log)"
    log "$name up on 127.0.0.1:$2, admin :$3, compression=$4 (pid $(cat "$P/pid"))"
}
wsgate_halt() { stop_pidfile "$RUN_DIR/$1/pid" 100; }
# wsgate_fanout_for PORT ADMIN_PORT: FANOUT_ARGS for the chat room /sub (the channel name is
# not used: each target is its own process, and wsload ignores other runs' messages).
wsgate_fanout_for() {
    FANOUT_ARGS=(--sub-url "ws://127.0.0.1:$1/sub"
        --pub-url "http://127.0.0.1:$2/v1/subscriptions/chat:chat:%2Fsub/publish")
}

wsgate_start() { wsgate_launch wsgate "$GATE_PORT" "$GATE_ADMIN_PORT" false; }
wsgate_stop() { wsgate_halt wsgate; }
wsgate_pids() { cat "$RUN_DIR/wsgate/pid" 2>/dev/null || true; }
wsgate_fanout_args() { wsgate_fanout_for "$GATE_PORT" "$GATE_ADMIN_PORT"; }
wsgate_idle_args() { IDLE_ARGS=(--url "ws://127.0.0.1:$GATE_PORT/sub"); }
wsgate_handshake_args() { HS_ARGS=(--url "ws://127.0.0.1:$GATE_PORT/sub"); }
wsgate_echo_args() { ECHO_ARGS=(--url "ws://127.0.0.1:$GATE_PORT/echo"); }
