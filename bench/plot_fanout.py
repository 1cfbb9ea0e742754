#!/usr/bin/env python3
"""Plots fan-out latency (p50 and p99, median over rounds) against the number of subscribers
for every target of a fanout.sh results file, as a self-contained SVG (no plotting library).

    bench/plot_fanout.py RESULTS.jsonl [MORE.jsonl ...] [--mode paced|burst] > plot.svg
"""
import json
import math
import statistics
import sys
from collections import defaultdict

W, H, LEFT, RIGHT, TOP, BOTTOM = 640, 400, 70, 150, 40, 50
COLORS = {"nchan": "#c0392b", "candidate": "#2471a3", "wsgate": "#2471a3", "pushpin": "#7d3c98", "floor": "#7f8c8d"}
NAMES = {"candidate": "wsgate"}


def main():
    args = sys.argv[1:]
    mode = "paced"
    if "--mode" in args:
        mode = args[args.index("--mode") + 1]
    paths = [a for i, a in enumerate(args) if a != "--mode" and (i == 0 or args[i - 1] != "--mode")]
    path = " ".join(paths)
    points = defaultdict(lambda: defaultdict(list))  # target -> (n, stat) -> values
    for one in paths:
        with open(one) as f:
            for line in f:
                row = json.loads(line)
                if row.get("fmode") != mode or "latency" not in row:
                    continue
                n = row.get("subs") or row.get("connected")
                for stat in ("p50_us", "p99_us"):
                    points[row["target"]][(n, stat)].append(row["latency"][stat] / 1000.0)
    series = {t: {k: statistics.median(v) for k, v in d.items()} for t, d in points.items()}
    ns = sorted({n for d in series.values() for (n, _) in d})
    values = [v for d in series.values() for v in d.values()]
    if not ns or not values:
        sys.exit("no %s fan-out rows in %s" % (mode, path))
    x0, x1 = math.log10(min(ns)), math.log10(max(ns))
    y0, y1 = math.floor(math.log10(min(values))), math.ceil(math.log10(max(values)))
    px = lambda n: LEFT + (math.log10(n) - x0) / max(x1 - x0, 1e-9) * (W - LEFT - RIGHT)
    py = lambda v: H - BOTTOM - (math.log10(v) - y0) / max(y1 - y0, 1e-9) * (H - TOP - BOTTOM)
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">' % (W, H),
           '<rect width="100%" height="100%" fill="white"/>',
           '<text x="%d" y="22" font-size="14">Fan-out latency vs subscribers (%s, 64 B)</text>' % (LEFT, mode)]
    for e in range(y0, y1 + 1):
        y = py(10 ** e)
        out.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/>' % (LEFT, W - RIGHT, y, y))
        out.append('<text x="%d" y="%.1f" text-anchor="end">%g ms</text>' % (LEFT - 6, y + 4, 10 ** e))
    for n in ns:
        x = px(n)
        out.append('<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" stroke="#ddd"/>' % (x, x, TOP, H - BOTTOM))
        out.append('<text x="%.1f" y="%d" text-anchor="middle">%d</text>' % (x, H - BOTTOM + 18, n))
    out.append('<text x="%d" y="%d" text-anchor="middle">subscribers (log scale)</text>' % ((LEFT + W - RIGHT) // 2, H - 10))
    legend_y = TOP + 10
    for target in sorted(series):
        color = COLORS.get(target, "#555")
        for stat, dash in (("p50_us", ""), ("p99_us", ' stroke-dasharray="5,4"')):
            pts = [(px(n), py(series[target][(n, stat)])) for n in ns if (n, stat) in series[target]]
            path_d = " ".join("%s%.1f,%.1f" % ("M" if i == 0 else "L", x, y) for i, (x, y) in enumerate(pts))
            out.append('<path d="%s" fill="none" stroke="%s" stroke-width="2"%s/>' % (path_d, color, dash))
            for x, y in pts:
                out.append('<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>' % (x, y, color))
            out.append('<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="%s" stroke-width="2"%s/>' % (W - RIGHT + 10, W - RIGHT + 35, legend_y, legend_y, color, dash))
            out.append('<text x="%d" y="%d">%s %s</text>' % (W - RIGHT + 40, legend_y + 4, NAMES.get(target, target), stat[:3]))
            legend_y += 18
    out.append("</svg>")
    print("\n".join(out))


if __name__ == "__main__":
    main()
