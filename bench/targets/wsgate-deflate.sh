# Target: a second wsgate instance with permessage-deflate on ([websocket] compression =
# true), next to `wsgate` (compression off), so fanout.sh can alternate the two in one run.
# Needs DEFLATE=1 in fanout.sh (subscribers offer the extension); ports
# WSGATE_DEFLATE_PORT (18092) and WSGATE_DEFLATE_ADMIN_PORT (18093).
. "$BENCH_DIR/targets/wsgate.sh"
WSGATE_DEFLATE_PORT=${WSGATE_DEFLATE_PORT:-18092}
WSGATE_DEFLATE_ADMIN_PORT=${WSGATE_DEFLATE_ADMIN_PORT:-18093}

wsgate-deflate_start() { wsgate_launch wsgate-deflate "$WSGATE_DEFLATE_PORT" "$WSGATE_DEFLATE_ADMIN_PORT" true; }
wsgate-deflate_stop() { wsgate_halt wsgate-deflate; }
wsgate-deflate_pids() { cat "$RUN_DIR/wsgate-deflate/pid" 2>/dev/null || true; }
wsgate-deflate_fanout_args() { wsgate_fanout_for "$WSGATE_DEFLATE_PORT" "$WSGATE_DEFLATE_ADMIN_PORT"; }
wsgate-deflate_idle_args() { IDLE_ARGS=(--url "ws://127.0.0.1:$WSGATE_DEFLATE_PORT/sub"); }
wsgate-deflate_handshake_args() { HS_ARGS=(--url "ws://127.0.0.1:$WSGATE_DEFLATE_PORT/sub" --deflate); }
