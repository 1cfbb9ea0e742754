#!/usr/bin/env bash
# Soak run (issue 9 part 3; not in CI, bounded): wsgate (release build) in front of a real
# nginx, under mixed load at once for DURATION seconds:
#   - paced HTTP GET/HEAD through the proxy (bench/soak_http.py, HTTP_RATE req/s, keep-alive
#     plus a fresh connection every 20th request);
#   - WebSocket echo: back-to-back wsload echo runs (ECHO_CONNS connections x ECHO_MSGS round
#     trips each, a pause of 1 s between runs), so connections open and close throughout;
#   - chat multicast: SUBS subscribers connected to one room for all but the last ~15 s, fed by wsload
#     through the control API at PUB_RATE messages/s (loss, order, early closes counted), plus
#     a `wsgate publish` to the same room every 5 s (each delivery must arrive);
#   - a SIGHUP every HUP_EVERY seconds, alternating between two configurations (an extra app
#     and a different ping interval), so each reload changes something;
#   - wsgate's RSS (VmRSS of /proc/PID/status) sampled every second.
# Then bench/soak_report.py writes summary.json, summary.md and rss.svg to OUT and the script
# exits 1 if any error was counted (failed HTTP request, echo connection or round trip missing,
# subscriber lost a message or was closed, publish failed, reload rejected, wsgate died) or if
# RSS grew by more than RSS_GROWTH_MAX_KIB over the second half of the run.
#
#   bench/soak.sh                      # 300 s, results in bench/results/soak-<UTC date-time>/
#   DURATION=60 bench/soak.sh          # shorter
#
# Needs nginx (apt-get install nginx-light), python3, and bench/wsload (built here if missing).
# Ports (all 127.0.0.1): SOAK_UPSTREAM_PORT 18280 (nginx), SOAK_PORT 18290, SOAK_ADMIN_PORT 18291.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=${DURATION:-300}
HUP_EVERY=${HUP_EVERY:-20}
HTTP_RATE=${HTTP_RATE:-200}
ECHO_CONNS=${ECHO_CONNS:-10}
ECHO_MSGS=${ECHO_MSGS:-300}
SUBS=${SUBS:-200}
PUB_RATE=${PUB_RATE:-20}
# 4 MiB: steady load on a warmed-up process should not grow; a leak of one small buffer per
# request, message or connection would exceed it well within 150 s at these rates.
RSS_GROWTH_MAX_KIB=${RSS_GROWTH_MAX_KIB:-4096}
BACKEND_PORT=${SOAK_UPSTREAM_PORT:-18280}
PORT=${SOAK_PORT:-18290}
ADMIN_PORT=${SOAK_ADMIN_PORT:-18291}
OUT=${OUT:-$ROOT/bench/results/soak-$(date -u +%Y%m%d-%H%M%S)}
RUN_DIR=$(mktemp -d /tmp/wsgate-soak.XXXXXX)
RESULTS_DIR=$RUN_DIR/results
export RUN_DIR RESULTS_DIR BACKEND_PORT
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

[ "$DURATION" -ge 40 ] || die "DURATION must be at least 40 s"
need nginx nginx-light
need python3
WSGATE=$ROOT/target/release/wsgate
log "building wsgate (release)"
cargo build --release --locked -q --bin wsgate
ensure_wsload
mkdir -p "$OUT"

PIDS=()
WSGATE_PID=""
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    if [ -n "$WSGATE_PID" ]; then
        kill -TERM "$WSGATE_PID" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$WSGATE_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$WSGATE_PID" 2>/dev/null || true
    fi
    nginx_stop backend
    rm -rf "$RUN_DIR"
}
trap cleanup EXIT INT TERM

# --- upstream: nginx serving a 1 KiB file (the benchmarks' backend config) ---
make_www
BACKEND_WORKERS=1 nginx_start backend "$ROOT/bench/conf/backend.conf.in" "$BACKEND_PORT"

# --- wsgate: two configurations that differ in an extra app and the ping interval ---
write_config() { # write_config FILE VARIANT
    cat >"$1" <<TOML
[upstream]
url = "http://127.0.0.1:$BACKEND_PORT"
[[listen]]
addr = "127.0.0.1:$PORT"
[admin]
addr = "127.0.0.1:$ADMIN_PORT"
[log]
level = "info"
[websocket]
ping_interval = "$([ "$2" = a ] && echo 30s || echo 25s)"
[apps.echo]
kind = "echo"
urls = ["/websocket/echo"]
[apps.chat]
kind = "chat"
urls = ["/sub"]
history = 0
TOML
    if [ "$2" = b ]; then printf '[apps.extra]\nkind = "echo"\nurls = ["/extra"]\n' >>"$1"; fi
}
CONF=$RUN_DIR/wsgate.toml
write_config "$CONF" a
"$WSGATE" check --config "$CONF" 2>/dev/null || die "config check failed"
port_free "$PORT" || die "port $PORT in use"
"$WSGATE" run --config "$CONF" >"$OUT/wsgate.log" 2>&1 &
WSGATE_PID=$!
wait_port "$PORT" 20 || die "wsgate did not listen on $PORT"
wait_port "$ADMIN_PORT" 20 || die "wsgate admin did not listen on $ADMIN_PORT"
log "wsgate up (pid $WSGATE_PID), load for ${DURATION}s, SIGHUP every ${HUP_EVERY}s, results in $OUT"

