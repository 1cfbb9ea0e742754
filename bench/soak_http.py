#!/usr/bin/env python3
"""Paced HTTP load for bench/soak.sh: GET/HEAD of a 1 KiB static file through wsgate.

    soak_http.py URL DURATION_S [--rate 200] [--conns 4] [--fresh-every 20]

Keeps CONNS keep-alive connections and sends RATE requests per second round-robin over
them, every FRESH_EVERY-th request on a new connection (so accepts keep happening across
reloads). Each answer must be 200 with the full 1024-byte body (HEAD: no body, but the
Content-Length). Prints one JSON line: requests, ok, failed, the first few errors.

A request on a reused keep-alive connection that the server closed before answering is
retried once on a new connection (RFC 9112 §9.3.1 allows a client to retry an idempotent
request then; browsers and curl do). Such retries are counted in `keepalive_retries` and
are not failures; a second failure is.
"""
import http.client
import json
import sys
import time
import urllib.parse


def main():
    args = sys.argv[1:]
    url, duration = args[0], float(args[1])

    def opt(name, default):
        return float(args[args.index(name) + 1]) if name in args else default

    rate, conns, fresh_every = opt("--rate", 200.0), int(opt("--conns", 4)), int(opt("--fresh-every", 20))
    u = urllib.parse.urlsplit(url)
    host, port, path = u.hostname, u.port or 80, u.path or "/"
    pool = [None] * conns
    stats = {"requests": 0, "ok": 0, "failed": 0, "keepalive_retries": 0, "fresh_connections": 0}
    errors = []

    def connect():
        stats["fresh_connections"] += 1
        return http.client.HTTPConnection(host, port, timeout=10)

    def once(conn, method):
        conn.request(method, path, headers={"Accept": "*/*", "User-Agent": "wsgate-soak"})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise ValueError(f"status {resp.status}")
        want = 0 if method == "HEAD" else 1024
        if len(body) != want or resp.getheader("Content-Length") != "1024":
            raise ValueError(f"body {len(body)} bytes, Content-Length {resp.getheader('Content-Length')}")
        if resp.will_close:
            conn.close()

    start = time.monotonic()
    n = 0
    while True:
        due = start + n / rate
        now = time.monotonic()
        if now - start >= duration:
            break
        if due > now:
            time.sleep(due - now)
        i = n % conns
        method = "HEAD" if n % 10 == 9 else "GET"
        fresh = n % fresh_every == 0 or pool[i] is None
        if fresh and pool[i] is not None:
            pool[i].close()
            pool[i] = None
        if pool[i] is None:
            pool[i] = connect()
        n += 1
        stats["requests"] += 1
        try:
            try:
                once(pool[i], method)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                if fresh:
                    raise
                # The server closed a reused idle connection: retry once on a new one.
                stats["keepalive_retries"] += 1
                pool[i].close()
                pool[i] = connect()
                once(pool[i], method)
            stats["ok"] += 1
        except Exception as e:  # noqa: BLE001 - every failure is counted and shown
            stats["failed"] += 1
            if len(errors) < 5:
                errors.append(f"{time.monotonic() - start:.1f}s {method}: {type(e).__name__}: {e}")
            if pool[i] is not None:
                pool[i].close()
            pool[i] = None
    stats["elapsed_s"] = round(time.monotonic() - start, 1)
    stats["errors"] = errors
    print(json.dumps(stats, sort_keys=True))


if __name__ == "__main__":
    main()
