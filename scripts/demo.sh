#!/usr/bin/env bash
# The README's first command: builds the library and runs the demos.
#  1. hello: Go's singleflight example in C (ten threads, one fetch).
#  2. stampede: a cache stampede on SQLite, without and with singleflight,
#     in threads and then across 8 worker processes (a group per process,
#     and the shared group of the host, and the Redis tier with each process
#     standing in for a host of a fleet, on a redis-server this script
#     starts on 127.0.0.1 and stops); extra arguments are passed to it (try
#     --help; --part 3 runs only the processes).
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
# The Redis tier's column: a throwaway redis-server on a free port, no
# persistence, ready when its log says so, stopped on exit.
redis_args=()
redis_dir=$(mktemp -d)
redis_pid=
trap '[ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$redis_dir"' EXIT
for _ in 1 2 3 4 5; do
    port=$((20000 + RANDOM % 40000))
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
        --logfile "$redis_dir/log" --dir "$redis_dir" &
    redis_pid=$!
    for _ in $(seq 100); do # up to 10 s for its "ready" line, or its exit
        grep -q "Ready to accept connections" "$redis_dir/log" 2>/dev/null && break
        kill -0 "$redis_pid" 2>/dev/null || break
        sleep 0.1
    done
    if grep -q "Ready to accept connections" "$redis_dir/log" 2>/dev/null; then
        redis_args=(--redis "127.0.0.1:$port")
        break
    fi
    kill "$redis_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true
    redis_pid=
    rm -f "$redis_dir/log"
done
[ ${#redis_args[@]} -gt 0 ] || sf_die "redis-server did not start (scripts/setup.sh --only demo installs it)"
"$BUILD/examples/stampede/stampede" "${redis_args[@]}" "$@"
