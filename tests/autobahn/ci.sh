#!/usr/bin/env bash
# Runs the Autobahn|Testsuite (fuzzingclient) against wsgate's echo app.
#
#   tests/autobahn/ci.sh BIN [run.sh options...]
#
# Default options: --quick --no-deflate (cases 1-8, 10, 11: the CI set). Pass e.g. "--no-deflate"
# alone to include 9.* (large messages; the echo app is configured for 32 MiB messages here).
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
source "$ROOT/tests/lib.sh"
BIN="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"; shift
OPTS=("$@")
[ ${#OPTS[@]} -gt 0 ] || OPTS=(--quick --no-deflate)

PORT=$(free_port) UP=$(free_port) AP=$(free_port)
cat > "$TMP/wsgate.toml" <<TOML
[upstream]
url = "http://127.0.0.1:$UP"

[[listen]]
addr = "127.0.0.1:$PORT"

[admin]
addr = "127.0.0.1:$AP"

[websocket]
max_message_size = "32MiB"
send_queue = "64MiB"

[apps.echo]
kind = "echo"
urls = ["/websocket/echo"]
TOML
start_wsgate "$BIN" "$TMP/wsgate.toml" "$TMP/wsgate.log"
wait_port "$PORT"
set +e
"$HERE/run.sh" "${OPTS[@]}" --agent wsgate "ws://127.0.0.1:$PORT/websocket/echo"
rc=$?
set -e
if ! kill -0 "${PIDS[0]}" 2>/dev/null; then echo "autobahn: wsgate died during the suite:"; tail -n 20 "$TMP/wsgate.log"; rc=1; fi
exit $rc
