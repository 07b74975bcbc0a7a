#!/usr/bin/env bash
# Build and run the benchmark matrix; print one table; write the chart and
# results.json under <build-dir>/bench-results/.
#
#   bench/run.sh [--quick] [--check] [--build-dir DIR] [--no-bindings]
#                [--only capi,xsync,...] [--threads 1,2] [--fns trivial] [--reps N]
#   bench/run.sh [--build-dir DIR] --render DIR/bench-results/results.json
#   bench/run.sh [--build-dir DIR] --go-peers
#
# --quick: 30-40 ms per cell and one repeat (about a minute); --check: exit 1
# unless exec/call <= 1 everywhere (a behaviour check, never a timing one).
# Each binding row is included when that binding exists and builds, and is
# listed as "not available" with the reason otherwise.  --go-peers: instead
# of the matrix, the Go binding against Go's other singleflights (a herd of
# 10,000 goroutines, an uncontended call that can give up, the cancellation
# cases; about 2 minutes), written to bench-results/go-peers.{jsonl,md}.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/../scripts/lib.sh"

build_dir=${SF_BENCH_BUILD_DIR:-$SF_ROOT/build-bench}
bindings=1
go_peers=0
pass=()
while [ $# -gt 0 ]; do
    case $1 in
        --build-dir) build_dir=$2; shift 2 ;;
        --build-dir=*) build_dir=${1#*=}; shift ;;
        --no-bindings) bindings=0; shift ;;
        --go-peers) go_peers=1; shift ;;
        --quick|--check) pass+=("$1"); shift ;;
        --only|--threads|--fns|--reps) pass+=("$1" "$2"); shift 2 ;;
        --render)
            # No build, no run: the table, targets and chart again from a
            # saved results.json.
            mkdir -p "$build_dir"
            exec python3 "$here/run.py" --build-dir "$build_dir" --root "$SF_ROOT" --render "$2" ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) sf_die "unknown argument: $1 (see --help)" ;;
    esac
done
mkdir -p "$build_dir"
build_dir=$(cd "$build_dir" && pwd)
bb=$build_dir/bench
mkdir -p "$bb"

sf_require cmake ninja pkg-config python3 c++

# ---- native contenders: the library (Release) and sfbench ------------------
sf_log "building the library and sfbench in $build_dir"
# The install prefix is the staging dir the bindings link against: the .pc
# file records it at configure time.
cmake -S "$SF_ROOT" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_INSTALL_PREFIX="$build_dir/stage" \
    -DSF_BUILD_TESTS=OFF -DSF_BUILD_EXAMPLES=ON -DSF_BUILD_BENCH=ON >/dev/null
cmake --build "$build_dir" -j2 --target sfbench >/dev/null \
    || sf_die "the library or sfbench failed to build (run cmake --build $build_dir to see why)"

