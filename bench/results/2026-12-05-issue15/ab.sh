#!/usr/bin/env bash
# A/B: wsgate before (cd80f70) vs after, proxy GET and POST, one run, targets alternating.
set -euo pipefail
B=/work/wt-before/target/release/wsgate; A=/work/main/target/release/wsgate
for n in before after; do
  port=$([ $n = before ] && echo 18096 || echo 18097)
  cat > /tmp/ab/$n.toml <<T
[upstream]
url = "http://127.0.0.1:18080"
[[listen]]
addr = "127.0.0.1:$port"
[admin]
addr = "off"
[log]
level = "warn"
T
done
TOKIO_WORKER_THREADS=1 setsid $B run --config /tmp/ab/before.toml > /tmp/ab/before.log 2>&1 & echo $! > /tmp/ab/before.pid
TOKIO_WORKER_THREADS=1 setsid $A run --config /tmp/ab/after.toml > /tmp/ab/after.log 2>&1 & echo $! > /tmp/ab/after.pid
trap 'kill $(cat /tmp/ab/before.pid) $(cat /tmp/ab/after.pid) 2>/dev/null || true' EXIT
sleep 1
cd /work/main/bench
export CANDIDATE_URL=http://127.0.0.1:18096 CANDIDATE_PIDS=$(cat /tmp/ab/before.pid) CANDIDATE2_URL=http://127.0.0.1:18097 CANDIDATE2_PIDS=$(cat /tmp/ab/after.pid)
ROUNDS=${ROUNDS:-5} REF=candidate ./http-proxy.sh
ROUNDS=${ROUNDS:-5} REF=candidate PATH_=/post BODY_BYTES=1024 ./http-proxy.sh
