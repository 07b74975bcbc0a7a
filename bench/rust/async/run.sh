#!/usr/bin/env bash
# Builds rustasyncbench against the installed library and runs its
# measurements, printing JSON lines: the issue 12 ones (stampede, overhead,
# cancel) --runs times (5 by default), then the contests with the peers of
# issue 17, each interleaving the contenders over --reps repeats (9 by
# default) and printing the medians itself: the uncontended call, the herd
# (released at once, then spawned as it goes) and the cancellation checks.
# The machine may be shared: record the load average beside the figures.
#
#   SF_PREFIX=/path/to/install bench/rust/async/run.sh [--runs N] [--reps N] [--build-dir DIR]
#
# Needs the network the first time (crates.io; versions pinned by the
# Cargo.lock beside this file).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/../../../scripts/lib.sh"
runs=5
reps=9
build_dir=$SF_ROOT/build-bench
while [ $# -gt 0 ]; do
    case $1 in
        --runs) runs=$2; shift 2 ;;
        --reps) reps=$2; shift 2 ;;
        --build-dir) build_dir=$2; shift 2 ;;
        *) sf_die "unknown argument: $1" ;;
    esac
done
sf_require cargo pkg-config
if [ -n "${SF_PREFIX:-}" ]; then
    export PKG_CONFIG_PATH="$SF_PREFIX/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
    export LD_LIBRARY_PATH="$SF_PREFIX/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
pkg-config --exists singleflight || sf_die "pkg-config cannot find singleflight (set SF_PREFIX)"
export CARGO_TARGET_DIR=$build_dir/rust-async-target
cargo build --release --locked --manifest-path "$here/Cargo.toml" -q
bin=$CARGO_TARGET_DIR/release/rustasyncbench
for i in $(seq "$runs"); do
    sf_log "run $i of $runs"
    "$bin" stampede
    "$bin" overhead
    "$bin" cancel
done
sf_log "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
"$bin" uncontended --reps "$reps"
"$bin" herd --reps "$reps"
"$bin" herd --reps "$reps" --spawn
"$bin" checks
sf_log "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
