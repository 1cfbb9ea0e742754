#!/usr/bin/env bash
# End-to-end interop: wsgate (the binary given) in front of a real nginx, reached by clients
# nobody here wrote: Python `websockets` over ws:// and wss:// (self-signed certificate made
# here), and curl through the proxy. Prints `N passed, M failed`; exit 1 on any failure.
#
#   tests/interop/run.sh target/release/wsgate
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
source "$ROOT/tests/lib.sh"
BIN="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
PY="$ROOT/tests/.venv/bin/python"
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"

passed=0 failed=0
ok() { passed=$((passed + 1)); echo "  ok   $1"; }
bad() { failed=$((failed + 1)); echo "  FAIL $1"; }

self_signed "$TMP"
NPORT=$(free_port) P1=$(free_port) P2=$(free_port) AP=$(free_port)
mkdir -p "$TMP/www" "$TMP/nginx"
# nginx workers run unprivileged: let them read the document root.
chmod a+rx "$TMP" "$TMP/www"
head -c $((20 * 1024 * 1024)) /dev/urandom > "$TMP/www/big.bin"
chmod a+r "$TMP/www/big.bin"
cat > "$TMP/nginx.conf" <<NGX
daemon off;
worker_processes 1;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path $TMP/nginx/body;
  proxy_temp_path $TMP/nginx/proxy;
  fastcgi_temp_path $TMP/nginx/fastcgi;
  uwsgi_temp_path $TMP/nginx/uwsgi;
  scgi_temp_path $TMP/nginx/scgi;
  server {
    listen 127.0.0.1:$NPORT;
    root $TMP/www;
    location = /headers {
      default_type text/plain;
      return 200 "xff=\$http_x_forwarded_for|proto=\$http_x_forwarded_proto|xfh=\$http_x_forwarded_host|via=\$http_via|conn=\$http_connection|ka=\$http_keep_alive|host=\$http_host\n";
    }
  }
}
NGX
"$NGINX" -c "$TMP/nginx.conf" -e "$TMP/nginx/error.log" &
PIDS+=($!)

cat > "$TMP/wsgate.toml" <<TOML
[upstream]
url = "http://127.0.0.1:$NPORT"

[[listen]]
addr = "127.0.0.1:$P1"

[[listen]]
addr = "127.0.0.1:$P2"
tls = { cert = "$TMP/cert.pem", key = "$TMP/key.pem" }

[admin]
addr = "127.0.0.1:$AP"

[apps.echo]
kind = "echo"
urls = ["/websocket/echo"]
TOML
start_wsgate "$BIN" "$TMP/wsgate.toml" "$TMP/wsgate.log"
wait_port "$NPORT"; wait_port "$P1"; wait_port "$P2"

echo "== Python websockets, ws://"
if "$PY" "$HERE/echo_client.py" "ws://127.0.0.1:$P1/websocket/echo"; then ok "websockets client over ws://"; else bad "websockets client over ws://"; fi
echo "== Python websockets, wss:// (self-signed CA)"
if "$PY" "$HERE/echo_client.py" "wss://localhost:$P2/websocket/echo" --ca "$TMP/cert.pem"; then ok "websockets client over wss://"; else bad "websockets client over wss://"; fi

echo "== curl through wsgate to nginx"
want=$(sha256sum < "$TMP/www/big.bin" | cut -d' ' -f1)
got=$(curl -sS --max-time 30 "http://127.0.0.1:$P1/big.bin" | sha256sum | cut -d' ' -f1)
[ "$got" = "$want" ] && ok "20 MiB static file byte-exact over http" || bad "20 MiB file over http (sha256 $got)"
got=$(curl -sS --max-time 30 --cacert "$TMP/cert.pem" "https://localhost:$P2/big.bin" | sha256sum | cut -d' ' -f1)
[ "$got" = "$want" ] && ok "20 MiB static file byte-exact over https" || bad "20 MiB file over https (sha256 $got)"
v=$(curl -sS -o /dev/null -w '%{http_version}' --max-time 10 --cacert "$TMP/cert.pem" "https://localhost:$P2/headers")
[ "$v" = 2 ] && ok "HTTP/2 negotiated by ALPN over TLS" || bad "HTTP version over TLS: $v"
h=$(curl -sS --max-time 10 -H 'Connection: keep-alive, X-Secret' -H 'X-Secret: 1' -H 'Keep-Alive: 5' "http://127.0.0.1:$P1/headers")
echo "   upstream saw: $h"
[[ "$h" == *"xff=127.0.0.1|"* ]] && ok "X-Forwarded-For set" || bad "X-Forwarded-For ($h)"
[[ "$h" == *"proto=http|"* ]] && ok "X-Forwarded-Proto http" || bad "X-Forwarded-Proto ($h)"
[[ "$h" == *"xfh=127.0.0.1:$P1|"* ]] && ok "X-Forwarded-Host set" || bad "X-Forwarded-Host ($h)"
[[ "$h" == *"via=1.1 wsgate|"* ]] && ok "Via: 1.1 wsgate" || bad "Via ($h)"
[[ "$h" == *"ka=|"* ]] && ok "Keep-Alive (hop-by-hop) removed" || bad "Keep-Alive not removed ($h)"
[[ "$h" == *"host=127.0.0.1:$P1"* ]] && ok "Host preserved" || bad "Host ($h)"
h=$(curl -sS --max-time 10 --cacert "$TMP/cert.pem" "https://localhost:$P2/headers")
[[ "$h" == *"proto=https|"* ]] && ok "X-Forwarded-Proto https" || bad "X-Forwarded-Proto over TLS ($h)"
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 "http://127.0.0.1:$P1/missing")
[ "$code" = 404 ] && ok "upstream 404 passed through" || bad "404 passthrough (got $code)"

kill "${PIDS[0]}"   # nginx down -> 502
sleep 0.3
code=$(curl -s -o "$TMP/502.txt" -w '%{http_code}' --max-time 10 "http://127.0.0.1:$P1/headers")
[ "$code" = 502 ] && ok "upstream down -> 502 ($(head -c 60 "$TMP/502.txt" | tr -d '\n'))" || bad "upstream down (got $code)"

if [ "$failed" -gt 0 ]; then echo "--- wsgate log:"; tail -n 30 "$TMP/wsgate.log"; fi
echo "interop: $passed passed, $failed failed"
[ "$failed" = 0 ]
