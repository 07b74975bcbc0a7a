#!/usr/bin/env bash
# Tests the SWIG bindings (Python, Lua 5.4, Java) against the modules built in
# $SF_BUILD_DIR (configured with -DSF_BUILD_SWIG=ON), then pip-installs the
# Python package into a venv and runs the Python suite again against that.
#
# Environment (set by scripts/test.sh; fallbacks make a standalone run work):
#   SF_ROOT       repository root
#   SF_BUILD_DIR  main CMake build dir; default: a fresh one under $TMPDIR
#   PKG_CONFIG_PATH must find singleflight.pc for the pip install; default:
#                 the build installed into the build dir
# Everything written goes under $SF_BUILD_DIR/bindings/swig.
set -euo pipefail

SF_ROOT=${SF_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
. "$SF_ROOT/scripts/lib.sh"

HERE=$SF_ROOT/bindings/swig
sf_need build-essential cmake ninja-build pkg-config swig lua5.4 liblua5.4-dev \
        openjdk-17-jdk-headless maven python3-dev python3-venv valgrind

if [ -z "${SF_BUILD_DIR:-}" ]; then
    SF_BUILD_DIR=${TMPDIR:-/tmp}/sf-swig-build
    sf_log "SF_BUILD_DIR not set: configuring $SF_BUILD_DIR"
    cmake -S "$SF_ROOT" -B "$SF_BUILD_DIR" -G Ninja -DSF_BUILD_TESTS=OFF \
          -DSF_BUILD_EXAMPLES=OFF -DSF_BUILD_SWIG=ON >/dev/null
fi
B=$SF_BUILD_DIR/bindings/swig
[ -d "$B" ] || sf_die "$SF_BUILD_DIR was not configured with -DSF_BUILD_SWIG=ON"

# Cheap when scripts/test.sh has just built everything; makes a rerun after
# an edit test what is in the tree.
sf_log "building the SWIG modules"
cmake --build "$SF_BUILD_DIR" -j2 --target sf_python sf_python_package sf_lua \
      sf_lua_package sf_lua_threads sf_java

failures=()
step() { # step NAME CMD...: runs one suite, records a failure, goes on
    local name=$1
    shift
    sf_log "$name"
    if ! "$@"; then
        failures+=("$name")
        printf 'FAILED: %s\n' "$name" >&2
    fi
}

# ---- Python ------------------------------------------------------------------
export PYTHONDONTWRITEBYTECODE=1 # keep __pycache__ out of the source tree
# The interpreter the module was built for, not whichever python3 is first.
PY=$(sed -n 's/^Python3_EXECUTABLE:[A-Z]*=//p' "$SF_BUILD_DIR/CMakeCache.txt")
[ -n "$PY" ] || PY=python3
VENV=$B/venv
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV" || sf_die "cannot create a venv with $PY"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check pytest

if ! pkg-config --exists singleflight 2>/dev/null; then
    sf_log "singleflight.pc not on PKG_CONFIG_PATH: installing the build into $B/prefix"
    cmake --build "$SF_BUILD_DIR" -j2 >/dev/null # install wants every target
    cmake --install "$SF_BUILD_DIR" --prefix "$B/prefix" >/dev/null
    PKG_CONFIG_PATH=$(dirname "$(find "$B/prefix" -name singleflight.pc | head -n1)")
    # The .pc names the configured prefix; take it from the file's location.
    export PKG_CONFIG_PATH PKG_CONFIG_RELOCATE_PATHS=1
fi

mkdir -p "$B/run"
cd "$B/run" # not the source folder: nothing may import the uncompiled package

py_build_tree() {
    PYTHONPATH=$B/python timeout 300 "$VENV/bin/python" -m pytest -q -s -p no:cacheprovider \
        "$HERE/python/tests"
}
step "python: pytest against the build tree" py_build_tree

py_pip_install() {
    rm -rf "$B/pybuild"
    # SF_PY_BUILD_BASE keeps setuptools' build/ and egg-info out of the tree.
    SF_PY_BUILD_BASE=$B/pybuild timeout 300 "$VENV/bin/python" -m pip install -q \
        --disable-pip-version-check --force-reinstall --no-deps "$HERE/python" &&
    "$VENV/bin/python" -c 'import libsingleflight, sys
assert "site-packages" in libsingleflight.__file__, libsingleflight.__file__
print("installed:", libsingleflight.__file__, "library", libsingleflight.version())' &&
    timeout 300 "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$HERE/python/tests"
}
step "python: pip install bindings/swig/python, pytest against the installed package" py_pip_install

# ---- Lua 5.4 -----------------------------------------------------------------
export LUA_PATH_5_4="$B/lua/?.lua;;" LUA_CPATH_5_4="$B/lua/?.so;;"
step "lua: test_singleflight.lua" timeout 300 lua5.4 "$HERE/lua/tests/test_singleflight.lua"
# The same suite under valgrind: the C++ side of the Lua module (value copies,
# flights, named groups) must free everything and touch nothing it should not.
step "lua: test_singleflight.lua under valgrind" \
    timeout 300 valgrind -q --leak-check=full --errors-for-leak-kinds=definite,indirect,possible --error-exitcode=9 \
    lua5.4 "$HERE/lua/tests/test_singleflight.lua"
step "lua: 4 Lua states on 4 threads share one group" \
    timeout 120 "$B/lua/sf_lua_threads" 4 "$HERE/lua/tests/threads_shared_group.lua"
step "lua: a follower that cannot yield times out while another state leads" \
    timeout 120 "$B/lua/sf_lua_threads" 2 "$HERE/lua/tests/threads_timeout.lua"

# ---- Java --------------------------------------------------------------------
java_tests() {
    local log=$B/java/mvn-test.log rc=0
    timeout 600 mvn -q -B -f "$HERE/java/pom.xml" -Dsf.build.dir="$B" test >"$log" 2>&1 || rc=$?
    cat "$log"
    # -Xcheck:jni reports misuse of JNI as warnings without failing a test.
    if grep -q "WARNING in native method" "$log"; then
        echo "JNI check warnings (see above)" >&2
        rc=1
    fi
    grep -h "Tests run" "$B"/java/maven/surefire-reports/*.txt 2>/dev/null || true
    return $rc
}
step "java: mvn test (JUnit 5, -Xcheck:jni)" java_tests

if [ ${#failures[@]} -ne 0 ]; then
    printf 'swig bindings: %d suite(s) failed:\n' "${#failures[@]}" >&2
    printf '  %s\n' "${failures[@]}" >&2
    exit 1
fi
sf_log "swig bindings: all suites passed"
