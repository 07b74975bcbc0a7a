#!/usr/bin/env bash
# CMake and Meson must install the same singleflight.pc, up to the prefix.
set -euo pipefail
a="$1/lib/pkgconfig/singleflight.pc"
b="$2/lib/pkgconfig/singleflight.pc"
[ -f "$b" ] || b=$(find "$2" -name singleflight.pc | head -n1)
norm() { sed -e '/^prefix=/d' -e 's#^libdir=.*/lib[^/]*$#libdir=LIBDIR#' "$1"; }
diff -u <(norm "$a") <(norm "$b")
echo "the two singleflight.pc files agree"
