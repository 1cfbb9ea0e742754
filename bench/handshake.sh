#!/usr/bin/env bash
# Handshake rate: C workers each open a WebSocket (TCP connect + upgrade, wait for the 101),
# close it cleanly (Close frame, wait for the server's Close and TCP close) and start over,
# for DURATION seconds; the targets alternate within each round (A B A B ...).
# Reports handshakes/s, open latency percentiles, failures by kind and the server's CPU per
# handshake (schedstat: the figure that does not depend on who else uses the machine).
# Usage: handshake.sh [TARGET...]   (default: nchan wsgate)
# Env: CONNS ("16") DURATION (5 s) ROUNDS (3) THREADS (1) REF (first target)
#      HS_EXTRA (extra wsload handshake options, e.g. "--exchange" for echo URLs)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
need python3
ensure_wsload

TARGETS=${*:-nchan wsgate}
CONNS=${CONNS:-16}; DURATION=${DURATION:-5}; ROUNDS=${ROUNDS:-3}; THREADS=${THREADS:-1}
OUT=$(results_file handshake)

for t in $TARGETS; do . "$BENCH_DIR/targets/$t.sh"; done
for t in $TARGETS; do declare -F "${t}_handshake_args" >/dev/null || die "target $t has no ${t}_handshake_args"; done
cleanup() { for t in $TARGETS; do "${t}_stop" || true; done; }
trap cleanup EXIT
for t in $TARGETS; do "${t}_start"; done

wait_quiet $TARGETS
log "$(load_note); targets: $TARGETS; results -> $OUT"
for c in $CONNS; do
    for r in $(seq "$ROUNDS"); do
        for t in $TARGETS; do
            "${t}_handshake_args" "c${c}r${r}"
            pids=$("${t}_pids")
            STAT0=$(stat_snap); tc0=$(target_cpu "$t")
            set +e
            # shellcheck disable=SC2086
            line=$("$WSLOAD" handshake "${HS_ARGS[@]}" --conns "$c" --duration "$DURATION" \
                --threads "$THREADS" --pids "$pids" --connect-timeout 10 --quiet ${HS_EXTRA:-})
            rc=$?
            set -e
            STAT1=$(stat_snap); tc1=$(target_cpu "$t")
            [ -n "$line" ] || line='{"error":"wsload printed nothing"}'
            STAT0=$STAT0 STAT1=$STAT1 annotate "$line" target_cpu_total_s="$(python3 -c "print(round(($tc1-$tc0)/1e9,3))")" test=handshake target="$t" round="$r" rc="$rc" \
                | tee -a "$OUT" | python3 "$BENCH_DIR/progress.py"
            wait_quiet $TARGETS
        done
    done
done
log "$(load_note)"
python3 "$BENCH_DIR/summarize.py" "$OUT" --ref "${REF:-${TARGETS%% *}}"