T0=$(date +%s.%N)
elapsed() { python3 -c "import time; print(f'{time.time() - $T0:.1f}')"; }
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)

# --- RSS sampler ---
(
    echo "t_s,rss_kib"
    while kill -0 "$WSGATE_PID" 2>/dev/null; do
        kib=$(awk '/^VmRSS:/{print $2}' "/proc/$WSGATE_PID/status" 2>/dev/null) || break
        [ -n "$kib" ] && echo "$(elapsed),$kib"
        sleep 1
    done
) >"$OUT/rss.csv" &
PIDS+=($!)

# --- chat multicast: subscribers connected from the start to about 15 s before the end ---
FAN_MSGS=$(( PUB_RATE * (DURATION - 15) ))
"$WSLOAD" fanout --sub-url "ws://127.0.0.1:$PORT/sub" \
    --pub-url "http://127.0.0.1:$ADMIN_PORT/v1/subscriptions/chat:chat:%2Fsub/publish" \
    --subs "$SUBS" --msgs "$FAN_MSGS" --rate "$PUB_RATE" --size 64 \
    --ready-timeout 20 --drain-timeout 10 >"$OUT/fanout.json" 2>"$OUT/fanout.err" &
FAN_PID=$!
PIDS+=($FAN_PID)

# --- HTTP through the proxy ---
python3 "$ROOT/bench/soak_http.py" "http://127.0.0.1:$PORT/1k.txt" "$((DURATION - 5))" --rate "$HTTP_RATE" \
    >"$OUT/http.json" 2>"$OUT/http.err" &
HTTP_PID=$!
PIDS+=($HTTP_PID)

# --- WebSocket echo runs, back to back ---
(
    end=$((SECONDS + DURATION - 10))
    while [ $SECONDS -lt $end ]; do
        "$WSLOAD" echo --url "ws://127.0.0.1:$PORT/websocket/echo" --conns "$ECHO_CONNS" \
            --msgs "$ECHO_MSGS" --warmup 0 --timeout 30 --connect-timeout 10 2>>"$OUT/echo.err" \
            || echo '{"error":"wsload echo exited nonzero"}'
        sleep 1
    done
) >"$OUT/echo.jsonl" &
ECHO_PID=$!
PIDS+=($ECHO_PID)

# --- `wsgate publish` into the fan-out room every 5 s while its subscribers are connected ---
(
    sleep 10
    end=$((SECONDS + DURATION - 30))
    n=0
    while [ $SECONDS -lt $end ]; do
        n=$((n + 1))
        rc=0
        delivered=$("$WSGATE" publish --config "$CONF" "chat:chat:/sub" "soak-cli-$n" 2>>"$OUT/publish.err") || rc=$?
        echo "$(elapsed) $rc ${delivered:-x}"
        sleep 5
    done
) >"$OUT/publish.txt" &
PUB_PID=$!
PIDS+=($PUB_PID)

# --- SIGHUP every HUP_EVERY seconds, alternating configurations ---
: >"$OUT/hup.txt"
variant=a
end=$((SECONDS + DURATION))
next=$((SECONDS + HUP_EVERY))
wsgate_exited=0
while [ $SECONDS -lt $end ]; do
    sleep 1
    if ! kill -0 "$WSGATE_PID" 2>/dev/null; then
        log "wsgate exited during the run"
        wsgate_exited=1
        break
    fi
    if [ $SECONDS -ge $next ] && [ $SECONDS -lt $((end - 5)) ]; then
        variant=$([ $variant = a ] && echo b || echo a)
        write_config "$CONF" $variant
        kill -HUP "$WSGATE_PID"
        elapsed >>"$OUT/hup.txt"
        next=$((SECONDS + HUP_EVERY))
    fi
done

log "load phase over; waiting for the clients to report"
wait "$HTTP_PID" "$ECHO_PID" "$PUB_PID" || true
for _ in $(seq 60); do kill -0 "$FAN_PID" 2>/dev/null || break; sleep 1; done
kill "$FAN_PID" 2>/dev/null || true
wait "$FAN_PID" 2>/dev/null || true
sleep 1
reloads_ok=$(grep -c "configuration reloaded" "$OUT/wsgate.log" || true)
reloads_failed=$(grep -c "configuration reload rejected" "$OUT/wsgate.log" || true)
cat >"$OUT/meta.json" <<JSON
{"started": "$STARTED", "duration_s": $DURATION, "hup_every_s": $HUP_EVERY, "http_rate": $HTTP_RATE,
 "echo_conns": $ECHO_CONNS, "echo_msgs": $ECHO_MSGS, "subs": $SUBS, "pub_rate": $PUB_RATE,
 "reloads_ok": $reloads_ok, "reloads_failed": $reloads_failed, "wsgate_exited": $wsgate_exited,
 "wsgate": "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)", "nproc": $(nproc),
 "loadavg_end": "$(cut -d' ' -f1-3 /proc/loadavg)"}
JSON
python3 "$ROOT/bench/soak_report.py" "$OUT" "$RSS_GROWTH_MAX_KIB"
