#!/usr/bin/env bash
# The README's first command: builds the library and runs the demos.
#  1. hello: Go's singleflight example in C (ten threads, one fetch).
#  2. stampede: a cache stampede on SQLite, without and with singleflight,
#     in threads and then across 8 worker processes (a group per process,
#     and the shared group of the host); extra arguments are passed to it
#     (try --help; --part 3 runs only the processes).
# Installs what it needs first (scripts/setup.sh --only demo).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$SF_ROOT"
bash scripts/setup.sh --only demo
BUILD=$SF_ROOT/build/demo
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
# By name: without SQLite there is no stampede target, and that is an error.
cmake --build "$BUILD" -j2 --target hello stampede >/dev/null
echo "== hello: Go's singleflight example, in C =="
"$BUILD/examples/hello"
echo
echo "== stampede: a cache stampede on SQLite =="
"$BUILD/examples/stampede/stampede" "$@"
