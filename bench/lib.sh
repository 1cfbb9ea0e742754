# Shared helpers for the peer benchmarks. Source it; do not run it.
# Everything listens on 127.0.0.1 only; every process started here is stopped by pid.

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOOLS_DIR=$(dirname "$BENCH_DIR")
RUN_DIR=${RUN_DIR:-/tmp/wsgate-bench}
RESULTS_DIR=${RESULTS_DIR:-$RUN_DIR/results}
WSLOAD=${WSLOAD:-$BENCH_DIR/wsload/target/release/wsload}
NCHAN_MODULE=${NCHAN_MODULE:-/usr/lib/nginx/modules/ngx_nchan_module.so}

# Ports (override from the environment).
BACKEND_PORT=${BACKEND_PORT:-18080}     # nginx static upstream
PROXY_PORT=${PROXY_PORT:-18081}         # nginx reverse proxy (the peer)
NCHAN_PORT=${NCHAN_PORT:-18082}         # nginx + nchan
PUSHPIN_PORT=${PUSHPIN_PORT:-18083}     # pushpin client port
PUSHPIN_PUB_PORT=${PUSHPIN_PUB_PORT:-5561}  # pushpin HTTP publish endpoint
GRIP_PORT=${GRIP_PORT:-18086}           # WebSocket-over-HTTP backend for pushpin
WSD_PORT=${WSD_PORT:-18085}             # websocketd echo

BACKEND_WORKERS=${BACKEND_WORKERS:-1}
PROXY_WORKERS=${PROXY_WORKERS:-1}
NCHAN_WORKERS=${NCHAN_WORKERS:-1}

mkdir -p "$RUN_DIR" "$RESULTS_DIR"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found (apt-get install ${2:-$1})"; }

ensure_wsload() {
    if [ ! -x "$WSLOAD" ]; then
        log "building wsload"
        (cd "$BENCH_DIR/wsload" && cargo build --release -q) || die "wsload build failed"
    fi
}

