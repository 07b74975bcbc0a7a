#!/usr/bin/env bash
# stage-rust-sources.sh [CRATE_DIR]: copies the C library's sources (core/,
# capi/) into CRATE_DIR/csrc (default: bindings/rust/libsingleflight-sys),
# so that `cargo package` of libsingleflight-sys carries what its `bundled`
# feature compiles.  cargo package takes no file from outside the crate, and
# the repository keeps one copy of the sources: csrc/ is gitignored and made
# afresh by this script right before packaging (bindings/rust/package-test.sh
# does it, as a release would).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

crate=${1:-$SF_ROOT/bindings/rust/libsingleflight-sys}
[ -f "$crate/Cargo.toml" ] || sf_die "$crate is not a crate directory"
dest=$crate/csrc
rm -rf "$dest"
mkdir -p "$dest/core" "$dest/capi/include"
# Exactly what the library is built from (CMakeLists.txt's SF_SOURCES and
# the headers they include); the licence goes along with the code.
cp "$SF_ROOT"/core/*.cpp "$SF_ROOT"/core/*.hpp "$dest/core/"
cp "$SF_ROOT"/capi/*.cpp "$SF_ROOT"/capi/*.hpp "$dest/capi/"
cp "$SF_ROOT/capi/include/singleflight.h" "$dest/capi/include/"
cp "$SF_ROOT/LICENSE" "$dest/"
