#!/usr/bin/env bash
# Smoke test for bench/ and examples/stampede: builds both, runs the demo with
# tiny flags and the benchmark matrix in --quick --check mode, and asserts
# behaviour only (never timing):
#   - the demo's stampede part sends exactly one database query per expiry
#     with singleflight (and at least one without), and its mixed part sends
#     fewer queries with singleflight than without; every request is served
#     in every run;
#   - every matrix row has exec/call <= 1, unique keys lead every call, and
#     1 ms flights on one key are shared (run.py --check).
# Run from anywhere; the top-level test command sets SF_ROOT and SF_BUILD_DIR.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/../scripts/lib.sh"

bdir=${SF_BUILD_DIR:-$SF_ROOT/build}/bench-smoke
mkdir -p "$bdir"
sf_require cmake ninja pkg-config python3 c++

sf_log "bench smoke: building in $bdir"
cmake -S "$SF_ROOT" -B "$bdir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSF_BUILD_TESTS=OFF \
    -DSF_BUILD_EXAMPLES=ON -DSF_BUILD_BENCH=ON >/dev/null
# Both targets by name: if SQLite is missing the stampede target does not
# exist and this fails, rather than the demo silently going untested.
cmake --build "$bdir" -j2 --target stampede sfbench >/dev/null

sf_log "bench smoke: stampede demo, tiny flags"
out=$("$bdir/examples/stampede/stampede" --threads 8 --expiries 10 --requests 2000 --keys 20 \
        --latency-ms 3 --ttl-ms 20 --json)
printf '%s\n' "$out"
python3 - "$out" <<'EOF'
import json, sys
r = json.loads(sys.argv[1])
problems = []

# Part 1, the stampede: 8 threads released together on the expired hot key.
s = r["stampede"]
sa, sb, expiries = s["without"], s["with"], s["expiries"]
if sa["requests"] != 8 * expiries or sb["requests"] != 8 * expiries:
    problems.append("stampede: not every request was served: %d / %d" % (sa["requests"], sb["requests"]))
if sa["suppressed"] != 0 or sa["db_queries"] < expiries:
    problems.append("stampede without singleflight: %d queries, %d suppressed for %d expiries"
                    % (sa["db_queries"], sa["suppressed"], expiries))
# The one flight refills the row before it completes, and rows do not age
# out in this part, so this is exact whatever the scheduling.
if sb["db_queries"] != expiries or sb["max_round_queries"] != 1:
    problems.append("stampede with singleflight: %d queries for %d expiries (at most %d in one)"
                    % (sb["db_queries"], expiries, sb["max_round_queries"]))

# Part 2, mixed traffic.
a, b = r["mixed"]["without"], r["mixed"]["with"]
if a["requests"] != 2000 or b["requests"] != 2000:
    problems.append("not every request was served: %d / %d" % (a["requests"], b["requests"]))
if a["suppressed"] != 0:
    problems.append("the run without singleflight suppressed %d misses" % a["suppressed"])
if not b["db_queries"] < a["db_queries"]:
    problems.append("singleflight did not reduce database queries: %d with, %d without"
                    % (b["db_queries"], a["db_queries"]))
if b["suppressed"] <= 0:
    problems.append("with singleflight, no cache miss joined another's query")
if problems:
    sys.exit("stampede smoke test FAILED:\n  " + "\n  ".join(problems))
print("stampede: ok (per expiry: %.1f queries without, %.1f with; mixed: %d without, %d with)"
      % (sa["db_queries"] / expiries, sb["db_queries"] / expiries, a["db_queries"], b["db_queries"]))
EOF

sf_log "bench smoke: quick benchmark matrix with --check"
"$here/run.sh" --quick --check --no-bindings --build-dir "$bdir"
