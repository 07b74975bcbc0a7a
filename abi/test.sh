#!/usr/bin/env bash
# ABI gate: the installed library ($SF_PREFIX/lib/libsingleflight.so.1) must be
# ABI-compatible with the committed baseline abi/libsingleflight.so.1.abi
# (libabigail's abidiff; additions allowed, removals and changes not), keep
# its SONAME, export exactly the header's functions, and ship a clean header.
# Then a self-check proves the gate can fail: two deliberately broken copies
# of the library (a public struct's layout changed; an exported function
# hidden) are built from a scratch copy of the sources and must be rejected.
# Work files go under $SF_BUILD_DIR/sf-abi, never into the source tree.
set -euo pipefail

SF_ROOT=${SF_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
. "$SF_ROOT/scripts/lib.sh"
sf_require abidiff readelf nm cmake ninja cc c++

: "${SF_PREFIX:?SF_PREFIX must point at an install prefix}"
lib=$SF_PREFIX/lib/libsingleflight.so.1
[ -e "$lib" ] || lib=$(ls "$SF_PREFIX"/lib*/libsingleflight.so.1 "$SF_PREFIX"/lib/*/libsingleflight.so.1 2>/dev/null | head -1)
[ -n "$lib" ] && [ -e "$lib" ] || sf_die "abi: no libsingleflight.so.1 under $SF_PREFIX"
inc=$SF_PREFIX/include
[ -f "$inc/singleflight.h" ] || sf_die "abi: no singleflight.h in $inc"
base=$SF_ROOT/abi/libsingleflight.so.1.abi
work=${SF_BUILD_DIR:-$SF_ROOT/build}/sf-abi
rm -rf "$work"
mkdir -p "$work"

sf_log "abi: SONAME"
soname=$(readelf -d "$lib" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')
[ "$soname" = "libsingleflight.so.1" ] || sf_die "abi: SONAME is '$soname', want libsingleflight.so.1"

sf_log "abi: $lib against $base"
"$SF_ROOT/abi/check.sh" "$base" "$lib" >"$work/report.txt" 2>&1 || {
    cat "$work/report.txt" >&2
    sf_die "abi: the library breaks the committed ABI (report above)"
}
cat "$work/report.txt"

sf_log "abi: export list and header hygiene of the installed files"
sh "$SF_ROOT/tests/check-exports.sh" "$lib" "$inc/singleflight.h"
sh "$SF_ROOT/tests/check-header.sh" "$inc"

# ---- self-check -----------------------------------------------------------
# A scratch copy of what the library build needs.
src=$work/src
mkdir -p "$src"
cp -r "$SF_ROOT/CMakeLists.txt" "$SF_ROOT/capi" "$SF_ROOT/core" "$SF_ROOT/cmake" \
      "$SF_ROOT/pkgconfig" "$SF_ROOT/man" "$src/"
mkdir -p "$src/bindings"
cp -r "$SF_ROOT/bindings/cpp" "$src/bindings/"

build_mutant() { # name: builds $src into $work/$name, prints the .so path
    cmake -S "$src" -B "$work/$1" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
          -DSF_BUILD_TESTS=OFF -DSF_BUILD_EXAMPLES=OFF -DSF_BUILD_REDIS=OFF >/dev/null
    cmake --build "$work/$1" -j2 --target singleflight >/dev/null
    echo "$work/$1/libsingleflight.so.1"
}
expect_rejected() { # name so
    if "$SF_ROOT/abi/check.sh" "$base" "$2" >"$work/$1.txt" 2>&1; then
        cat "$work/$1.txt" >&2
        sf_die "abi self-check: the $1 mutant was NOT rejected: the gate is blind"
    fi
    sf_log "abi self-check: $1 mutant rejected as it must be"
    grep -E 'changes summary|size changed|Removed|type of' "$work/$1.txt" | head -5 || true
}

# Mutant 1: a public struct changes layout (sf_group_stats.calls narrowed to
# 32 bits, which moves every later counter).
hdr=$src/capi/include/singleflight.h
cp "$SF_ROOT/capi/include/singleflight.h" "$hdr"
sed -i -E 's/^( *)sf_u64( +calls;)/\1unsigned int\2/' "$hdr"
cmp -s "$hdr" "$SF_ROOT/capi/include/singleflight.h" && sf_die "abi self-check: layout mutation did not apply"
expect_rejected layout "$(build_mutant layout)"

# Mutant 2: an exported function disappears (hidden by the version script).
cp "$SF_ROOT/capi/include/singleflight.h" "$hdr"
sed -i -E 's/^( *)local:$/\1local:\n\1  sf_call_fd;/' "$src/capi/singleflight.map"
so=$(build_mutant removal)
nm -D --defined-only "$so" | grep -qw sf_call_fd && sf_die "abi self-check: removal mutation did not apply"
expect_rejected removal "$so"

# Mutant 3: a new exported function is a compatible addition and must pass,
# or the gate would block every minor release.
cp "$SF_ROOT/capi/singleflight.map" "$src/capi/singleflight.map"
printf '%s\n' 'extern "C" SF_API int sf_abi_selfcheck_added(void) { return 1; }' \
    >>"$src/capi/singleflight.cpp"
so=$(build_mutant addition)
nm -D --defined-only "$so" | grep -qw sf_abi_selfcheck_added ||
    sf_die "abi self-check: addition mutation did not apply"
"$SF_ROOT/abi/check.sh" "$base" "$so" >"$work/addition.txt" 2>&1 || {
    cat "$work/addition.txt" >&2
    sf_die "abi self-check: a pure addition was rejected"
}
sf_log "abi self-check: addition mutant accepted as it must be"

sf_log "abi: compatible with the baseline, and the gate rejects breaking changes"
