#!/usr/bin/env bash
# Smoke test for bench/ and examples/stampede: builds both, runs the demo with
# tiny flags and the benchmark matrix in --quick --check mode, and asserts
# behaviour only (never timing):
#   - the demo sends fewer database queries with singleflight than without,
#     and serves every request in both runs;
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
out=$("$bdir/examples/stampede/stampede" --threads 8 --requests 2000 --keys 20 \
        --latency-ms 3 --ttl-ms 20 --json)
printf '%s\n' "$out"
python3 - "$out" <<'EOF'
import json, sys
r = json.loads(sys.argv[1])
a, b = r["without"], r["with"]
problems = []
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
print("stampede: ok (%d queries without, %d with)" % (a["db_queries"], b["db_queries"]))
EOF

sf_log "bench smoke: quick benchmark matrix with --check"
"$here/run.sh" --quick --check --no-bindings --build-dir "$bdir"
