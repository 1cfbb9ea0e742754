#!/usr/bin/env bash
# wsgate under a real systemd (PID 1, systemd 252 of Debian bookworm) in systemd-nspawn: the
# .deb installed with dpkg as an operator would, then every promise of the unit and the
# package checked as a named step (issue 17).
#
#   tests/systemd-real/run.sh [path/to/wsgate_*.deb]      (root; default: builds the .deb)
#
# The Debian root comes from debootstrap (minbase + systemd, dbus, adduser, curl), cached in
# $WSGATE_TEST_CACHE (default /var/cache/wsgate-test/bookworm-root) and rebuilt only when
# missing; every run boots a fresh copy of it, so runs never see each other's state. The
# container has a private network (loopback only); commands run in it through
# `nsenter -t <its PID 1> -a`. Everything started here is killed on exit.
#
# Upgrade with an open WebSocket (step "upgrade"): the package's postinst restarts
# wsgate.service, so an open WebSocket is closed with 1001 (going away) by the drain and the
# client must reconnect; the new version serves right after dpkg returns.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$(pwd)
START=$(date +%s)
[ "$(id -u)" = 0 ] || { echo "systemd-real: needs root (debootstrap, systemd-nspawn, nsenter)" >&2; exit 1; }
for tool in systemd-nspawn debootstrap nsenter dpkg-deb openssl; do
  command -v "$tool" >/dev/null 2>&1 || { echo "systemd-real: $tool missing (scripts/install-test-deps installs it)" >&2; exit 1; }
done

CACHE=${WSGATE_TEST_CACHE:-/var/cache/wsgate-test/bookworm-root}
# The machine's own Debian mirror (first non-comment `deb` / `URIs:` entry that is not security).
MIRROR=${WSGATE_TEST_MIRROR:-$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
  | grep -E '^(deb |URIs:)' | grep -oE 'https?://[^ ]*/debian/?( |$)' | grep -v security | head -1 | tr -d ' ' || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
WORK=$(mktemp -d /var/tmp/wsgate-systemd-real.XXXXXX)
ROOT=$WORK/root
NSPAWN_PID=""
BG_PIDS=()
PASSED=0
FAILED=()

cleanup() {
  local pid
  BG_PIDS=($(cat "$WORK/bg.pids" 2>/dev/null || true))
  for pid in "${BG_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
    # SIGTERM: nspawn asks the container's systemd to power off; SIGKILL if it hangs.
    kill "$NSPAWN_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$NSPAWN_PID" 2>/dev/null || true
    wait "$NSPAWN_PID" 2>/dev/null || true
  fi
  for pid in "${BG_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 0. the .deb ----------------------------------------------------------------------------
if [ $# -ge 1 ]; then
  DEB=$(realpath "$1")
else
  packaging/build-deb.sh --output "$WORK/deb" >/dev/null
  DEB=$(ls "$WORK"/deb/wsgate_*.deb)
fi
case "$DEB" in *.deb) ;; *) echo "systemd-real: $DEB is not a .deb" >&2; exit 1 ;; esac
echo "systemd-real: package $(basename "$DEB")"

# --- 1. the cached Debian root --------------------------------------------------------------
if [ ! -x "$CACHE/usr/lib/systemd/systemd" ]; then
  echo "systemd-real: debootstrap bookworm into $CACHE (once per machine, about a minute) from $MIRROR"
  mkdir -p "$(dirname "$CACHE")"
  rm -rf "$CACHE.new"
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,adduser,curl,ca-certificates,procps \
    bookworm "$CACHE.new" "$MIRROR" > "$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log"; echo "systemd-real: debootstrap failed" >&2; exit 1; }
  mv "$CACHE.new" "$CACHE"
