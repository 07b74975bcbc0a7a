#!/usr/bin/env bash
# Smoke test for bench/shared.cpp (sfshared, the shared group's
# measurements): builds it and runs every subcommand with tiny counts, once
# as a table and once as JSON.  It asserts behaviour only, never timing:
#   - each run exits 0 (sfshared itself exits 1 when a library follower is
#     not one or reads other bytes, when a follower of a SIGKILLed leader
#     gets anything but SF_EGOEXIT, when the next begin after the kill does
#     not lead, or when a shared segment is left behind after the last free);
#   - each prints its table;
#   - the JSON has a row per contender and follower count, per operation
#     and per value size, with as many samples as rounds x followers and
#     finite, non-negative figures.
# Run from anywhere; the top-level test command sets SF_ROOT and SF_BUILD_DIR.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/../scripts/lib.sh"

bdir=${SF_BUILD_DIR:-$SF_ROOT/build}/bench-shared
mkdir -p "$bdir"
sf_require cmake ninja python3 c++

sf_log "sfshared smoke: building in $bdir"
cmake -S "$SF_ROOT" -B "$bdir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSF_BUILD_TESTS=OFF \
    -DSF_BUILD_EXAMPLES=OFF -DSF_BUILD_BENCH=ON >/dev/null
cmake --build "$bdir" -j2 --target sfshared >/dev/null
sfshared=$bdir/bench/sfshared

# run NAME HEADER ARGS...: the table run, which must print HEADER (the
# table's first line), then the JSON run, checked below.
declare -A json
run() {
    local name=$1 header=$2 out
    shift 2
    sf_log "sfshared smoke: $*"
    out=$("$sfshared" "$@") || sf_die "sfshared $* failed"
    printf '%s\n' "$out"
    grep -qF -- "$header" <<<"$out" || sf_die "sfshared $* printed no table ('$header')"
    json[$name]=$("$sfshared" "$@" --json) || sf_die "sfshared $* --json failed"
}
run wake '| contender | followers | p50 µs | p99 µs | p99 / futex p99 |' wake --rounds 3
run wake8 '| library | 8 |' wake --followers 8 --rounds 2
run dead '| rounds | p50 ms | p99 ms | max ms | target p99 |' dead --rounds 3
run call '| operation | local group ns | shared group ns | shared / local |' \
    call --iters 2000 --reps 3
run bytes '| value bytes |' bytes --iters 2000 --reps 3 --sizes 8,64,256

python3 - "${json[wake]}" "${json[wake8]}" "${json[dead]}" "${json[call]}" "${json[bytes]}" <<'EOF'
import json, math, sys
wake, wake8, dead, call, by = (json.loads(a) for a in sys.argv[1:])
problems = []

def figure(where, v):
    if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
        problems.append("%s: %r is not a finite, non-negative figure" % (where, v))

contenders = {"library", "futex", "flock", "poll-1ms"}
for w, rounds, counts in ((wake, 3, [1, 8]), (wake8, 2, [8])):
    rows = w["wake"]["rows"]
    got = sorted((r["followers"], r["contender"]) for r in rows)
    want = sorted((f, c) for f in counts for c in contenders)
    if got != want:
        problems.append("wake rows %s, wanted %s" % (got, want))
    for r in rows:
        if r["samples"] != rounds * r["followers"]:
            problems.append("wake %s to %d: %d samples, wanted %d"
                            % (r["contender"], r["followers"], r["samples"], rounds * r["followers"]))
        for k in ("p50_us", "p99_us", "p99_vs_futex"):
            figure("wake %s %s" % (r["contender"], k), r[k])
        if r["p50_us"] > r["p99_us"]:
            problems.append("wake %s: p50 above p99" % r["contender"])

d = dead["dead"]
if d["rounds"] != 3 or d["next_begin_led"] is not True:
    problems.append("dead: %r" % d)
for k in ("p50_ms", "p99_ms", "max_ms"):
    figure("dead " + k, d[k])

ops = sorted(r["op"] for r in call["call"]["rows"])
if ops != ["begin_finish", "do", "do_bytes8"]:
    problems.append("call rows %s" % ops)
for r in call["call"]["rows"]:
    for k in ("local_ns", "shared_ns", "ratio"):
        figure("call %s %s" % (r["op"], k), r[k])

sizes = [r["bytes"] for r in by["bytes"]["rows"]]
if sizes != [8, 64, 256]:
    problems.append("bytes rows %s" % sizes)
for r in by["bytes"]["rows"]:
    for k in ("pointer_ns", "bytes_ns", "ratio"):
        figure("bytes %d %s" % (r["bytes"], k), r[k])

if problems:
    sys.exit("sfshared smoke test FAILED:\n  " + "\n  ".join(problems))
print("sfshared: ok (wake, dead, call, bytes)")
EOF
