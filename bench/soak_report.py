#!/usr/bin/env python3
"""Judges a bench/soak.sh run and draws wsgate's RSS over time (self-contained SVG, no
plotting library).

    soak_report.py OUT_DIR RSS_GROWTH_MAX_KIB

Reads from OUT_DIR: rss.csv (t_s,rss_kib), hup.txt (t_s per SIGHUP), http.json (soak_http.py),
echo.jsonl (one wsload echo line per run), fanout.json (wsload fanout), publish.txt (one
`t_s exit delivered` line per `wsgate publish`), meta.json. Writes summary.json, summary.md
and rss.svg. Exit 1 when any error was counted or RSS grew by more than RSS_GROWTH_MAX_KIB
over the second half of the run (least-squares slope × the half's length, so one
allocator spike does not decide), 0 otherwise.
"""
import json
import os
import statistics
import sys


def load_json(path, default):
    try:
        with open(path) as f:
            text = f.read().strip()
        return json.loads(text) if text else default
    except (OSError, ValueError):
        return default


def load_lines(path):
    try:
        with open(path) as f:
            return [line.split() for line in f if line.strip()]
    except OSError:
        return []


def slope(points):
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    return sum((p[0] - mx) * (p[1] - my) for p in points) / sxx if sxx else 0.0


def main():
    out, bound_kib = sys.argv[1], float(sys.argv[2])
    meta = load_json(os.path.join(out, "meta.json"), {})
    rss = []
    for row in load_lines(os.path.join(out, "rss.csv"))[1:]:
        t, kib = row[0].split(",")
        rss.append((float(t), float(kib)))
    hups = [float(r[0]) for r in load_lines(os.path.join(out, "hup.txt"))]
    http = load_json(os.path.join(out, "http.json"), {})
    echo = [json.loads(" ".join(r)) for r in load_lines(os.path.join(out, "echo.jsonl"))]
    fan = load_json(os.path.join(out, "fanout.json"), {})
    pubs = load_lines(os.path.join(out, "publish.txt"))

    errors = {}
    errors["http_failed"] = http.get("failed", 1) if http else 1  # no report is a failure
    e_conn = sum(r.get("conns", 0) - r.get("connected", 0) for r in echo)
    e_rt = sum(r.get("expected", 0) - r.get("round_trips", 0) for r in echo)
    errors["echo_connect_failed"] = e_conn
    errors["echo_conn_errors"] = sum(r.get("conn_errors", 0) for r in echo)
    errors["echo_missing_round_trips"] = e_rt
    errors["echo_mismatches"] = sum(r.get("mismatches", 0) for r in echo)
    errors["echo_runs_missing"] = 0 if echo else 1
    errors["echo_runs_failed"] = sum(1 for r in echo if "error" in r or "connected" not in r)
    subs = fan.get("subs", 0)
    errors["fanout_connect_failed"] = fan.get("connect_failed", 1) if fan else 1
    errors["fanout_not_ready"] = fan.get("not_ready", 0)
    errors["fanout_lost"] = fan.get("lost", 0) if "lost" in fan else 1
    errors["fanout_closed_early"] = fan.get("closed_early", 0)
    errors["fanout_duplicates"] = fan.get("duplicates", 0)
    errors["fanout_out_of_order"] = fan.get("out_of_order", 0)
    errors["fanout_pub_errors"] = fan.get("pub_errors", 0)
    errors["fanout_failed"] = 1 if "error" in fan else 0
    errors["publish_cli_failed"] = sum(1 for p in pubs if p[1] != "0")
    # Every subscriber gets one `history_end` from the chat room on open, then every
    # `wsgate publish` message; the load generator counts both as foreign (not its stamps).
    delivered_cli = sum(int(p[2]) for p in pubs if p[1] == "0" and len(p) > 2 and p[2].isdigit())
    expected_foreign = fan.get("connected", 0) + delivered_cli
    errors["publish_cli_lost"] = max(0, expected_foreign - fan.get("foreign", 0)) if fan else 0
    errors["reloads_failed"] = int(meta.get("reloads_failed", 0))
    errors["wsgate_exited"] = int(meta.get("wsgate_exited", 0))
    total_errors = sum(errors.values())

    t_end = rss[-1][0] if rss else 0.0
    second = [p for p in rss if p[0] >= t_end / 2]
    growth_kib = slope(second) * (t_end / 2)
    first_kib = rss[0][1] if rss else 0
    mid_kib = statistics.median(p[1] for p in second[:10]) if second else 0
    end_kib = statistics.median(p[1] for p in rss[-10:]) if rss else 0
    summary = {
        "duration_s": round(t_end, 1),
        "sighups": len(hups),
        "errors_total": total_errors,
        "errors": errors,
        "http": {k: http.get(k) for k in ("requests", "ok", "failed", "keepalive_retries", "fresh_connections", "errors")},
        "echo": {
            "runs": len(echo),
            "connections": sum(r.get("connected", 0) for r in echo),
            "round_trips": sum(r.get("round_trips", 0) for r in echo),
        },
        "fanout": {k: fan.get(k) for k in ("subs", "connected", "expected", "deliveries", "lost", "closed_early",
                                           "foreign", "pub_errors", "pub_rate_achieved", "latency", "error")},
        "publish_cli": {"runs": len(pubs), "delivered": delivered_cli, "expected_foreign": expected_foreign},
        "rss_kib": {
            "start": first_kib,
            "max": max((p[1] for p in rss), default=0),
            "second_half_start_median": mid_kib,
            "end_median": end_kib,
            "second_half_growth_fit": round(growth_kib),
            "bound": bound_kib,
        },
        "meta": meta,
    }
    rss_ok = growth_kib <= bound_kib and bool(rss)
    summary["verdict"] = "pass" if total_errors == 0 and rss_ok else "fail"
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
        f.write("\n")
    with open(os.path.join(out, "rss.svg"), "w") as f:
        f.write(svg(rss, hups, bound_kib, growth_kib))
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(markdown(summary))
    print(markdown(summary))
    sys.exit(0 if summary["verdict"] == "pass" else 1)