# ---- Go's x/sync -----------------------------------------------------------
unavailable() { printf '%s\n' "$2" >"$bb/$1.unavailable"; sf_log "$1: $2"; }
rm -f "$bb"/*.unavailable "$bb/python.ok"
if command -v go >/dev/null 2>&1; then
    sf_log "building gobench (golang.org/x/sync from the module proxy)"
    (cd "$here/go" && GOFLAGS=-buildvcs=false go build -o "$bb/gobench" .) \
        || { rm -f "$bb/gobench"; sf_log "gobench failed to build: the x/sync row will be missing"; }
else
    rm -f "$bb/gobench"
    sf_log "go not installed: the x/sync row will be missing"
fi

# ---- bindings, each only if present and it builds --------------------------
rm -f "$bb/gobench-binding" "$bb/rustbench"
if [ "$bindings" = 1 ]; then
    # The bindings find the library through pkg-config: stage an install of
    # this very build so they link what the C rows measure.
    stage=$build_dir/stage
    cmake --build "$build_dir" -j2 >/dev/null 2>&1 || true
    if cmake --install "$build_dir" >/dev/null 2>&1; then
        export PKG_CONFIG_PATH="$stage/lib/pkgconfig:$stage/lib/x86_64-linux-gnu/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
        export LD_LIBRARY_PATH="$stage/lib:$stage/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    fi

    # Go binding: the same gobench sources, built with -tags sfbinding in a
    # scratch module under the build dir that points at bindings/go.
    if [ ! -f "$SF_ROOT/bindings/go/go.mod" ]; then
        unavailable gobinding "bindings/go not present"
    elif ! command -v go >/dev/null 2>&1; then
        unavailable gobinding "go not installed"
    else
        gsrc=$bb/gobinding-src
        rm -rf "$gsrc" && mkdir -p "$gsrc"
        cp "$here/go/"*.go "$here/go/go.mod" "$here/go/go.sum" "$gsrc/"
        cp "$here/go/binding/binding.go.in" "$gsrc/binding.go"
        mod=$(sed -n 's/^module[[:space:]]*//p' "$SF_ROOT/bindings/go/go.mod")
        (cd "$gsrc" && go mod edit -require="$mod@v0.0.0" -replace="$mod=$SF_ROOT/bindings/go" \
            && GOFLAGS=-buildvcs=false go mod tidy >/dev/null 2>&1 \
            && GOFLAGS=-buildvcs=false go build -tags sfbinding -o "$bb/gobench-binding" .) \
            >"$bb/gobinding.log" 2>&1 \
            || { rm -f "$bb/gobench-binding"; unavailable gobinding "bindings/go did not build (see $bb/gobinding.log)"; }
    fi

    # Rust binding: bench/rust is a tiny crate depending on bindings/rust by path.
    if [ ! -d "$SF_ROOT/bindings/rust" ]; then
        unavailable rust "bindings/rust not present"
    elif ! command -v cargo >/dev/null 2>&1; then
        unavailable rust "cargo not installed"
    else
        # Built from a copy so Cargo.lock and target/ land in the build dir.
        rsrc=$bb/rust-src
        rm -rf "$rsrc" && mkdir -p "$rsrc"
        cp -r "$here/rust/src" "$rsrc/"
        sed "s#path = \"../../bindings/rust/libsingleflight\"#path = \"$SF_ROOT/bindings/rust/libsingleflight\"#" \
            "$here/rust/Cargo.toml" >"$rsrc/Cargo.toml"
        (cd "$rsrc" && CARGO_TARGET_DIR="$bb/rust-target" cargo build --release --offline -q \
            || CARGO_TARGET_DIR="$bb/rust-target" cargo build --release -q) \
            >"$bb/rust.log" 2>&1 \
            && cp "$bb/rust-target/release/rustbench" "$bb/rustbench" \
            || unavailable rust "bindings/rust did not build (see $bb/rust.log)"
    fi

    # Python binding (SWIG): the module alone, built by the project's CMake
    # against the staged library (SF_PYTHON_SYSTEM_LIBRARY: pkg-config, as
    # `pip install` with SINGLEFLIGHT_SYSTEM_LIBRARY=1), under the build dir.
    if [ ! -f "$SF_ROOT/bindings/swig/python/libsingleflight/__init__.py" ]; then
        unavailable python "bindings/swig/python not present"
    elif ! command -v swig >/dev/null 2>&1; then
        unavailable python "swig not installed (scripts/setup.sh installs it)"
    else
        pyb=$bb/python-build
        rm -rf "$pyb"
        if { cmake -S "$SF_ROOT" -B "$pyb" -DCMAKE_BUILD_TYPE=Release -DSF_BUILD_EXAMPLES=OFF \
                 -DSF_BUILD_PYTHON=ON -DSF_PYTHON_SYSTEM_LIBRARY=ON &&
             cmake --build "$pyb" --target sf_python sf_python_package; } >"$bb/python.log" 2>&1; then
            pydir=$pyb/bindings/swig/python
            if [ -n "$pydir" ] && PYTHONPATH="$pydir" python3 -c 'import libsingleflight' >>"$bb/python.log" 2>&1; then
                printf '%s\n' "$pydir" >"$bb/python.ok"
            else
                unavailable python "the Python module did not import (see $bb/python.log)"
            fi
        else
            unavailable python "the Python module did not build (see $bb/python.log)"
        fi
    fi
else
    for n in gobinding rust python; do unavailable $n "skipped (--no-bindings)"; done
fi

if [ "$go_peers" = 1 ]; then
    # The peers' rows are in gobench too; the binding's need gobench-binding.
    gb=$bb/gobench-binding
    [ -x "$gb" ] || gb=$bb/gobench
    [ -x "$gb" ] || sf_die "gobench did not build (see above)"
    res=$build_dir/bench-results
    mkdir -p "$res"
    sf_log "Go against its peers with $(basename "$gb"), load average: $(cut -d' ' -f1-3 /proc/loadavg)"
    { "$gb" -experiment herd -callers 10000 -sleep-ms 10 -reps 9
      "$gb" -experiment herd -callers 10000 -sleep-ms 100 -reps 9
      "$gb" -experiment ctxcost -rounds 200000 -reps 9
      "$gb" -experiment semantics; } >"$res/go-peers.jsonl"
    python3 "$here/go/peers.py" <"$res/go-peers.jsonl" | tee "$res/go-peers.md"
    sf_log "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
    exit 0
fi

if [ -f "$bb/python.ok" ]; then
    export PYTHONPATH="$(cat "$bb/python.ok")${PYTHONPATH:+:$PYTHONPATH}"
fi
exec python3 "$here/run.py" --build-dir "$build_dir" --root "$SF_ROOT" "${pass[@]}"
