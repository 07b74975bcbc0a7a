#!/usr/bin/env bash
# CMake and Meson install the same singleflight.pc, up to the prefix, and the
# same files: headers, manual pages and libraries, byte for byte where they are
# text (CMake's package files, which Meson does not make, aside).
#   tests/check-pc.sh CMAKE_PREFIX MESON_PREFIX
set -euo pipefail
a=$(find "$1" -path '*/pkgconfig/singleflight.pc' | head -n1)
b=$(find "$2" -path '*/pkgconfig/singleflight.pc' | head -n1)
[ -f "$a" ] || { echo "no singleflight.pc under $1"; exit 1; }
[ -f "$b" ] || { echo "no singleflight.pc under $2"; exit 1; }
norm() { sed -e '/^prefix=/d' -e 's#^libdir=${prefix}/.*#libdir=LIBDIR#' "$1"; }
diff -u <(norm "$a") <(norm "$b")
echo "the two singleflight.pc files agree"

# installed PREFIX PC: the files under PREFIX, libdir written as LIBDIR.
installed() {
    local libdir
    libdir=$(dirname "$(dirname "${2#"$1"/}")")
    (cd "$1" && find . \( -type f -o -type l \) | sed -e 's#^\./##' -e "s#^$libdir/#LIBDIR/#" |
        grep -v '^LIBDIR/cmake/' | sort)
}
diff -u <(installed "$1" "$a") <(installed "$2" "$b")
for f in $(installed "$1" "$a" | grep -E '^(include|share)/'); do
    cmp "$1/$f" "$2/$f"
done
echo "the two builds install the same $(installed "$1" "$a" | wc -l) files"