fi
cp -a --reflink=auto "$CACHE" "$ROOT"
cp "$DEB" "$ROOT/root/wsgate.deb"
# The upgrade target: the same package with a higher version (binary and units unchanged).
mkdir "$WORK/repack"
dpkg-deb -R "$DEB" "$WORK/repack/pkg"
VERSION=$(sed -n 's/^Version: //p' "$WORK/repack/pkg/DEBIAN/control")
sed -i "s/^Version: .*/Version: ${VERSION}+upgrade1/" "$WORK/repack/pkg/DEBIAN/control"
dpkg-deb -b --root-owner-group "$WORK/repack/pkg" "$ROOT/root/wsgate-next.deb" >/dev/null
# A TLS certificate and a root-only key (LoadCredential= variant).
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost -addext subjectAltName=DNS:localhost \
  -keyout "$ROOT/root/tls.key" -out "$ROOT/root/tls.crt" >/dev/null 2>&1

# --- 2. boot ----------------------------------------------------------------------------------
# --register=no: no machined needed; --keep-unit: stay in the caller's scope. The container's
# console goes to a log file (printed when a step fails).
systemd-nspawn --boot --register=no --keep-unit --private-network --quiet -D "$ROOT" \
  > "$WORK/console.log" 2>&1 < /dev/null &
NSPAWN_PID=$!
# The container's init: the child of systemd-nspawn that runs systemd (nspawn may have a
# short-lived helper child first, so take the one named systemd, not merely the first).
container_init() { pgrep -P "$NSPAWN_PID" -x systemd | head -1 || true; }
PID1=""
for _ in $(seq 1 300); do
  PID1=$(container_init)
  [ -n "$PID1" ] && break
  kill -0 "$NSPAWN_PID" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$PID1" ]; then
  cat "$WORK/console.log"
  echo "systemd-real: FAIL: systemd-nspawn did not start a container (output above)" >&2
  exit 1
fi

# Runs a shell command inside the container (its namespaces, a clean environment).
in_ct() {
  nsenter -t "$PID1" -a env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME=/root SYSTEMD_PAGER= \
    sh -c "$1"
}
# Starts a shell command inside the container in the background; its pid in BG_PID (also
# recorded in $WORK/bg.pids: steps run in subshells, the exit trap kills what they started).
# Its stdio is detached so that a step's output capture does not wait for it.
in_ct_bg() {
  nsenter -t "$PID1" -a env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME=/root \
    sh -c "$1" < /dev/null > /dev/null 2>&1 &
  BG_PID=$!
  echo "$BG_PID" >> "$WORK/bg.pids"
}

# Booting takes ~25 s here and longer on a loaded machine: wait up to 180 s.
state=""
deadline=$(( $(date +%s) + 180 ))
while [ "$(date +%s)" -lt "$deadline" ]; do
  state=$(in_ct 'systemctl is-system-running' 2>/dev/null || true)
  case "$state" in running|degraded) break ;; esac
  # Look the init up again in case the first pid was not it.
  PID1=$(container_init)
  [ -n "$PID1" ] || PID1=$(pgrep -P "$NSPAWN_PID" | head -1 || true)
  sleep 0.2
done
case "$state" in
  running|degraded) ;;
  *) tail -40 "$WORK/console.log"
     echo "systemd-real: FAIL: the container's systemd did not finish booting (state: ${state:-none})" >&2
     exit 1 ;;
esac
echo "systemd-real: booted $(in_ct 'systemctl --version | head -1') as PID 1 in $(( $(date +%s) - START ))s (system $state)"

