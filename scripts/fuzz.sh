#!/usr/bin/env bash
# Exploratory fuzzing of the C API with libFuzzer (clang, ASan + UBSan), for
# finding new bugs.  Not part of CI: a verdict that depends on what a random
# search finds in a minute would reject good work at random.  CI replays
# fuzz/corpus and fuzz/regressions instead (ctest label fuzz-replay), and a
# find becomes a regression input with --minimize.
#
#   scripts/fuzz.sh [SECONDS] [--seed N]
#       Fuzzes for SECONDS (default 60) from fuzz/corpus plus what earlier
#       runs found (build/fuzz-run/corpus).  libFuzzer prints its seed; the
#       same seed on the same corpus replays the same search.  Exit status
#       non-zero on a find (crash, failed model check, leak, hang of 10 s);
#       the input is kept in build/fuzz-run/artifacts/.
#   scripts/fuzz.sh --minimize ARTIFACT NAME
#       Shrinks a find to the smallest input that still fails, saves it as
#       fuzz/regressions/NAME (say what it caught: leader-value-replaced),
#       and checks that it fails on its own.  Commit it with the fix: from
#       then on every build replays it.
#   scripts/fuzz.sh --merge
#       Adds the inputs of build/fuzz-run/corpus that reach code fuzz/corpus
#       does not to fuzz/corpus (libFuzzer's -merge=1), to grow what CI replays.
#
# The harness is fuzz/fuzz_capi.cpp; SF_FUZZ_TRACE=1 makes it print each
# operation of an input (build/fuzz/fuzz/sf_fuzz_capi -runs=1 FILE).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$SF_ROOT"
sf_require clang clang++ cmake ninja

mode=fuzz secs=60 seed= artifact= name=
while [ $# -gt 0 ]; do
    case $1 in
        --seed) seed=$2; shift 2 ;;
        --minimize) mode=minimize; artifact=${2:?--minimize ARTIFACT NAME}; name=${3:?--minimize ARTIFACT NAME}; shift 3 ;;
        --merge) mode=merge; shift ;;
        -h|--help) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        [0-9]*) secs=$1; shift ;;
        *) sf_die "unknown argument: $1 (see --help)" ;;
    esac
done

sf_log "fuzz: building the fuzz preset"
cmake --preset fuzz >/dev/null
cmake --build --preset fuzz --target sf_fuzz_capi >/dev/null
fuzzer=$SF_ROOT/build/fuzz/fuzz/sf_fuzz_capi
run=$SF_ROOT/build/fuzz-run
mkdir -p "$run/corpus" "$run/artifacts"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

case $mode in
minimize)
    [ -f "$artifact" ] || sf_die "no such file: $artifact"
    case $name in */* | .* | *.md | "") sf_die "NAME is a plain file name, e.g. leader-value-replaced" ;; esac
    out=$SF_ROOT/fuzz/regressions/$name
    [ ! -e "$out" ] || sf_die "$out exists already"
    if "$fuzzer" -runs=1 "$artifact" >"$run/minimize.log" 2>&1; then
        sf_die "$artifact does not fail on its own (see $run/minimize.log)"
    fi
    sf_log "fuzz: minimising $artifact"
    "$fuzzer" -minimize_crash=1 -runs=20000 -timeout=10 -exact_artifact_path="$out" \
        "$artifact" >>"$run/minimize.log" 2>&1 || true
    [ -s "$out" ] || cp "$artifact" "$out" # nothing smaller failed: keep it whole
    if "$fuzzer" -runs=1 "$out" >>"$run/minimize.log" 2>&1; then
        rm -f "$out"
        sf_die "the minimised input does not fail on its own (see $run/minimize.log)"
    fi
    grep -m1 -E 'check failed|ERROR: |runtime error' "$run/minimize.log" || true
    sf_log "fuzz: saved $out ($(wc -c <"$out") bytes, was $(wc -c <"$artifact")); it fails until the bug is fixed:"
    echo "  ctest --preset default -R '^fuzz_replay\$'    (or SF_FUZZ_TRACE=1 $fuzzer -runs=1 $out)"
    ;;
merge)
    sf_log "fuzz: merging $run/corpus into fuzz/corpus"
    before=$(ls fuzz/corpus | wc -l)
    "$fuzzer" -merge=1 fuzz/corpus "$run/corpus" >"$run/merge.log" 2>&1 ||
        { tail -20 "$run/merge.log"; sf_die "merge failed"; }
    sf_log "fuzz: fuzz/corpus grew from $before to $(ls fuzz/corpus | wc -l) inputs"
    ;;
fuzz)
    cp -n fuzz/corpus/* "$run/corpus/"
    sf_log "fuzz: fuzzing for ${secs}s (corpus $run/corpus, finds in $run/artifacts)"
    rc=0
    "$fuzzer" "$run/corpus" -max_total_time="$secs" -timeout=10 -rss_limit_mb=4096 \
        -max_len=4096 -print_final_stats=1 -artifact_prefix="$run/artifacts/" \
        ${seed:+-seed=$seed} >"$run/fuzz.log" 2>&1 || rc=$?
    grep -m1 '^INFO: Seed:' "$run/fuzz.log" >&2 || true
    grep -E 'stat::number_of_executed_units|stat::peak_rss_mb' "$run/fuzz.log" >&2 || true
    if [ $rc -ne 0 ]; then
        grep -E 'check failed|ERROR: |runtime error|SUMMARY' "$run/fuzz.log" | head -20 >&2 || true
        artifact=$(grep -oE "Test unit written to [^ ]+" "$run/fuzz.log" | tail -n1 | cut -d' ' -f5)
        sf_log "fuzz: found a failing input (exit $rc; log $run/fuzz.log)"
        [ -z "$artifact" ] ||
            echo "  keep it as a regression input: scripts/fuzz.sh --minimize $artifact NAME"
        exit 1
    fi
    sf_log "fuzz: nothing found; $run/corpus holds $(ls "$run/corpus" | wc -l) inputs (scripts/fuzz.sh --merge adds the new coverage to fuzz/corpus)"
    ;;
esac
