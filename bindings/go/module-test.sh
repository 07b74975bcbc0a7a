#!/usr/bin/env bash
# The Go module as a user gets it: docs/bindings.md's `go-module` blocks
# (the hello in a fresh module that requires the binding through a replace
# directive, then `go run .`), run verbatim with GOFLAGS=-mod=mod, no
# download (GOPROXY=off: x/sync comes from the module cache scripts/setup.sh
# filled) and no C library for pkg-config to find, so cgo must compile the
# library from the module's own sf_amalgam_* files.  With Debian's Go 1.19
# (the oldest the module supports) and with a newer go first on PATH.
# Run from anywhere; SF_BUILD_DIR (set by ctest) keeps the Go build cache.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SF_ROOT=${SF_ROOT:-$(cd "$here/../.." && pwd)}
. "$SF_ROOT/scripts/lib.sh"

sf_require /usr/bin/go g++ pkg-config readelf python3
gos=(/usr/bin/go)
newer=$(command -v go)
[ "$(readlink -f "$newer")" = "$(readlink -f /usr/bin/go)" ] || gos+=("$newer")

out=${SF_BUILD_DIR:-$(mktemp -d)}/go-module
mkdir -p "$out"
unset PKG_CONFIG_PATH LD_LIBRARY_PATH
! pkg-config --exists singleflight ||
    sf_die "pkg-config finds a singleflight.pc ($(pkg-config --variable=pcfiledir singleflight)): the test needs a machine without the C library"
export GOTOOLCHAIN=local GOPROXY=off GOFLAGS="-mod=mod -modcacherw" CGO_ENABLED=1
# Kept between runs: compiling the C++ core is most of the time.
export GOCACHE=$out/gocache

for go in "${gos[@]}"; do
    ver=$("$go" env GOVERSION)
    work=$out/$ver
    sf_log "Go module: $("$go" version), no system library"
    # run.sh runs the blocks in a fresh $work holding the checkout as
    # ./libsingleflight; `go` there is $go.
    PATH=$(dirname "$go"):$PATH bash "$SF_ROOT/tests/install/run.sh" --fresh "$work" go-module \
        >"$out/$ver.log" 2>&1 || { cat "$out/$ver.log"; sf_die "the module hello failed with $ver"; }
    grep -x "Ada shared: .*" "$out/$ver.log"
    grep -qx 'Ada shared: false' "$out/$ver.log" || sf_die "the hello did not print its value (log: $out/$ver.log)"
    # The program carries the library: no libsingleflight.so to load.
    (cd "$work/hello-go" && "$go" build -o hello .)
    dyn=$(readelf -d "$work/hello-go/hello") syms=$(readelf -Ws "$work/hello-go/hello")
    ! grep -q libsingleflight <<<"$dyn" || sf_die "the hello links a shared libsingleflight"
    grep -q ' sf_group_begin$' <<<"$syms" || sf_die "the hello does not contain sf_group_begin"
done
# The binding's own tests on the bundled library too (bindings/go/test.sh
# runs them all, race detector included, on the system library): the
# packages above the cgo one, whose compiled engine the hello left in the
# build cache.
sf_log "Go module: the singleflight and typed tests on the bundled library ($("$newer" version))"
(cd "$here" && GOFLAGS=-modcacherw "$newer" test -count=1 -p 2 -timeout 180s ./singleflight/ ./typed/)
sf_log "Go module: OK"
