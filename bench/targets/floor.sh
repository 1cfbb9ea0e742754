# Target: `wsload floor`, the cheapest possible fan-out server (one blocking write per
# subscriber, no event loop; see wsload/src/floor.rs). Fan-out only: its CPU per delivery is
# the floor every server pays on this machine, so `fanout.sh nchan wsgate floor` shows how much
# of nchan's and wsgate's CPU per delivery is left to optimise.
#   FLOOR_PORT (18096)
FLOOR_PORT=${FLOOR_PORT:-18096}
floor_start() {
    local P=$RUN_DIR/floor
    port_free "$FLOOR_PORT" || die "port $FLOOR_PORT in use"
    mkdir -p "$P"
    setsid "$WSLOAD" floor --listen "127.0.0.1:$FLOOR_PORT" >"$P/log" 2>&1 &
    echo $! >"$P/pid"
    wait_port "$FLOOR_PORT" 10 || die "floor server did not start (see $P/log)"
    log "floor server up on 127.0.0.1:$FLOOR_PORT (pid $(cat "$P/pid"))"
}
floor_stop() { stop_pidfile "$RUN_DIR/floor/pid"; }
floor_pids() { cat "$RUN_DIR/floor/pid" 2>/dev/null || true; }
floor_fanout_args() {
    FANOUT_ARGS=(--sub-url "ws://127.0.0.1:$FLOOR_PORT/sub/$1" --pub-url "http://127.0.0.1:$FLOOR_PORT/pub/$1")
}
