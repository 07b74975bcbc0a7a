#!/usr/bin/env bash
# Builds rustasyncbench against the installed library and runs its three
# measurements, interleaved, --runs times (5 by default), printing the JSON
# lines.  The machine may be shared: take medians across runs.
#
#   SF_PREFIX=/path/to/install bench/rust/async/run.sh [--runs N] [--build-dir DIR]
#
# Needs the network the first time (crates.io; versions pinned by the
# Cargo.lock beside this file).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/../../../scripts/lib.sh"
runs=5
build_dir=$SF_ROOT/build-bench
while [ $# -gt 0 ]; do
    case $1 in
        --runs) runs=$2; shift 2 ;;
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
