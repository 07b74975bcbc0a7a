#!/usr/bin/env bash
# Runs the LuaJIT binding's tests against the installed library (SF_PREFIX,
# or whatever the dynamic linker finds).  Run from anywhere; the top-level
# test command sets SF_ROOT and SF_PREFIX.
set -euo pipefail

SF_ROOT=${SF_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
. "$SF_ROOT/scripts/lib.sh"
sf_require luajit

if [ -n "${SF_PREFIX:-}" ]; then
    export LD_LIBRARY_PATH="$SF_PREFIX/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

here="$SF_ROOT/bindings/luajit"
sf_log "LuaJIT binding: running tests with $(luajit -v | head -n1)"
# The module is loaded from the source tree, the way a user would vendor
# it; nothing is written anywhere but the shared groups' segments, which
# the tests remove.  The timeout turns a hang (a deadlock bug) into a
# failure.  shared_test.lua starts other luajit processes, which inherit
# LUA_PATH and the library's location.
export LUA_PATH="$here/?.lua;$here/tests/?.lua;;"
for t in singleflight_test shared_test; do
    status=0
    timeout 300 luajit "$here/tests/$t.lua" || status=$?
    [ "$status" -eq 0 ] || sf_die "LuaJIT binding tests failed: $t (exit $status)"
done
