#!/usr/bin/env bash
# Runs every test of the project: the core with CMake and with Meson, the
# install and pkg-config checks, the whole suite under ASan+UBSan and TSan,
# the C tests under valgrind, then every binding's, benchmark's, fuzzer's and
# ABI check's own test.sh.  Installs what it needs.  Ends with one line
# "N passed, N failed"; exits non-zero if anything failed.
#
#   scripts/test.sh            everything (what CI runs)
#   scripts/test.sh core       only the core steps (no sanitizers, no bindings)
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$SF_ROOT"

mode=${1:-all}
OUT=${SF_OUT:-$SF_ROOT/build}
mkdir -p "$OUT"
JOBS=${SF_JOBS:-2}
passed=0 failed=0 failures=()

# step NAME CMD...: runs one step, logs to $OUT/logs/NAME.log, keeps score.
mkdir -p "$OUT/logs"
step() {
    local name=$1; shift
    local log="$OUT/logs/$name.log" t0=$SECONDS
    sf_log "$name"
    if "$@" >"$log" 2>&1; then
        passed=$((passed + 1))
        printf '   ok   %-28s %4ds\n' "$name" $((SECONDS - t0))
    else
        failed=$((failed + 1)); failures+=("$name")
        printf '   FAIL %-28s %4ds  (log: %s)\n' "$name" $((SECONDS - t0)) "$log"
        tail -n 40 "$log" | sed 's/^/      | /'
    fi
}

sf_need "${SF_CORE_PKGS[@]}"

have_swig() { [ -f bindings/swig/CMakeLists.txt ]; }

cmake_build() {  # dir extra-args...
    local dir=$1; shift
    cmake -S . -B "$dir" -G Ninja -DSF_BUILD_TESTS=ON "$@" && cmake --build "$dir" -j"$JOBS"
}

ctest_run() {  # dir extra-args...
    local dir=$1; shift
    ctest --test-dir "$dir" --output-on-failure -j"$JOBS" "$@"
}

asan_ctest() {
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
    UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 ctest_run "$1"
}

tsan_ctest() {
    # TSan needs a low-entropy address space on newer kernels: no ASLR.
    TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
        setarch "$(uname -m)" -R ctest --test-dir "$1" --output-on-failure -j"$JOBS"
}

# ---- core: CMake ---------------------------------------------------------
MAIN="$OUT/main"
PREFIX="$OUT/prefix"
swig_flag=-DSF_BUILD_SWIG=OFF
if [ "$mode" = all ] && have_swig; then
    sf_need swig python3-dev python3-venv liblua5.4-dev lua5.4 openjdk-17-jdk-headless maven
    swig_flag=-DSF_BUILD_SWIG=ON
fi
step cmake-build cmake_build "$MAIN" -DCMAKE_BUILD_TYPE=RelWithDebInfo $swig_flag
step cmake-ctest ctest_run "$MAIN"
step cmake-install bash -c "rm -rf '$PREFIX' && cmake --install '$MAIN' --prefix '$PREFIX'"
step install-consumers bash tests/check-install.sh "$PREFIX"
step demo-hello "$MAIN/examples/hello"

# ---- core: Meson, and the two .pc files agree ----------------------------
MESON="$OUT/meson"
step meson-build bash -c "rm -rf '$MESON' && meson setup '$MESON' --prefix '$OUT/meson-prefix' --libdir lib && ninja -C '$MESON'"
step meson-test meson test -C "$MESON" --print-errorlogs
step meson-install bash -c "rm -rf '$OUT/meson-prefix' && meson install -C '$MESON' --quiet"
step pc-files-agree bash tests/check-pc.sh "$PREFIX" "$OUT/meson-prefix"

# ---- valgrind on the C suite ---------------------------------------------
step valgrind-c-tests valgrind --error-exitcode=9 --leak-check=full \
    --errors-for-leak-kinds=definite,indirect --show-leak-kinds=definite,indirect \
    "$MAIN/tests/c_api_test"

if [ "$mode" = all ]; then
    # ---- sanitizers: the whole ctest suite, twice --------------------------
    step asan-ubsan-build cmake_build "$OUT/asan" -DCMAKE_BUILD_TYPE=Debug \
        -DSF_SANITIZE=address,undefined -DSF_BUILD_EXAMPLES=OFF
    step asan-ubsan-ctest asan_ctest "$OUT/asan"
    step tsan-build cmake_build "$OUT/tsan" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DSF_SANITIZE=thread -DSF_BUILD_EXAMPLES=OFF
    step tsan-ctest tsan_ctest "$OUT/tsan"

    # ---- everything else that brings its own test.sh -----------------------
    export SF_PREFIX="$PREFIX" SF_BUILD_DIR="$MAIN"
    export PKG_CONFIG_PATH="$PREFIX/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
    export LD_LIBRARY_PATH="$PREFIX/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    for t in bindings/swig/test.sh bindings/go/test.sh bindings/rust/test.sh \
             bindings/luajit/test.sh bindings/cpp/test.sh bench/test.sh \
             fuzz/test.sh abi/test.sh; do
        [ -x "$t" ] || continue
        step "$(dirname "$t" | tr / -)" bash "$t"
    done
fi

echo
if [ $failed -ne 0 ]; then
    echo "failed steps: ${failures[*]}"
fi
echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
