#!/usr/bin/env bash
# The README's first command: builds the library and runs the demos.
#  1. hello: Go's singleflight example in C (ten threads, one fetch).
#  2. stampede: a cache stampede on SQLite, without and with singleflight
#     (extra arguments are passed to it; try --help).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$SF_ROOT"
sf_need "${SF_CORE_PKGS[@]}" libsqlite3-dev
BUILD=${SF_OUT:-$SF_ROOT/build}/demo
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSF_BUILD_TESTS=OFF >/dev/null
cmake --build "$BUILD" -j2 >/dev/null
echo "== hello: Go's singleflight example, in C =="
"$BUILD/examples/hello"
if [ -x "$BUILD/examples/stampede/stampede" ]; then
    echo
    echo "== stampede: a cache stampede on SQLite =="
    "$BUILD/examples/stampede/stampede" "$@"
fi
