#!/usr/bin/env bash
# Browser tests of the chat and log-view pages in headless Chromium (Debian's `chromium`,
# driven by playwright-core; no browser is downloaded). Starts wsgate itself on a free
# loopback port with a config of its own, runs the tests, stops wsgate.
# Usage: tests/browser/run.sh [path/to/wsgate]   (default target/release/wsgate)
# Screenshots go to test-artifacts/browser/.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BIN="$(realpath "${1:-$ROOT/target/release/wsgate}")"
HERE="$ROOT/tests/browser"
[ -x "$BIN" ] || { echo "browser tests: $BIN not built" >&2; exit 1; }
[ -x /usr/bin/chromium ] || { echo "browser tests: /usr/bin/chromium missing (scripts/install-test-deps)" >&2; exit 1; }
[ -d "$HERE/node_modules/playwright-core" ] || (cd "$HERE" && npm ci --no-audit --no-fund --silent)

WORK="$(mktemp -d)"
PID=""
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT="$(free_port)"
ADMIN_PORT="$(free_port)"
mkdir -p "$WORK/logs"
: > "$WORK/logs/app.log"
cat > "$WORK/wsgate.toml" <<TOML
[upstream]
url = "http://127.0.0.1:9"
[[listen]]
addr = "127.0.0.1:$PORT"
[admin]
addr = "127.0.0.1:$ADMIN_PORT"
[apps.chat]
kind = "chat"
urls = ["/websocket/chat", "/websocket/chat/ops"]
room_names = { "/websocket/chat/ops" = "Operations" }
[apps.log-view]
kind = "log-view"
urls = ["/admin/log-view"]
files = ["$WORK/logs/app.log", "$WORK/logs/other.log"]
backlog_lines = 20
refresh = "1s"
[apps.live]
kind = "pubsub"
urls = ["/live"]
[[apps.live.namespaces]]
pattern = "*"
publish = "any"
history = 100
TOML

"$BIN" run --config "$WORK/wsgate.toml" --log-level info 2>"$WORK/wsgate.log" &
PID=$!
for _ in $(seq 1 100); do
  if curl -fsS -o /dev/null "http://127.0.0.1:$PORT/websocket/chat" 2>/dev/null; then break; fi
  sleep 0.1
done

mkdir -p "$ROOT/test-artifacts/browser"
status=0
(cd "$HERE" && WSGATE_URL="http://127.0.0.1:$PORT" ADMIN_URL="http://127.0.0.1:$ADMIN_PORT" LOG_DIR="$WORK/logs" ARTIFACTS="$ROOT/test-artifacts/browser" \
  node --test --test-concurrency=1 browser.test.mjs) || status=$?
if [ "$status" != 0 ]; then
  echo "--- wsgate log ---" >&2
  cat "$WORK/wsgate.log" >&2
fi
exit "$status"
