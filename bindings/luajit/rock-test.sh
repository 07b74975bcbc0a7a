#!/usr/bin/env bash
# The LuaJIT rock as its users install it: docs/bindings.md's `luajit-rock`
# commands, verbatim (tests/install/run.sh), build and install
# libsingleflight-ffi into a private tree with `luarocks make` for LuaJIT,
# with no singleflight.pc for pkg-config and nothing from the caller's
# environment, then run the page's hello-luajit.lua.  Checked after: the
# libsingleflight.so that luajit mapped is the tree's copy.  Then the
# system-library way: the module from the checkout and the library from a
# `cmake --install` of this build into a private prefix.
#
# Run from anywhere.  Everything happens in a temporary directory outside
# the checkout (a work directory holding a symlink to the checkout inside
# the checkout sends CMake round the loop), removed at the end; the rock's
# library compiles in seconds.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SF_ROOT=${SF_ROOT:-$(cd "$here/../.." && pwd)}
. "$SF_ROOT/scripts/lib.sh"
sf_require luajit luarocks cmake pkg-config python3
[ -f /usr/include/luajit-2.1/lua.h ] ||
    sf_die "no LuaJIT headers in /usr/include/luajit-2.1 (scripts/setup.sh installs libluajit2-5.1-dev)"

out=$(mktemp -d "${TMPDIR:-/tmp}/sf-luajit-rock.XXXXXX")
trap 'rm -rf "$out"' EXIT
mkdir -p "$out/empty"
# The user's machine has no C library: pkg-config must find none whatever
# the caller's environment says, or the test proves nothing.
export PKG_CONFIG_LIBDIR=$out/empty
unset PKG_CONFIG_PATH
! pkg-config --exists singleflight || sf_die "pkg-config finds a singleflight.pc"
export SF_ROCK_BUILD_DIR=$out/build

# which_lib WORK LUA_PATH LUA_CPATH [ENV...]: the libsingleflight.so that
# luajit maps when it runs hello-luajit.lua's module with those paths.
which_lib() {
    local work=$1 path=$2 cpath=$3
    shift 3
    (cd "$work" && env -u LD_LIBRARY_PATH -u SF_LIBRARY -u SF_PREFIX LUA_PATH="$path" LUA_CPATH="$cpath" "$@" \
        luajit -e '
local sf = require "singleflight"
local g = sf.new()
assert(g:run("k", function() return "v" end) == "v")
for line in io.lines("/proc/self/maps") do
    local p = line:match("(/%S*libsingleflight%.so[%.%d]*)$")
    if p then print(p) return end
end
print("none")')
}

sf_log "LuaJIT rock: the documentation's luarocks make into a fresh tree, then hello-luajit.lua"
work=$out/work
bash "$SF_ROOT/tests/install/run.sh" --fresh "$work" luajit-hello luajit-rock
lr=(env LUAROCKS_CONFIG="$work/luarocks-luajit.lua" luarocks --lua-version 5.1 --tree "$work/rocks")
got=$(which_lib "$work" "$("${lr[@]}" path --lr-path)" "$("${lr[@]}" path --lr-cpath)")
case $got in
    "$work"/rocks/lib/lua/5.1/singleflight/libsingleflight.so) echo "mapped the rock's copy: $got" ;;
    *) sf_die "hello-luajit.lua mapped $got, not the rock's copy under $work/rocks" ;;
esac

sf_log "LuaJIT, the system-library way: singleflight.lua from the checkout, the library installed"
sys=$out/system
cmake --install "${SF_BUILD_DIR:?the build directory to install}" --prefix "$sys" >/dev/null
got=$(which_lib "$work" "$here/?.lua" "" SF_PREFIX="$sys")
case $got in
    "$sys"/lib/libsingleflight.so*) echo "mapped the installed library: $got" ;;
    *) sf_die "with SF_PREFIX=$sys the module mapped $got" ;;
esac
(cd "$work" && env -u LD_LIBRARY_PATH LUA_PATH="$here/?.lua" LUA_CPATH="" SF_PREFIX="$sys" luajit hello-luajit.lua)