# --- steps --------------------------------------------------------------------------------------
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
step() { # name, function
  local name=$1 fn=$2 t0 out
  t0=$(date +%s.%N)
  if out=$($fn 2>&1); then
    PASSED=$((PASSED + 1))
    printf 'systemd-real: PASS %-28s (%ss)\n' "$name" "$(elapsed "$t0")"
    [ -z "${VERBOSE:-}" ] || printf '%s\n' "$out" | sed 's/^/    /'
  else
    FAILED+=("$name")
    printf 'systemd-real: FAIL %-28s (%ss)\n' "$name" "$(elapsed "$t0")"
    printf '%s\n' "$out" | sed 's/^/    /'
    in_ct 'systemctl status wsgate --no-pager -l -n 0; journalctl -u wsgate -n 15 --no-pager' 2>&1 | sed 's/^/    | /' || true
  fi
}
# Steps run in a subshell: fail ends the step.
fail() { echo "$*"; exit 1; }
CHAT=http://127.0.0.1:8080/websocket/chat
ECHO=ws://127.0.0.1:8080/websocket/echo
# curl inside the container: prints the HTTP status.
http_status() { in_ct "curl -s -o /dev/null -w '%{http_code}' --max-time 5 $1" || true; }
main_pid() { in_ct 'systemctl show -p MainPID --value wsgate'; }
wait_active_new_pid() { # old pid, limit in tenths of a second
  local old=$1 limit=$2 pid
  for _ in $(seq 1 "$limit"); do
    pid=$(main_pid)
    if [ "$pid" != 0 ] && [ "$pid" != "$old" ] && [ "$(in_ct 'systemctl is-active wsgate' || true)" = active ]; then
      echo "new MainPID $pid"
      return 0
    fi
    sleep 0.1
  done
  fail "not restarted: MainPID $(main_pid), $(in_ct 'systemctl is-active wsgate' || true)"
}
# A WebSocket held open: an interactive `wsgate client` on the echo app whose stdin is a FIFO
# in the container. ws_send LINE; ws_output shows what came back.
ws_open() {
  in_ct 'rm -f /root/ws.in /root/ws.out /root/ws.err; mkfifo /root/ws.in'
  in_ct_bg 'exec wsgate client '"$ECHO"' < /root/ws.in > /root/ws.out 2> /root/ws.err'
  WS_PID=$BG_PID
  # Holds the FIFO's write end open (a sleeper, killed at ws_close).
  in_ct_bg 'echo $$ > /root/ws.hold.pid; exec sleep 600 > /root/ws.in'
  WS_HOLD=$BG_PID
  ws_roundtrip "opened" || return 1
}
ws_roundtrip() {
  in_ct "echo '$1' > /root/ws.in"
  for _ in $(seq 1 50); do
    in_ct "grep -qx '$1' /root/ws.out" && return 0
    sleep 0.1
  done
  fail "echo of '$1' not received (client stderr: $(in_ct 'cat /root/ws.err'))"
}
# End of input: the client sends Close (1000) and exits.
ws_close() { in_ct 'kill $(cat /root/ws.hold.pid)' 2>/dev/null || true; wait "$WS_HOLD" "$WS_PID" 2>/dev/null || true; }
# A WebSocket that only listens (--receive): its stderr tells how the server closed it.
ws_listen() {
  in_ct 'rm -f /root/wl.err'
  in_ct_bg 'exec wsgate client '"$ECHO"' --receive 1000 --timeout 600s > /dev/null 2> /root/wl.err'
  WL_PID=$BG_PID
  sleep 0.5
  kill -0 "$WL_PID" 2>/dev/null || fail "listening client exited: $(in_ct 'cat /root/wl.err')"
}
ws_listen_closed_with() { # code
  for _ in $(seq 1 100); do
    kill -0 "$WL_PID" 2>/dev/null || break
    sleep 0.1
  done
  local err
  err=$(in_ct 'cat /root/wl.err')
  echo "client: $err"
  echo "$err" | grep -q "($1 " || fail "expected close code $1"
}
write_config() { # extra TOML appended to the packaged config
  in_ct "cp /root/wsgate.toml.orig /etc/wsgate/wsgate.toml && cat >> /etc/wsgate/wsgate.toml" <<< "$1"
}
restore_config() { in_ct 'cp /root/wsgate.toml.orig /etc/wsgate/wsgate.toml'; }
restart_clean() { in_ct 'systemctl reset-failed wsgate wsgate.socket 2>/dev/null; systemctl restart wsgate'; }

