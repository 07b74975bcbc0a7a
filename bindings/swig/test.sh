#!/usr/bin/env bash
# Tests the SWIG bindings (Python, Lua 5.4, Java) against the modules built in
# $SF_BUILD_DIR (configured with -DSF_BUILD_SWIG=ON and built), and
# pip-installs the Python package into a venv and runs the Python suite
# again against that.  ctest runs one suite per test (tests/integration):
#
#   bindings/swig/test.sh [SUITE...]   python python-pip python-redis lua
#                                      lua-valgrind lua-threads java; none:
#                                      all but python-redis (which needs a
#                                      build with -DSF_BUILD_REDIS=ON)
#
# Environment (set by ctest, see tests/integration/CMakeLists.txt):
#   SF_ROOT       repository root
#   SF_BUILD_DIR  the CMake build dir with the SWIG modules built
#   SF_VENV       the venv with pytest and uvloop that scripts/setup.sh made
#   PKG_CONFIG_PATH must find singleflight.pc for the pip install
# Everything written goes under $SF_BUILD_DIR/bindings/swig.
set -euo pipefail

SF_ROOT=${SF_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
. "$SF_ROOT/scripts/lib.sh"

HERE=$SF_ROOT/bindings/swig
: "${SF_BUILD_DIR:?SF_BUILD_DIR must name a build configured with -DSF_BUILD_SWIG=ON}"
B=$SF_BUILD_DIR/bindings/swig
[ -d "$B" ] || sf_die "$SF_BUILD_DIR was not configured with -DSF_BUILD_SWIG=ON"
suites=("$@")
[ ${#suites[@]} -gt 0 ] || suites=(python python-pip lua lua-valgrind lua-threads java)

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
# The venv must run the interpreter the module was built for.
VENV=$SF_VENV
py_check_venv() {
    local py ours theirs
    "$VENV/bin/python" -c 'import pytest, uvloop' 2>/dev/null ||
        sf_die "no venv with pytest and uvloop at $VENV (scripts/setup.sh makes it)"
    py=$(sed -n 's/^_\{0,1\}Python3_EXECUTABLE:[A-Z]*=//p' "$SF_BUILD_DIR/CMakeCache.txt" | head -n1)
    [ -n "$py" ] || sf_die "no Python3_EXECUTABLE in $SF_BUILD_DIR/CMakeCache.txt"
    theirs=$("$py" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
    ours=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
    [ "$ours" = "$theirs" ] ||
        sf_die "the module was built for $py ($theirs), the venv runs $ours: rerun scripts/setup.sh"
}

mkdir -p "$B/run"
cd "$B/run" # not the source folder: nothing may import the uncompiled package

# test_redis.py runs in its own suite: it needs the Redis tier's module,
# which the pip install does not build, and a redis-server.
py_build_tree() {
    PYTHONPATH=$B/python timeout 300 "$VENV/bin/python" -m pytest -q -s -p no:cacheprovider \
        --ignore="$HERE/python/tests/test_redis.py" "$HERE/python/tests"
}

# RedisGroup against real redis-servers the tests start and stop.
py_redis() {
    [ -e "$(ls "$B"/python/libsingleflight/_singleflight_redis*.so 2>/dev/null | head -n1)" ] ||
        sf_die "no _singleflight_redis module in $B/python: configure with -DSF_BUILD_REDIS=ON"
    PYTHONPATH=$B/python timeout 300 "$VENV/bin/python" -m pytest -q -s -p no:cacheprovider \
        "$HERE/python/tests/test_redis.py"
}

py_pip_install() {
    rm -rf "$B/pybuild"
    # SF_PY_BUILD_BASE keeps setuptools' build/ and egg-info out of the tree.
    SF_PY_BUILD_BASE=$B/pybuild timeout 300 "$VENV/bin/python" -m pip install -q \
        --disable-pip-version-check --force-reinstall --no-deps "$HERE/python" &&
    "$VENV/bin/python" -c 'import libsingleflight, sys
assert "site-packages" in libsingleflight.__file__, libsingleflight.__file__
print("installed:", libsingleflight.__file__, "library", libsingleflight.version())' &&
    timeout 300 "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
        --ignore="$HERE/python/tests/test_redis.py" "$HERE/python/tests"
}

# ---- Lua 5.4 -----------------------------------------------------------------
export LUA_PATH_5_4="$B/lua/?.lua;;" LUA_CPATH_5_4="$B/lua/?.so;;"
# The build tree's module finds the build tree's libsingleflight through its
# RUNPATH.  An LD_LIBRARY_PATH from the caller's shell would win over it and
# could name another copy (the test install, which the install test rewrites
# while these may run: loading a half-written library crashed them), so they
# run without it.  ctest no longer sets it for tests like these.
lua_env=(timeout 300 env -u LD_LIBRARY_PATH)
lua_plain() { "${lua_env[@]}" lua5.4 "$HERE/lua/tests/test_singleflight.lua"; }
# The same suite under valgrind: the C++ side of the Lua module (value copies,
# flights, named groups) must free everything and touch nothing it should not.
lua_valgrind() {
    "${lua_env[@]}" valgrind -q --leak-check=full --errors-for-leak-kinds=definite,indirect,possible \
        --error-exitcode=9 lua5.4 "$HERE/lua/tests/test_singleflight.lua"
}
# Several Lua states on several threads: one group shared, a follower that
# cannot yield timing out while another state leads, and a flight abandoned
# by callers in two states.
lua_threads() {
    "${lua_env[@]}" "$B/lua/sf_lua_threads" 4 "$HERE/lua/tests/threads_shared_group.lua" &&
    "${lua_env[@]}" "$B/lua/sf_lua_threads" 2 "$HERE/lua/tests/threads_timeout.lua" &&
    "${lua_env[@]}" "$B/lua/sf_lua_threads" 2 "$HERE/lua/tests/threads_abandon.lua"
}

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

for suite in "${suites[@]}"; do
    case $suite in
        python) py_check_venv; step "python: pytest against the build tree" py_build_tree ;;
        python-pip)
            py_check_venv
            step "python: pip install bindings/swig/python, pytest against the installed package" py_pip_install ;;
        python-redis) py_check_venv; step "python: RedisGroup against a real redis-server" py_redis ;;
        lua) step "lua: test_singleflight.lua" lua_plain ;;
        lua-valgrind) step "lua: test_singleflight.lua under valgrind" lua_valgrind ;;
        lua-threads) step "lua: Lua states on threads share one group; a follower that cannot yield times out" lua_threads ;;
        java) step "java: mvn test (JUnit 5, -Xcheck:jni)" java_tests ;;
        *) sf_die "unknown suite '$suite' (python python-pip python-redis lua lua-valgrind lua-threads java)" ;;
    esac
done

if [ ${#failures[@]} -ne 0 ]; then
    printf 'swig bindings: %d suite(s) failed:\n' "${#failures[@]}" >&2
    printf '  %s\n' "${failures[@]}" >&2
    exit 1
fi
sf_log "swig bindings: passed: ${suites[*]}"
