#!/usr/bin/env bash
# Fuzzes the C API for a bounded time (default 60 s, SF_FUZZ_SECONDS to
# change) with clang's libFuzzer under ASan+UBSan, starting from fuzz/corpus.
# First every seed and every regression input must pass unchanged.  Outputs
# (build, working corpus, crash artifacts) go under $SF_BUILD_DIR/sf-fuzz, never
# into the source tree.  Exit status: non-zero on any crash, leak, hang
# (-timeout) or failed model check.
set -euo pipefail

SF_ROOT=${SF_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
. "$SF_ROOT/scripts/lib.sh"
sf_need clang libclang-rt-14-dev cmake ninja-build

out=${SF_BUILD_DIR:-$SF_ROOT/build}/sf-fuzz
secs=${SF_FUZZ_SECONDS:-60}
bdir=$out/cmake
run=$out/run

sf_log "fuzz: building sf_fuzz_capi with clang (ASan+UBSan) in $bdir"
CC=clang CXX=clang++ cmake -S "$SF_ROOT" -B "$bdir" -G Ninja \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSF_SANITIZE=address,undefined \
    -DSF_BUILD_FUZZ=ON -DSF_BUILD_TESTS=OFF -DSF_BUILD_EXAMPLES=OFF >/dev/null
cmake --build "$bdir" -j2 --target sf_fuzz_capi
fuzzer=$bdir/fuzz/sf_fuzz_capi

rm -rf "$run"
mkdir -p "$run/corpus" "$run/artifacts"
cp "$SF_ROOT"/fuzz/corpus/* "$run/corpus/"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

# Seeds and regressions first: each must run clean, as-is.
inputs=()
for f in "$SF_ROOT"/fuzz/corpus/* "$SF_ROOT"/fuzz/regressions/*; do
    case $f in *.md) continue ;; esac
    [ -f "$f" ] && inputs+=("$f")
done
[ ${#inputs[@]} -gt 0 ] || sf_die "fuzz: no seed inputs in fuzz/corpus"
sf_log "fuzz: replaying ${#inputs[@]} seed and regression inputs"
"$fuzzer" -runs=1 "${inputs[@]}" >"$run/replay.log" 2>&1 || {
    tail -40 "$run/replay.log" >&2
    sf_die "fuzz: a seed or regression input fails"
}

sf_log "fuzz: fuzzing for ${secs}s"
set +e
"$fuzzer" "$run/corpus" -max_total_time="$secs" -timeout=10 -rss_limit_mb=4096 \
    -max_len=4096 -print_final_stats=1 -artifact_prefix="$run/artifacts/" \
    >"$run/fuzz.log" 2>&1
rc=$?
set -e
grep -E '^#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::peak_rss_mb' "$run/fuzz.log" >&2 || true
if [ $rc -ne 0 ] || [ -n "$(ls -A "$run/artifacts")" ]; then
    grep -E 'check failed|ERROR|runtime error|panic message|SUMMARY' "$run/fuzz.log" | head -20 >&2 || true
    ls -l "$run/artifacts" >&2
    sf_die "fuzz: crash found (exit $rc); keep the artifact in fuzz/regressions/ once fixed"
fi
sf_log "fuzz: clean; corpus grew to $(ls "$run/corpus" | wc -l) inputs (kept in $run/corpus)"
