# Target: a second wsgate instance with permessage-deflate on ([websocket] compression =
# true), next to `wsgate` (compression off), so fanout.sh can alternate the two in one run.
# Needs DEFLATE=1 in fanout.sh (subscribers offer the extension); ports
# GATE_DEFLATE_PORT (18096) and GATE_DEFLATE_ADMIN_PORT (18097).
. "$BENCH_DIR/targets/wsgate.sh"
GATE_DEFLATE_PORT=${GATE_DEFLATE_PORT:-18096}
GATE_DEFLATE_ADMIN_PORT=${GATE_DEFLATE_ADMIN_PORT:-18097}

wsgate-deflate_start() { wsgate_launch wsgate-deflate "$GATE_DEFLATE_PORT" "$GATE_DEFLATE_ADMIN_PORT" true; }
wsgate-deflate_stop() { wsgate_halt wsgate-deflate; }
wsgate-deflate_pids() { cat "$RUN_DIR/wsgate-deflate/pid" 2>/dev/null || true; }
wsgate-deflate_fanout_args() { wsgate_fanout_for "$GATE_DEFLATE_PORT" "$GATE_DEFLATE_ADMIN_PORT"; }
wsgate-deflate_idle_args() { IDLE_ARGS=(--url "ws://127.0.0.1:$GATE_DEFLATE_PORT/sub"); }
wsgate-deflate_handshake_args() { HS_ARGS=(--url "ws://127.0.0.1:$GATE_DEFLATE_PORT/sub" --deflate); }
wsgate-deflate_echo_args() { ECHO_ARGS=(--url "ws://127.0.0.1:$GATE_DEFLATE_PORT/echo" --deflate); }
