#!/usr/bin/env bash
# Meson installs what CMake installs: the same singleflight.pc up to the
# prefix, the same headers, manual pages and libraries (tests/check-pc.sh).
#   tests/install/meson.sh CMAKE_BUILD WORK
set -euo pipefail
SF_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=$1 work=$2
rm -rf "$work"
mkdir -p "$work"
work=$(cd "$work" && pwd)
cmake --install "$build" --prefix "$work/cmake-prefix"
meson setup "$work/meson" "$SF_ROOT" --prefix "$work/meson-prefix" -Dtests=false
meson install -C "$work/meson" --quiet
bash "$SF_ROOT/tests/check-pc.sh" "$work/cmake-prefix" "$work/meson-prefix"
