#!/usr/bin/env bash
# package-rust-crates.sh OUTDIR: makes the two crates' .crate files as they
# are published (OUTDIR/package/libsingleflight{,-sys}-VERSION.crate), with
# the C library's sources (core/, capi/) inside libsingleflight-sys's csrc/,
# which its `bundled` feature compiles.
#
# cargo package takes no file from outside a crate, and the repository keeps
# one copy of the sources, so they are copied in here, into a copy of the
# workspace (OUTDIR/src): the checkout stays clean and cargo has no
# uncommitted files to refuse.  bindings/rust/package-test.sh builds a fresh
# project against the result.  A release publishes from OUTDIR/src
# (`cargo publish -p libsingleflight-sys`, then `-p libsingleflight`).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ $# -eq 1 ] || sf_die "usage: package-rust-crates.sh OUTDIR"
sf_require cargo
# Debian 12's cargo (1.65) reads the registry only through its git index and
# packages one crate at a time: packaging wants a current cargo (rustup
# stable, as scripts/setup.sh's vendoring prefers); the crates still build
# with Debian's toolchain (package-test.sh checks that).
[ "$(readlink -f "$(command -v cargo)")" != /usr/bin/cargo ] ||
    sf_die "package-rust-crates.sh needs a cargo newer than Debian's 1.65 first on PATH (rustup stable)"
out=$(mkdir -p "$1" && cd "$1" && pwd)
rust=$SF_ROOT/bindings/rust
src=$out/src

rm -rf "$src" "$out/package"
mkdir -p "$src"
cp -pR "$rust/Cargo.toml" "$rust/Cargo.lock" "$rust/libsingleflight-sys" "$rust/libsingleflight" "$src/"
rm -rf "$src"/*/target
# Exactly what the library is built from (CMakeLists.txt's SF_SOURCES and
# the headers they include); the licence goes along with the code.
csrc=$src/libsingleflight-sys/csrc
rm -rf "$csrc"
mkdir -p "$csrc/core" "$csrc/capi/include"
cp -p "$SF_ROOT"/core/*.cpp "$SF_ROOT"/core/*.hpp "$csrc/core/"
cp -p "$SF_ROOT"/capi/*.cpp "$SF_ROOT"/capi/*.hpp "$csrc/capi/"
cp -p "$SF_ROOT/capi/include/singleflight.h" "$csrc/capi/include/"
cp -p "$SF_ROOT/LICENSE" "$csrc/"
# Times kept, directories' too (the build script watches them for added
# files): a repeated packaging changes nothing cargo would rebuild for.
for d in core capi capi/include; do touch -r "$SF_ROOT/$d" "$csrc/$d"; done

# cargo package resolves the crates' dependencies through crates.io itself
# (it refuses a replaced source such as a vendored directory): offline from
# the registry cache (scripts/setup.sh's vendoring fills it), else online.
# --no-verify: verifying would build libsingleflight against a
# libsingleflight-sys from crates.io, which is not published yet, and the
# -sys crate's default build wants the system library; package-test.sh is
# the verification, with `bundled`.
package() {
    (cd "$src" && CARGO_TARGET_DIR="$out/target" cargo package --no-verify "$@" \
        -p libsingleflight-sys -p libsingleflight >"$out/package.log" 2>&1)
}
package --offline || package || { cat "$out/package.log" >&2; sf_die "cargo package failed"; }
mv "$out/target/package" "$out/package"
ls "$out"/package/*.crate