# render TEMPLATE OUT: replace @VAR@ with the value of $VAR for every token in the file.
render() {
    local in=$1 out=$2 content var
    content=$(cat "$in")
    for var in $(grep -o '@[A-Z_]*@' "$in" | sort -u | tr -d @); do
        [ -n "${!var+x}" ] || die "render $in: \$$var is not set"
        content=${content//@$var@/${!var}}
    done
    printf '%s\n' "$content" >"$out"
}

# wait_port PORT [SECONDS]: until something accepts on 127.0.0.1:PORT.
wait_port() {
    local port=$1 deadline=$((SECONDS + ${2:-10}))
    while [ $SECONDS -lt $deadline ]; do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# nginx_start NAME TEMPLATE PORT: render conf into $RUN_DIR/NAME and start nginx there.
nginx_start() {
    local name=$1 tmpl=$2 port=$3
    local PREFIX=$RUN_DIR/$name
    port_free "$port" || die "port $port already in use"
    mkdir -p "$PREFIX/tmp" "$PREFIX/logs"
    chmod 755 "$RUN_DIR" "$PREFIX"
    PREFIX=$PREFIX WWW=$RUN_DIR/www render "$tmpl" "$PREFIX/nginx.conf"
    nginx -t -q -p "$PREFIX/" -e "$PREFIX/error.log" -c "$PREFIX/nginx.conf" || die "nginx -t failed for $name"
    nginx -p "$PREFIX/" -e "$PREFIX/error.log" -c "$PREFIX/nginx.conf" || die "nginx start failed for $name"
    wait_port "$port" 10 || die "$name did not listen on $port"
    log "$name up on 127.0.0.1:$port (master $(cat "$PREFIX/nginx.pid"))"
}

# stop_pidfile FILE [TENTHS]: TERM the process whose pid FILE holds, KILL it if it is still
# there after TENTHS tenths of a second (50), and remove FILE.
stop_pidfile() {
    local f=$1 pid
    [ -f "$f" ] || return 0
    pid=$(cat "$f"); kill "$pid" 2>/dev/null || true
    for _ in $(seq "${2:-50}"); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    rm -f "$f"
}

nginx_stop() {
    local name=$1 PREFIX=$RUN_DIR/$1 pid
    [ -f "$PREFIX/nginx.pid" ] || return 0
    pid=$(cat "$PREFIX/nginx.pid")
    nginx -p "$PREFIX/" -e "$PREFIX/error.log" -c "$PREFIX/nginx.conf" -s stop 2>/dev/null || kill "$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && { log "nginx $name still running, SIGKILL $pid"; kill -9 "$pid"; }
    rm -f "$PREFIX/nginx.pid"
}

# nginx_workers NAME: comma-separated worker pids (the processes doing the work).
nginx_workers() {
    local pid
    pid=$(cat "$RUN_DIR/$1/nginx.pid" 2>/dev/null) || return 0
    pgrep -P "$pid" | paste -sd, -
}

# cpu_ns PID...: nanoseconds on CPU of all threads of these processes (schedstat).
cpu_ns() {
    local total=0 p t v
    for p in $(echo "$@" | tr ',' ' '); do
        for t in /proc/"$p"/task/*/schedstat; do
            { read -r v _ <"$t"; } 2>/dev/null && total=$((total + v))
        done
    done
    echo $total
}

# Children of a pid, recursively (for pushpin's runner and websocketd).
descendants() {
    local c
    for c in $(pgrep -P "$1"); do echo "$c"; descendants "$c"; done
}

make_www() {
    mkdir -p "$RUN_DIR/www"
    # 1 KiB of text: the "small static file" behind the proxy.
    head -c 1024 /dev/zero | tr '\0' 'a' >"$RUN_DIR/www/1k.txt"
    chmod -R a+rX "$RUN_DIR/www"
}

load_note() { echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"; }

results_file() { echo "$RESULTS_DIR/$1-$(date +%Y%m%d-%H%M%S).jsonl"; }

# stat_snap: "busy_ticks steal_ticks total_ticks" of the whole machine from /proc/stat.
stat_snap() {
    awk '/^cpu /{busy=$2+$3+$4+$7+$8; steal=$9; tot=busy+$5+$6+steal; print busy, steal, tot}' /proc/stat
}

# annotate JSON K=V...: add fields (numbers stay numbers) and the machine-noise figures
# computed from two stat_snap readings passed as STAT0="..." STAT1="...". Pass
# target_cpu_total_s= (CPU of every process of the target, backend included, over the whole
# invocation) so that other_cpu_s counts only what neither wsload nor the target used.
annotate() {
    local json=$1; shift
    python3 - "$json" "$@" <<'PY'
import json, os, sys
d = json.loads(sys.argv[1])
for kv in sys.argv[2:]:
    k, v = kv.split("=", 1)
    try:
        v = int(v)
    except ValueError:
        try:
            v = float(v)
        except ValueError:
            pass
    d[k] = v
s0, s1 = os.environ.get("STAT0"), os.environ.get("STAT1")
if s0 and s1:
    b0, st0, t0 = map(int, s0.split()); b1, st1, t1 = map(int, s1.split())
    hz = os.sysconf("SC_CLK_TCK")
    d["machine_busy_s"] = round((b1 - b0) / hz, 2)
    d["machine_steal_s"] = round((st1 - st0) / hz, 2)
    own = d.get("client_cpu_total_s", d.get("client_cpu_s", 0)) + d.get("target_cpu_total_s", d.get("server_cpu_s", 0))
    d["other_cpu_s"] = round((b1 - b0) / hz - own, 2)  # CPU used by everything else
d["loadavg1"] = float(open("/proc/loadavg").read().split()[0])
print(json.dumps(d, sort_keys=True))
PY
}

# target_cpu T: CPU ns of all processes of target T (its *_pids, *_backend_pids if defined,
# and their descendants at this moment).
target_cpu() {
    local t=$1 p all
    all=$("${t}_pids" 2>/dev/null || true)
    if declare -F "${t}_backend_pids" >/dev/null; then all="$all,$("${t}_backend_pids")"; fi
    local expanded=""
    for p in ${all//,/ }; do expanded="$expanded $p $(descendants "$p" | tr '\n' ' ')"; done
    cpu_ns $expanded
}

# wait_quiet T...: until the targets' processes (backends included) use less than 5% of a
# core over one second, at most QUIET_MAX_S (120) seconds: the teardown of one run (10000
# closes through Pushpin's backend take many seconds) must not overlap the next run.
wait_quiet() {
    local deadline=$((SECONDS + ${QUIET_MAX_S:-120})) t c0 c1
    while [ $SECONDS -lt $deadline ]; do
        c0=0; for t in "$@"; do c0=$((c0 + $(target_cpu "$t"))); done
        sleep 1
        c1=0; for t in "$@"; do c1=$((c1 + $(target_cpu "$t"))); done
        [ $((c1 - c0)) -lt 50000000 ] && return 0
    done
    log "warning: targets still busy after ${QUIET_MAX_S:-120} s"
}
