#!/usr/bin/env bash
# A prefix the dynamic linker does not know (no ldconfig, no LD_LIBRARY_PATH):
# the Lua module and the pip-installed Python module still load the library
# installed beside them, through their RUNPATH.  Each checks, in its own
# /proc/self/maps, that the libsingleflight.so.1 it got is the prefix's.
#   tests/install/runpath.sh BUILD WORK
set -euo pipefail
SF_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=$1 work=$2
rm -rf "$work"
mkdir -p "$work"
prefix=$(cd "$work" && pwd)/prefix
cmake --install "$build" --prefix "$prefix"
cmake --install "$build" --prefix "$prefix" --component lua
lib=$(realpath "$(find "$prefix" -name libsingleflight.so.1)")
unset LD_LIBRARY_PATH PYTHONPATH LUA_PATH LUA_CPATH
cd "$work"

LUA_CPATH_5_4="$prefix/lib/lua/5.4/?.so" LUA_PATH_5_4="$prefix/share/lua/5.4/?.lua" \
lua5.4 - "$lib" <<'LUA'
local sf = require "singleflight"
assert(sf.new():call("k", function() return "v" end) == "v")
local want, got = ..., nil
for line in io.lines("/proc/self/maps") do
    got = got or line:match("(/%S*libsingleflight%.so%.1[%.%d]*)$")
end
assert(got, "libsingleflight.so.1 is not mapped")
local real = io.popen("realpath '" .. got .. "'"):read("l")
assert(real == want, "Lua loaded " .. real .. ", not " .. want)
print("lua: " .. real)
LUA

python3 -m venv venv
SINGLEFLIGHT_SYSTEM_LIBRARY=1 PKG_CONFIG_PATH=$prefix/lib/pkgconfig venv/bin/pip install -q "$SF_ROOT"
venv/bin/python - "$lib" <<'PY'
import os, sys
import libsingleflight
assert libsingleflight.Group().do("k", lambda: "v") == ("v", False)
maps = open("/proc/self/maps").read().split()
got = {os.path.realpath(p) for p in maps if "/libsingleflight.so.1" in p}
assert got == {sys.argv[1]}, "Python loaded %s, not %s" % (got, sys.argv[1])
print("python:", *got)
PY
