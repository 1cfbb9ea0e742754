#!/usr/bin/env bash
# Autobahn|Testsuite fuzzingserver against wsgate's client library (examples/autobahn_client.rs,
# which echoes every message through wsgate::client).
#
#   tests/autobahn/client.sh EXAMPLE_BIN [--quick] [--no-deflate] [--deflate-sample]
#                            [--cases PATTERNS] [--timeout SECS] [--outdir DIR]
#
# --quick excludes 9.* (large messages), --no-deflate 12.* and 13.*, --deflate-sample keeps of
# 12.*/13.* only the x.y.1, x.y.4, x.y.11 cases (as run.sh does); --cases selects (default "*",
# comma-separated Autobahn patterns). --timeout bounds the client run (default 3600 s); the
# reports of the cases that finished are written even when it expires.
# Exit: 0 no FAILED case; 1 some case FAILED; 2 the suite did not run or did not finish.
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
source "$ROOT/tests/lib.sh"
BIN="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"; shift
EXCL="" OUTDIR="" CASES="*" LIMIT=3600
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) EXCL="$EXCL,9.*" ;;
    --no-deflate) EXCL="$EXCL,12.*,13.*" ;;
    --deflate-sample)
      for x in 12.1 12.2 12.3 12.4 12.5 13.1 13.2 13.3 13.4 13.5 13.6 13.7; do
        for y in 2 3 5 6 7 8 9 10 12 13 14 15 16 17 18; do EXCL="$EXCL,$x.$y"; done
      done ;;
    --cases) CASES="$2"; shift ;;
    --timeout) LIMIT="$2"; shift ;;
    --outdir) OUTDIR="$2"; shift ;;
    *) echo "client.sh: unknown option $1" >&2; exit 64 ;;
  esac
  shift
done
"$HERE/run.sh" --install >/dev/null
VENV="${AUTOBAHN_VENV:-$HERE/.venv}"
PORT=$(free_port)
REPORTS="${OUTDIR:-$TMP/reports}"
mkdir -p "$REPORTS"
python3 - "$TMP/spec.json" "$PORT" "$REPORTS" "$EXCL" "$CASES" <<'PY'
import json, sys
spec, port, out, excl, cases = sys.argv[1:]
json.dump({"url": "ws://127.0.0.1:%s" % port, "outdir": out, "cases": [c for c in cases.split(",") if c],
           "exclude-cases": [c for c in excl.split(",") if c], "exclude-agent-cases": {}},
          open(spec, "w"))
PY
"$VENV/bin/python" "$HERE/list_cases.py" "$TMP/spec.json" > "$TMP/cases.txt"
( cd "$TMP" && exec "$VENV/bin/wstest" -m fuzzingserver -s "$TMP/spec.json" ) > "$TMP/wstest.log" 2>&1 &
PIDS+=($!)
wait_port "$PORT" 30
T0=$(date +%s%N)
set +e
timeout "$LIMIT" "$BIN" "ws://127.0.0.1:$PORT" wsgate-client > "$TMP/client.log" 2>&1
rc=$?
# Out of time: still have the server write the reports of the cases that finished.
[ $rc != 124 ] || timeout 60 "$BIN" "ws://127.0.0.1:$PORT" wsgate-client --update-reports-only >> "$TMP/client.log" 2>&1 || true
set -e
WALL=$(( ($(date +%s%N) - T0) / 1000000 ))
[ $rc = 0 ] || { echo "client.sh: the client exited with $rc:"; tail -n 20 "$TMP/client.log"; }
set +e
python3 "$HERE/summarize.py" "$REPORTS" --expected "$TMP/cases.txt" --agent wsgate-client \
  --url "wstest fuzzingserver" --wall-seconds "$((WALL / 1000)).$((WALL % 1000))"
status=$?
set -e
[ $rc = 0 ] || [ $status != 0 ] || status=2
exit $status
