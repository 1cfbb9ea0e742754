#!/usr/bin/env bash
# WebSocket engine interop with peers nobody here wrote, both directions:
# - the npm `ws` client against wsgate (ws:// with and without deflate, wss://);
# - `wsgate client` against a `ws` (npm) echo server and a Python `websockets` echo server
#   (deflate negotiated or not, subprotocol, --send/--receive, exit codes);
# - `wsgate client` against wsgate itself over wss:// with --ca, interactive (stdin) mode;
# - headless Chromium (Debian `chromium` + playwright-core) on the echo app over wss:// and
#   HTTP/2 (skipped with a note when /usr/bin/chromium is missing).
# Prints `N passed, M failed`; exit 1 on any failure.
#
#   tests/interop/engine.sh target/release/wsgate
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
source "$ROOT/tests/lib.sh"
BIN="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
PY="$ROOT/tests/.venv/bin/python"
[ -d "$HERE/node_modules/ws" ] || (cd "$HERE" && npm ci --no-audit --no-fund >/dev/null)

passed=0 failed=0
ok() { passed=$((passed + 1)); echo "  ok   $1"; }
bad() { failed=$((failed + 1)); echo "  FAIL $1"; }
# expect NAME WANT_STDOUT WANT_RC -- CMD...: runs CMD, compares stdout and exit code.
expect() {
  local name="$1" want="$2" want_rc="$3"; shift 4
  local got rc
  set +e; got="$("$@" 2>"$TMP/err")"; rc=$?; set -e
  if [ "$got" = "$want" ] && [ "$rc" = "$want_rc" ]; then ok "$name"
  else bad "$name (rc=$rc want $want_rc; stdout=$(echo "$got" | head -c 200); stderr=$(head -c 300 "$TMP/err"))"; fi
}
client() { timeout 30 "$BIN" client "$@"; }

# A test CA and a server certificate it signed (rustls, like browsers, refuses a CA
# certificate presented as the server's own).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=wsgate-test-ca \
  -keyout "$TMP/ca.key" -out "$TMP/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
  -keyout "$TMP/key.pem" -out "$TMP/leaf.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > "$TMP/leaf.ext"
openssl x509 -req -in "$TMP/leaf.csr" -CA "$TMP/ca.pem" -CAkey "$TMP/ca.key" -CAcreateserial -days 2 \
  -extfile "$TMP/leaf.ext" -out "$TMP/cert.pem" 2>/dev/null
mkdir -p "$TMP/www"
echo '<!doctype html><title>wsgate interop</title><p>upstream page' > "$TMP/www/index.html"
UP=$(free_port) P1=$(free_port) P2=$(free_port) AP=$(free_port) NS=$(free_port) PS=$(free_port)
python3 -m http.server --bind 127.0.0.1 --directory "$TMP/www" "$UP" >/dev/null 2>&1 &
PIDS+=($!)
cat > "$TMP/wsgate.toml" <<TOML
[upstream]
url = "http://127.0.0.1:$UP"

[[listen]]
addr = "127.0.0.1:$P1"

[[listen]]
addr = "127.0.0.1:$P2"
tls = { cert = "$TMP/cert.pem", key = "$TMP/key.pem" }

[admin]
addr = "127.0.0.1:$AP"

[websocket]
max_message_size = "4MiB"

[apps.echo]
kind = "echo"
urls = ["/websocket/echo"]
subprotocols = ["echo.v1"]
TOML
"$BIN" run --config "$TMP/wsgate.toml" --log-level debug >"$TMP/wsgate.log" 2>&1 &
PIDS+=($!)
node "$HERE/ws_server.mjs" "$NS" >"$TMP/ws_server.log" 2>&1 &
PIDS+=($!)
"$PY" "$HERE/py_server.py" "$PS" >"$TMP/py_server.log" 2>&1 &
PIDS+=($!)
wait_port "$UP"; wait_port "$P1"; wait_port "$P2"; wait_port "$NS"; wait_port "$PS"

echo "== npm ws client -> wsgate"
for opt in "" --no-deflate; do
  if node "$HERE/ws_client.mjs" "ws://127.0.0.1:$P1/websocket/echo" $opt; then ok "ws client over ws:// $opt"; else bad "ws client over ws:// $opt"; fi