s_install() {
  local out
  out=$(in_ct 'dpkg -i /root/wsgate.deb 2>&1') || fail "dpkg -i failed: $out"
  echo "$out"
  ! echo "$out" | grep -Eiq 'error|warning|could not|failed' || fail "dpkg printed an error"
  in_ct 'cp /etc/wsgate/wsgate.toml /root/wsgate.toml.orig'
  [ "$(in_ct 'systemctl is-active wsgate' || true)" = active ] || fail "wsgate.service not active after install"
  [ "$(in_ct 'systemctl is-enabled wsgate' || true)" = enabled ] || fail "wsgate.service not enabled"
  [ "$(in_ct 'systemctl is-enabled wsgate.socket' || true)" = disabled ] || fail "wsgate.socket is not shipped disabled"
  [ "$(in_ct 'systemctl is-active wsgate.socket' || true)" = inactive ] || fail "wsgate.socket was started"
}
s_start_after_ready() {
  in_ct 'systemctl stop wsgate'
  # Type=notify: `systemctl start` returns once wsgate sent READY=1, which it sends only after
  # binding every listener, so the very first request (no retry) must be served.
  in_ct 'systemctl start wsgate'
  local code
  code=$(http_status $CHAT)
  [ "$code" = 200 ] || fail "chat page answered $code right after start returned"
  in_ct 'journalctl -u wsgate -b --no-pager -o cat | grep -n "listening\|Started wsgate" | tail -3'
  # The journal order: wsgate's "listening" line before systemd's "Started".
  in_ct 'journalctl -u wsgate -b --no-pager -o cat | grep -e "listening" -e "Started wsgate" | tail -2 | head -1 | grep -q listening' \
    || fail "\"Started\" logged before wsgate was listening"
}
s_status_text() {
  local out
  out=$(in_ct 'systemctl status wsgate --no-pager' || true)
  echo "$out" | grep -E 'Status:'
  echo "$out" | grep -q 'Status: "listening on 127.0.0.1:8080' || fail "no STATUS= from wsgate in systemctl status"
}
s_chat_and_upgrade() {
  in_ct "curl -sf --max-time 5 $CHAT | grep -qi '<html'" || fail "chat page not served"
  local out
  out=$(in_ct "wsgate client $ECHO --send hello --receive 1 --timeout 5s") || fail "upgrade failed: $out"
  [ "$out" = hello ] || fail "echo answered '$out'"
  echo "chat page 200, echo over WebSocket: $out"
}
s_metrics() {
  local out
  out=$(in_ct 'curl -sf --max-time 5 http://127.0.0.1:9090/metrics') || fail "no /metrics on the admin listener"
  echo "$out" | grep -E '^(wsgate_)?connections|config_reloads' | head -3
  echo "$out" | grep -q '# EOF' || fail "not OpenMetrics"
}
s_reload_valid() {
  ws_open || return 1
  write_config '[apps.echo2]
kind = "echo"
urls = ["/websocket/echo2"]'
  in_ct 'systemctl reload wsgate' || { ws_close; fail "systemctl reload failed for a valid config"; }
  local out
  out=$(in_ct "wsgate client ws://127.0.0.1:8080/websocket/echo2 --send new --receive 1 --timeout 5s") || { ws_close; fail "new app not served: $out"; }
  ws_roundtrip "after reload" || { ws_close; return 1; }
  ws_close
  echo "the open WebSocket still echoes after the reload; the added app serves"
  in_ct 'systemctl status wsgate --no-pager | grep Status:'
  in_ct 'systemctl status wsgate --no-pager | grep -q "reloaded at"' || fail "STATUS= lacks the reload's result"
}
s_reload_invalid_check() {
  write_config 'this is not toml ='
  local out pid
  pid=$(main_pid)
  if out=$(in_ct 'systemctl reload wsgate 2>&1'); then fail "systemctl reload succeeded with an invalid config"; fi
  echo "systemctl reload: $out"
  [ "$(main_pid)" = "$pid" ] || fail "the main process changed"
  [ "$(http_status $CHAT)" = 200 ] || fail "old config not serving"
  in_ct 'systemctl status wsgate --no-pager | grep Status:'
  in_ct 'systemctl status wsgate --no-pager | grep -q "last reload rejected"' || fail "STATUS= does not show the rejection"
  restore_config
}
s_reload_invalid_apply() {
  # Valid TOML, but port 9999 is taken (by a listener started here), so the apply fails.
  # The port holder: a second wsgate (no admin listener) on 127.0.0.1:9999.
  in_ct 'printf "[admin]\naddr = \"off\"\n[[listen]]\naddr = \"127.0.0.1:9999\"\n" > /root/holder.toml'
  in_ct_bg 'exec wsgate run --config /root/holder.toml'
  local holder=$BG_PID out
  for _ in $(seq 1 50); do in_ct 'grep -q ":270F 00000000:0000 0A" /proc/net/tcp' && break; sleep 0.1; done
  write_config '[[listen]]
addr = "127.0.0.1:9999"'
  in_ct 'grep -q ":270F 00000000:0000 0A" /proc/net/tcp' || fail "the port holder did not start"
  if out=$(in_ct 'systemctl reload wsgate 2>&1'); then fail "systemctl reload succeeded although 127.0.0.1:9999 is in use"; fi
  in_ct 'kill $(pgrep -f "wsgate run --config /root/holder.toml")' 2>/dev/null || true
  echo "systemctl reload: $out"
  in_ct 'journalctl -u wsgate -n 3 --no-pager -o cat | grep -i "reload"' || true
  in_ct 'systemctl status wsgate --no-pager | grep Status:'
  in_ct 'systemctl status wsgate --no-pager | grep -q "last reload rejected.*127.0.0.1:9999"' || fail "STATUS= does not name the address"
  [ "$(http_status $CHAT)" = 200 ] || fail "old config not serving"
  restore_config
}
# wsgate's ERROR lines must reach the journal at PRIORITY=3 (issue 17 part 3, journald
# priorities when JOURNAL_STREAM says stderr is the journal); the rejected apply-time reload
# above logged one.
s_journal_err() {
  local out
  out=$(in_ct 'journalctl -u wsgate -p err -b --no-pager -o short-monotonic' || true)
  echo "journalctl -u wsgate -p err:"
  echo "$out"
  echo "$out" | grep -q 'configuration reload rejected' || fail "the rejected reload is not at priority err or above"
}
s_watchdog() {
  in_ct 'mkdir -p /etc/systemd/system/wsgate.service.d && printf "[Service]\nWatchdogSec=3s\nTimeoutAbortSec=2s\n" > /etc/systemd/system/wsgate.service.d/watchdog.conf && systemctl daemon-reload'
  restart_clean
  local pid
  pid=$(main_pid)
  in_ct "kill -STOP $pid"
  wait_active_new_pid "$pid" 150 || return 1
  in_ct 'journalctl -u wsgate -b --no-pager -o cat | grep -i "watchdog" | tail -1'
  in_ct 'rm /etc/systemd/system/wsgate.service.d/watchdog.conf && systemctl daemon-reload'
  restart_clean
}
s_kill9() {
  local pid
  pid=$(main_pid)
  in_ct "kill -KILL $pid"
  wait_active_new_pid "$pid" 100 || return 1
  [ "$(http_status $CHAT)" = 200 ] || fail "not serving after the restart"
}
s_socket_activation() {
  # As documented: the socket takes the port while the service is stopped.
  in_ct 'systemctl stop wsgate && systemctl enable --now wsgate.socket' || fail "cannot enable wsgate.socket"
  [ "$(in_ct 'systemctl is-active wsgate' || true)" = inactive ] || fail "service running before the first connection"
  [ "$(http_status $CHAT)" = 200 ] || fail "first connection through the socket not served"
  [ "$(in_ct 'systemctl is-active wsgate' || true)" = active ] || fail "service not started by the socket"
  in_ct 'journalctl -u wsgate -b --no-pager -o cat | grep "adopted socket from systemd" | tail -1' | grep . || fail "wsgate did not adopt the passed socket"
  # A [[listen]] the passed socket does not match (0.0.0.0:8080 vs 127.0.0.1:8080): the
  # error names the passed socket and the fix, instead of "Address already in use".
  in_ct "sed -i 's/^addr = \"127.0.0.1:8080\"/addr = \"0.0.0.0:8080\"/' /etc/wsgate/wsgate.toml"
  in_ct 'systemctl restart wsgate 2>/dev/null' && fail "started although the passed socket was not adopted"
  local msg
  msg=$(in_ct 'journalctl -u wsgate -b --no-pager -o cat | grep "cannot start" | tail -1')
  echo "unadopted socket: $msg"
  echo "$msg" | grep -q '"http" (127.0.0.1:8080)' || fail "the error does not name the passed socket"
  restore_config
  in_ct 'systemctl disable --now wsgate.socket' >/dev/null 2>&1
  restart_clean
  [ "$(in_ct 'systemctl is-active wsgate' || true)" = active ] || fail "service not active without the socket"
}
s_cap_net_bind() {
  write_config '[[listen]]
addr = "127.0.0.1:80"'
  # The old advice, AmbientCapabilities= alone, fails: the unit's bounding set is empty.
  in_ct 'mkdir -p /etc/systemd/system/wsgate.service.d && printf "[Service]\nAmbientCapabilities=CAP_NET_BIND_SERVICE\n" > /etc/systemd/system/wsgate.service.d/port80.conf && systemctl daemon-reload'
  if restart_clean 2>/dev/null; then fail "port 80 bound with AmbientCapabilities= alone: the documented reason for both lines is gone"; fi
  echo "AmbientCapabilities= alone: $(in_ct 'journalctl -u wsgate -b --no-pager -o cat | grep "cannot start" | tail -1')"
  in_ct 'systemctl stop wsgate; systemctl reset-failed wsgate' 2>/dev/null || true
  # The documented variant for ports below 1024: both capability lines in a drop-in.
  in_ct 'printf "[Service]\nAmbientCapabilities=CAP_NET_BIND_SERVICE\nCapabilityBoundingSet=CAP_NET_BIND_SERVICE\n" > /etc/systemd/system/wsgate.service.d/port80.conf && systemctl daemon-reload'
  restart_clean || fail "restart with port 80 failed"
  [ "$(http_status http://127.0.0.1:80/websocket/chat)" = 200 ] || fail "port 80 not served"
  echo "port 80 served as user $(in_ct 'ps -o user= -p $(systemctl show -p MainPID --value wsgate)')"
  in_ct 'rm /etc/systemd/system/wsgate.service.d/port80.conf && systemctl daemon-reload'
  restore_config
  restart_clean
}
s_load_credential() {
  # The documented variant for a root-only TLS key: LoadCredential=, and a reload that works.
  in_ct 'mkdir -p /etc/ssl/private && install -m 0600 -o root -g root /root/tls.key /etc/ssl/private/wsgate.key && install -m 0644 /root/tls.crt /etc/wsgate/cert.pem'
  in_ct 'mkdir -p /etc/systemd/system/wsgate.service.d && printf "[Service]\nLoadCredential=tls.key:/etc/ssl/private/wsgate.key\n" > /etc/systemd/system/wsgate.service.d/credential.conf && systemctl daemon-reload'
  write_config '[[listen]]
addr = "127.0.0.1:8443"
tls = { cert = "/etc/wsgate/cert.pem", key = "/run/credentials/wsgate.service/tls.key" }'
  restart_clean || fail "start with the credential failed"
  in_ct 'curl -sfk --max-time 5 -o /dev/null https://127.0.0.1:8443/websocket/chat' || fail "TLS listener not serving"
  local out
  out=$(in_ct 'systemctl reload wsgate 2>&1') || fail "reload with the credential failed: $out"
  in_ct 'curl -sfk --max-time 5 -o /dev/null https://127.0.0.1:8443/websocket/chat' || fail "TLS listener not serving after the reload"
  echo "TLS key from LoadCredential=: start and reload ok"
  in_ct 'rm /etc/systemd/system/wsgate.service.d/credential.conf /etc/wsgate/cert.pem /etc/ssl/private/wsgate.key && systemctl daemon-reload'
  restore_config
  restart_clean
}
s_stop_1001() {
  ws_listen || return 1
  in_ct 'systemctl stop wsgate'
  ws_listen_closed_with 1001
  in_ct 'systemctl start wsgate'
}
s_fresh_installs() {
  local i out
  for i in 1 2 3 4 5; do
    in_ct 'dpkg --purge wsgate >/dev/null 2>&1; systemctl reset-failed wsgate wsgate.socket 2>/dev/null; true'
    out=$(in_ct 'dpkg -i /root/wsgate.deb 2>&1') || fail "install $i: dpkg -i failed: $out"
    ! echo "$out" | grep -Eiq 'error|warning|could not|failed' || fail "install $i printed: $out"
    [ "$(in_ct 'systemctl is-active wsgate' || true)" = active ] || fail "install $i: service not active"
    [ "$(in_ct 'systemctl is-active wsgate.socket' || true)" = inactive ] || fail "install $i: socket started"
    [ "$(http_status $CHAT)" = 200 ] || fail "install $i: chat not served"
    echo "install $i: active, socket inactive, chat 200"
  done
}
s_upgrade() {
  ws_listen || return 1
  local out
  out=$(in_ct 'dpkg -i /root/wsgate-next.deb 2>&1') || fail "upgrade failed: $out"
  ! echo "$out" | grep -Eiq 'error|warning|could not|failed' || fail "upgrade printed: $out"
  # Documented behaviour: the postinst restarts the service; the drain closes with 1001.
  ws_listen_closed_with 1001
  [ "$(in_ct 'systemctl is-active wsgate' || true)" = active ] || fail "not active after the upgrade"
  [ "$(http_status $CHAT)" = 200 ] || fail "not serving after the upgrade"
  echo "upgraded to $(in_ct "dpkg-query -W -f '\${Version}' wsgate")"
}
s_purge() {
  local out left
  out=$(in_ct 'dpkg --purge wsgate 2>&1') || fail "purge failed: $out"
  ! echo "$out" | grep -Eiq 'error|warning|could not|failed' || fail "purge printed: $out"
  left=$(in_ct 'find /etc /usr /var/lib /run -name "*wsgate*" 2>/dev/null | grep -v "^/run/systemd/propagate" || true')
  [ -z "$left" ] || fail "left behind: $left"
  [ "$(in_ct 'systemctl is-active wsgate' || true)" != active ] || fail "still running"
  echo "nothing named wsgate left in /etc /usr /var/lib /run (the wsgate system user is kept, as Debian policy recommends)"
}

step install                 s_install
step start-after-ready       s_start_after_ready
step status-text             s_status_text
step chat-and-upgrade        s_chat_and_upgrade
step metrics                 s_metrics
step reload-valid            s_reload_valid
step reload-invalid-check    s_reload_invalid_check
step reload-invalid-apply    s_reload_invalid_apply
step journal-priority-err    s_journal_err
step watchdog                s_watchdog
step kill-9                  s_kill9
step socket-activation       s_socket_activation
step cap-net-bind-service    s_cap_net_bind
step load-credential         s_load_credential
step stop-1001               s_stop_1001
step fresh-installs-5        s_fresh_installs
step upgrade-open-websocket  s_upgrade
step purge                   s_purge

echo "systemd-real: ${PASSED} passed, ${#FAILED[@]} failed in $(( $(date +%s) - START ))s"
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "systemd-real: FAILED: ${FAILED[*]}" >&2
  exit 1
fi