def markdown(s):
    r = s["rss_kib"]
    lines = [
        f"# wsgate soak run: {s['verdict']}",
        "",
        f"{s['duration_s']} s, {s['sighups']} SIGHUP reloads; {s['meta'].get('started', '')}; "
        f"load average at the end {s['meta'].get('loadavg_end', '?')}",
        "",
        "| load | figures |",
        "|---|---|",
        f"| HTTP via proxy | {s['http'].get('requests')} requests, {s['http'].get('ok')} ok, "
        f"{s['http'].get('failed')} failed, {s['http'].get('keepalive_retries')} keep-alive retries |",
        f"| WebSocket echo | {s['echo']['runs']} runs, {s['echo']['connections']} connections, "
        f"{s['echo']['round_trips']} round trips |",
        f"| chat fan-out | {s['fanout'].get('connected')} subscribers held open through every reload, "
        f"{s['fanout'].get('deliveries')} of {s['fanout'].get('expected')} deliveries, "
        f"{s['fanout'].get('lost')} lost, {s['fanout'].get('closed_early')} closed early |",
        f"| `wsgate publish` | {s['publish_cli']['runs']} runs, {s['publish_cli']['delivered']} deliveries |",
        "",
        f"Errors: {s['errors_total']} ({', '.join(f'{k}={v}' for k, v in s['errors'].items() if v) or 'none'})",
        "",
        f"RSS (KiB): start {r['start']:.0f}, max {r['max']:.0f}, second half from {r['second_half_start_median']:.0f} "
        f"to {r['end_median']:.0f}; fitted growth over the second half {r['second_half_growth_fit']} "
        f"(bound {r['bound']:.0f}). Plot: rss.svg",
        "",
    ]
    return "\n".join(lines)


def svg(rss, hups, bound_kib, growth_kib):
    w, h, left, right, top, bottom = 720, 380, 70, 20, 56, 50
    if not rss:
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}"><text x="20" y="40">no samples</text></svg>\n'
    t_max = max(p[0] for p in rss) or 1
    ys = [p[1] / 1024 for p in rss]
    y_max = max(ys) * 1.15 or 1
    pw, ph = w - left - right, h - top - bottom

    def x(t):
        return left + pw * t / t_max

    def y(v):
        return top + ph * (1 - v / y_max)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<text x="{left}" y="20" font-size="14">wsgate RSS under mixed soak load (HTTP proxy, echo, chat fan-out)</text>',
        f'<text x="{left}" y="38" fill="#555">dashed: SIGHUP reloads; fitted growth over the second half '
        f'{growth_kib / 1024:.2f} MiB (bound {bound_kib / 1024:.1f} MiB)</text>',
    ]
    step = nice_step(y_max)
    v = 0.0
    while v <= y_max:
        parts.append(f'<line x1="{left}" x2="{w - right}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
        v += step
    t_step = nice_step(t_max)
    t = 0.0
    while t <= t_max:
        parts.append(f'<text x="{x(t):.1f}" y="{h - bottom + 18}" text-anchor="middle">{t:g}</text>')
        t += t_step
    for t in hups:
        parts.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{top}" y2="{h - bottom}" stroke="#e67e22" stroke-dasharray="3,3"/>')
    pts = " ".join(f"{x(p[0]):.1f},{y(p[1] / 1024):.1f}" for p in rss)
    parts.append(f'<polyline points="{pts}" fill="none" stroke="#2471a3" stroke-width="1.5"/>')
    parts.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{h - bottom}" stroke="black"/>')
    parts.append(f'<line x1="{left}" x2="{w - right}" y1="{h - bottom}" y2="{h - bottom}" stroke="black"/>')
    parts.append(f'<text x="{left + pw / 2}" y="{h - 12}" text-anchor="middle">seconds</text>')
    parts.append(f'<text x="16" y="{top + ph / 2}" transform="rotate(-90 16 {top + ph / 2})" text-anchor="middle">RSS (MiB)</text>')
    parts.append("</svg>\n")
    return "\n".join(parts)


def nice_step(span):
    raw = span / 6
    mag = 10 ** len(str(int(raw))) / 10 if raw >= 1 else 0.1
    for m in (1, 2, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


if __name__ == "__main__":
    main()