done
if node "$HERE/ws_client.mjs" "wss://localhost:$P2/websocket/echo" --ca "$TMP/ca.pem"; then ok "ws client over wss://"; else bad "ws client over wss://"; fi

BIG="$(python3 -c 'print("0123456789abcdef" * 6000, end="")')"   # 96 000 bytes (one argv string is limited to 128 KiB)
for peer in "ws:$NS" "websockets:$PS"; do
  name="${peer%%:*}" port="${peer##*:}"
  echo "== wsgate client -> $name server"
  expect "$name: --send x2 --receive 2" $'hello\nwörld ✓' 0 -- client "ws://127.0.0.1:$port/" --send hello --send 'wörld ✓' --receive 2
  info="$(client "ws://127.0.0.1:$port/info" --receive 1 2>&1 || true)"
  [[ "$info" == *permessage-deflate* ]] && ok "$name: permessage-deflate negotiated ($info)" || bad "$name: deflate not negotiated ($info)"
  info="$(client "ws://127.0.0.1:$port/info" --receive 1 --no-deflate 2>&1 || true)"
  [[ "$info" == *'"extensions":""'* ]] && ok "$name: --no-deflate: no extension ($info)" || bad "$name: --no-deflate ($info)"
  info="$(client "ws://127.0.0.1:$port/info" --receive 1 --protocol p1 --protocol p2 2>&1 || true)"
  [[ "$info" == *'"protocol":"p1"'* ]] && ok "$name: subprotocol p1 chosen ($info)" || bad "$name: subprotocol ($info)"
  got="$(client "ws://127.0.0.1:$port/" --send "$BIG" --receive 1 | tr -d '\n' || true)"
  [ "$got" = "$BIG" ] && ok "$name: 96 kB message echoed (deflate)" || bad "$name: 96 kB message (${#got} bytes back)"
  expect "$name: --receive with nothing to receive times out (exit 3)" "" 3 -- client "ws://127.0.0.1:$port/" --receive 1 --timeout 500ms
done

echo "== wsgate client -> wsgate"
expect "wss:// with --ca, interactive stdin lines echoed" $'one\ntwo ✓' 0 -- bash -c "printf 'one\ntwo ✓\n' | timeout 30 '$BIN' client wss://localhost:$P2/websocket/echo --ca '$TMP/ca.pem'"
expect "wss:// without --ca: TLS error (exit 1)" "" 1 -- client "wss://localhost:$P2/websocket/echo" --send x --receive 1
set +e; client "ws://127.0.0.1:$P1/not-an-app" --send x >/dev/null 2>"$TMP/err"; rc=$?; set -e
[ "$rc" = 1 ] && grep -q "HTTP 404" "$TMP/err" && ok "refused upgrade reports the HTTP status ($(head -c 120 "$TMP/err"))" || bad "refused upgrade (rc=$rc: $(cat "$TMP/err"))"
expect "usage error exits 2" "" 2 -- client "ws://127.0.0.1:$P1/" --bogus
expect "subprotocol echo.v1 accepted by the app" "hi" 0 -- client "ws://127.0.0.1:$P1/websocket/echo" --protocol echo.v1 --send hi --receive 1

echo "== headless Chromium -> wsgate (wss://, HTTP/2)"
if [ -x /usr/bin/chromium ]; then
  if node "$HERE/browser_echo.mjs" "https://localhost:$P2/" /websocket/echo; then ok "chromium echo over wss://"; else bad "chromium echo over wss://"; fi
  if grep -q 'WebSocket open.*http="2"\|WebSocket open.*http=2' "$TMP/wsgate.log"; then ok "a WebSocket was opened over HTTP/2 (RFC 8441 extended CONNECT)"
  else echo "  note: no WebSocket over HTTP/2 seen in the log (Chromium used HTTP/1.1 for the WebSocket)"; fi
else
  echo "  skipped: /usr/bin/chromium is not installed (apt-get install chromium)"
fi

kill -0 "${PIDS[1]}" 2>/dev/null && ok "wsgate still running" || bad "wsgate died"
if [ "$failed" -gt 0 ]; then echo "--- wsgate log:"; grep -v DEBUG "$TMP/wsgate.log" | tail -n 20; fi
echo "engine interop: $passed passed, $failed failed"
[ "$failed" = 0 ]
