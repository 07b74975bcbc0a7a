#!/usr/bin/env bash
# Builds the Go binding against the installed libsingleflight (pkg-config:
# the build tag singleflight_system) and runs its tests twice: plainly, then
# under the race detector.  Run from anywhere; see the top-level test
# command for the environment it expects.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SF_ROOT=${SF_ROOT:-$(cd "$here/../.." && pwd)}
. "$SF_ROOT/scripts/lib.sh"

# Debian 12's golang-go (1.19, /usr/bin/go) is the oldest version the module
# supports: the whole suite runs with it.  A newer go first on PATH runs it
# again (as the Rust tests do with a newer cargo).  scripts/setup.sh installs
# the one and fetched the module's dependencies.
sf_require /usr/bin/go pkg-config gcc
gos=(/usr/bin/go)
newer=$(command -v go)
[ "$(readlink -f "$newer")" = "$(readlink -f /usr/bin/go)" ] || gos+=("$newer")
# Never download a toolchain (Go >= 1.21 would, for a newer go.mod line).
export GOTOOLCHAIN=local

[ -n "${PKG_CONFIG_PATH:-}" ] || sf_die "PKG_CONFIG_PATH must point at the installed singleflight.pc"
pkg-config --exists singleflight || sf_die "pkg-config cannot find singleflight"

# Build products stay out of the source tree.
out=${SF_BUILD_DIR:-$(mktemp -d)}/bindings-go
mkdir -p "$out"
export GOCACHE=${GOCACHE:-$out/gocache}
# The system-library way (the default build compiles the bundled sources:
# module-test.sh tests that).
export GOFLAGS="${GOFLAGS:-} -modcacherw -tags=singleflight_system"
export CGO_ENABLED=1
# The machine is shared: two compile jobs, two test binaries at a time.
jobs=2

cd "$here"
for go in "${gos[@]}"; do
    log="$out/test-$("$go" env GOVERSION).log"
    sf_log "Go binding: $("$go" version), libsingleflight $(pkg-config --modversion singleflight)"
    "$go" vet ./...
    "$go" test -count=1 -p "$jobs" -timeout 180s -v ./... 2>&1 | tee "$log" | grep -E '^(--- |ok |FAIL|PASS|panic)|threads|seed '
    [ "${PIPESTATUS[0]}" -eq 0 ] || sf_die "go test failed (log: $log)"

    sf_log "Go binding: again under the race detector"
    "$go" test -race -count=1 -p "$jobs" -timeout 300s ./...
done
