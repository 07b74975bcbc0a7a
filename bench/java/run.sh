#!/usr/bin/env bash
# Builds the Java binding's jar from a CMake build with the SWIG modules
# (tests skipped: ctest -L java runs them) and the benchmarks beside it
# (bench/java/pom.xml: JMH 1.37 and Caffeine 3.2.3 from Maven Central), then
# runs one of them against that jar:
#
#   bench/java/run.sh [BUILD_DIR] [-- AsyncBench args: --runs R --callers N --lone-calls L --cancel-rounds C]
#   bench/java/run.sh [BUILD_DIR] --jmh [ROUNDS [BENCH]]   JMH, peers interleaved round by round
#   bench/java/run.sh [BUILD_DIR] --checks                 the cancellation cases, per peer
#
# BUILD_DIR defaults to build/default (cmake --preset default).  Prints the
# figures; asserts behaviour only (one execution, every caller served).
#
# --jmh runs ROUNDS rounds (default 9); in each, every peer runs in a fork of
# its own (3 x 1 s warm-up, 5 x 1 s measured), in an order that rotates from
# round to round, so that a slow spell of a shared machine falls on all of
# them.  BENCH is a JMH benchmark name (default "lone"; also "coalesced").
# It prints the medians over rounds and, per peer, the median of its ratio to
# callAsync within each round; the raw JSON goes to
# BUILD_DIR/bindings/swig/java/bench/jmh/.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/../../scripts/lib.sh"
sf_require mvn java python3

build=${SF_BUILD_DIR:-$SF_ROOT/build/default}
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then build=$1; shift; fi
mode=asyncbench
case "${1:-}" in
    --) shift ;;
    --jmh) mode=jmh; shift ;;
    --checks) mode=checks; shift ;;
esac
swig=$build/bindings/swig
[ -d "$swig/java/gen" ] || sf_die "$build has no Java SWIG module (cmake --preset default && cmake --build --preset default)"

mvn -q -B -f "$SF_ROOT/bindings/swig/java/pom.xml" -Dsf.build.dir="$swig" -DskipTests package
# The newest: a build dir that built an older version still has its jar.
jar=$(ls -t "$swig"/java/maven/libsingleflight-*.jar | head -n1)
mvn -q -B -f "$here/pom.xml" -Dsf.build.dir="$swig" -Dsf.jar="$jar" package
cp="$swig/java/bench/classes:$(cat "$swig/java/bench/classpath.txt"):$jar"
sf_log "against $jar ($(java -version 2>&1 | head -n1)); load average: $(cut -d' ' -f1-3 /proc/loadavg)"

case $mode in
asyncbench)
    exec java -cp "$cp" io.github.libsingleflight.bench.AsyncBench "$@" ;;
checks)
    exec java -cp "$cp" io.github.libsingleflight.bench.CancelChecks "$@" ;;
jmh)
    rounds=${1:-9}
    bench=${2:-lone}
    out=$swig/java/bench/jmh
    rm -rf "$out"
    mkdir -p "$out"
    peers=(callAsync caffeine chm-shared chm-copy)
    for ((r = 0; r < rounds; r++)); do
        for ((i = 0; i < ${#peers[@]}; i++)); do
            p=${peers[$(((i + r) % ${#peers[@]}))]}
            java -cp "$cp" org.openjdk.jmh.Main "PeersBench.$bench\$" -p peer="$p" \
                -f 1 -wi 3 -w 1s -i 5 -r 1s -rf json -rff "$out/r$r-$p.json" >"$out/r$r-$p.log" 2>&1 ||
                { cat "$out/r$r-$p.log" >&2; sf_die "JMH failed"; }
        done
        printf 'round %d/%d done, load average %s\n' $((r + 1)) "$rounds" "$(cut -d' ' -f1-3 /proc/loadavg)" >&2
    done
    python3 - "$out" "$rounds" "$bench" "${peers[@]}" <<'PY'
import json, statistics, sys
out, rounds, bench, peers = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
score = {p: [] for p in peers}
for r in range(rounds):
    for p in peers:
        with open(f"{out}/r{r}-{p}.json") as f:
            score[p].append(json.load(f)[0]["primaryMetric"]["score"])
print(f"JMH PeersBench.{bench}: ns per call, median of {rounds} interleaved rounds (range), "
      "and the median of the per-round ratio to callAsync")
for p in peers:
    ratios = [s / c for s, c in zip(score[p], score["callAsync"])]
    print(f"  {p:12s} {statistics.median(score[p]):8.1f}  ({min(score[p]):.1f}-{max(score[p]):.1f})"
          f"  x{statistics.median(ratios):.2f} of callAsync")
PY
    ;;
esac
