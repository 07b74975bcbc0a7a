#!/usr/bin/env bash
# Runs `cargo test` for libsingleflight-sys and libsingleflight twice: with Debian
# 12's Rust (1.63, the oldest supported) and with the default toolchain on
# PATH (rustup stable where present).  Run from anywhere; the top-level test
# command provides PKG_CONFIG_PATH and LD_LIBRARY_PATH.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SF_ROOT=${SF_ROOT:-$(cd "$here/../.." && pwd)}
. "$SF_ROOT/scripts/lib.sh"

# rustc/cargo: Debian's toolchain; pkg-config: linking; g++: the header test
# compiles the real header against the Rust declarations.
sf_require /usr/bin/rustc /usr/bin/cargo pkg-config g++

[ -n "${PKG_CONFIG_PATH:-}" ] || sf_die "PKG_CONFIG_PATH must point at the installed singleflight.pc"
pkg-config --exists singleflight || sf_die "pkg-config cannot find singleflight"

out=${SF_BUILD_DIR:-$(mktemp -d)}/bindings-rust
mkdir -p "$out"
export CARGO_BUILD_JOBS=2
# No registry access: the test-only crates (tokio, futures-executor) come
# from the directory scripts/setup.sh vendored them into, exactly as the
# committed Cargo.lock (a version 3 lock, which Debian's 1.65 reads) pins
# them; --locked fails the run rather than resolve anything anew.
export CARGO_NET_OFFLINE=true
[ -f "$SF_CARGO_VENDOR/.cargo-lock.sha256" ] ||
    sf_die "no vendored Rust crates in $SF_CARGO_VENDOR (scripts/setup.sh vendors them)"

# Testing a fresh copy keeps target/ and the cargo configuration out of the
# source tree, and the two toolchains out of each other's way.
src="$out/src"
rm -rf "$src"
mkdir -p "$src/.cargo"
cp -R "$here/Cargo.toml" "$here/Cargo.lock" "$here/libsingleflight-sys" "$here/libsingleflight" "$src/"
printf '[source.crates-io]\nreplace-with = "vendored"\n\n[source.vendored]\ndirectory = "%s"\n' \
    "$SF_CARGO_VENDOR" >"$src/.cargo/config.toml"
cd "$src"

sf_log "Rust bindings with Debian's toolchain: $(/usr/bin/rustc --version)"
# Cargo runs the rustc and rustdoc it finds first on PATH.
PATH=/usr/bin:$PATH CARGO_TARGET_DIR="$out/debian" /usr/bin/cargo test --workspace --locked

current=$(command -v cargo)
if [ "$current" != /usr/bin/cargo ]; then
    sf_log "Rust bindings with $(rustc --version)"
    CARGO_TARGET_DIR="$out/current" cargo test --workspace --locked
fi
