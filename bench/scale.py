#!/usr/bin/env python3
"""Cost per call against the number of keys in flight, side by side.

Runs bench/inflight.cpp (the library, and two references: a bare block pool
with a CAS table, the least any design can do per key; a mutex and an
unordered_map, what a hand-written singleflight keeps) and bench/go/inflight
(Go's x/sync, whose DoChan is its way to leave a key in flight, and a bare Go
map), for each count of keys in flight, interleaved contender by contender
and repeat by repeat, each run a fresh process.  Two figures per run:

  cold  the first round of a fresh process: blocks, tables and pages are
        made as the keys arrive (a cold start, a cache flush)
  warm  the median of the later rounds: everything reused

Prints a table with each contender's ratio to its own cost at the smallest
count, and writes a chart (SVG) and the raw lines (JSONL).

    bench/scale.py --build-dir DIR [--keys 1000,10000,100000,1000000]
                   [--reps 5] [--rounds 5] [--out DIR]

DIR holds bench/sfinflight (a Release build with SF_BUILD_BENCH=ON); the Go
program is built into DIR/bench/goinflight when Go is there.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# (name, label, program, extra args); shards=1 rows only for the library.
CONTENDERS = [
    ("capi", "libsingleflight", "sfinflight", ["--contender", "capi"]),
    ("capi-s1", "libsingleflight, shards = 1", "sfinflight", ["--contender", "capi", "--shards", "1"]),
    ("floor", "floor: block pool + CAS table", "sfinflight", ["--contender", "floor"]),
    ("umap", "mutex + unordered_map", "sfinflight", ["--contender", "umap"]),
    ("xsync", "Go x/sync DoChan", "goinflight", ["-contender", "xsync"]),
    ("gomap", "Go mutex + map", "goinflight", ["-contender", "map"]),
]
# shards = 1 puts every key in one home's overflow: up to 100,000 as the
# target asks; a million is the default table's row.
S1_MAX = 100000


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def build_go(bdir):
    out = os.path.join(bdir, "bench", "goinflight")
    try:
        subprocess.run(["go", "build", "-o", out, "./inflight"], cwd=os.path.join(HERE, "go"),
                       check=True, capture_output=True, text=True)
        return out
    except (OSError, subprocess.CalledProcessError) as e:
        log("Go contenders not available: %s" % (getattr(e, "stderr", "") or e))
        return None


def run(argv):
    p = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        raise RuntimeError("%s: %s" % (" ".join(argv), p.stderr.strip()))
    return json.loads(p.stdout.strip().splitlines()[-1])


def svg(results, keys, path):
    """Warm and cold cost per key against keys in flight, log-log."""
    import math
    w, h, left, top, pw, ph = 760, 380, 70, 30, 480, 300
    names = [c for c in results if results[c]]
    vals = [v for c in names for k in results[c] for v in results[c][k].values()]
    lo, hi = math.log10(min(vals) / 1.5), math.log10(max(vals) * 1.5)
    kx = [math.log10(k) for k in keys]

    def x(k):
        return left + pw * (math.log10(k) - kx[0]) / ((kx[-1] - kx[0]) or 1)

    def y(v):
        return top + ph * (1 - (math.log10(v) - lo) / (hi - lo))

    colors = ["#1f77b4", "#6baed6", "#7f7f7f", "#ff7f0e", "#2ca02c", "#98df8a"]
    s = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" '
         'font-size="11">' % (w, h + 40),
         '<text x="%d" y="16" font-size="13">ns per begin + finish against keys in flight '
         '(solid: warm, dashed: cold first round)</text>' % left]
    for dec in range(int(math.floor(lo)), int(math.ceil(hi)) + 1):
        for m in (1, 2, 5):
            v = m * 10 ** dec
            if lo <= math.log10(v) <= hi:
                s.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/>'
                         % (left, left + pw, y(v), y(v)))
                s.append('<text x="%d" y="%.1f" text-anchor="end">%g</text>' % (left - 4, y(v) + 4, v))
    for k in keys:
        s.append('<text x="%.1f" y="%d" text-anchor="middle">%s</text>'
                 % (x(k), top + ph + 16, "{:,}".format(k)))
    for i, c in enumerate(names):
        col = colors[i % len(colors)]
        for kind, dash in (("warm", ""), ("cold", ' stroke-dasharray="4 3"')):
            pts = [(x(k), y(results[c][k][kind])) for k in keys if k in results[c]]
            s.append('<polyline fill="none" stroke="%s" stroke-width="2"%s points="%s"/>'
                     % (col, dash, " ".join("%.1f,%.1f" % p for p in pts)))
        s.append('<rect x="%d" y="%d" width="12" height="3" fill="%s"/>' % (left + pw + 20, top + 14 * i + 4, col))
        s.append('<text x="%d" y="%d">%s</text>' % (left + pw + 36, top + 14 * i + 9, LABEL[c]))
    s.append('<text x="%d" y="%d" text-anchor="middle">keys in flight</text>' % (left + pw / 2, top + ph + 32))
    s.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(s) + "\n")


LABEL = {c[0]: c[1] for c in CONTENDERS}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build-dir", required=True)
    ap.add_argument("--keys", default="1000,10000,100000,1000000")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=None, help="where the chart and JSONL go (default: DIR/bench-results)")
    a = ap.parse_args()
    bdir = os.path.abspath(a.build_dir)
    keys = [int(k) for k in a.keys.split(",")]
    out = a.out or os.path.join(bdir, "bench-results")
    os.makedirs(out, exist_ok=True)
    programs = {"sfinflight": os.path.join(bdir, "bench", "sfinflight"), "goinflight": build_go(bdir)}
    if not os.access(programs["sfinflight"] or "", os.X_OK):
        sys.exit("scale.py: %s is not built (cmake -DSF_BUILD_BENCH=ON, target sfinflight)"
                 % programs["sfinflight"])
    rows = [c for c in CONTENDERS if programs[c[2]]]
    raw = {c[0]: {k: {"warm": [], "cold": [], "warm_cpu": []} for k in keys} for c in rows}
    lines = []
    load = os.getloadavg()
    for rep in range(a.reps):
        for k in keys:
            # Rotate who goes first, so that no contender always follows
            # the same one.
            order = rows[rep % len(rows):] + rows[:rep % len(rows)]
            for name, _, prog, extra in order:
                if name == "capi-s1" and k > S1_MAX:
                    continue
                argv = [programs[prog]] + (["--keys", str(k), "--rounds", str(a.rounds)]
                                           if prog == "sfinflight" else
                                           ["-keys", str(k), "-rounds", str(a.rounds)]) + extra
                d = run(argv)
                d["name"], d["rep"] = name, rep
                lines.append(d)
                raw[name][k]["warm"].append(d["ns_per_key"])
                raw[name][k]["warm_cpu"].append(d["cpu_ns_per_key"])
                raw[name][k]["cold"].append(d["first_round"])
        log("repeat %d of %d done" % (rep + 1, a.reps))
    with open(os.path.join(out, "inflight.jsonl"), "w") as f:
        for d in lines:
            f.write(json.dumps(d) + "\n")
    results = {name: {k: {kind: statistics.median(v) for kind, v in raw[name][k].items() if v}
                      for k in keys if raw[name][k]["warm"]} for name in raw}
    print("Keys in flight: ns per begin + finish, medians of %d fresh processes (%d warm rounds "
          "each); load average %.2f -> %.2f; %s" % (a.reps, a.rounds, load[0], os.getloadavg()[0],
                                                    time.strftime("%Y-%m-%d %H:%M")))
    print()
    print("| contender | " + " | ".join("{:,}".format(k) for k in keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for kind in ("warm", "cold"):
        for name, label, _, _ in rows:
            r = results[name]
            base = r[keys[0]][kind]
            cells = []
            for k in keys:
                if k not in r:
                    cells.append("-")
                else:
                    cells.append("%.0f (%.1fx)" % (r[k][kind], r[k][kind] / base))
            print("| %s, %s | %s |" % (label, kind, " | ".join(cells)))
    svg(results, keys, os.path.join(out, "inflight.svg"))
    log("wrote %s and %s" % (os.path.join(out, "inflight.jsonl"), os.path.join(out, "inflight.svg")))


if __name__ == "__main__":
    main()
