#!/usr/bin/env bash
# The Lua binding alone needs neither Python nor a JDK: a configure with only
# -DSF_BUILD_LUA=ON succeeds while CMake is forbidden to find Python3, Java
# and JNI (a REQUIRED find_package of a disabled package is an error), and
# builds the module.
#   tests/install/lua-alone.sh WORK
set -euo pipefail
SF_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
work=$1
rm -rf "$work"
cmake -S "$SF_ROOT" -B "$work" -DSF_BUILD_LUA=ON -DSF_BUILD_TESTS=OFF -DSF_BUILD_EXAMPLES=OFF \
    -DCMAKE_DISABLE_FIND_PACKAGE_Python3=ON -DCMAKE_DISABLE_FIND_PACKAGE_Java=ON \
    -DCMAKE_DISABLE_FIND_PACKAGE_JNI=ON
cmake --build "$work" -j2 --target sf_lua sf_lua_package
[ -f "$work/bindings/swig/lua/singleflight_core.so" ] || { echo "no Lua module built"; exit 1; }
echo "the Lua binding builds without Python and without a JDK"
