#!/usr/bin/env bash
# Packages both crates as a release would (scripts/package-rust-crates.sh:
# `cargo package` with the C sources copied into the -sys crate), then
# builds docs/bindings.md's crate hello (its `rust-crate` blocks, verbatim)
# against the packaged crates with the `bundled` feature: offline, in a
# fresh project, with no singleflight.pc anywhere pkg-config looks, and
# checks that the program runs and carries the library itself.
#
# The registry crates (cc, pkg-config and theirs) come from the directory
# scripts/setup.sh vendored from bindings/rust/Cargo.lock, so nothing is
# downloaded here.  Run from anywhere; SF_BUILD_DIR (set by ctest) keeps the
# target directories between runs.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SF_ROOT=${SF_ROOT:-$(cd "$here/../.." && pwd)}
. "$SF_ROOT/scripts/lib.sh"

sf_require cargo pkg-config g++ tar python3 readelf
[ -f "$SF_CARGO_VENDOR/.cargo-lock.sha256" ] ||
    sf_die "no vendored Rust crates in $SF_CARGO_VENDOR (scripts/setup.sh vendors them)"

out=${SF_BUILD_DIR:-$(mktemp -d)}/rust-package
mkdir -p "$out"
export CARGO_BUILD_JOBS=2 CARGO_NET_OFFLINE=true
# The user's machine has no C library: whatever the caller's environment
# says, pkg-config must not find one, or the test proves nothing.
unset PKG_CONFIG_PATH LD_LIBRARY_PATH
! pkg-config --exists singleflight || sf_die "pkg-config finds a singleflight.pc: $(pkg-config --variable=pcfiledir singleflight)"

vendored() {
    printf '[source.crates-io]\nreplace-with = "vendored"\n\n[source.vendored]\ndirectory = "%s"\n' "$SF_CARGO_VENDOR"
}

# ---- package, as a release does
bash "$SF_ROOT/scripts/package-rust-crates.sh" "$out/packaged" >/dev/null
pkgdir=$out/packaged/package
crates=$out/crates
rm -rf "$crates.new"
mkdir -p "$crates.new"
for c in libsingleflight-sys libsingleflight; do
    f=$pkgdir/$c-1.2.0.crate
    [ -f "$f" ] || sf_die "cargo package made no $f"
    tar -xzf "$f" -C "$crates.new"
done
# Unchanged crates are kept as they were, so cargo sees nothing new and does
# not compile the C++ library again.
if diff -r "$crates.new" "$crates" >/dev/null 2>&1; then
    rm -rf "$crates.new"
else
    rm -rf "$crates"
    mv "$crates.new" "$crates"
fi
sys=$crates/libsingleflight-sys-1.2.0
# The packaged -sys crate carries every source the library is built from.
for f in "$SF_ROOT"/core/*.cpp "$SF_ROOT"/core/*.hpp "$SF_ROOT"/capi/*.cpp "$SF_ROOT"/capi/*.hpp; do
    rel=${f#"$SF_ROOT"/}
    cmp -s "$f" "$sys/csrc/$rel" || sf_die "the packaged crate's csrc/$rel differs from $rel"
done
cmp -s "$SF_ROOT/capi/include/singleflight.h" "$sys/csrc/capi/include/singleflight.h" ||
    sf_die "the packaged crate lacks capi/include/singleflight.h"

# ---- a fresh project: the docs' hello, the packaged crates in place of crates.io
work=$out/hello
rm -rf "$work/hello-rs/src" "$work/hello-rs/Cargo.toml" "$work/hello-rs/Cargo.lock" "$work/commands.sh"
mkdir -p "$work/.cargo"
{
    vendored
    printf '\n[patch.crates-io]\nlibsingleflight = { path = "%s" }\nlibsingleflight-sys = { path = "%s" }\n' \
        "$crates/libsingleflight-1.2.0" "$sys"
    # Kept between runs: the bundled C++ build is most of the time.
    printf '\n[build]\ntarget-dir = "%s"\n' "$out/hello-target"
} >"$work/.cargo/config.toml"
sf_log "Rust: the packaged crates with \`bundled\`, offline, no system library ($(cargo --version))"
log=$out/hello.log
bash "$SF_ROOT/tests/install/run.sh" "$work" rust-crate >"$log" 2>&1 || { cat "$log"; sf_die "the crate hello failed"; }
cat "$log" | tail -n 3
grep -qx 'Ada (shared: false)' "$log" || sf_die "the hello did not print its value (log: $log)"
# Bundled means linked in: the program needs no libsingleflight.so.
exe=$out/hello-target/debug/hello-rs
[ -x "$exe" ] || sf_die "no $exe"
dyn=$(readelf -d "$exe") syms=$(readelf -Ws "$exe")
! grep -q 'libsingleflight' <<<"$dyn" || sf_die "$exe links a shared libsingleflight"
grep -q ' sf_group_do$' <<<"$syms" || sf_die "$exe does not contain sf_group_do"
# ...compiled from the packaged crate's own copy of the sources.
grep -qx "cargo:rerun-if-changed=$sys/csrc/core/group.cpp" "$out"/hello-target/debug/build/libsingleflight-sys-*/output ||
    sf_die "the -sys build script did not compile $sys/csrc"

# The same project with Debian's toolchain (Rust 1.63, the oldest the crates
# support), so `bundled`'s build script and the cc crate are held to it too.
if [ -x /usr/bin/cargo ] && [ "$(readlink -f "$(command -v cargo)")" != /usr/bin/cargo ]; then
    sf_log "Rust: the same with $(/usr/bin/cargo --version)"
    rm -rf "$work/hello-debian"
    mkdir -p "$work/hello-debian"
    cp -R "$work/hello-rs/Cargo.toml" "$work/hello-rs/src" "$work/hello-debian/" # not the newer Cargo.lock
    (cd "$work/hello-debian" && PATH=/usr/bin:$PATH CARGO_TARGET_DIR="$out/hello-target-debian" \
        /usr/bin/cargo run -q) >"$out/hello-debian.log" 2>&1 || { cat "$out/hello-debian.log"; sf_die "Debian's cargo failed"; }
    grep -qx 'Ada (shared: false)' "$out/hello-debian.log" || sf_die "Debian's build did not print the value"
fi
# The crates' own test suites on the bundled library, in the packaged
# workspace (so from its csrc/), offline.  The target directory is
# bindings/rust/test.sh's, whose build of the registry crates (tokio...)
# this reuses.
sf_log "Rust: the crates' tests with \`bundled\`"
mkdir -p "$out/packaged/src/.cargo"
vendored >"$out/packaged/src/.cargo/config.toml"
(cd "$out/packaged/src" && CARGO_TARGET_DIR="${SF_BUILD_DIR:-$out}/bindings-rust/current" \
    cargo test --workspace --locked --features libsingleflight/bundled) >"$out/tests.log" 2>&1 ||
    { cat "$out/tests.log"; sf_die "the crates' tests failed with \`bundled\` (log: $out/tests.log)"; }
grep -E '^test result:' "$out/tests.log" | sort | uniq -c
sf_log "Rust: packaged crates OK"
