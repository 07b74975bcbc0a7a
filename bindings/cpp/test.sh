#!/usr/bin/env bash
# Builds and runs the C++ wrapper's GoogleTest suite against the installed
# library (SF_PREFIX, found through pkg-config).  Run from anywhere; the
# top-level test command sets SF_ROOT, SF_PREFIX and SF_BUILD_DIR.
set -euo pipefail

SF_ROOT=${SF_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
. "$SF_ROOT/scripts/lib.sh"
sf_require g++ cmake ninja pkg-config

if [ -n "${SF_PREFIX:-}" ]; then
    export PKG_CONFIG_PATH="$SF_PREFIX/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
    export LD_LIBRARY_PATH="$SF_PREFIX/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
pkg-config --exists singleflight || sf_die "pkg-config cannot find singleflight (set SF_PREFIX)"

build="${SF_BUILD_DIR:-$SF_ROOT/build}/bindings/cpp"
# pkg_check_modules caches what it found: start over when the library now
# comes from somewhere else.
origin="$(pkg-config --define-prefix --variable=libdir singleflight)"
if [ -f "$build/sf-origin" ] && [ "$(cat "$build/sf-origin")" != "$origin" ]; then
    rm -rf "$build"
fi
mkdir -p "$build"
printf '%s\n' "$origin" >"$build/sf-origin"
sf_log "C++ wrapper: building tests in $build"
# --define-prefix: the installed .pc names the configure-time prefix, which
# is not SF_PREFIX when the library was staged with `cmake --install --prefix`.
# SF_CPP_SANITIZE="" builds without sanitizers (e.g. against a TSan core).
cmake -S "$SF_ROOT/bindings/cpp/tests" -B "$build" -G Ninja \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPKG_CONFIG_ARGN=--define-prefix \
    "-DSF_CPP_SANITIZE=${SF_CPP_SANITIZE-address,undefined}" >/dev/null
cmake --build "$build" -j2

sf_log "C++ wrapper: running tests"
out="$build/gtest.log"
# Sanitizer reports must fail the run, and a leak at exit counts.
status=0
ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} \
UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
    "$build/singleflight_cpp_test" --gtest_brief=1 >"$out" 2>&1 || status=$?
cat "$out"
[ "$status" -eq 0 ] || sf_die "C++ wrapper tests failed (exit $status)"
# Nothing here may be skipped: a skip would hide a missing behaviour.
if grep -q '^\[  SKIPPED \]' "$out"; then sf_die "C++ wrapper tests skipped some cases"; fi
grep -q '^\[  PASSED  \]' "$out" || sf_die "C++ wrapper tests did not report a pass"
