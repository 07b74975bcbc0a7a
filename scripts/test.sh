#!/usr/bin/env bash
# Runs every test of the project: sets the machine up (scripts/setup.sh), then
# for each preset of CMakePresets.json configures, builds and runs ctest.
# Every check is a ctest test with labels, so any one of them can also be run
# by hand, e.g. `ctest --preset default -L python` (tests/CMakeLists.txt).
#
#   default   core suites, examples, install + consumers, Meson (same suites,
#             same .pc), ABI, Python, Lua, Java, Go, Rust, LuaJIT (and in
#             nginx), C++, benchmark smoke
#   memcheck  the suites labelled memcheck, under valgrind (ctest -T memcheck,
#             on the default build)
#   asan      core suites under ASan + LeakSanitizer + UBSan
#   tsan      core suites under TSan
#   fuzz      the libFuzzer build, replaying the corpus and regressions
#
# Nothing random decides the verdict: fuzz inputs are replayed, never
# searched (scripts/fuzz.sh does that, outside CI), and the stress test runs
# with a fixed seed.  Ends with one line, "N passed, N failed", counting ctest
# tests over all presets (a preset that fails to configure or build counts
# as one failure); exits non-zero if anything failed.
#
#   scripts/test.sh                    everything (what CI runs)
#   scripts/test.sh --preset asan      only these presets (repeatable)
#   scripts/test.sh --without java     leave out the integration tests labelled
#                                      java (and their toolchain); printed in the
#                                      summary.  An unknown label fails the
#                                      default preset's configure.
#   scripts/test.sh --no-setup         do not run scripts/setup.sh first
# Logs: build/logs/PRESET.log.
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$SF_ROOT"

ALL_PRESETS=(default memcheck asan tsan fuzz)

presets=() without=() setup=1
while [ $# -gt 0 ]; do
    case $1 in
        --preset) presets+=("$2"); shift 2 ;;
        --preset=*) presets+=("${1#*=}"); shift ;;
        --without) without+=("$2"); shift 2 ;;
        --without=*) without+=("${1#*=}"); shift ;;
        --no-setup) setup=0; shift ;;
        -h|--help) sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) sf_die "unknown argument: $1 (see --help)" ;;
    esac
done
[ ${#presets[@]} -gt 0 ] || presets=("${ALL_PRESETS[@]}")
for p in "${presets[@]}"; do
    case " ${ALL_PRESETS[*]} " in *" $p "*) ;; *) sf_die "no preset '$p' (${ALL_PRESETS[*]})" ;; esac
done
selected() { case " ${presets[*]} " in *" $1 "*) return 0 ;; esac; return 1; }

t_start=$SECONDS
if [ $setup = 1 ]; then
    setup_args=()
    for w in "${without[@]}"; do setup_args+=(--without "$w"); done
    selected fuzz || setup_args+=(--without fuzz)
    bash scripts/setup.sh "${setup_args[@]}" || sf_die "scripts/setup.sh failed"
fi

LOGS=$SF_ROOT/build/logs
mkdir -p "$LOGS"
JOBS=2
passed=0 failed=0 report=()

# count PRESET LOG: adds the ctest summary line of LOG to the totals.
count() {
    local line total fails
    line=$(grep -E '[0-9]+ tests? failed out of [0-9]+' "$2" | tail -n1)
    if [ -z "$line" ]; then
        failed=$((failed + 1))
        report+=("$1: ctest printed no summary (log: $2)")
        return
    fi
    fails=$(sed -E 's/.* ([0-9]+) tests? failed out of ([0-9]+).*/\1/' <<<"$line")
    total=$(sed -E 's/.* ([0-9]+) tests? failed out of ([0-9]+).*/\2/' <<<"$line")
    passed=$((passed + total - fails))
    failed=$((failed + fails))
    report+=("$1: $((total - fails)) passed, $fails failed")
}

# run_preset NAME: configure, build and test one preset, all into its log.
declare -A built=()
run_preset() {
    local p=$1 log=$LOGS/$1.log t0=$SECONDS conf=$1 rc=0
    : >"$log"
    sf_log "$p"
    [ "$p" = memcheck ] && conf=default
    if [ -z "${built[$conf]:-}" ]; then
        local extra=()
        [ "$conf" = default ] && extra=("-DSF_TEST_WITHOUT=$(IFS=';'; echo "${without[*]}")")
        if ! { cmake --preset "$conf" "${extra[@]}" && cmake --build --preset "$conf"; } >>"$log" 2>&1; then
            built[$conf]=failed
        else
            built[$conf]=ok
        fi
    fi
    if [ "${built[$conf]}" != ok ]; then
        failed=$((failed + 1))
        report+=("$p: configure or build of preset $conf FAILED (log: $log)")
        printf '   FAIL %-10s configure/build, %4ds  (log: %s)\n' "$p" $((SECONDS - t0)) "$log"
        tail -n 30 "$log" | sed 's/^/      | /'
        return
    fi
    if [ "$p" = memcheck ]; then
        # -T (dashboard mode) reads DartConfiguration.tcl from --test-dir.
        ctest --preset memcheck -T memcheck --test-dir "$SF_ROOT/build/default" >>"$log" 2>&1 || rc=$?
    else
        ctest --preset "$p" >>"$log" 2>&1 || rc=$?
    fi
    count "$p" "$log"
    printf '   %-4s %-10s %4ds  %s\n' "$([ $rc -eq 0 ] && echo ok || echo FAIL)" "$p" \
        $((SECONDS - t0)) "${report[-1]#*: }"
    if [ $rc -ne 0 ]; then
        echo "      log: $log"
        # ctest's own list of what failed, then the end of the log.
        sed -n '/The following tests FAILED/,$p' "$log" | sed 's/^/      | /'
        grep -q 'tests failed out of' "$log" || tail -n 30 "$log" | sed 's/^/      | /'
        # A failure ctest did not count (e.g. memcheck defects) still fails.
        if ! grep -qE ' [1-9][0-9]* tests? failed out of' "$log"; then
            failed=$((failed + 1))
            report+=("$p: ctest exited $rc (log: $log)")
        fi
    fi
}

for p in "${ALL_PRESETS[@]}"; do
    selected "$p" && run_preset "$p"
done

echo
printf '%s\n' "${report[@]}"
not_run=()
for p in "${ALL_PRESETS[@]}"; do selected "$p" || not_run+=("$p"); done
[ ${#not_run[@]} -eq 0 ] || echo "presets not run (by --preset): ${not_run[*]}"
[ ${#without[@]} -eq 0 ] || echo "tests left out (by --without): ${without[*]}"
echo "wall time: $(( (SECONDS - t_start) / 60 ))m$(( (SECONDS - t_start) % 60 ))s"
echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
